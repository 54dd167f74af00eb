"""Training throughput: tiny config steps/s and one full-size ZoomLDM step on CPU (batch 1) with its peak memory.

Both go through the real loop (:func:`zoomfeat.train.loop.train`: Summarizer + UNet forward/backward, AdamW, EMA).
The full-size run uses random init from configs/ldm/zoomldm_brca.yaml (400.9M-param UNet, 38.7M Summarizer) and a
synthetic full-size training set (random 3x64x64 latents, 1024-d UNI-like 8x8 grids) so it needs no weights.
Peak memory is the process's peak RSS (``ru_maxrss``), measured in a fresh subprocess per case.

    .venv/bin/python benchmarks/train.py [--tiny-steps 30] [--skip-full] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _synthetic_dataset(root: Path, latent: int, ssl_dim: int, n_per_scale: int = 4) -> None:
    """A small dataset in the build-dataset format with random content (the benchmark measures compute only)."""
    import h5py
    import numpy as np

    from zoomfeat.io import write_json_atomic
    from zoomfeat.train.shards import write_index

    rng = np.random.default_rng(0)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "shards" / "bench.h5", "w") as h5:
        h5.attrs["slide"] = "bench"
        for k in range(8):
            g = h5.create_group(f"scale_{k}")
            g.attrs["size_l0"] = 256 * 2**k
            side = min(2**k, 8)
            g["latents"] = rng.standard_normal((n_per_scale, 3, latent, latent)).astype("float16")
            g["ssl"] = rng.standard_normal((n_per_scale, ssl_dim, side, side)).astype("float16")
            g["coords"] = np.zeros((n_per_scale, 2), np.int64)
    _, counts, skipped = write_index(root)
    write_json_atomic(root / "meta.json", {"complete": True, "counts": counts, "synthetic": True})


def run_case(case: str, steps: int, out: Path) -> dict:
    import torch

    from zoomfeat.train import load_train_config, train
    from zoomfeat.train.metrics import read_metrics

    if case == "tiny":
        cfg = load_train_config("configs/train/tiny.yaml")
        ds = out / "dataset"
        if not (ds / "index.csv").exists():
            _synthetic_dataset(ds, latent=16, ssl_dim=48)
    else:
        cfg = load_train_config("configs/train/tiny.yaml")
        cfg["model"] = {"init": "config", "config": "ldm/zoomldm_brca.yaml"}
        ds = out / "dataset"
        _synthetic_dataset(ds, latent=64, ssl_dim=1024, n_per_scale=2)
        cfg["train"]["batch_size"] = 1
        cfg["train"]["ema_decay"] = 0.9999
        cfg["train"]["gradient_checkpointing"] = case == "full_gc"
    cfg["dataset"]["root"] = str(ds)
    cfg["dataset"]["check_vq"] = False
    cfg["first_stage"] = {"train": False}  # the benchmark times the UNet loop on a random-content dataset
    cfg["wandb"]["enabled"] = False
    cfg["train"].update(checkpoint_every=0, save_model=False)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    train(cfg, out / "run", max_steps=steps, progress=False)
    wall = time.perf_counter() - t0
    m = read_metrics(out / "run" / "metrics.csv")
    el = m["elapsed_s"].to_numpy()
    per_step = float((el[-1] - el[0]) / (len(el) - 1)) if len(el) > 1 else float(el[0])
    return {
        "case": case, "steps": steps, "threads": torch.get_num_threads(), "s_per_step": per_step,
        "steps_per_s": 1.0 / per_step, "first_step_s": float(el[0]), "wall_s": wall,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_before_gib": rss0 / 2**20, "batch_size": int(cfg["train"]["batch_size"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny-steps", type=int, default=30)
    ap.add_argument("--full-steps", type=int, default=2, help="full-size steps (the 2nd onward is timed)")
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--gc", action="store_true", help="also measure the full-size step with gradient checkpointing")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case in this process
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.case:
        steps = args.tiny_steps if args.case == "tiny" else args.full_steps
        print("RESULT " + json.dumps(run_case(args.case, steps, Path(args.out))))
        return 0

    cases = ["tiny"] + ([] if args.skip_full else ["full"] + (["full_gc"] if args.gc else []))
    results = {}
    with tempfile.TemporaryDirectory(prefix="zoomfeat_bench_train_") as tmp:
        for case in cases:
            cmd = [sys.executable, __file__, "--case", case, "--out", str(Path(tmp) / case),
                   "--tiny-steps", str(args.tiny_steps), "--full-steps", str(args.full_steps)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if p.returncode or not line:
                print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
                return 1
            results[case] = json.loads(line[-1][7:])
    print(f"{'case':8s} {'batch':>5s} {'s/step':>8s} {'steps/s':>8s} {'1st step s':>10s} {'peak RSS GiB':>12s} threads")
    for r in results.values():
        print(f"{r['case']:8s} {r['batch_size']:5d} {r['s_per_step']:8.3f} {r['steps_per_s']:8.3f} "
              f"{r['first_step_s']:10.2f} {r['peak_rss_gib']:12.2f} {r['threads']}")
    if "full" in results:
        t, f = results["tiny"], results["full"]
        print(f"full-size step (batch 1) / tiny step (batch {t['batch_size']}): {f['s_per_step'] / t['s_per_step']:.1f}x slower")
    if "full_gc" in results:
        f, g = results["full"], results["full_gc"]
        print(f"gradient checkpointing: {g['s_per_step'] / f['s_per_step']:.2f}x time, "
              f"{g['peak_rss_gib'] / f['peak_rss_gib']:.2f}x peak RSS")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
