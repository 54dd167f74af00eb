"""Full-size ZoomLDM (BRCA config, random init) forward cost at batch 1: VQ encode 256², UNet ε at 64², decode.

Also measures what feature extraction pays with ``unet_features`` early exit (middle block only / up to output
block 3) relative to a full UNet pass, and peak resident memory. Prints one table; ratios come from this run.

    .venv/bin/python benchmarks/ldm_forward.py [--device cpu|cuda] [--threads N] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_gib() -> float:
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn, repeats: int, device: str) -> tuple[float, float]:
    """Best-of-``repeats`` (wall, process CPU) seconds after one warm-up call.

    CPU time is reported too because on a shared machine wall time mostly measures the other processes.
    """
    fn()
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "ldm" / "zoomldm_brca.yaml"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from zoomfeat.ldm import ZoomLDM

    rss0 = peak_rss_gib()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = ZoomLDM.from_config(args.config).to(args.device)
    t_init = time.perf_counter() - t0
    n_params = {k: sum(p.numel() for p in getattr(model, k).parameters()) for k in ("unet", "vq", "summarizer")}
    rss_model = peak_rss_gib()

    g = torch.Generator().manual_seed(0)
    image = (torch.rand(1, 3, model.image_size, model.image_size, generator=g) * 2 - 1).to(args.device)
    ssl = torch.randn(1, model.ssl_dim, 4, 4, generator=g)
    results: dict[str, tuple[float, float]] = {}
    im, lat = model.image_size, model.latent_size
    ENC, UNET, DEC = f"VQ encode {im}²", f"UNet ε {lat}² (full)", f"VQ decode {lat}² → {im}² (quantized)"
    with torch.inference_mode():
        ctx = model.condition(ssl, "5x")
        z = model.encode(image)
        x_t = model.add_noise(z, torch.randn(z.shape, generator=g).to(args.device), 100)
        results["summarizer (4x4 grid)"] = timed(lambda: model.condition(ssl, "5x"), args.repeats, args.device)
        results[ENC] = timed(lambda: model.encode(image), args.repeats, args.device)
        results[UNET] = timed(lambda: model.predict_eps(x_t, 100, ctx), args.repeats, args.device)
        results["unet_features [0] (mid, early exit)"] = timed(
            lambda: model.unet_features(x_t, 100, ctx, [0]), args.repeats, args.device)
        results["unet_features [0..3] (early exit)"] = timed(
            lambda: model.unet_features(x_t, 100, ctx, [0, 1, 2, 3]), args.repeats, args.device)
        results[DEC] = timed(lambda: model.decode(z), args.repeats, args.device)
    rss_peak = peak_rss_gib()

    full = results[UNET][0]
    print(f"ZoomLDM forward benchmark — config {Path(args.config).name}, device {args.device}, "
          f"threads {torch.get_num_threads()}, batch 1, fp32, best of {args.repeats} after 1 warm-up, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"params: UNet {n_params['unet']:,}  VQ {n_params['vq']:,}  Summarizer {n_params['summarizer']:,}")
    print(f"model init {t_init:.1f} s; peak RSS: start {rss0:.2f} GiB, after init {rss_model:.2f} GiB, "
          f"after forwards {rss_peak:.2f} GiB")
    print(f"{'stage':40s} {'wall s':>9s} {'CPU s':>9s} {'× UNet':>8s}")
    for k, (v, c) in results.items():
        print(f"{k:40s} {v:9.3f} {c:9.3f} {v / full:8.2f}")
    keys = (ENC, UNET, DEC)
    wall = sum(results[k][0] for k in keys)
    cpu = sum(results[k][1] for k in keys)
    print(f"{'encode + UNet + decode':40s} {wall:9.3f} {cpu:9.3f} {wall / full:8.2f}")
    print(f"early-exit speed-up for mid-block features: {full / results['unet_features [0] (mid, early exit)'][0]:.2f}x")


if __name__ == "__main__":
    main()
