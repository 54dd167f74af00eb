"""Fast CPU tissue detection on a thumbnail: Otsu on HSV saturation + morphology, GeoJSON polygons, QC image.

Why saturation: glass and background are bright and grey (low saturation), stained tissue is coloured,
so one Otsu threshold on S separates them on most H&E slides without a model (CLAM/LazySlide default).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import numpy as np
from zoomfeat.io import atomic_path, write_text_atomic

#: Saturation (0–255) below which nothing counts as tissue even if Otsu says so (blank slides).
MIN_SATURATION = 15


@dataclass
class TissueMask:
    """Binary tissue mask on a thumbnail; ``scale`` = level-0 px per mask px."""

    mask: np.ndarray  # bool (h, w)
    scale: float
    threshold: float
    thumbnail: np.ndarray  # RGB uint8 (h, w, 3)

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation scaled to 0–255 (float32)."""
    rgb = rgb.astype(np.float32)
    mx = rgb.max(axis=-1)
    mn = rgb.min(axis=-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0) * 255.0


def detect_tissue(
    thumbnail: np.ndarray,
    scale: float,
    min_saturation: float = MIN_SATURATION,
    blur: int = 2,
    close_radius: int = 2,
    min_object_px: int = 16,
    max_hole_px: int = 64,
) -> TissueMask:
    """Otsu threshold on a median-blurred saturation channel, then closing and small-object/hole removal.

    Pixels that are near-black (scanner borders, ink, sat. undefined) are excluded.
    """
    from scipy import ndimage as ndi
    from skimage import morphology
    from skimage.filters import threshold_otsu

    sat = saturation(thumbnail)
    if blur > 0:
        sat = ndi.median_filter(sat, size=2 * blur + 1)
    value = thumbnail.max(axis=-1)
    try:
        thr = float(threshold_otsu(sat)) if np.ptp(sat) > 0 else float(min_saturation)
    except ValueError:
        thr = float(min_saturation)
    thr = max(thr, float(min_saturation))
    mask = (sat > thr) & (value > 20)
    if close_radius > 0:
        mask = morphology.closing(mask, morphology.disk(close_radius)).astype(bool)
    if min_object_px > 0:
        mask = morphology.remove_small_objects(mask, max_size=min_object_px)
    if max_hole_px > 0:
        mask = morphology.remove_small_holes(mask, max_size=max_hole_px)
    return TissueMask(mask=mask.astype(bool), scale=float(scale), threshold=thr, thumbnail=thumbnail)


def tile_tissue_fraction(tm: TissueMask, coords: np.ndarray, size_l0: float) -> np.ndarray:
    """Fraction of mask pixels inside each level-0 square ``[x, x+size_l0)²`` (area-weighted, via an
    integral image with sub-pixel box edges so the answer does not depend on the thumbnail resolution)."""
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    m = tm.mask.astype(np.float64)
    h, w = m.shape
    ii = np.zeros((h + 1, w + 1), np.float64)
    ii[1:, 1:] = m.cumsum(0).cumsum(1)

    def integral(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        # bilinear interpolation of the integral image at fractional positions (exact area of the box)
        xs = np.clip(xs, 0, w)
        ys = np.clip(ys, 0, h)
        x0 = np.floor(xs).astype(int)
        y0 = np.floor(ys).astype(int)
        x1 = np.minimum(x0 + 1, w)
        y1 = np.minimum(y0 + 1, h)
        fx, fy = xs - x0, ys - y0
        a = ii[y0, x0] * (1 - fx) + ii[y0, x1] * fx
        b = ii[y1, x0] * (1 - fx) + ii[y1, x1] * fx
        return a * (1 - fy) + b * fy

    x0 = coords[:, 0] / tm.scale
    y0 = coords[:, 1] / tm.scale
    x1 = (coords[:, 0] + size_l0) / tm.scale
    y1 = (coords[:, 1] + size_l0) / tm.scale
    area = integral(x1, y1) - integral(x0, y1) - integral(x1, y0) + integral(x0, y0)
    box = (x1 - x0) * (y1 - y0)
    return np.clip(area / np.maximum(box, 1e-12), 0.0, 1.0).astype(np.float32)


def mask_polygons(tm: TissueMask, simplify_px: float = 0.5):
    """Tissue outline as a shapely (Multi)Polygon in level-0 px (holes kept, even-odd rule)."""
    import shapely
    from shapely.geometry import MultiPolygon, Polygon
    from skimage.measure import find_contours

    padded = np.pad(tm.mask.astype(np.float32), 1)
    polys = []
    for c in find_contours(padded, 0.5):
        if len(c) < 4:
            continue
        xy = np.stack([c[:, 1] - 1 + 0.5, c[:, 0] - 1 + 0.5], axis=1)  # pixel centres → pixel edges
        p = Polygon(xy)
        if not p.is_valid:
            p = shapely.make_valid(p)
        if p.area > 0:
            polys.append(p)
    if not polys:
        return MultiPolygon()
    # nested contours alternate tissue / hole: the symmetric difference implements the even-odd rule
    geom = reduce(lambda a, b: a.symmetric_difference(b), sorted(polys, key=lambda p: -p.area))
    if simplify_px > 0:
        geom = geom.simplify(simplify_px, preserve_topology=True)
    geom = shapely.affinity.scale(geom, xfact=tm.scale, yfact=tm.scale, origin=(0, 0))
    return geom


def write_geojson(geom, path: str | os.PathLike, properties: dict | None = None) -> Path:
    """Write tissue polygons as a GeoJSON FeatureCollection (level-0 px coordinates), atomically."""
    from shapely.geometry import mapping

    feats = []
    parts = list(getattr(geom, "geoms", [geom])) if not geom.is_empty else []
    for i, part in enumerate(parts):
        if part.is_empty or part.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        feats.append({
            "type": "Feature",
            "id": i,
            "geometry": mapping(part),
            # QuPath-style annotation properties, so the file opens directly in QuPath
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Tissue", "color": [40, 200, 60]},
                "area_px_level0": float(part.area),
                **(properties or {}),
            },
        })
    fc = {"type": "FeatureCollection", "features": feats}
    write_text_atomic(path, json.dumps(fc))
    return Path(path)


def read_geojson(path: str | os.PathLike):
    """Read tissue polygons written by :func:`write_geojson` back as one shapely geometry."""
    from shapely.geometry import shape
    from shapely.ops import unary_union

    fc = json.loads(Path(path).read_text())
    return unary_union([shape(f["geometry"]) for f in fc.get("features", [])])


def save_qc_png(
    tm: TissueMask,
    path: str | os.PathLike,
    tiles: np.ndarray,
    tile_size_l0: float,
    parents: np.ndarray | None = None,
    parent_size_l0: float | None = None,
    title: str = "",
) -> Path:
    """QC thumbnail: tissue mask tinted green, kept 20x tiles outlined (blue), 5x parents (orange)."""
    from PIL import Image, ImageDraw

    base = tm.thumbnail.astype(np.float32)
    tint = np.array([40, 200, 60], np.float32)
    base[tm.mask] = 0.65 * base[tm.mask] + 0.35 * tint
    img = Image.fromarray(base.astype(np.uint8))
    if max(img.size) < 512:  # upscale small thumbnails so the grid is visible
        f = int(np.ceil(512 / max(img.size)))
        img = img.resize((img.width * f, img.height * f), Image.Resampling.NEAREST)
    k = img.width / tm.mask.shape[1] / tm.scale  # level-0 px → QC px
    draw = ImageDraw.Draw(img)
    for x, y in np.asarray(tiles):
        draw.rectangle([x * k, y * k, (x + tile_size_l0) * k - 1, (y + tile_size_l0) * k - 1], outline=(30, 60, 220))
    if parents is not None and parent_size_l0:
        for x, y in np.asarray(parents):
            draw.rectangle(
                [x * k, y * k, (x + parent_size_l0) * k - 1, (y + parent_size_l0) * k - 1],
                outline=(255, 140, 0), width=2,
            )
    if title:
        draw.text((4, 4), title, fill=(0, 0, 0))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)
