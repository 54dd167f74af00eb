"""Pixels for the viewer: Deep Zoom tiles of the WSI, overlay PNGs (tissue, tile grid, 5x regions, attention)
and tile / region crops. Every function returns encoded bytes so the server and the static export share them."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from zoomfeat.slides.tissue import detect_tissue

DZ_TILE = 254
DZ_OVERLAP = 1
#: outline overlays (tile grid, 5x regions) are drawn this many px wide, so lines stay thin on screen
OUTLINE_SIDE = 2048
MAX_SIDE = 4096
GRID_RGBA = (30, 80, 230, 230)
REGION_RGBA = (255, 140, 0, 240)
TISSUE_RGBA = (40, 200, 60, 90)
#: most level pixels one request (Deep Zoom tile, crop, thumbnail) may read from the slide: 2^25 px = 128 MiB RGBA.
#: A slide without a pyramid would otherwise read its whole level 0 for a low-zoom tile or a large crop.
MAX_READ_PX = 1 << 25


def jet_lut() -> np.ndarray:
    """256×3 uint8 jet colour map (the one ``mil.heatmap`` uses), so both heatmaps read the same."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def css_gradient(n: int = 9) -> str:
    lut = jet_lut()
    stops = [f"rgb({r},{g},{b}) {100 * i / (n - 1):.0f}%" for i, (r, g, b) in
             enumerate(lut[np.linspace(0, 255, n).astype(int)])]
    return "linear-gradient(to right, " + ", ".join(stops) + ")"


class SlideSource:
    """An open slide + its DeepZoomGenerator (tiles made on demand, nothing precomputed)."""

    def __init__(self, path: str | Path):
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        self.path = Path(path)
        self.osr = openslide.open_slide(str(path))
        self.dz = DeepZoomGenerator(self.osr, tile_size=DZ_TILE, overlap=DZ_OVERLAP, limit_bounds=False)
        self.width, self.height = self.osr.dimensions

    def dzi_info(self, max_level: int | None = None) -> dict:
        """OpenSeadragon's inline DZI descriptor (``Image``), optionally truncated at ``max_level``."""
        lvl = self.dz.level_count - 1 if max_level is None else min(max_level, self.dz.level_count - 1)
        w, h = self.dz.level_dimensions[lvl]
        return {"Image": {"xmlns": "http://schemas.microsoft.com/deepzoom/2008", "Format": "jpeg",
                          "Overlap": str(DZ_OVERLAP), "TileSize": str(DZ_TILE), "Size": {"Width": str(w),
                                                                                          "Height": str(h)}}}

    def dzi_xml(self) -> str:
        return self.dz.get_dzi("jpeg")

    def tile_jpeg(self, level: int, col: int, row: int, quality: int = 80) -> bytes:
        if not 0 <= level < self.dz.level_count:
            raise ValueError(f"no Deep Zoom level {level}")
        cols, rows = self.dz.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise ValueError(f"no tile {col},{row} at level {level}")
        ds = 2.0 ** (self.dz.level_count - 1 - level)  # this Deep Zoom level's downsample from level 0
        k = ds / self.osr.level_downsamples[self.osr.get_best_level_for_downsample(ds)]  # read px per tile px
        (dw, dh), t = self.dz.level_dimensions[level], DZ_TILE
        span = [min((i + 1) * t + DZ_OVERLAP, n) - max(i * t - DZ_OVERLAP, 0) for i, n in ((col, dw), (row, dh))]
        check_read(math.sqrt(span[0] * span[1]) * k, f"Deep Zoom tile {level}/{col}_{row}")
        img = self.dz.get_tile(level, (col, row)).convert("RGB")
        return encode(img, "JPEG", quality)

    def crop(self, x: float, y: float, size: float, px: int = 192) -> Image.Image:
        """The level-0 square (x, y, size) read from the best pyramid level and resized to ``px``."""
        if not size > 0:
            raise ValueError(f"crop size {size} must be positive")
        level = self.osr.get_best_level_for_downsample(max(size / px, 1.0))
        ds = self.osr.level_downsamples[level]
        side = max(1, int(math.ceil(size / ds)))
        check_read(side, f"a crop of {size:g} px")
        img = self.osr.read_region((int(x), int(y)), level, (side, side))  # RGBA, transparent outside the slide
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img).convert("RGB")
        return img.resize((px, px), Image.Resampling.LANCZOS)

    def thumbnail(self, max_side: int = 1024) -> Image.Image:
        """OpenSlide's thumbnail, which reads the whole best level: refused (ValueError) when that level has more
        than MAX_READ_PX pixels (a large slide without a pyramid)."""
        lvl = self.osr.get_best_level_for_downsample(max(self.width, self.height) / max_side)
        w, h = self.osr.level_dimensions[lvl]
        check_read(math.sqrt(float(w) * h), "a thumbnail")
        return self.osr.get_thumbnail((max_side, max_side)).convert("RGB")

    def close(self) -> None:
        self.osr.close()


def check_read(side: float, what: str) -> None:
    """ValueError when a square read of ``side`` level pixels exceeds :data:`MAX_READ_PX`."""
    if side * side > MAX_READ_PX:
        raise ValueError(f"{what} would read {int(side)}x{int(side)} px from the slide (more than {MAX_READ_PX} px; "
                         "the slide has no pyramid level small enough)")


def encode(img: Image.Image, fmt: str = "PNG", quality: int = 85) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG", optimize=False)
    return buf.getvalue()


def _canvas(width: float, height: float, cell: float, px_per_cell: int = 8, side: int = 0) -> tuple[Image.Image, float]:
    """A transparent RGBA image covering the whole slide (at least ``px_per_cell`` px per cell and ``side`` px
    on the larger side, at most MAX_SIDE); returns it and the level-0 → image scale."""
    k = max(px_per_cell / max(cell, 1.0), side / max(width, height))
    k = min(k, MAX_SIDE / max(width, height))
    w, h = max(1, int(round(width * k))), max(1, int(round(height * k)))
    return Image.new("RGBA", (w, h), (0, 0, 0, 0)), k


def boxes_png(width: float, height: float, xy: np.ndarray, size: float, rgba: tuple, outline: bool = True) -> bytes:
    """Squares of side ``size`` at level-0 top-lefts ``xy``: outlines (tile grid, regions) or fills."""
    img, k = _canvas(width, height, size, 8 if outline else 4, OUTLINE_SIDE if outline else 0)
    draw = ImageDraw.Draw(img)
    for x, y in np.asarray(xy, dtype=float).reshape(-1, 2):
        box = [x * k, y * k, (x + size) * k - 1, (y + size) * k - 1]
        if outline:
            draw.rectangle(box, outline=rgba, width=2)
        else:
            draw.rectangle(box, fill=rgba)
    return encode(img)


def heatmap_png(width: float, height: float, x: np.ndarray, y: np.ndarray, size: float, rank: np.ndarray) -> bytes:
    """Attention heatmap: one opaque jet-coloured cell per instance (rank 1 = red); opacity is set in the page.

    Cells are 4 px per instance side (nearest-neighbour upscaling in the page keeps them crisp), so a 40k-tile
    slide gives a ~800 px PNG. Drawn by lookup tables over the distinct x and y positions (no per-tile loop)."""
    lut = jet_lut()
    img, k = _canvas(width, height, size, 4)
    x, y = np.asarray(x, float), np.asarray(y, float)
    col = lut[np.clip((np.asarray(rank, float) * 255).round().astype(int), 0, 255)]
    xs, xi = np.unique(x, return_inverse=True)
    ys, yi = np.unique(y, return_inverse=True)
    cell = np.full((len(ys), len(xs)), -1, np.int64)
    cell[yi, xi] = np.arange(len(x))
    px_col = _pixel_owner(xs, size, k, img.width)
    px_row = _pixel_owner(ys, size, k, img.height)
    idx = np.where((px_row[:, None] >= 0) & (px_col[None, :] >= 0), cell[px_row][:, px_col], -1)
    arr = np.zeros((img.height, img.width, 4), np.uint8)
    hit = idx >= 0
    arr[hit, :3] = col[idx[hit]]
    arr[hit, 3] = 255
    return encode(Image.fromarray(arr, "RGBA"))


def _pixel_owner(starts: np.ndarray, size: float, k: float, n_px: int) -> np.ndarray:
    """For each image pixel along one axis, which of the sorted instance start positions covers it (-1: none)."""
    owner = np.full(n_px, -1, np.int64)
    for i, v in enumerate(starts):
        a = int(round(v * k))
        b = max(a + 1, int(round((v + size) * k)))
        owner[max(a, 0):min(b, n_px)] = i
    return owner


def tissue_png(width: float, height: float, geojson: Path | None, slide: SlideSource | None) -> bytes:
    """Tissue polygons of the tiling step (``tiles/geojson``) filled green; or a fresh mask from the thumbnail."""
    img, k = _canvas(width, height, max(width, height) / 1024, 1)
    draw = ImageDraw.Draw(img)
    if geojson is not None:
        for ring, hole in _rings(json.loads(Path(geojson).read_text())):
            pts = [(px * k, py * k) for px, py in ring]
            if len(pts) >= 3:
                draw.polygon(pts, fill=(0, 0, 0, 0) if hole else TISSUE_RGBA, outline=TISSUE_RGBA[:3] + (255,))
    elif slide is not None:
        try:
            th = np.asarray(slide.thumbnail(1024))
        except ValueError:  # too large to read without a pyramid: an empty layer
            return encode(img)
        tm = detect_tissue(th, scale=width / th.shape[1])
        m = Image.fromarray((tm.mask * 255).astype(np.uint8)).resize(img.size, Image.Resampling.NEAREST)
        fill = Image.new("RGBA", img.size, TISSUE_RGBA)
        img.paste(fill, (0, 0), m)
    return encode(img)


def _rings(fc: dict):
    """(ring, is_hole) of every polygon of a GeoJSON FeatureCollection, outer rings first."""
    out = []
    for f in fc.get("features", []):
        g = f.get("geometry") or {}
        polys = [g["coordinates"]] if g.get("type") == "Polygon" else g.get("coordinates", []) \
            if g.get("type") == "MultiPolygon" else []
        for poly in polys:
            for i, ring in enumerate(poly):
                out.append((ring, i > 0))
    return sorted(out, key=lambda t: t[1])
