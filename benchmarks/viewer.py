"""Viewer latency on a 100k × 100k px slide (issue 17: "a 100k×100k slide opens in seconds").

Writes a 100,000 × 100,000 px JPEG-tiled pyramidal TIFF (levels 1, 4, 16, 64, 256; real H&E pixels from
tests/data/slides/he_tile_1000px.png, pre-compressed tiles so writing takes seconds), a 40,000-tile attention
grid on it, and measures with the viewer's own code:

(a) opening the slide (OpenSlide + DeepZoomGenerator) and the DZI descriptor;
(b) the Deep Zoom tiles of the first screen (the levels OpenSeadragon asks for while zooming in to fit a
    1280 × 800 viewer) and single tiles at full resolution;
(c) the slide page (HTML + embedded attention JSON) and the heatmap / tile-grid overlay PNGs for 40k tiles;
(d) a 1000-slide × 3-run result folder: the index records (built once per Results) against one slide page
    (which reads its record; the static export writes one page per slide).

    .venv/bin/python benchmarks/viewer.py [--side 100000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _jpeg_tiles(tile: int, n: int = 8, quality: int = 20) -> list[bytes]:
    """n different real H&E tiles (crops of the vendored 1000-px tile), JPEG-encoded once."""
    src = np.asarray(Image.open(ROOT / "tests" / "data" / "slides" / "he_tile_1000px.png").convert("RGB"))
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, src.shape[0] - tile), rng.integers(0, src.shape[1] - tile)
        buf = io.BytesIO()
        Image.fromarray(src[y:y + tile, x:x + tile]).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def write_big_slide(path: Path, side: int, tile: int = 512, mpp: float = 0.25) -> Path:
    """A side × side Aperio-described pyramid whose tiles are pre-compressed JPEGs (written as-is)."""
    import tifffile

    tiles = _jpeg_tiles(tile)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:  # pre-compressed tiles: ~0.4 GB for 100k x 100k
        for i, ds in enumerate((1, 4, 16, 64, 256)):
            w = h = math.ceil(side / ds)
            n = math.ceil(w / tile) * math.ceil(h / tile)
            desc = (f"Aperio Image Library v12.0.15 \r\n{side}x{side} [0,0 {side}x{side}] ({tile}x{tile}) JPEG/RGB "
                    f"Q=20|AppMag = 40|MPP = {mpp}" if i == 0 else f"Aperio Image Library v12.0.15 \r\n{side}x{side} "
                    f"-> {w}x{h} - ({tile}x{tile}) JPEG/RGB Q=20")
            tw.write((tiles[k % len(tiles)] for k in range(n)), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                     compression="jpeg", photometric="rgb", description=desc, metadata=None,
                     subfiletype=1 if i else 0)
    return path


def first_screen_tiles(dz, view_w: int = 1280, view_h: int = 800) -> list[tuple[int, int, int]]:
    """(level, col, row) of every tile OpenSeadragon loads to show the whole slide in the viewer: all levels up
    to the one that fits the viewer (it loads coarse levels first)."""
    out = []
    for lvl, (w, h) in enumerate(dz.level_dimensions):
        cols, rows = dz.level_tiles[lvl]
        out += [(lvl, c, r) for c in range(cols) for r in range(rows)]
        if w >= view_w or h >= view_h:  # the first level with at least one screen pixel per image pixel
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=100_000)
    ap.add_argument("--keep", default=None, help="write the slide here and keep it")
    args = ap.parse_args()

    from zoomfeat.viewer import pages
    from zoomfeat.viewer.render import GRID_RGBA, SlideSource, boxes_png, heatmap_png

    tmp = Path(args.keep or tempfile.mkdtemp(prefix="zf-viewer-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    slide = tmp / "big.svs"
    t = time.perf_counter()
    write_big_slide(slide, args.side)
    print(f"wrote {args.side}x{args.side} px pyramid ({slide.stat().st_size / 1e6:.0f} MB) in "
          f"{time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    src = SlideSource(slide)
    dzi = src.dzi_xml()
    t_open = time.perf_counter() - t
    print(f"(a) open + DeepZoomGenerator + DZI: {t_open * 1000:.0f} ms ({src.dz.level_count} Deep Zoom levels, "
          f"{len(dzi)} B descriptor)")

    todo = first_screen_tiles(src.dz)
    t = time.perf_counter()
    for lvl, c, r in todo:
        src.tile_jpeg(lvl, c, r)
    t_first = time.perf_counter() - t
    top = src.dz.level_count - 1
    cols, rows = src.dz.level_tiles[top]
    rng = np.random.default_rng(0)
    picks = [(int(rng.integers(cols)), int(rng.integers(rows))) for _ in range(50)]
    t = time.perf_counter()
    for c, r in picks:
        src.tile_jpeg(top, c, r)
    t_tile = (time.perf_counter() - t) / len(picks)
    print(f"(b) first screen: {len(todo)} tiles in {t_first:.2f} s; full-resolution tile: {t_tile * 1000:.1f} ms each "
          f"(50 random tiles of {cols}x{rows})")

    n_side = 200  # 40,000 tiles of 512 px (20x at 0.25 µm/px) spread over the slide
    step = args.side // n_side
    xs, ys = np.meshgrid(np.arange(n_side) * step, np.arange(n_side) * step)
    x, y = xs.ravel().astype(float), ys.ravel().astype(float)
    score = rng.random(len(x))
    rank = (np.argsort(np.argsort(score)) + 1) / len(score)
    t = time.perf_counter()
    heat = heatmap_png(args.side, args.side, x, y, 512.0, rank)
    t_heat = time.perf_counter() - t
    t = time.perf_counter()
    grid = boxes_png(args.side, args.side, np.column_stack([x, y]), 512.0, GRID_RGBA)
    t_grid = time.perf_counter() - t

    class A:  # the attention record pages.attention_payload reads
        pass

    a = A()
    a.size, a.x, a.y, a.score, a.rank = 512.0, x, y, score, rank
    a.order = np.argsort(np.argsort(-score)) + 1
    t = time.perf_counter()
    js = pages.script_json(pages.attention_payload(a))
    t_json = time.perf_counter() - t
    print(f"(c) 40,000-tile slide page: attention JSON {len(js) / 1e6:.1f} MB in {t_json * 1000:.0f} ms; heatmap PNG "
          f"{len(heat) / 1e3:.0f} kB in {t_heat * 1000:.0f} ms; tile-grid PNG {len(grid) / 1e3:.0f} kB in "
          f"{t_grid * 1000:.0f} ms")
    total = t_open + t_first + t_heat + t_json
    print(f"slide page of a {args.side}x{args.side} slide ready (server side, one core): {total:.1f} s")
    src.close()
    index_scaling(tmp / "runs")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


def index_scaling(root: Path, n_slides: int = 1000, n_runs: int = 3) -> None:
    """(d): Results.slide_rows over ``n_slides`` × ``n_runs`` predictions vs one slide page."""
    import pandas as pd

    from zoomfeat.viewer import Results, pages

    rng = np.random.default_rng(0)
    for k in range(n_runs):
        (root / f"run{k}").mkdir(parents=True, exist_ok=True)
        y, p1 = rng.integers(0, 2, n_slides), rng.random(n_slides)
        pd.DataFrame({"slide": [f"s{i:04d}" for i in range(n_slides)], "fold": rng.integers(0, 5, n_slides), "y": y,
                      "label": np.where(y == 1, "pos", "neg"), "pred": (p1 > 0.5).astype(int), "prob_0": 1 - p1,
                      "prob_1": p1}).to_csv(root / f"run{k}" / "predictions.csv", index=False)
    res = Results(root)
    t = time.perf_counter()
    res.slide_rows()
    t_rows = time.perf_counter() - t
    t = time.perf_counter()
    for sid in res.slide_ids[:50]:
        pages.slide_page(res, sid, None, None, [], None, False)
    t_page = (time.perf_counter() - t) / 50
    print(f"(d) {n_slides} slides x {n_runs} runs: index records {t_rows:.2f} s (once per Results), slide page "
          f"{t_page * 1000:.1f} ms ({t_rows / t_page:.0f}x less than rebuilding the records per page)")


if __name__ == "__main__":
    main()
