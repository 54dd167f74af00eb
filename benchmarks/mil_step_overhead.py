"""Per-step costs of MIL head training on the CPU, each ratio measured in one run (one torch thread).

1. AdamW's per-tensor loop (torch's CPU default) vs ``foreach=True`` (what ``mil.trainer.train_model`` uses): ms
   per training step of the demo's ABMIL head (64-d embedding, 32-d attention, 40-instance bags) and whether the
   weights after every step are bit-identical (they must be: the arithmetic is the same).
2. Reading a cohort's bags again, as every fold, repeat, head and task of a CV run does: ``zoomfeat.bags.read_bag``
   each time vs ``mil.data.read_features`` (per-process ``BagCache``), on ``--bags`` HDF5 bags written here shaped
   like the demo's (26 tiles of 64-d features with their 5x parents, 38 file and 21 coordinate attributes, read as
   ``20x+5x``).

    python benchmarks/mil_step_overhead.py [--steps 2000] [--bags 60] [--instances 26] [--dim 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def optimizer_steps(steps: int, foreach: bool | None) -> tuple[float, list]:
    import torch

    from mil.models.abmil import ABMIL

    torch.manual_seed(0)
    model = ABMIL(48, 2, embed_dim=64, attn_dim=32, dropout=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, foreach=foreach)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, 40, 48, generator=g) for _ in range(16)]
    t0 = time.perf_counter()
    for s in range(steps):
        loss = torch.nn.functional.cross_entropy(model(xs[s % 16])["logits"], torch.tensor([s % 2]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps * 1e3, [p.detach().clone() for p in model.parameters()]


def bag_reads(n_bags: int, n_inst: int, dim: int, repeats: int = 5) -> tuple[float, float]:
    import numpy as np

    import mil.data as data
    from zoomfeat.bags import read_bag, write_bag

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n_bags):
            p = Path(tmp) / f"s{i:03d}.h5"
            n5 = max(1, n_inst // 4)
            write_bag(p, rng.normal(size=(n_inst, dim)).astype(np.float32), rng.integers(0, 10**5, (n_inst, 2)),
                      attrs={f"setting_{k}": f"value {k}" for k in range(38)},
                      features_5x=rng.normal(size=(n5, dim)).astype(np.float32),
                      coords_5x=rng.integers(0, 10**5, (n5, 2)), parent_index=np.arange(n_inst) % n5,
                      coords_attrs={f"coord_{k}": k for k in range(21)})
            paths.append(p)
        t0 = time.perf_counter()
        for _ in range(repeats):
            plain = [read_bag(p, "20x+5x") for p in paths]
        t_plain = time.perf_counter() - t0
        data.BAG_CACHE.clear()
        t0 = time.perf_counter()
        for _ in range(repeats):
            cached = [data.read_features(p, "20x+5x") for p in paths]
        t_cached = time.perf_counter() - t0
        assert all(np.array_equal(a, b) for a, b in zip(plain, cached))
    return t_plain, t_cached


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--bags", type=int, default=60)
    ap.add_argument("--instances", type=int, default=26)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    optimizer_steps(50, None)  # warm-up
    loop_ms, w_loop = optimizer_steps(args.steps, None)
    fe_ms, w_fe = optimizer_steps(args.steps, True)
    same = all(torch.equal(a, b) for a, b in zip(w_loop, w_fe))
    print(f"ABMIL step with AdamW: per-tensor {loop_ms:.3f} ms, foreach {fe_ms:.3f} ms -> {loop_ms / fe_ms:.2f}x; "
          f"weights after {args.steps} steps bit-identical: {same}")
    t_plain, t_cached = bag_reads(args.bags, args.instances, args.dim)
    print(f"5 passes over {args.bags} bags ({args.instances} x {args.dim}, 20x+5x): read_bag {t_plain:.2f} s, "
          f"read_features (BagCache) {t_cached:.2f} s -> {t_plain / max(t_cached, 1e-9):.1f}x")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
