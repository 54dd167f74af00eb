"""bf16 vs fp32 extraction speed of every built-in encoder on this CPU, in one run, and the cosine to fp32.

For each encoder (UNI ViT-L/16, Phikon ViT-B/16, full-size ZoomLDM at block 0 / t = 100 and at the sweep's recipe
— last decoder block, t = 0, a full UNet pass —, tiny-vit), built with random weights (speed does not depend on
trained values; no weights are downloaded), the same uint8 tiles are encoded at ``--batch`` in fp32 and under CPU
bf16 autocast (``--precision bf16``; what ``--precision auto`` picks where the CPU has native bf16). Printed per
encoder: tiles/s in each precision, the ratio bf16 / fp32 (judged by: > 1 ⇒ ``auto`` = bf16 on such CPUs), and the
minimum / mean row cosine of bf16 features to fp32 ones. The CPU's bf16 flags (avx512_bf16, amx_bf16) come first.

    python benchmarks/precision.py [--threads 1] [--batch 8] [--repeats 2] [--encoders uni,phikon,zoomldm,...]
        [--tiny] [--json out.json]

``--tiny``: tiny-vit and the vendored micro ZoomLDM only (seconds; the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def encoders(names: list[str], tiny: bool) -> dict:
    """name → (encode(uint8 tiles) → features, precision setter)."""
    from zoomfeat.encoders import TileContext, create_encoder
    from zoomfeat.encoders.zoomldm import ZOOMLDM, ZoomLDMEncoder

    out = {}
    for name in names:
        if name == ZOOMLDM:
            if tiny:
                from zoomfeat.ldm import ZoomLDM

                micro = ROOT / "tests" / "data" / "zoomldm_official_micro"
                ldm = ZoomLDM.from_official(micro / "weights.ckpt", micro / "config.yaml")
            else:
                from extract import full_size_ldm  # benchmarks/extract.py

                ldm = full_size_ldm()
            last = int(ldm.num_feature_blocks) - 1
            for label, blocks, t in ((f"{ZOOMLDM} block 0, t=100", [0], [100]),
                                     (f"{ZOOMLDM} block {last}, t=0 (recipe)", [last], [0])):
                enc = ZoomLDMEncoder(ldm.eval(), blocks=blocks, t=t, conditioning="none", precision="fp32")
                out[label] = (enc, lambda x, enc=enc: enc.encode(x, TileContext(seeds=list(range(len(x))))))
            continue
        enc = create_encoder(name, random_init=True, precision="fp32") if name in ("uni", "phikon") else \
            create_encoder(name, precision="fp32")
        for pname, p in enc.model.named_parameters():  # UNI's LayerScale at init (1e-5) would hide the blocks' error
            if pname.endswith("gamma"):
                p.data.fill_(1.0)
        out[name] = (enc, enc.encode)
    return out


def bench(enc, fn, tiles: torch.Tensor, precision: str, repeats: int) -> tuple[float, torch.Tensor]:
    enc.precision = precision
    with torch.inference_mode():
        feats = fn(tiles[:1])  # warm-up (oneDNN primitive creation)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            feats = fn(tiles)
            best = min(best, time.perf_counter() - t0)
    return len(tiles) / best, feats.float()


def main() -> None:
    from zoomfeat.precision import auto_precision, cpu_native_bf16

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--encoders", default="uni,phikon,zoomldm,tiny-vit")
    ap.add_argument("--tiny", action="store_true", help="tiny-vit + the micro ZoomLDM only (a smoke run)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = ["tiny-vit", "zoomldm"] if args.tiny else [n.strip() for n in args.encoders.split(",") if n.strip()]
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    print(f"CPU bf16: avx512_bf16 {'avx512_bf16' in flags}, amx_bf16 {'amx_bf16' in flags}; native bf16 "
          f"{cpu_native_bf16()} → --precision auto = {auto_precision('cpu')}; {args.threads} thread(s), "
          f"batch {args.batch}")
    tiles = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (args.batch, 256, 256, 3), dtype=np.uint8))
    rows = []
    for label, (enc, fn) in encoders(names, args.tiny).items():
        f32_rate, f32 = bench(enc, fn, tiles, "fp32", args.repeats)
        bf_rate, bf = bench(enc, fn, tiles, "bf16", args.repeats)
        cos = torch.nn.functional.cosine_similarity(f32, bf, dim=1)
        rows.append({"encoder": label, "fp32_tiles_per_s": round(f32_rate, 3), "bf16_tiles_per_s": round(bf_rate, 3),
                     "bf16_over_fp32": round(bf_rate / f32_rate, 3), "cos_min": round(float(cos.min()), 6),
                     "cos_mean": round(float(cos.mean()), 6)})
        r = rows[-1]
        print(f"{label:<34} fp32 {r['fp32_tiles_per_s']:8.3f} tiles/s  bf16 {r['bf16_tiles_per_s']:8.3f} tiles/s  "
              f"bf16/fp32 {r['bf16_over_fp32']:.2f}x (judged by: > 1)  cos to fp32 min {r['cos_min']:.5f} "
              f"mean {r['cos_mean']:.5f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"native_bf16": cpu_native_bf16(), "threads": args.threads,
                                               "batch": args.batch, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
