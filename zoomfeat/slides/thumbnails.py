"""Slide thumbnails for attention heatmaps: the thumbnail provider the zoomfeat side hands to ``mil`` (which never
opens a slide itself; see ``mil.heatmap.ThumbnailProvider``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Union

import numpy as np

from zoomfeat.names import find_slide
from zoomfeat.slides.reader import open_slide

Source = Union[str, os.PathLike, Mapping[str, Union[str, os.PathLike]], None]


class SlideThumbnails:
    """slide id → (thumbnail uint8 HxWx3 whose longer side is ``max_side``, level-0 (width, height), file name).

    ``sources`` are looked up in order: a folder of slides (or one slide file), or a mapping slide id → slide path
    (e.g. ``zoomfeat.names.label_slide_paths(labels_csv)``); None entries are ignored. A slide found nowhere gives
    None; one that cannot be read raises (the heatmap then says so and draws on the tile grid)."""

    def __init__(self, *sources: Source, max_side: int = 1024):
        self.sources = [s for s in sources if s]
        self.max_side = int(max_side)

    def path(self, sid: str) -> Path | None:
        for src in self.sources:
            if isinstance(src, Mapping):
                p = Path(src[sid]) if sid in src else None
            else:
                p = find_slide(src, sid)
            if p is not None:
                return p
        return None

    def __call__(self, sid: str) -> tuple[np.ndarray, tuple[int, int], str] | None:
        p = self.path(sid)
        if p is None:
            return None

        with open_slide(p) as wsi:
            return np.asarray(wsi.thumbnail(self.max_side))[..., :3], tuple(wsi.dimensions), p.name
