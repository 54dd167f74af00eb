"""Attention heatmaps: rank-normalised scores drawn over the slide thumbnail, or on the bare coordinate grid."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".czi")


def rank_normalize(scores: np.ndarray) -> np.ndarray:
    """Scores → ranks in (0, 1]; heatmaps of raw attention are dominated by a handful of tiles (CLAM does this too)."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        return scores
    return rankdata(scores, method="average") / scores.size


def instance_coords(item, mag: str, n: int) -> tuple[np.ndarray | None, float | None]:
    """Level-0 top-left corners of the ``n`` instances a head attended to at ``mag`` (the 5x regions for '5x', else
    the 20x tiles) and their level-0 side; (None, None) when the bag (or an in-memory array) has no such coordinates."""
    if not isinstance(item, (str, os.PathLike)):
        return None, None
    from zoomfeat.bags import load_bag

    bag = load_bag(item)
    psize = bag.coords_attrs.get("patch_size_level0") or bag.attrs.get("patch_size_level0")
    coords = bag.coords_5x if mag == "5x" else bag.coords
    if mag == "5x" and psize:
        psize = bag.attrs.get("patch_size_level0_5x") or psize * 4
    if coords is None or len(coords) != n:
        return None, psize
    return coords, psize


def write_attention_csv(path: Path, coords: np.ndarray | None, scores: np.ndarray) -> None:
    """attention/{slide}.csv: x, y (level 0; -1 when unknown), raw score and its rank in (0, 1]."""
    import pandas as pd

    pd.DataFrame({"x": coords[:, 0] if coords is not None else -1, "y": coords[:, 1] if coords is not None else -1,
                  "score": scores, "rank": rank_normalize(scores)}).to_csv(path, index=False)


def find_slide(slides: str | os.PathLike | None, slide_id: str) -> Path | None:
    """The WSI named ``slide_id`` in folder ``slides`` (any slide suffix), or None."""
    if not slides:
        return None
    root = Path(slides)
    if root.is_file():
        return root if root.stem == slide_id else None
    if not root.is_dir():
        return None
    for p in sorted(root.glob(f"{slide_id}.*")):
        if p.suffix.lower() in SLIDE_SUFFIXES:
            return p
    return None


def _patch_size(coords: np.ndarray, patch_size: float | None) -> float:
    if patch_size:
        return float(patch_size)
    steps = [np.diff(np.unique(coords[:, k])) for k in (0, 1)]
    steps = np.concatenate([s[s > 0] for s in steps]) if any(len(s) for s in steps) else np.array([])
    return float(steps.min()) if len(steps) else 256.0


def attention_heatmap(coords: np.ndarray, scores: np.ndarray, out_png: str | os.PathLike,
                      patch_size: float | None = None, slide_path: str | os.PathLike | None = None,
                      thumb_max: int = 1024, alpha: float = 0.5, title: str = "", cmap: str = "jet") -> Path:
    """Draw one tile-sized square per instance coloured by its attention rank.

    With ``slide_path`` the squares are blended over ``open_slide(path).thumbnail(thumb_max)`` (level-0
    coordinates scaled to the thumbnail); without it (or if the slide cannot be opened) they are drawn on
    the coordinate grid alone.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zoomfeat.io import atomic_path

    coords = np.asarray(coords, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if coords.shape != (len(scores), 2):
        raise ValueError(f"coords {coords.shape} do not match {len(scores)} attention scores")
    ps = _patch_size(coords, patch_size)
    ranks = rank_normalize(scores)
    colours = plt.get_cmap(cmap)(ranks)[:, :3]
    thumb, note = None, "no slide: attention on the tile grid"
    if slide_path is not None:
        try:
            from zoomfeat.slides.reader import open_slide

            with open_slide(slide_path) as wsi:
                thumb = np.asarray(wsi.thumbnail(thumb_max))[..., :3]
                width, height = wsi.dimensions
            note = Path(slide_path).name
        except Exception as exc:  # the heatmap still has value without the thumbnail
            note = f"slide not readable ({type(exc).__name__}): attention on the tile grid"
            thumb = None
    if thumb is not None:
        scale = thumb.shape[1] / float(width)
        base = thumb.astype(np.float64) / 255.0
        over = base.copy()
        hit = np.zeros(base.shape[:2], dtype=bool)
        for (x, y), c in zip(coords, colours):
            x0, y0 = int(x * scale), int(y * scale)
            x1, y1 = max(x0 + 1, int((x + ps) * scale)), max(y0 + 1, int((y + ps) * scale))
            over[y0:y1, x0:x1] = c
            hit[y0:y1, x0:x1] = True
        img = np.where(hit[..., None], (1 - alpha) * base + alpha * over, base)
    else:
        origin = coords.min(axis=0)
        cells = np.floor((coords - origin) / ps).astype(int)
        w, h = cells.max(axis=0) + 1
        img = np.ones((h, w, 3))
        img[cells[:, 1], cells[:, 0]] = colours
    fig, ax = plt.subplots(figsize=(6, 6 * img.shape[0] / max(img.shape[1], 1) + 0.6))
    ax.imshow(img, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title((title + "\n" if title else "") + note, fontsize=8)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, 1))
    fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.02, label="attention rank")
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return out
