"""Peak memory and time of one training step (forward + backward) vs bag size for ABMIL and TransMIL.

Goal: memory linear in the number of instances (TransMIL's Nyström attention keeps n×landmarks matrices and
our class-token attention row is n-long, never n×n). Each (model, size) runs in a fresh subprocess so that
peak RSS (CPU) or ``torch.cuda.max_memory_allocated`` (GPU) belongs to that step alone; the script prints
a table and the memory-per-1k-instances ratio between the largest and smallest bag (≈1 means linear).

    python benchmarks/mil_memory.py [--sizes 1000,5000,10000,25000,50000] [--models abmil,transmil]
        [--dim 1024] [--device cpu|cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _child(model: str, n: int, dim: int, device: str, threads: int) -> dict:
    import resource
    import time

    import torch

    from mil.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_model(model, dim, 2).to(device)  # default (paper/CLAM) sizes
    x = torch.randn(1, n, dim, device=device)
    y = torch.tensor([1], device=device)
    # warm-up on a small bag so one-off allocations are not counted against n
    net(x[:, :256])["logits"].sum().backward()
    net.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    out = net(x)
    loss = torch.nn.functional.cross_entropy(out["logits"], y)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    dt = time.perf_counter() - t0
    return {"model": model, "n": n, "seconds": dt, "peak_mb": peak / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,5000,10000,25000,50000")
    ap.add_argument("--models", default="abmil,transmil")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        model, n = args.child.split(":")
        print(json.dumps(_child(model, int(n), args.dim, args.device, args.threads)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    print(f"device={args.device} dim={args.dim} threads={args.threads}; one forward+backward step per bag")
    print(f"{'model':9s} {'instances':>9s} {'seconds':>8s} {'peak MB':>9s} {'MB/1k inst':>10s}")
    for model in args.models.split(","):
        for n in sizes:
            cmd = [sys.executable, __file__, "--child", f"{model}:{n}", "--dim", str(args.dim), "--device",
                   args.device, "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{model:9s} {n:9d}  failed: {res.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{model:9s} {n:9d} {r['seconds']:8.2f} {r['peak_mb']:9.1f} {1000 * r['peak_mb'] / n:10.2f}",
                  flush=True)
    for model in args.models.split(","):
        rs = [r for r in rows if r["model"] == model]
        if len(rs) >= 2:
            a, b = rs[0], rs[-1]
            mem = (b["peak_mb"] / b["n"]) / max(a["peak_mb"] / a["n"], 1e-9)
            print(f"{model}: {b['n'] // a['n']}x instances → memory x{b['peak_mb'] / max(a['peak_mb'], 1e-9):.1f}, "
                  f"time x{b['seconds'] / a['seconds']:.1f}; memory-per-instance ratio (largest/smallest) {mem:.2f}")
    return 0


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


if __name__ == "__main__":
    sys.exit(main())
