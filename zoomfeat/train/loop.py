"""ZoomLDM training loop: UNet + Summarizer jointly (VQ frozen), ε-MSE, EMA, checkpoints with exact resume, accelerate.

The official recipe (spec §3): magnification uniform per sample, t ~ U{0..999}, CFG dropout 0.1 of the whole
context to zeros, AdamW (lr 2e-5, wd 0.01) with a 1000-step linear warm-up, EMA 0.9999 of the UNet only.
Every random choice of a step (patches, t, noise, CFG dropout) is drawn from a generator seeded by
(seed, step, micro-batch, rank), so a killed run resumed from a checkpoint reproduces the uninterrupted loss curve
and ranks never draw the same samples. Multi-GPU / multi-process: launch with ``torchrun`` or ``accelerate launch``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from zoomfeat.config import CONFIG_DIR, load_yaml, merge, save_yaml
from zoomfeat.io import atomic_path, write_json_atomic
from zoomfeat.mags import N_SCALES
from zoomfeat.train.dataset import (
    DatasetError,
    MultiScaleLatentDataset,
    StepBatchSampler,
    collate,
    step_seed,
    vq_fingerprint,
)

#: Defaults = the official recipe; a config overrides what it names.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "model": {"init": "config", "config": "ldm/zoomldm_brca.yaml"},
    "dataset": {"root": "dataset", "mag_sampling": "uniform", "num_workers": 0, "check_vq": True, "build": None},
    "train": {
        "batch_size": 8,
        "grad_accum": 1,
        "max_steps": 1000,
        "lr": 2.0e-5,
        "weight_decay": 0.01,
        "betas": [0.9, 0.999],
        "adam_eps": 1.0e-8,
        "lr_scheduler": "constant_with_warmup",
        "warmup_steps": 1000,
        "p_uncond": 0.1,
        "max_grad_norm": None,
        "ema_decay": 0.9999,
        "mixed_precision": "auto",
        "gradient_checkpointing": False,
        "checkpoint_every": 1000,
        "keep_checkpoints": 2,
        "log_every": 1,
        "sample_every": 0,
        "save_model": True,
        "sample": {"n": 8, "steps": 20, "guidance_scale": 2.0, "scheduler": "ddim"},
    },
    "wandb": {"enabled": True, "project": "zoomfeat-train", "name": None},
}

#: metrics.csv columns: step, loss, lr, CFG-dropout count, samples, then the mean loss per magnification index.
METRIC_COLUMNS = ["step", "loss", "lr", "n_uncond", "n_samples"] + [f"loss_mag{k}" for k in range(N_SCALES)] + ["elapsed_s"]

KILL_ENV = "ZOOMFEAT_TRAIN_KILL_AT_STEP"  # test hook: SIGKILL this process right after that step (crash simulation)


def load_train_config(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """A training YAML merged over :data:`DEFAULTS` (``key.sub=value`` overrides applied last)."""
    from zoomfeat.config import apply_overrides

    return apply_overrides(merge(DEFAULTS, load_yaml(path)), overrides)


def _resolve(path: str | os.PathLike, base: Path) -> Path:
    """Relative model paths in a training config: the cwd, configs/, the repository root, else under ``base``."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return p
    for cand in (Path.cwd() / p, CONFIG_DIR / p, CONFIG_DIR.parent / p):
        if cand.exists():
            return cand
    return base / p


def make_model(cfg: dict, base: Path | None = None):
    """The ZoomLDM to train: ``init: config`` (random, seeded), ``official`` (released ckpt) or ``pretrained`` (dir)."""
    from zoomfeat.ldm import ZoomLDM

    base = base or Path.cwd()
    m = cfg["model"]
    init = m.get("init", "config")
    if init == "config":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.get("seed", 0)))
            return ZoomLDM.from_config(load_yaml(_resolve(m["config"], base)))
    if init == "official":
        return ZoomLDM.from_official(_resolve(m["ckpt"], base), _resolve(m["official_config"], base),
                                     ema=bool(m.get("ema", True)))
    if init == "pretrained":
        return ZoomLDM.from_pretrained(_resolve(m["path"], base))
    raise ValueError(f"model.init must be 'config', 'official' or 'pretrained', got {init!r}")


def build_slides(spec: dict, root: Path):
    """The slides of ``dataset.build``: ``slides`` as given, else a synthetic cohort made under ``root/cohort``."""
    slides = spec.get("slides")
    if slides is None:
        syn = spec.get("synthetic") or {}
        from zoomfeat.slides.synthetic import make_cohort

        cohort_dir = root / "cohort"
        if not (cohort_dir / "slides").exists() or not any((cohort_dir / "slides").glob("*.tiff")):
            make_cohort(cohort_dir, **syn)
        slides = cohort_dir / "slides"
    return slides


def ensure_dataset(cfg: dict, root: Path, ldm, progress: bool = True) -> None:
    """Build the training set from ``dataset.build`` when ``root`` has no index yet (self-contained configs)."""
    if (root / "index.csv").exists() and (root / "meta.json").exists() and json.loads((root / "meta.json").read_text()).get("complete"):
        return
    spec = cfg["dataset"].get("build")
    if not spec:
        raise FileNotFoundError(
            f"training set not found at {root} and the config has no dataset.build section; "
            "run `zoomfeat build-dataset` first"
        )
    if not spec.get("ssl_encoder") or not dict(spec["ssl_encoder"]).get("name"):
        raise ValueError(
            "dataset.build.ssl_encoder is missing (or has no name): the SSL encoder that makes the conditioning "
            "grids must be the model's (UNI for the released ZoomLDM), never a silent default; set e.g. "
            "ssl_encoder: {name: uni, weights: /path/to/uni} or {name: tiny-vit, dim: 48} for the tiny model"
        )
    from zoomfeat.encoders import create_encoder
    from zoomfeat.train.dataset import build_dataset

    slides = build_slides(spec, root)
    enc_spec = dict(spec["ssl_encoder"])
    encoder = create_encoder(enc_spec.pop("name"), **enc_spec)
    report = build_dataset(
        slides, root, encoder, ldm.vq, patch_px=int(spec.get("patch_px", ldm.image_size)),
        ssl_px=int(spec.get("ssl_px", 256)), scales=spec.get("scales", range(N_SCALES)),
        pool_to=int(spec.get("pool_to", 8)), max_per_scale=spec.get("max_per_scale"), seed=int(cfg.get("seed", 0)),
        batch_size=int(spec.get("batch_size", 16)), tile_kwargs=spec.get("tile_kwargs"), progress=progress,
    )
    report.print()
    if report.exit_code == 2:
        raise RuntimeError(f"building the training set at {root} failed for every slide (see build_summary.csv)")


class DiffusionObjective(nn.Module):
    """One training forward: context from SSL grids (+CFG dropout), noise the latents, ε-MSE per sample.

    Wraps the UNet and the Summarizer so DDP sees (and synchronises) both; the VQ is not part of it.
    """

    def __init__(self, ldm, p_uncond: float = 0.1):
        super().__init__()
        self.unet = ldm.unet
        self.summarizer = ldm.summarizer
        self.noise_scheduler = ldm.noise_scheduler
        self.target = int(ldm.config.get("feat_target_size", 8))
        self.p_uncond = float(p_uncond)

    def context(self, ssl: list[torch.Tensor], mags: torch.Tensor) -> torch.Tensor:
        """Summarizer context for a batch whose SSL grids may differ in side (grouped by side, order kept)."""
        from zoomfeat.ldm.summarizer import pool_and_normalize

        sides = torch.tensor([g.shape[-1] for g in ssl])
        out = None
        for side in sides.unique().tolist():
            idx = torch.nonzero(sides == side).flatten()
            grid = torch.stack([ssl[i] for i in idx.tolist()]).float()
            ctx = self.summarizer(pool_and_normalize(grid, self.target), mags[idx.to(mags.device)])
            if out is None:
                out = ctx.new_zeros((len(ssl),) + tuple(ctx.shape[1:]))
            out[idx.to(ctx.device)] = ctx
        # A batch of only 8x8 grids never touches pad_token; DDP (find_unused_parameters=False) would then wait for
        # its gradient forever. A zero-weighted use keeps every parameter in the graph at no numerical cost.
        return out + 0.0 * self.summarizer.pad_token.sum().to(out.dtype)

    def forward(self, latents, ssl, mags, t, noise, generator=None):
        ctx = self.context(ssl, mags)
        ctx = self.summarizer.drop_condition(ctx, self.p_uncond, generator) if self.training else ctx
        n_uncond = (ctx.detach().flatten(1).abs().amax(1) == 0).sum()
        x_t = self.noise_scheduler.add_noise(latents, noise, t)
        eps = self.unet(x_t, t, encoder_hidden_states=ctx.to(x_t.dtype)).sample
        loss = (eps.float() - noise.float()).pow(2).flatten(1).mean(1)
        return loss, n_uncond


def draw_step_noise(seed: int, step: int, micro: int, rank: int, shape, num_timesteps: int):
    """t, ε and the CFG-dropout generator of one micro-batch: a pure function of (seed, step, micro, rank)."""
    s = np.random.SeedSequence(step_seed(seed, step, micro, rank, 1)).generate_state(2, np.uint64)
    g = torch.Generator().manual_seed(int(s[0]) & ((1 << 63) - 1))
    t = torch.randint(0, num_timesteps, (shape[0],), generator=g)
    noise = torch.randn(tuple(shape), generator=g)
    g_drop = torch.Generator().manual_seed(int(s[1]) & ((1 << 63) - 1))
    return t, noise, g_drop


# --------------------------------------------------------------------------------------------------- checkpoints
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


# --------------------------------------------------------------------------------------------------- logging
class MetricsLog:
    """``metrics.csv`` (append; on resume rows after the checkpoint are dropped) + optional wandb, main rank only."""

    def __init__(self, out_dir: Path, cfg: dict, resume_step: int | None, enabled: bool):
        self.path = out_dir / "metrics.csv"
        self.enabled = enabled
        self.wandb = None
        if not enabled:
            return
        rows = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh)  # a row cut short by a kill has a missing last field
                        if (r.get("step") or "").isdigit() and int(r["step"]) <= resume_step
                        and r.get(METRIC_COLUMNS[-1]) is not None]
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, METRIC_COLUMNS)
                w.writeheader()
                w.writerows(rows)
        self.fh = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.fh, METRIC_COLUMNS)
        wcfg = cfg.get("wandb") or {}
        mode = os.environ.get("WANDB_MODE", "offline")
        if wcfg.get("enabled", True) and mode != "disabled":
            try:
                import wandb

                id_file = out_dir / "wandb_id.txt"
                run_id = id_file.read_text().strip() if id_file.exists() else None
                self.wandb = wandb.init(project=wcfg.get("project", "zoomfeat-train"), name=wcfg.get("name"),
                                        dir=str(out_dir), config=cfg, mode=mode, id=run_id, resume="allow")
                id_file.write_text(self.wandb.id)
            except Exception as exc:  # noqa: BLE001 — logging must never stop training
                print(f"warning: wandb disabled ({type(exc).__name__}: {exc})")
                self.wandb = None

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.writer.writerow({k: ("" if row.get(k) is None or (isinstance(row.get(k), float) and math.isnan(row[k]))
                                  else row[k]) for k in METRIC_COLUMNS})
        self.fh.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if v is not None and not (isinstance(v, float) and math.isnan(v))},
                           step=int(row["step"]))

    def close(self) -> None:
        if not self.enabled:
            return
        self.fh.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: str | os.PathLike):
    """metrics.csv as a pandas DataFrame."""
    import pandas as pd

    return pd.read_csv(path)


@torch.no_grad()
def save_sample_grid(ldm, dataset: MultiScaleLatentDataset, path: Path, n: int = 8, steps: int = 20,
                     guidance_scale: float = 2.0, scheduler: str = "ddim", seed: int = 0) -> Path:
    """Top row: dataset patches (decoded latents); bottom row: samples conditioned on their SSL grids."""
    picks = []
    scales = dataset.scales
    for j in range(n):
        idx = dataset.by_scale[scales[j % len(scales)]]
        picks.append(int(idx[(j // len(scales)) % len(idx)]))
    items = [dataset[i] for i in picks]
    ctx = torch.cat([ldm.condition(it["ssl"][None], it["mag"]) for it in items])
    lat = ldm.sample(ctx, steps=steps, scheduler=scheduler, guidance_scale=guidance_scale,
                     generator=torch.Generator().manual_seed(seed))
    fake = ldm.decode(lat)
    real = ldm.decode(torch.stack([it["latents"] for it in items]).to(ldm.device))
    images = torch.cat([real, fake]).float().clamp(-1, 1).cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from zoomfeat.generate.patches import save_image_grid
    except ImportError:  # generation module absent: torchvision's grid writer
        from torchvision.utils import save_image

        with atomic_path(path) as tmp:
            save_image((images + 1) / 2, str(tmp), nrow=n, format="png")
    else:
        save_image_grid(images, path, nrow=n)  # atomic; takes [-1, 1] floats
    return path


# --------------------------------------------------------------------------------------------------- train
def _mixed_precision(setting: str) -> str:
    """``train.mixed_precision`` (auto, or any zoomfeat.precision spelling) → accelerate's no/fp16/bf16.

    accelerate wraps the forward in autocast: CUDA for fp16/bf16, CPU for bf16 (same op lists; fp16 on CPU = no)."""
    if setting in (None, "auto"):
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"
    from zoomfeat.precision import normalize_precision

    try:
        p = normalize_precision(setting)
    except ValueError:
        raise ValueError(f"train.mixed_precision must be auto, fp32 (no), fp16 or bf16; got {setting!r}") from None
    return "no" if p == "fp32" else p


def _accelerator(mixed_precision: str):
    """A fresh Accelerator; the precision of an earlier train() in this process is forgotten (the distributed
    state is kept), so tests and notebooks can train in fp32 and bf16 one after the other."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    # cpu=True on GPU-less machines: without it accelerate ignores torchrun's env and every process thinks it is rank 0
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


def train(cfg: dict, out_dir: str | os.PathLike, max_steps: int | None = None, resume: bool = False,
          progress: bool = True) -> dict:
    """Train ZoomLDM per ``cfg`` (see :data:`DEFAULTS`) into ``out_dir``; return a small summary dict.

    ``out_dir`` receives ``config.yaml``, ``metrics.csv``, ``checkpoints/step_N``, ``samples/step_N.png`` and the
    final ``model/`` (EMA UNet + Summarizer + VQ, ``ZoomLDM.from_pretrained``-loadable).
    """
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    cfg = merge(DEFAULTS, cfg)
    tc = cfg["train"]
    if max_steps is not None:
        tc["max_steps"] = int(max_steps)
    max_steps = int(tc["max_steps"])
    out_dir = Path(out_dir)
    accum = int(tc["grad_accum"])
    seed = int(cfg["seed"])

    accelerator = _accelerator(_mixed_precision(tc["mixed_precision"]))
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    ckpts = list_checkpoints(out_dir)
    if ckpts and not resume:
        raise ValueError(f"{out_dir} already holds checkpoints ({ckpts[-1].name}); pass --resume or use another --out")
    accelerator.wait_for_everyone()

    # model (same seeded init on every rank) and data
    ldm = make_model(cfg, out_dir)
    root = Path(os.path.expanduser(str(cfg["dataset"]["root"])))
    root = root if root.is_absolute() else out_dir / root  # relative dataset roots live in the run folder
    if main:  # first stage (trained VQ, frozen) before the dataset: the latents are its encodings
        from zoomfeat.cohort import resolve_slides
        from zoomfeat.train.vq import prepare_first_stage

        spec = cfg["dataset"].get("build") or {}
        prepare_first_stage(cfg, ldm, out_dir, lambda: resolve_slides(build_slides(spec, root)), progress=progress)
        ensure_dataset(cfg, root, ldm, progress=progress)
    accelerator.wait_for_everyone()
    if not main:
        from zoomfeat.train.vq import prepare_first_stage

        prepare_first_stage(cfg, ldm, out_dir, lambda: [], progress=False)
    latent_shape = (ldm.latent_channels, ldm.latent_size, ldm.latent_size)
    dataset = MultiScaleLatentDataset(root, latent_shape=latent_shape, ssl_dim=ldm.ssl_dim,
                                      scales=cfg["dataset"].get("scales"))
    if cfg["dataset"].get("check_vq", True) and dataset.meta.get("vq_sha256"):
        if dataset.meta["vq_sha256"] != vq_fingerprint(ldm.vq):
            raise DatasetError(
                f"{root}: its latents were encoded by another VQ than the model's (vq_sha256 differs); rebuild the "
                "dataset with this model (`zoomfeat build-dataset --model ...`) or set dataset.check_vq: false"
            )

    device = accelerator.device
    ldm.to(device)
    ldm.vq.requires_grad_(False).eval()
    ldm.unet.train()
    ldm.summarizer.train()
    if tc["gradient_checkpointing"]:
        ldm.unet.enable_gradient_checkpointing()
    module = DiffusionObjective(ldm, p_uncond=float(tc["p_uncond"])).to(device)
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=float(tc["lr"]), weight_decay=float(tc["weight_decay"]),
                                  betas=tuple(tc["betas"]), eps=float(tc["adam_eps"]))
    lr_sched = get_scheduler(tc["lr_scheduler"], optimizer, num_warmup_steps=int(tc["warmup_steps"]),
                             num_training_steps=max_steps)
    ema = EMAModel(ldm.unet.parameters(), decay=float(tc["ema_decay"]))
    ema.to(device)

    start_step = 0
    if resume and ckpts:
        start_step = load_checkpoint(ckpts[-1], accelerator, module, optimizer, lr_sched, ema)
        if main:
            print(f"resumed from {ckpts[-1]} at step {start_step}")
    elif resume and main:
        print(f"no checkpoint in {out_dir}/checkpoints; starting from step 0")
    if main:
        save_yaml(cfg, out_dir / "config.yaml")
    module, optimizer = accelerator.prepare(module, optimizer)

    sampler = StepBatchSampler(dataset, int(tc["batch_size"]), seed=seed, rank=rank, start_step=start_step,
                               max_steps=max_steps, accum=accum, mag_sampling=cfg["dataset"]["mag_sampling"])
    nw = int(cfg["dataset"].get("num_workers", 0))
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=nw,
                                         pin_memory=device.type == "cuda", persistent_workers=False)
    log = MetricsLog(out_dir, cfg, start_step if resume else None, enabled=main)
    kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
    n_timesteps = ldm.num_train_timesteps
    t0 = time.perf_counter()
    losses_seen: list[float] = []
    it = iter(loader)
    bar = tqdm(range(start_step, max_steps), desc="train", unit="step", disable=not (progress and main),
               initial=start_step, total=max_steps)
    try:
        for step in bar:
            step_losses, step_mags, n_uncond = [], [], 0
            for micro in range(accum):
                batch = next(it)
                latents = batch["latents"].to(device, non_blocking=True)
                t, noise, g_drop = draw_step_noise(seed, step, micro, rank, latents.shape, n_timesteps)
                sync = accelerator.no_sync(module) if micro < accum - 1 else contextlib.nullcontext()
                with sync:
                    per_sample, nu = module(latents, [g.to(device) for g in batch["ssl"]], batch["mag"].to(device),
                                            t.to(device), noise.to(device), g_drop)
                    accelerator.backward(per_sample.mean() / accum)
                step_losses.append(per_sample.detach())
                step_mags.append(batch["mag"].to(device))
                n_uncond += int(nu)
            if tc["max_grad_norm"]:
                accelerator.clip_grad_norm_(module.parameters(), float(tc["max_grad_norm"]))
            optimizer.step()
            lr_now = lr_sched.get_last_lr()[0]
            lr_sched.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(accelerator.unwrap_model(module).unet.parameters())

            all_loss = accelerator.gather(torch.cat(step_losses).float())
            all_mag = accelerator.gather(torch.cat(step_mags))
            all_unc = accelerator.gather(torch.tensor([n_uncond], device=device))
            done = step + 1
            if main:
                loss = float(all_loss.mean())
                losses_seen.append(loss)
                row = {"step": done, "loss": loss, "lr": lr_now, "n_uncond": int(all_unc.sum()),
                       "n_samples": int(all_loss.numel()), "elapsed_s": round(time.perf_counter() - t0, 3)}
                for k in range(N_SCALES):
                    sel = all_mag == k
                    row[f"loss_mag{k}"] = float(all_loss[sel].mean()) if bool(sel.any()) else None
                if done % max(1, int(tc["log_every"])) == 0 or done == max_steps:
                    log.log(row)
                bar.set_postfix(loss=f"{loss:.4f}")
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss} at step {done}")
            if tc["checkpoint_every"] and (done % int(tc["checkpoint_every"]) == 0 or done == max_steps):
                save_checkpoint(accelerator, out_dir, done, module, optimizer, lr_sched, ema, cfg,
                                keep=int(tc["keep_checkpoints"]))
            if tc["sample_every"] and done % int(tc["sample_every"]) == 0 and main:
                _with_ema(ema, ldm, lambda: save_sample_grid(ldm, dataset, out_dir / "samples" / f"step_{done:08d}.png",
                                                             seed=seed, **tc["sample"]))
            if kill_at and done == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
    finally:
        log.close()
        dataset.close()

    # final model: EMA weights in the UNet (what extraction and generation load)
    accelerator.wait_for_everyone()
    write_json_atomic(out_dir / "ranks" / f"rank{rank}.json",
                      {"rank": rank, "world_size": world, "param_checksum": param_checksum(accelerator.unwrap_model(module))})
    summary = {"steps": max_steps, "start_step": start_step, "world_size": world,
               "seconds": round(time.perf_counter() - t0, 3), "model": str(out_dir / "model")}
    if main and tc.get("save_model", True):
        ema.copy_to(ldm.unet.parameters())
        ldm.unet.eval()
        ldm.summarizer.eval()
        if tc["gradient_checkpointing"]:
            ldm.unet.disable_gradient_checkpointing()
        ldm.to("cpu")
        ldm.config["training"] = {"steps": max_steps, "dataset": str(root), "ema_decay": float(tc["ema_decay"])}
        ldm.save_pretrained(out_dir / "model")
    if main:
        if losses_seen:
            summary["last_loss"] = losses_seen[-1]
        write_json_atomic(out_dir / "train_summary.json", summary)
    accelerator.wait_for_everyone()
    return summary


def param_checksum(module: nn.Module) -> list[float]:
    """Sum and sum of squares of all parameters (float64): equal on every rank when DDP keeps them in sync."""
    with torch.no_grad():
        ps = [p.detach().double() for p in module.parameters()]
        return [float(sum(p.sum() for p in ps)), float(sum(p.pow(2).sum() for p in ps))]


def _with_ema(ema, ldm, fn):
    """Run ``fn`` with the EMA weights temporarily in the UNet (samples show what the saved model will do)."""
    was_training = ldm.unet.training
    ema.store(ldm.unet.parameters())
    ema.copy_to(ldm.unet.parameters())
    ldm.unet.eval()
    try:
        return fn()
    finally:
        ema.restore(ldm.unet.parameters())
        ldm.unet.train(was_training)
