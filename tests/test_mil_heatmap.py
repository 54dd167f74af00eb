"""Attention heatmaps: rank normalisation, tile-grid fallback, overlay on a real slide thumbnail."""

from __future__ import annotations

import numpy as np
import pytest

from mil.heatmap import attention_heatmap, find_slide, rank_normalize
from tests.conftest import SLIDES


def _grid(side=6, step=256):
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    return np.stack([gx.ravel(), gy.ravel()], 1) * step


def test_rank_normalize_is_order_only():
    s = np.array([0.001, 0.5, 0.0005, 10.0])
    assert np.allclose(rank_normalize(s), [0.5, 0.75, 0.25, 1.0])
    assert np.allclose(rank_normalize(np.exp(s)), rank_normalize(s))


def test_heatmap_on_tile_grid_without_slide(tmp_path):
    from PIL import Image

    coords = _grid()
    scores = np.arange(len(coords), dtype=float)
    out = attention_heatmap(coords, scores, tmp_path / "h.png", patch_size=256)
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > 100 and img.std() > 10
    with pytest.raises(ValueError, match="do not match"):
        attention_heatmap(coords, scores[:-1], tmp_path / "bad.png")


def test_find_slide(tmp_path):
    (tmp_path / "s1.svs").write_bytes(b"x")
    (tmp_path / "s1.csv").write_text("x")
    assert find_slide(tmp_path, "s1") == tmp_path / "s1.svs"
    assert find_slide(tmp_path, "nope") is None and find_slide(None, "s1") is None


def test_heatmap_over_slide_thumbnail(tmp_path):
    pytest.importorskip("zoomfeat.slides.reader")
    from PIL import Image

    from zoomfeat.slides.reader import open_slide

    slide = SLIDES / "small.svs"
    with open_slide(slide) as wsi:
        w, h = wsi.dimensions
    step = max(64, min(w, h) // 8)
    coords = _grid(side=4, step=step)
    scores = np.random.default_rng(0).uniform(size=len(coords))
    out = attention_heatmap(coords, scores, tmp_path / "thumb.png", patch_size=step, slide_path=slide,
                            thumb_max=256)
    assert np.asarray(Image.open(out)).std() > 10
