"""One prepared GPU benchmark (≤ 8 minutes on one GPU): writes gpu.json + gpu.md with every number of docs/gpu.md.

Parts, each with its own share of the time budget (the JSON is rewritten after every part, so a cut run keeps
what it measured):

1. ``extraction``  full-size ZoomLDM (configs/ldm/zoomldm_brca.yaml, random weights: speed does not depend on
   them) feature extraction, model only (tiles already on the GPU), bf16 and fp16 × batch 16/32/64/128, early exit
   at the default block (0, t=100). FLOPs from ``torch.utils.flop_counter`` (per tile, of which the fp32 VQ) →
   achieved TFLOP/s and the fraction of the device's dense tensor-core peak.
1b. ``recipe``     the recipe the sweep chooses (last decoder block, t = 0: a full UNet pass) beside block 0, bf16,
   per batch: tiles/s, GFLOP per tile, time and FLOP ratios.
2. ``uni``         UNI (ViT-L/16, random weights) tiles/s, bf16 and fp16, with FLOPs.
3. ``dataloader``  the real pipeline (``extract_slide``: DataLoader workers reading a synthetic 20x slide, UNI
   conditioning, ZoomLDM, bag write) vs the same forwards on tiles in memory, and the loader alone: does reading
   keep up with the GPU?
4. ``training``    full-size UNet + Summarizer training steps/s and peak memory, batch 8, bf16, gradient
   checkpointing off/on.
5. ``large_image`` one 1024² joint large image (4×4 20x patches + guide, fd guidance, defaults; the paper: 28 s).
6. ``compile``     ZoomLDM extraction (bf16, batch 64): eager, channels_last, torch.compile (faster layout).

``--smoke`` runs everything on the CPU with the tiny fixtures in seconds (the test suite runs it): the micro
ZoomLDM, tiny-vit in place of UNI, batches 2/4, torch.compile with the ``aot_eager`` backend.

    .venv/bin/python benchmarks/gpu.py --out runs/gpu            # on a GPU machine
    .venv/bin/python benchmarks/gpu.py --smoke --out /tmp/gpu    # CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.extract import sync  # noqa: E402  (after the path insert)

MICRO = ROOT / "tests" / "data" / "zoomldm_official_micro"

#: Dense (no sparsity) tensor-core peak TFLOP/s by device-name substring: (bf16, fp16). Vendor data sheets.
PEAK_TFLOPS = [("B200", 2250.0, 2250.0), ("GH200", 989.4, 989.4), ("H200", 989.4, 989.4),
               ("H100 PCIe", 756.0, 756.0), ("H100", 989.4, 989.4), ("A100", 312.0, 312.0),
               ("L40S", 362.1, 362.1), ("L4", 121.0, 121.0), ("A10", 125.0, 125.0), ("4090", 165.2, 165.2),
               ("V100", None, 125.0)]
#: Seconds per part on a GPU (sum 480 = 8 minutes, setup included); the smoke run ignores them. A part whose
#: budget no longer fits in TOTAL_BUDGET_S is skipped; inside a part, configurations past its budget are skipped.
BUDGET = {"setup": 50, "extraction": 70, "recipe": 30, "uni": 20, "dataloader": 60, "training": 50,
          "large_image": 90, "compile": 110}
TOTAL_BUDGET_S = 480
PAPER_LARGE_1024_S = 28.0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def peak_tflops(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"bf16": None, "fp16": None, "source": "no tensor-core peak for a CPU"}
    name = torch.cuda.get_device_name(device)
    for key, bf16, fp16 in PEAK_TFLOPS:
        if key in name:
            return {"bf16": bf16, "fp16": fp16, "source": f"data sheet ({key}, dense)"}
    return {"bf16": None, "fp16": None, "source": f"unknown device {name!r}"}


def rate(fn: Callable[[], object], device: torch.device, min_s: float, warmup: int = 1) -> tuple[float, int]:
    """(seconds per call, calls timed): ``warmup`` calls, then calls until ``min_s`` has passed (at least one)."""
    for _ in range(warmup):
        fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        sync(device)
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return dt / n, n


def gflop(fn: Callable[[], object]) -> float:
    """GFLOP of one call (matmuls/convs/attention, as ``torch.utils.flop_counter`` counts: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


def peak_mem_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


class Run:
    """Shared state: device, models, settings, results, and the per-part clock."""

    def __init__(self, args):
        self.smoke = bool(args.smoke)
        self.device = torch.device("cpu" if self.smoke else (args.device or "cuda"))
        self.out = Path(args.out)
        self.t0 = time.perf_counter()
        self.batches = [2, 4] if self.smoke else [int(b) for b in args.batches.split(",")]
        self.precisions = ["bf16", "fp16"]
        self.min_s = 0.0 if self.smoke else float(args.min_seconds)
        self.peak = peak_tflops(self.device)
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else cpu_name()
        self.results: dict = {"device": name, "device_type": self.device.type, "smoke": self.smoke,
                              "torch": torch.__version__, "peak_tflops": self.peak, "budget_s": BUDGET,
                              "tf32_conv": torch.backends.cudnn.allow_tf32, "parts_s": {}}

    def deadline(self, part: str) -> float:
        return float("inf") if self.smoke else time.perf_counter() + BUDGET[part]

    def save(self) -> None:
        from zoomfeat.io import atomic_path, write_json_atomic

        self.results["seconds_total"] = round(time.perf_counter() - self.t0, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out / "gpu.json", self.results)
        with atomic_path(self.out / "gpu.md") as tmp:
            Path(tmp).write_text(markdown(self.results))

    def frac(self, tflops: float, precision: str) -> float | None:
        p = self.peak.get(precision)
        return round(tflops / p, 4) if p else None


# ------------------------------------------------------------------------------------------------ models


def build_models(run: Run) -> None:
    """ZoomLDM (full size or micro), its encoder for conditioning on given SSL grids, and UNI (or tiny-vit)."""
    from zoomfeat.encoders.base import ModelEncoder, TileTransform
    from zoomfeat.encoders.tiny import create_tiny_vit
    from zoomfeat.encoders.zoomldm import ZoomLDMEncoder

    if run.smoke:
        from zoomfeat.ldm import ZoomLDM

        ldm = ZoomLDM.load(MICRO / "weights.ckpt")
        uni = create_tiny_vit(dim=ldm.ssl_dim, precision="bf16")
        run.results["models"] = {"zoomldm": "micro fixture (smoke)", "uni": "tiny-vit (smoke stand-in for UNI)"}
    else:
        from benchmarks.extract import fast_random, full_size_ldm
        from zoomfeat.encoders.uni import UNI_DIM, build_uni_model

        ldm = full_size_ldm()
        with torch.device("meta"):
            vit = build_uni_model()
        fast_random(vit)
        uni = ModelEncoder("uni", vit, TileTransform(224), UNI_DIM, precision="bf16")
        run.results["models"] = {"zoomldm": "configs/ldm/zoomldm_brca.yaml, random weights",
                                 "uni": "ViT-L/16 (UNI architecture), random weights"}
    ldm.to(run.device).eval()
    uni.to(run.device)
    run.ldm, run.uni = ldm, uni
    run.zenc = ZoomLDMEncoder(ldm, blocks=[0], t=[100], conditioning="uni", ssl_encoder=uni, precision="bf16")


def _tiles(run: Run, batch: int, px: int | None = None) -> torch.Tensor:
    px = px or run.zenc.image_size
    g = torch.Generator().manual_seed(batch)
    return torch.randint(0, 256, (batch, px, px, 3), generator=g, dtype=torch.uint8).to(run.device)


def _zoomldm_call(run: Run, batch: int, enc=None):
    from zoomfeat.encoders import TileContext

    enc = enc or run.zenc
    tiles = _tiles(run, batch)
    grid = torch.randn(batch, run.ldm.ssl_dim, 1, 1, generator=torch.Generator().manual_seed(1)).to(run.device)
    seeds = np.arange(batch)
    return lambda: enc.encode(tiles, TileContext("20x", ssl_grid=grid, seeds=seeds))


# ------------------------------------------------------------------------------------------------ parts


def part_extraction(run: Run) -> list[dict]:
    """ZoomLDM tiles/s, FLOPs and fraction of peak for each precision × batch (model only)."""
    from zoomfeat.precision import effective_precision

    end, rows = run.deadline("extraction"), []
    b0 = run.batches[0]
    x = _tiles(run, b0)
    vq_g = gflop(lambda: run.ldm.encode(run.zenc.transforms(x, run.device))) / b0
    for precision in run.precisions:
        for batch in run.batches:
            row = {"precision": precision, "batch": batch, "block": run.zenc.blocks, "t": run.zenc.t}
            if time.perf_counter() > end:
                rows.append({**row, "skipped": "time budget"})
                continue
            run.zenc.precision = precision
            fn = _zoomldm_call(run, batch)
            reset_peak(run.device)
            g = gflop(fn) / batch
            sec, n = rate(fn, run.device, run.min_s)
            tps = batch / sec
            tfl = tps * g / 1e3
            rows.append({**row, "precision_effective": effective_precision(run.device, precision),
                         "tiles_s": round(tps, 2), "gflop_per_tile": round(g, 4),
                         "gflop_vq_per_tile_fp32": round(vq_g, 4), "tflops": round(tfl, 4),
                         "frac_peak": run.frac(tfl, precision), "calls": n, "peak_mem_gib": peak_mem_gib(run.device)})
    run.zenc.precision = "bf16"
    return rows


def part_recipe(run: Run) -> list[dict]:
    """The recipe the sweep chooses (last decoder block, t = 0: a full UNet pass) beside the default block 0,
    t = 100 (early exit after the first block), bf16, at each batch: tiles/s, GFLOP per tile and the ratio
    recipe / block 0 (judged by: the FLOP ratio, i.e. the full pass runs at block 0's TFLOP/s)."""
    from zoomfeat.encoders.zoomldm import ZoomLDMEncoder

    end, rows = run.deadline("recipe"), []
    last = int(run.ldm.num_feature_blocks) - 1
    recipe = ZoomLDMEncoder(run.ldm, blocks=[last], t=[0], conditioning="uni", ssl_encoder=run.uni, precision="bf16")
    for batch in run.batches:
        row = {"batch": batch, "precision": "bf16", "recipe_block": last, "recipe_t": 0}
        if time.perf_counter() > end:
            rows.append({**row, "skipped": "time budget"})
            continue
        for name, enc in (("block0", run.zenc), ("recipe", recipe)):
            fn = _zoomldm_call(run, batch, enc)
            g = gflop(fn) / batch
            sec, _ = rate(fn, run.device, run.min_s)
            row.update({f"{name}_tiles_s": round(batch / sec, 2), f"{name}_gflop_per_tile": round(g, 4)})
        row["recipe_over_block0_time"] = round(row["block0_tiles_s"] / row["recipe_tiles_s"], 3)
        row["recipe_over_block0_gflop"] = round(row["recipe_gflop_per_tile"] / row["block0_gflop_per_tile"], 3)
        rows.append(row)
    return rows


def part_uni(run: Run) -> list[dict]:
    end, rows = run.deadline("uni"), []
    for precision in run.precisions:
        batch = run.batches[-1] if not run.smoke else run.batches[0]
        if time.perf_counter() > end:
            rows.append({"precision": precision, "batch": batch, "skipped": "time budget"})
            continue
        run.uni.precision = precision
        x = _tiles(run, batch, 224 if not run.smoke else 64)
        fn = lambda: run.uni.encode(x)  # noqa: E731
        g = gflop(fn) / batch
        sec, n = rate(fn, run.device, run.min_s)
        tps = batch / sec
        rows.append({"precision": precision, "batch": batch, "tiles_s": round(tps, 2), "gflop_per_tile": round(g, 4),
                     "tflops": round(tps * g / 1e3, 4), "frac_peak": run.frac(tps * g / 1e3, precision), "calls": n})
    run.uni.precision = "bf16"
    return rows


def _slide_grid(run: Run, tmp: Path):
    from benchmarks.extract import dense_slide
    from zoomfeat.slides.coords import read_coords
    from zoomfeat.slides.tiling import tile_slide

    side = 1024 if run.smoke else 8192
    slide = dense_slide(tmp / "dense20x.tiff", side)
    grid = read_coords(tile_slide(slide, tmp / "tiles", qc=False, scales=(0,)))
    return slide, grid


def part_dataloader(run: Run) -> dict:
    """extract_slide end to end (reads + UNI + ZoomLDM + bag) vs the same forwards in memory vs the loader alone."""
    from zoomfeat.extract import ExtractOptions, RegionDataset, extract_slide, region_loader
    from zoomfeat.encoders import TileContext
    from zoomfeat.slides.reader import open_slide

    batch = run.batches[-1] if run.smoke else 64  # smoke: 4 batches of the 16 tiles, not 8
    workers = 1 if run.smoke else min(8, max(1, (os.cpu_count() or 2) - 2))
    with tempfile.TemporaryDirectory() as d:
        slide, grid = _slide_grid(run, Path(d))
        n = len(grid.coords)
        opts = ExtractOptions(mags="20x", batch_size=batch, workers=workers, progress=False)
        ds = RegionDataset(open_slide(slide), {0: (np.asarray(grid.coords), int(grid.patch_size_level0))},
                           int(grid.patch_size))
        t0 = time.perf_counter()
        for _ in region_loader(ds, opts, run.device):
            pass
        loader_s = time.perf_counter() - t0
        ds.wsi.close()
        extract_slide(slide, grid, run.zenc, Path(d) / "warm.h5", opts)  # warm-up: worker start, cudnn autotune
        t0 = time.perf_counter()
        info = extract_slide(slide, grid, run.zenc, Path(d) / "bag.h5", opts)
        e2e_s = time.perf_counter() - t0
    x = _tiles(run, batch, int(grid.patch_size))
    seeds = np.arange(batch)

    def model_only():
        ssl = run.uni.encode(x)
        return run.zenc.encode(x, TileContext("20x", ssl_grid=ssl[:, :, None, None], seeds=seeds))

    sec, _ = rate(model_only, run.device, run.min_s)
    model_tps = batch / sec
    return {"slide_px_20x": int(np.sqrt(n)) * int(grid.patch_size), "tiles": n, "batch": batch, "workers": workers,
            "precision": run.zenc.precision, "loader_only_tiles_s": round(n / loader_s, 1),
            "end_to_end_tiles_s": round(n / e2e_s, 1), "model_only_tiles_s": round(model_tps, 1),
            "end_to_end_over_model": round(n / e2e_s / model_tps, 3), "seconds_20x": info.get("seconds_20x")}


def part_training(run: Run) -> list[dict]:
    """Full-size UNet + Summarizer steps/s and peak memory (bf16 autocast, AdamW), checkpointing off/on."""
    from zoomfeat.precision import autocast
    from zoomfeat.train.objective import DiffusionObjective

    ldm = run.ldm  # smoke: the micro fixture (a fresh zoomldm_tiny model cost more than the two steps it timed)
    batch, dev, end, rows = (2 if run.smoke else 8), run.device, run.deadline("training"), []
    c, s = ldm.latent_channels, ldm.latent_size
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(batch, c, s, s, generator=g).to(dev)
    ssl = [torch.randn(ldm.ssl_dim, 8, 8, generator=g).to(dev) for _ in range(batch)]
    mags, t = torch.randint(0, 8, (batch,)).to(dev), torch.randint(0, 1000, (batch,)).to(dev)
    noise = torch.randn(lat.shape, generator=g).to(dev)
    for ckpt in (False, True):
        if time.perf_counter() > end:
            rows.append({"gradient_checkpointing": ckpt, "batch": batch, "skipped": "time budget"})
            continue
        ldm.unet.train()
        ldm.unet.enable_gradient_checkpointing() if ckpt else ldm.unet.disable_gradient_checkpointing()
        obj = DiffusionObjective(ldm).train()
        opt = torch.optim.AdamW(obj.parameters(), lr=1e-6)

        def step():
            with autocast(dev, "bf16"):
                loss, _ = obj(lat, ssl, mags, t, noise)
            loss.mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        reset_peak(dev)
        sec, n = rate(step, dev, run.min_s, warmup=1 if run.smoke else 2)  # smoke: numbers are not read
        rows.append({"gradient_checkpointing": ckpt, "batch": batch, "precision": "bf16",
                     "steps_s": round(1 / sec, 3), "samples_s": round(batch / sec, 2), "steps_timed": n,
                     "peak_mem_gib": peak_mem_gib(dev)})
        del opt, obj
    ldm.unet.disable_gradient_checkpointing()
    ldm.eval()
    return rows


def part_large_image(run: Run) -> dict:
    from zoomfeat.generate.large import LargeImageConfig, sample_large_image

    n = 2 if run.smoke else 4
    kw = dict(t0=1000, stride=1000, n_steps=1, batch_size=4) if run.smoke else {}  # smoke: one guided step
    cfg = LargeImageConfig(progress=False, precision="bf16", **kw)
    grid = torch.randn(run.ldm.ssl_dim, n, n, generator=torch.Generator().manual_seed(0))
    reset_peak(run.device)
    sync(run.device)
    t0 = time.perf_counter()
    res = sample_large_image(run.ldm, grid, cfg, seed=0)
    sync(run.device)
    sec = time.perf_counter() - t0
    return {"size_px": int(res.image.shape[0]), "patches": n * n, "seconds": round(sec, 2),
            "paper_seconds_1024": PAPER_LARGE_1024_S, "precision": cfg.precision, "guidance": cfg.guidance,
            "timesteps": len(range(cfg.t0, 0, -cfg.stride)), "n_steps": cfg.n_steps,
            "finite": bool(np.isfinite(res.latent.numpy()).all()), "peak_mem_gib": peak_mem_gib(run.device)}


def part_compile(run: Run) -> list[dict]:
    """bf16 ZoomLDM extraction: eager, channels_last, torch.compile with the faster of the two layouts (compile
    time reported apart as ``first_call_s``)."""
    from zoomfeat.encoders.optimize import optimize_encoder, reset_encoder_speed

    batch = run.batches[-1] if run.smoke else 64
    backend = "aot_eager" if run.smoke else "inductor"
    end, rows = run.deadline("compile"), []
    fn = _zoomldm_call(run, batch)
    for compile_, cl in ((None, False), (None, True), (backend, None)):
        if cl is None:  # compile with the faster eager layout (one compile fits the budget, two do not)
            cl = bool(rows[1].get("tiles_s", 0) > rows[0].get("tiles_s", 0))
        row = {"compile": compile_, "channels_last": cl, "batch": batch, "precision": "bf16"}
        if time.perf_counter() > end - (90 if compile_ and not run.smoke else 0):
            rows.append({**row, "skipped": "time budget"})
            continue
        reset_encoder_speed(run.zenc)
        optimize_encoder(run.zenc, compile=compile_ or False, channels_last=cl)
        t0 = time.perf_counter()
        fn()
        sync(run.device)
        first = time.perf_counter() - t0
        sec, n = rate(fn, run.device, run.min_s, warmup=0)
        rows.append({**row, "tiles_s": round(batch / sec, 2), "first_call_s": round(first, 2), "calls": n})
    reset_encoder_speed(run.zenc)
    base = rows[0].get("tiles_s")
    for r in rows:
        if base and r.get("tiles_s"):
            r["speedup"] = round(r["tiles_s"] / base, 3)
    return rows


PARTS = {"extraction": part_extraction, "recipe": part_recipe, "uni": part_uni, "dataloader": part_dataloader,
         "large_image": part_large_image, "training": part_training, "compile": part_compile}


# ------------------------------------------------------------------------------------------------ report


def _table(rows: list[dict], cols: list[str]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join("—" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    return out


def markdown(res: dict) -> str:
    """The tables of docs/gpu.md, from the JSON."""
    lines = [f"# GPU benchmark: {res['device']}" + (" (smoke run on CPU, tiny models)" if res["smoke"] else ""), "",
             f"torch {res['torch']}, peak (dense) bf16/fp16 TFLOP/s: {res['peak_tflops'].get('bf16')} / "
             f"{res['peak_tflops'].get('fp16')} ({res['peak_tflops'].get('source')}), total {res.get('seconds_total')} s.",
             ""]
    sections = [
        ("extraction", "ZoomLDM extraction, model only (block 0, t=100; VQ in fp32)",
         ["precision", "batch", "tiles_s", "gflop_per_tile", "gflop_vq_per_tile_fp32", "tflops", "frac_peak",
          "peak_mem_gib", "skipped"]),
        ("recipe", "The sweep's recipe (last decoder block, t=0: full UNet pass) beside block 0, t=100 (bf16)",
         ["batch", "recipe_block", "block0_tiles_s", "recipe_tiles_s", "block0_gflop_per_tile", "recipe_gflop_per_tile",
          "recipe_over_block0_time", "recipe_over_block0_gflop", "skipped"]),
        ("uni", "UNI tiles/s", ["precision", "batch", "tiles_s", "gflop_per_tile", "tflops", "frac_peak", "skipped"]),
        ("dataloader", "Real DataLoader from a synthetic 20x slide (UNI conditioning + ZoomLDM + bag write)",
         ["tiles", "batch", "workers", "precision", "loader_only_tiles_s", "model_only_tiles_s", "end_to_end_tiles_s",
          "end_to_end_over_model"]),
        ("training", "Training (UNet + Summarizer, AdamW, bf16)",
         ["gradient_checkpointing", "batch", "steps_s", "samples_s", "peak_mem_gib", "skipped"]),
        ("large_image", "Joint large image", ["size_px", "seconds", "paper_seconds_1024", "precision", "guidance",
                                              "timesteps", "n_steps", "peak_mem_gib"]),
        ("compile", "torch.compile / channels_last (ZoomLDM extraction, bf16)",
         ["compile", "channels_last", "batch", "tiles_s", "speedup", "first_call_s", "skipped"]),
    ]
    for key, title, cols in sections:
        val = res.get(key)
        if val is None:
            continue
        lines += [f"## {title}", ""]
        if isinstance(val, dict) and ("error" in val or "skipped" in val):
            lines += [f"failed: {val['error']}" if "error" in val else f"skipped: {val['skipped']}", ""]
            continue
        lines += _table(val if isinstance(val, list) else [val], cols) + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny models, seconds (what the test suite runs)")
    ap.add_argument("--out", default="runs/gpu_benchmark", help="folder for gpu.json and gpu.md")
    ap.add_argument("--device", default=None, help="cuda device (default cuda)")
    ap.add_argument("--batches", default="16,32,64,128", help="extraction batch sizes")
    ap.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per configuration (GPU)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"subset of {','.join(PARTS)}")
    args = ap.parse_args(argv)
    if args.smoke:
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        ap.error("no CUDA device: run with --smoke on a CPU")
    run = Run(args)
    t0 = time.perf_counter()
    build_models(run)
    run.results["parts_s"]["setup"] = round(time.perf_counter() - t0, 1)
    for name in [p.strip() for p in args.parts.split(",") if p.strip()]:
        if name not in PARTS:
            ap.error(f"unknown part {name!r}")
        t0 = time.perf_counter()
        if not run.smoke and t0 - run.t0 + BUDGET[name] > TOTAL_BUDGET_S + 30:
            run.results[name] = {"skipped": f"over the {TOTAL_BUDGET_S} s total budget"}
            continue
        try:
            run.results[name] = PARTS[name](run)
        except Exception as exc:  # noqa: BLE001 — one failed part must not lose the others' numbers
            run.results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        run.results["parts_s"][name] = round(time.perf_counter() - t0, 1)
        run.save()
        print(f"{name}: {run.results['parts_s'][name]} s", flush=True)
    run.save()
    print(markdown(run.results))
    return 1 if any(isinstance(run.results.get(p), dict) and "error" in run.results[p] for p in PARTS) else 0


if __name__ == "__main__":
    raise SystemExit(main())
