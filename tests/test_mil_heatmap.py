"""Attention heatmaps: rank normalisation, tile-grid fallback, overlay on a real slide thumbnail."""

from __future__ import annotations

import numpy as np
import pytest

from mil.heatmap import attention_heatmap, rank_normalize, slide_heatmap
from tests.conftest import SLIDES
from zoomfeat.names import find_slide


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
    from zoomfeat.slides.thumbnails import SlideThumbnails

    slide = SLIDES / "small.svs"
    with open_slide(slide) as wsi:
        w, h = wsi.dimensions
    step = max(64, min(w, h) // 8)
    coords = _grid(side=4, step=step)
    scores = np.random.default_rng(0).uniform(size=len(coords))
    thumbs = SlideThumbnails(SLIDES, max_side=256)
    thumb, dims, name = thumbs("small")
    assert thumb.dtype == np.uint8 and max(thumb.shape[:2]) == 256 and dims == (w, h) and name == "small.svs"
    out = attention_heatmap(coords, scores, tmp_path / "thumb.png", patch_size=step, thumbnail=thumb,
                            slide_dims=dims, note=name)
    assert np.asarray(Image.open(out)).std() > 10
    # through the provider (what mil cv / mil predict do): the same picture
    via = slide_heatmap("small", coords, scores, tmp_path / "via.png", thumbs, patch_size=step)
    assert np.array_equal(np.asarray(Image.open(via)), np.asarray(Image.open(out)))


def test_slide_heatmap_falls_back_to_the_tile_grid(tmp_path):
    """No slide known, or an unreadable one: the heatmap is still drawn (on the tile grid), like no provider at all."""
    from PIL import Image

    from zoomfeat.slides.thumbnails import SlideThumbnails

    coords = _grid()
    scores = np.arange(len(coords), dtype=float)
    bare = np.asarray(Image.open(attention_heatmap(coords, scores, tmp_path / "bare.png", patch_size=256)))
    unknown = slide_heatmap("nope", coords, scores, tmp_path / "unknown.png", SlideThumbnails(SLIDES),
                            patch_size=256)
    assert np.array_equal(np.asarray(Image.open(unknown)), bare)
    (tmp_path / "bad.svs").write_bytes(b"not a slide")
    bad = slide_heatmap("bad", coords, scores, tmp_path / "bad.png", SlideThumbnails(tmp_path), patch_size=256)
    assert np.asarray(Image.open(bad)).shape[1] == bare.shape[1]  # same grid; the title says why


def test_slide_lookup_for_thumbnails(tmp_path):
    """The labels CSV's ``path`` column (relative to the CSV; missing files dropped), then a slide folder, in the
    order the caller gives (`mil cv`: folder first; `mil predict`: labels first)."""
    from zoomfeat.names import label_slide_paths
    from zoomfeat.slides.thumbnails import SlideThumbnails

    (tmp_path / "wsi").mkdir()
    (tmp_path / "other").mkdir()
    for p in (tmp_path / "wsi" / "a.svs", tmp_path / "other" / "a.tiff", tmp_path / "other" / "b.ndpi"):
        p.write_bytes(b"x")
    csv = tmp_path / "labels.csv"
    csv.write_text("slide,patient,path\na,p1,wsi/a.svs\nb,p2,wsi/missing.svs\nc,p3,\n")
    paths = label_slide_paths(csv)
    assert paths == {"a": (tmp_path / "wsi" / "a.svs")} and label_slide_paths(None) == {}
    assert SlideThumbnails(paths, tmp_path / "other").path("a") == tmp_path / "wsi" / "a.svs"
    assert SlideThumbnails(tmp_path / "other", paths).path("a") == tmp_path / "other" / "a.tiff"
    assert SlideThumbnails(paths, tmp_path / "other").path("b") == tmp_path / "other" / "b.ndpi"
    assert SlideThumbnails(None, {}).path("a") is None


def test_bag_instances_from_a_path_or_a_loaded_bag(tmp_path):
    """A loaded Bag gives what its file gives (callers read a bag once); the 5x side is the recorded
    patch_size_level0_5x, else 4x the 20x side."""
    from mil.heatmap import bag_instances
    from zoomfeat.bags import load_bag, write_bag

    c20 = np.array([[0, 0], [512, 0], [0, 512]])
    c5 = np.array([[0, 0]])
    p = write_bag(tmp_path / "a.h5", np.ones((3, 4), np.float32), c20, attrs={"patch_size_level0": 512},
                  features_5x=np.ones((1, 4), np.float32), coords_5x=c5, parent_index=np.zeros(3, int))
    for mag, coords, side in (("20x", c20, 512), ("5x", c5, 2048)):
        for item in (p, load_bag(p)):
            got, s = bag_instances(item, mag)
            np.testing.assert_array_equal(got, coords)
            assert s == side
    q = write_bag(tmp_path / "b.h5", np.ones((3, 4), np.float32), c20,
                  attrs={"patch_size_level0": 512, "patch_size_level0_5x": 1800},
                  features_5x=np.ones((1, 4), np.float32), coords_5x=c5, parent_index=np.zeros(3, int))
    assert bag_instances(load_bag(q), "5x")[1] == bag_instances(q, "5x")[1] == 1800
