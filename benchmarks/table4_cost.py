"""Compute per tile of the Table 4 encoders and the GPU-hours of a TCGA-BRCA run (docs/reproduce_table4.md).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add; matmuls, convolutions,
attention; elementwise ops are not counted) for one tile through the model as ``zoomfeat extract`` runs it:

- UNI (timm ViT-L/16) and Phikon (ViT-B/16) at 224 px, built on the meta device (a count needs shapes only);
- any other registered encoder named in ``--encoders`` that accepts ``random_init`` (e.g. ``ctranspath`` once it
  exists), built on the CPU and run on one real tile;
- full-size ZoomLDM (``configs/ldm/zoomldm_brca.yaml``, random weights): VQ-f4 encode + Summarizer + UNet up to
  the feature block (early exit), one 256-px tile, for each ``--blocks``; the UNI embedding that conditions it
  is listed separately (a UNI-conditioned 20x feature costs ZoomLDM + UNI; a 5x feature costs ZoomLDM + UNI on
  the region's children that are not 20x tissue tiles).

Then the cost of the run: per slide ``N20`` 20x tiles and ``N5 = N20 × --regions-per-tile`` 5x regions, the
extractions of the preset (UNI and Phikon at 20x, CTransPath at 20x + 5x — a bag's root is always 20x —, ZoomLDM
at 20x + 5x with UNI conditioning), at ``--utilisation`` of the dense bf16 peak of the GPU (``--peak-tflops``,
default H100 SXM 989). Writes JSON (``--json``) and prints a Markdown table.

    python benchmarks/table4_cost.py --blocks 0,3 --json runs/table4_cost.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def gflop(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


def meta_vit_gflop(name: str) -> float:
    """UNI / Phikon: the model on a meta 224-px batch of one."""
    x = torch.empty(1, 3, 224, 224, device="meta")
    if name == "uni":
        from zoomfeat.encoders.uni import build_uni_model

        with torch.device("meta"):
            model = build_uni_model()
        return gflop(lambda: model(x))
    from transformers import ViTModel

    from zoomfeat.encoders.phikon import phikon_config

    with torch.device("meta"):
        model = ViTModel(phikon_config(), add_pooling_layer=False)
    return gflop(lambda: model(pixel_values=x))


def encoder_gflop(name: str) -> float:
    """Any registered encoder with ``random_init`` (CPU, one real 256-px tile through its own transform)."""
    from zoomfeat.encoders import create_encoder

    if name in ("uni", "phikon"):
        return meta_vit_gflop(name)
    enc = create_encoder(name, random_init=True)
    tile = torch.randint(0, 256, (1, 256, 256, 3), dtype=torch.uint8)
    return gflop(lambda: enc.encode(tile))


def zoomldm_gflop(blocks: list[int]) -> dict[int, float]:
    """Full-size ZoomLDM, UNI-conditioned (a given 1×1 SSL grid), t = 100, one tile, per feature block."""
    from benchmarks.extract import full_size_ldm
    from zoomfeat.encoders import TileContext
    from zoomfeat.encoders.tiny import create_tiny_vit
    from zoomfeat.encoders.zoomldm import ZoomLDMEncoder

    ldm = full_size_ldm().eval()
    stand_in = create_tiny_vit(dim=ldm.ssl_dim)  # only its dim is read: the SSL grid is given
    tile = torch.randint(0, 256, (1, 256, 256, 3), dtype=torch.uint8)
    grid = torch.randn(1, ldm.ssl_dim, 1, 1)
    out = {}
    for b in blocks:
        enc = ZoomLDMEncoder(ldm, blocks=[b], t=[100], conditioning="uni", ssl_encoder=stand_in, precision="fp32")
        out[b] = gflop(lambda: enc.encode(tile, TileContext("20x", ssl_grid=grid, seeds=[0])))
    return out


def run_cost(g: dict, zl: float, n_slides: int, n20: int, r5: float, missing: float, peak: float, util: float) -> list:
    """Per extraction: TFLOP per slide and GPU-hours for the cohort at ``util`` of ``peak`` TFLOP/s."""
    n5 = n20 * r5
    rows = [("UNI 20x", n20 * g["uni"]), ("Phikon 20x", n20 * g["phikon"])]
    if "ctranspath" in g:
        rows.append(("CTransPath (20x + 5x)", (n20 + n5) * g["ctranspath"]))
    rows.append(("ZoomLDM 20x + 5x, UNI-conditioned", n20 * (zl + g["uni"]) + n5 * zl + n5 * 16 * missing * g["uni"]))
    out = []
    for name, per_slide in rows:
        flop = per_slide * 1e9 * n_slides
        out.append({"extraction": name, "tflop_per_slide": round(per_slide / 1e3, 1),
                    "gpu_hours_at_peak": round(flop / (peak * 1e12) / 3600, 2),
                    "gpu_hours": round(flop / (peak * 1e12 * util) / 3600, 2)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", default="uni,phikon,ctranspath", help="plain encoders to count")
    ap.add_argument("--blocks", default="0", help="ZoomLDM feature blocks to count (early exit), e.g. 0,3,12")
    ap.add_argument("--slides", type=int, default=1100, help="slides in the cohort (TCGA-BRCA: ≈ 1,100 diagnostic)")
    ap.add_argument("--tiles-per-slide", type=int, default=10000, help="20x 256-px tissue tiles per slide (assumed)")
    ap.add_argument("--regions-per-tile", type=float, default=1 / 12, help="5x regions per 20x tile (assumed)")
    ap.add_argument("--missing-children", type=float, default=0.25,
                    help="share of a 5x region's 16 children that are not tissue tiles (embedded for its UNI grid)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    ap.add_argument("--utilisation", type=float, default=0.4, help="achieved share of the peak (assumed)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    g = {name: round(encoder_gflop(name), 2) for name in args.encoders.split(",") if name}
    zl = {b: round(v, 2) for b, v in zoomldm_gflop([int(b) for b in args.blocks.split(",")]).items()}
    block = min(zl)
    cost = run_cost(g, zl[block], args.slides, args.tiles_per_slide, args.regions_per_tile, args.missing_children,
                    args.peak_tflops, args.utilisation)
    res = {"gflop_per_tile": g, "zoomldm_gflop_per_tile_by_block": zl, "cost_block": block,
           "assumptions": {k: getattr(args, k) for k in ("slides", "tiles_per_slide", "regions_per_tile",
                                                         "missing_children", "peak_tflops", "utilisation")},
           "cost": cost, "torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 1)}
    print("| encoder | GFLOP / tile |\n|---|---|")
    for k, v in g.items():
        print(f"| {k} | {v} |")
    for b, v in zl.items():
        print(f"| ZoomLDM block {b} (t = 100, VQ + Summarizer + UNet to the block) | {v} |")
    print(f"\nCohort: {args.slides} slides × {args.tiles_per_slide} 20x tiles (+ {args.regions_per_tile:.3f} 5x regions "
          f"per tile), {args.peak_tflops} TFLOP/s × {args.utilisation}; ZoomLDM block {block}\n")
    print("| extraction | TFLOP / slide | GPU-h at peak | GPU-h at the utilisation |\n|---|---|---|---|")
    for r in cost:
        print(f"| {r['extraction']} | {r['tflop_per_slide']} | {r['gpu_hours_at_peak']} | {r['gpu_hours']} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
