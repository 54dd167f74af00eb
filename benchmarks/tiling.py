"""Benchmark: tiles/s of zoomfeat's reader vs a plain OpenSlide read_region loop, and with N worker processes.

For each slide the same 20x tile coordinates are read (a) with a plain loop
``read_region(xy, level, (s, s)).convert("RGB")`` (+ a PIL resize to 256 when the level does not hold
the tile natively) and (b) with ``WSI.read_region_l0`` (best level + one resize), then (c) with
``WSI.read_region_l0`` split over N processes (one slide handle each). Also times ``tile_slide`` (tissue
detection + grid + HDF5/QC/GeoJSON) per slide. Prints one table; ratios come from one run.

    python benchmarks/tiling.py [--slides A.svs B.tiff] [--repeats 3] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zoomfeat.slides.grid import full_grid, patch_size_level0  # noqa: E402
from zoomfeat.slides.reader import open_slide  # noqa: E402


def plain_loop(path: str, coords: np.ndarray, level: int, size_at_level: int, out_px: int) -> int:
    import openslide
    from PIL import Image

    osr = openslide.OpenSlide(path)
    n = 0
    for x, y in coords:
        img = osr.read_region((int(x), int(y)), level, (size_at_level, size_at_level)).convert("RGB")
        if size_at_level != out_px:
            img = img.resize((out_px, out_px), Image.Resampling.BOX)
        np.asarray(img)
        n += 1
    osr.close()
    return n


def ours_loop(path: str, coords: np.ndarray, ps0: int, out_px: int, mpp: float | None = None) -> int:
    w = open_slide(path, mpp=mpp)
    for x, y in coords:
        w.read_region_l0(int(x), int(y), ps0, out_px)
    w.close()
    return len(coords)


def timed(fn, *args) -> tuple[float, float]:
    """(tiles per wall second, CPU ms per tile) — CPU time is less sensitive to other load on the machine."""
    t0, c0 = time.perf_counter(), time.process_time()
    n = fn(*args)
    return n / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / n


def parallel(path: str, coords: np.ndarray, ps0: int, out_px: int, workers: int) -> float:
    chunks = [c for c in np.array_split(coords, workers) if len(c)]
    import multiprocessing as mp

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        list(ex.map(ours_loop, [path] * len(chunks), [chunks[0][:2]] * len(chunks), [ps0] * len(chunks),
                    [out_px] * len(chunks)))  # warm the workers (imports) outside the timing
        t0 = time.perf_counter()
        n = sum(ex.map(ours_loop, [path] * len(chunks), chunks, [ps0] * len(chunks), [out_px] * len(chunks)))
    return n / (time.perf_counter() - t0)


def default_slides(tmp: Path) -> list[Path]:
    from zoomfeat.slides.synthetic import make_slide

    cmu = ROOT / "tests" / "data" / "slides" / "cmu_small_region.svs"
    s40 = tmp / "synthetic_40x.tiff"
    make_slide(s40, subtype=1, mpp=0.25, size_20x=(3072, 3072), seed=0)  # levels 1, 4, 16: 20x needs a resize
    s20 = tmp / "synthetic_20x.tiff"
    make_slide(s20, subtype=2, mpp=0.5, size_20x=(4096, 4096), seed=1)
    return [p for p in (cmu, s20, s40) if p.exists()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", nargs="*", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--out-px", type=int, default=256)
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w]
    tmp = Path(tempfile.mkdtemp(prefix="zoomfeat_bench_"))
    slides = [Path(s) for s in args.slides] if args.slides else default_slides(tmp)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"cpu cores visible: {os.cpu_count()}  load average: {load:.1f}  repeats: {args.repeats} (medians)")
    print("ratio = ours/plain tiles per second (>= 0.8 is the goal); cpu ratio = plain/ours CPU time per tile")
    rows = []
    for path in slides:
        w = open_slide(path)
        ps0, native = patch_size_level0(w.mpp, w.level_downsamples, w.base_mpp, args.out_px)
        level = w.best_level(ps0 / args.out_px)
        size_at_level = int(round(ps0 / w.level_downsamples[level]))
        coords = full_grid(*w.dimensions, ps0)
        w.close()
        base, ours = [], []
        for _ in range(args.repeats):  # interleaved so both see the same cache/load conditions
            base.append(timed(plain_loop, str(path), coords, level, size_at_level, args.out_px))
            ours.append(timed(ours_loop, str(path), coords, ps0, args.out_px))
        b, o = statistics.median(x[0] for x in base), statistics.median(x[0] for x in ours)
        cb, co = statistics.median(x[1] for x in base), statistics.median(x[1] for x in ours)
        par = {n: parallel(str(path), coords, ps0, args.out_px, n) for n in workers}
        from zoomfeat.slides.tiling import tile_slide

        tile_slide(path, tmp / "warm" / path.stem)  # first call pays one-time imports (skimage, shapely)
        t0 = time.perf_counter()
        tile_slide(path, tmp / "tiles" / path.stem)
        t_tile = time.perf_counter() - t0
        rows.append((path.name, len(coords), f"L{level} {size_at_level}px→{args.out_px}", b, o, o / b, cb, co,
                     par, t_tile))
    hdr = f"{'slide':<26}{'tiles':>6}  {'read':<16}{'plain/s':>9}{'ours/s':>9}{'ratio':>7}"
    hdr += f"{'cpu ms plain':>13}{'cpu ms ours':>12}{'cpu ratio':>10}"
    hdr += "".join(f"{f'N={n}/s':>9}" for n in workers) + f"{'tile_slide s':>14}"
    print(hdr)
    print("-" * len(hdr))
    for name, n, how, b, o, r, cb, co, par, t_tile in rows:
        line = f"{name:<26}{n:>6}  {how:<16}{b:>9.1f}{o:>9.1f}{r:>7.2f}{cb:>13.2f}{co:>12.2f}{cb / co:>10.2f}"
        line += "".join(f"{par[k]:>9.1f}" for k in workers) + f"{t_tile:>14.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
