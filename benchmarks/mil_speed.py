"""MIL training speed on CPU: bags/s of ``mil.cross_validate`` (ABMIL) with batch 1 vs padded batches + masks.

A MUSK-sized synthetic cohort (MUSK2-like: ~100 bags of 166-d instances, log-normal sizes with mean ≈ 65 and
at most 1,000, label = presence of a rare concept instance) goes through 10-fold ``mil.cross_validate`` once per
setting; the script prints wall seconds per fold, training bags/s (bag visits: epochs × training bags / training
time), CPU seconds per wall second (how many cores were busy) and the mean AUC, so a faster setting that learns
less shows up. Each setting runs in a fresh subprocess with its own torch thread count.

    python benchmarks/mil_speed.py [--bags 100] [--folds 10] [--epochs 50] [--batch-sizes 1,16]
        [--threads 1,2] [--dim 166]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def musk_like(n_bags: int, dim: int, seed: int = 0):
    """Bags with MUSK2-like sizes; label 1 ⇔ the bag holds 1–3 instances shifted along one direction."""
    import numpy as np

    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    sizes = np.clip(np.round(rng.lognormal(3.6, 1.0, n_bags)), 2, 1000).astype(int)
    y = np.arange(n_bags) % 2
    rng.shuffle(y)
    bags = []
    for n, lab in zip(sizes, y):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        if lab:
            k = int(rng.integers(1, 4))
            x[rng.choice(n, min(k, n), replace=False)] += 3.0 * direction.astype(np.float32)
        bags.append(x)
    return bags, y


def _child(bags_n: int, folds: int, epochs: int, bs: int, threads: int, dim: int) -> dict:
    import time

    import torch

    import mil

    bags, y = musk_like(bags_n, dim)
    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    df = mil.cross_validate(bags, y, model="abmil", task="binary", n_folds=folds, seed=0, epochs=epochs,
                            batch_size=bs, threads=threads, progress=False, wandb=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    visits = float((df["epochs_run"] * df["n_train"]).sum())
    return {"batch_size": bs, "threads": threads, "s_per_fold": wall / folds, "cpu_s_per_fold": cpu / folds,
            "bags_per_s": visits / wall,
            "cpu_per_wall": cpu / wall, "auc": float(df["auc"].mean()), "max_instances": int(max(map(len, bags)))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bags", type=int, default=100)
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--dim", type=int, default=166)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(**json.loads(args.child))))
        return 0
    rows = []
    for th in [int(t) for t in args.threads.split(",")]:
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            spec = {"bags_n": args.bags, "folds": args.folds, "epochs": args.epochs, "bs": bs, "threads": th,
                    "dim": args.dim}
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                 text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"batch {bs:>3} threads {th}: {r['s_per_fold']:6.1f} s/fold ({r['cpu_s_per_fold']:5.1f} CPU s)  "
                  f"{r['bags_per_s']:7.1f} bags/s  "
                  f"cpu/wall {r['cpu_per_wall']:.2f}  AUC {r['auc']:.3f}", flush=True)
    base = rows[0]
    for r in rows[1:]:
        print(f"speed-up of batch {r['batch_size']} / {r['threads']} thread(s) over batch {base['batch_size']} / "
              f"{base['threads']}: {r['bags_per_s'] / base['bags_per_s']:.2f}x (AUC {r['auc']:.3f} vs "
              f"{base['auc']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
