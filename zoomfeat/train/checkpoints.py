"""Checkpoints with exact resume: model, optimizer, LR schedule, EMA, grad scaler and per-rank RNG states, written
to a temp folder and renamed (a kill never leaves a half checkpoint), and the state restored on ``--resume``."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from zoomfeat.io import write_json_atomic


def rng_state() -> dict:
    """torch/CUDA/numpy/python RNG states as tensors and plain numbers (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gaussian": float(np_state[4]),
        "python_version": int(py_state[0]),
        "python_state": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": py_state[2],
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached_gaussian"]))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python_state"].tolist()),
                     state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints (with ``state.json``), oldest first."""
    ck = Path(out_dir) / "checkpoints"
    if not ck.exists():
        return []
    return sorted((p for p in ck.glob("step_*") if (p / "state.json").exists()), key=lambda p: int(p.name[5:]))


def save_checkpoint(accelerator, out_dir: Path, step: int, module, optimizer, lr_sched, ema, cfg: dict,
                    keep: int = 2) -> Path:
    """Write ``checkpoints/step_N`` (model, optimizer, LR schedule, EMA, per-rank RNG, step) via a temp folder."""
    from safetensors.torch import save_file

    ck_root = out_dir / "checkpoints"
    final = ck_root / f"step_{step:08d}"
    tmp = ck_root / f".tmp_step_{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng_rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        sd = {k: v.detach().cpu().contiguous() for k, v in accelerator.unwrap_model(module).state_dict().items()}
        save_file(sd, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_sched.state_dict(), tmp / "scheduler.pt")
        torch.save(ema.state_dict(), tmp / "ema.pt")
        if getattr(accelerator, "scaler", None) is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        write_json_atomic(tmp / "state.json", {"step": step, "world_size": accelerator.num_processes,
                                               "time": time.time(), "config": cfg})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(out_dir)[:-max(1, int(keep))]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, accelerator, module, optimizer, lr_sched, ema) -> int:
    """Restore everything :func:`save_checkpoint` wrote (this rank's RNG when present); return the step."""
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    module.load_state_dict(load_file(str(path / "model.safetensors"), device="cpu"), strict=True)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    lr_sched.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    ema.load_state_dict(torch.load(path / "ema.pt", map_location="cpu", weights_only=True))
    ema.to(accelerator.device)
    if (path / "scaler.pt").exists() and getattr(accelerator, "scaler", None) is not None:
        accelerator.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    rng_file = path / f"rng_rank{accelerator.process_index}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
    elif accelerator.is_main_process:
        print(f"warning: {path} has no RNG state for rank {accelerator.process_index} "
              f"(saved with {state.get('world_size')} processes); batches stay deterministic per step anyway")
    return int(state["step"])


def param_checksum(module: nn.Module) -> list[float]:
    """Sum and sum of squares of all parameters (float64): equal on every rank when DDP keeps them in sync."""
    with torch.no_grad():
        ps = [p.detach().double() for p in module.parameters()]
        return [float(sum(p.sum() for p in ps)), float(sum(p.pow(2).sum() for p in ps))]
