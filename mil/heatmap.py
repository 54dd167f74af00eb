"""Attention heatmaps: rank-normalised scores drawn over the slide thumbnail, or on the bare coordinate grid.

mil never opens a slide: the thumbnail comes from the caller, either as an array or through a *thumbnail
provider*, a callable ``slide_id -> (thumbnail uint8 HxWx3, level-0 (width, height), file name) | None`` that the
zoomfeat side builds (``zoomfeat.slides.thumbnails.SlideThumbnails``) and passes in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
from zoomfeat.bags import Bag, load_bag
from zoomfeat.io import atomic_path

#: slide id -> (thumbnail uint8 HxWx3, level-0 (width, height), name shown in the title), or None (no slide).
ThumbnailProvider = Callable[[str], Optional[Tuple[np.ndarray, Tuple[int, int], str]]]


def rank_normalize(scores: np.ndarray) -> np.ndarray:
    """Scores → ranks in (0, 1]; heatmaps of raw attention are dominated by a handful of tiles (CLAM does this too)."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        return scores
    return rankdata(scores, method="average") / scores.size


def bag_instances(item, mag: str) -> tuple[np.ndarray | None, float | None]:
    """Level-0 top-left corners of a bag's instances at ``mag`` (the 5x regions for '5x', else the 20x tiles) and
    their level-0 side (None when the bag does not record it). ``item``: a bag path, or a ``zoomfeat.bags.Bag``
    already loaded (callers that also need its features read the file once)."""
    bag = item if isinstance(item, Bag) else load_bag(item)
    psize = bag.coords_attrs.get("patch_size_level0") or bag.attrs.get("patch_size_level0")
    if mag == "5x":
        return bag.coords_5x, bag.attrs.get("patch_size_level0_5x") or (psize * 4 if psize else None)
    return bag.coords, psize


def instance_coords(item, mag: str, n: int) -> tuple[np.ndarray | None, float | None]:
    """:func:`bag_instances` of the ``n`` instances a head attended to; (None, None) for an in-memory array and
    (None, side) when the bag's coordinates do not match the ``n`` scores."""
    if not isinstance(item, (str, os.PathLike)):
        return None, None
    coords, psize = bag_instances(item, mag)
    if coords is None or len(coords) != n:
        return None, psize
    return coords, psize


def write_attention_csv(path: Path, coords: np.ndarray | None, scores: np.ndarray) -> None:
    """attention/{slide}.csv: x, y (level 0; -1 when unknown), raw score and its rank in (0, 1]."""
    import pandas as pd

    pd.DataFrame({"x": coords[:, 0] if coords is not None else -1, "y": coords[:, 1] if coords is not None else -1,
                  "score": scores, "rank": rank_normalize(scores)}).to_csv(path, index=False)


def _patch_size(coords: np.ndarray, patch_size: float | None) -> float:
    if patch_size:
        return float(patch_size)
    steps = [np.diff(np.unique(coords[:, k])) for k in (0, 1)]
    steps = np.concatenate([s[s > 0] for s in steps]) if any(len(s) for s in steps) else np.array([])
    return float(steps.min()) if len(steps) else 256.0


def attention_heatmap(coords: np.ndarray, scores: np.ndarray, out_png: str | os.PathLike,
                      patch_size: float | None = None, thumbnail: np.ndarray | None = None,
                      slide_dims: tuple[int, int] | None = None, note: str | None = None, alpha: float = 0.5,
                      title: str = "", cmap: str = "jet") -> Path:
    """Draw one tile-sized square per instance coloured by its attention rank.

    With ``thumbnail`` (uint8 HxWx3 of the whole slide, whose level-0 size is ``slide_dims`` = (width, height)) the
    squares are blended over it (level-0 coordinates scaled to the thumbnail); without it they are drawn on the
    coordinate grid alone. ``note`` is the title's second line (default: what the image is drawn on).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coords = np.asarray(coords, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if coords.shape != (len(scores), 2):
        raise ValueError(f"coords {coords.shape} do not match {len(scores)} attention scores")
    ps = _patch_size(coords, patch_size)
    colours = plt.get_cmap(cmap)(rank_normalize(scores))[:, :3]
    if thumbnail is not None:
        if slide_dims is None:
            raise ValueError("a thumbnail needs slide_dims (the slide's level-0 width, height)")
        img = _overlay(np.asarray(thumbnail)[..., :3], float(slide_dims[0]), coords, colours, ps, alpha)
        note = note or "slide thumbnail"
    else:
        origin = coords.min(axis=0)
        cells = np.floor((coords - origin) / ps).astype(int)
        w, h = cells.max(axis=0) + 1
        img = np.ones((h, w, 3))
        img[cells[:, 1], cells[:, 0]] = colours
        note = note or "no slide: attention on the tile grid"
    return _save_figure(img, out_png, (title + "\n" if title else "") + note, cmap)


def _overlay(thumb: np.ndarray, width: float, coords: np.ndarray, colours: np.ndarray, ps: float,
             alpha: float) -> np.ndarray:
    """The thumbnail with each instance's square blended in its colour (level-0 → thumbnail scale)."""
    scale = thumb.shape[1] / width
    base = thumb.astype(np.float64) / 255.0
    over = base.copy()
    hit = np.zeros(base.shape[:2], dtype=bool)
    for (x, y), c in zip(coords, colours):
        x0, y0 = int(x * scale), int(y * scale)
        x1, y1 = max(x0 + 1, int((x + ps) * scale)), max(y0 + 1, int((y + ps) * scale))
        over[y0:y1, x0:x1] = c
        hit[y0:y1, x0:x1] = True
    return np.where(hit[..., None], (1 - alpha) * base + alpha * over, base)


def _save_figure(img: np.ndarray, out_png: str | os.PathLike, title: str, cmap: str) -> Path:
    import matplotlib
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6 * img.shape[0] / max(img.shape[1], 1) + 0.6))
    ax.imshow(img, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, 1))
    fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.02, label="attention rank")
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return out


def slide_heatmap(slide: str, coords: np.ndarray, scores: np.ndarray, out_png: str | os.PathLike,
                  thumbnails: ThumbnailProvider | None = None, **kw) -> Path:
    """:func:`attention_heatmap` of ``slide`` over the thumbnail ``thumbnails(slide)`` gives; on the tile grid when
    there is no provider, it knows no such slide, or the slide cannot be read (the heatmap still has value)."""
    thumb = dims = note = None
    if thumbnails is not None:
        try:
            got = thumbnails(slide)
        except Exception as exc:  # noqa: BLE001 - an unreadable slide must not cost the run its heatmap
            note = f"slide not readable ({type(exc).__name__}): attention on the tile grid"
        else:
            if got is not None:
                thumb, dims, note = got
    return attention_heatmap(coords, scores, out_png, thumbnail=thumb, slide_dims=dims, note=note, **kw)
