"""Slide reading: OpenSlide formats, the mpp lookup chain and overrides, best level + one resize."""

from __future__ import annotations

import pickle

import numpy as np
import openslide
import pytest

from tests.conftest import SLIDES
from zoomfeat.slides.reader import (
    MppError,
    SlideOpenError,
    SlideReadError,
    best_level,
    metadata_mpp_candidates,
    open_slide,
    read_mpp_csv,
    resolve_mpp,
)

CMU = SLIDES / "cmu_small_region.svs"


def test_cmu_svs_metadata_and_native_read():
    with open_slide(CMU) as w:
        assert w.dimensions == (2220, 2967)
        assert w.mpp == pytest.approx(0.499)
        assert w.mpp_source == "openslide.mpp-x/y"
        assert w.objective_power == 20
        assert w.name == "cmu_small_region"
        tile = w.read_region_l0(512, 768, 256, 256)
        assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8
        raw = np.asarray(openslide.OpenSlide(str(CMU)).read_region((512, 768), 0, (256, 256)).convert("RGB"))
        np.testing.assert_array_equal(tile, raw)  # one level, no resize needed → identical pixels
        # 5x view of a 1024 region: level 0 + one BOX resize equals the mean of 4x4 blocks
        region = w.read_region_l0(0, 1024, 1024, 256).astype(np.float32)
        full = np.asarray(openslide.OpenSlide(str(CMU)).read_region((0, 1024), 0, (1024, 1024)).convert("RGB"))
        ref = full.reshape(256, 4, 256, 4, 3).astype(np.float32).mean(axis=(1, 3))
        assert np.abs(region - ref).max() <= 1.0


def test_read_at_mpp_and_out_of_bounds_is_white():
    with open_slide(CMU) as w:
        a = w.read_at_mpp(0, 0, 128, 1.0)  # 10x: ~256 level-0 px → 128 px
        assert a.shape == (128, 128, 3)
        edge = w.read_region_l0(2220 - 64, 0, 256, 256)  # runs past the right edge
        assert (edge[:, 80:] == 255).all()


def test_generic_tiff_measured_float_downsamples_and_best_level():
    with open_slide(SLIDES / "boxes.tiff", mpp=1.0) as w:
        assert w.level_count == 4
        ds = w.level_downsamples
        assert ds[2] == pytest.approx(4.016, abs=1e-3)  # measured, not truncated to 4 or int()-ed
        assert w.best_level(4.0) == 2  # 4.016 ≤ 4·(1+1%) → read level 2 and upsample by 0.4 %
        assert w.best_level(3.9) == 1
        out = w.read_region_l0(0, 0, 256, 64)
        raw = np.asarray(openslide.OpenSlide(str(SLIDES / "boxes.tiff")).read_region((0, 0), 2, (64, 64)).convert("RGB"))
        assert out.shape == (64, 64, 3)
        assert np.abs(out.astype(int) - raw.astype(int)).mean() < 12


def test_best_level_never_truncates():
    assert best_level([1.0, 2.0, 3.9998], 4.0) == 2
    assert best_level([1.0, 2.0, 3.9998], 3.0) == 1
    assert best_level([1.0, 4.0, 16.0], 0.5) == 0  # upsampling reads level 0


def test_dicom_pair_opens_from_first_file():
    with open_slide(SLIDES / "boxes_0.dcm") as w:
        assert w.vendor == "dicom"
        assert w.mpp == pytest.approx(0.499)
        px = w.read_region_l0(0, 0, 16, 16)
        assert px.shape == (16, 16, 3) and px.std() > 0


def test_unopenable_and_unreadable_give_clear_errors():
    with pytest.raises(SlideOpenError, match="unopenable.tiff"):
        open_slide(SLIDES / "unopenable.tiff")
    with pytest.raises(SlideOpenError, match="not found"):
        open_slide(SLIDES / "does_not_exist.svs")
    w = open_slide(SLIDES / "unreadable.svs")  # header is fine
    with pytest.raises(SlideReadError, match="unreadable.svs.*reading pixels failed"):
        w.check_readable()


def test_mpp_chain_order_and_sources(tmp_path):
    p = tmp_path / "s.svs"
    assert resolve_mpp({"aperio.MPP": "0.2527"}, p) == (0.2527, "aperio.MPP")
    assert resolve_mpp({"hamamatsu.XResolution": "456"}, p) == (0.456, "hamamatsu.XResolution")
    assert resolve_mpp({"openslide.comment": "Aperio |AppMag = 40|MPP = 0.25"}, p)[0] == 0.25
    assert resolve_mpp({"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"}, p)[0] == pytest.approx(0.25)
    assert resolve_mpp({"tiff.XResolution": "101600", "tiff.ResolutionUnit": "inch"}, p)[0] == pytest.approx(0.25)
    # mpp-x wins over vendor keys; an implausible first key falls through to the next plausible one
    assert resolve_mpp({"openslide.mpp-x": "0.5", "openslide.mpp-y": "0.5", "aperio.MPP": "0.25"}, p)[1] == "openslide.mpp-x/y"
    assert resolve_mpp({"openslide.mpp-x": "350", "aperio.MPP": "0.25"}, p) == (0.25, "aperio.MPP")
    # objective power only as the flagged last resort
    assert resolve_mpp({"openslide.objective-power": "40"}, p) == (0.25, "objective-power (assumed 10/mag)")
    assert len(metadata_mpp_candidates({"tiff.XResolution": "1", "tiff.ResolutionUnit": "none"})) == 0


def test_missing_or_nonsense_mpp_names_mpp_csv_and_override_works(tmp_path):
    with pytest.raises(MppError, match="--mpp-csv"):
        resolve_mpp({}, tmp_path / "x.svs")
    with pytest.raises(MppError, match="--mpp-csv"):
        open_slide(SLIDES / "boxes.tiff")  # 352 µm/px from the TIFF resolution tags
    with pytest.raises(MppError, match="--mpp-csv"):
        open_slide(SLIDES / "boxes.tiff", mpp=35.0)
    csv_path = tmp_path / "mpp.csv"
    csv_path.write_text("slide,mpp\nboxes.tiff,0.8\ncmu_small_region,0.25\n")
    with open_slide(SLIDES / "boxes.tiff", mpp_csv=csv_path) as w:  # matched by file name
        assert w.mpp == 0.8 and "--mpp-csv" in w.mpp_source
    with open_slide(CMU, mpp_csv=csv_path) as w:  # matched by id; override beats metadata
        assert w.mpp == 0.25
    assert read_mpp_csv(csv_path)["boxes.tiff"] == 0.8
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,mpp\nboxes,12\n")
    with pytest.raises(MppError, match="--mpp-csv"):
        open_slide(SLIDES / "boxes.tiff", mpp_csv=bad)


def test_wsi_pickles_and_reopens():
    w = open_slide(CMU)
    a = w.read_region_l0(256, 256, 256, 64)
    w2 = pickle.loads(pickle.dumps(w))
    assert w2._slide is None
    np.testing.assert_array_equal(w2.read_region_l0(256, 256, 256, 64), a)
    w.reopen()
    np.testing.assert_array_equal(w.read_region_l0(256, 256, 256, 64), a)
    w.close()
    w2.close()


def test_thumbnail_at_mpp_is_read_in_pieces_consistently():
    with open_slide(CMU) as w:
        whole, scale = w.thumbnail_at_mpp(8.0)
        assert scale == pytest.approx(8.0 / 0.499)
        assert whole.shape == (round(2967 / scale), round(2220 / scale), 3)
        pieces = w._read_chunked(scale, whole.shape[1], whole.shape[0], piece=48)  # many small reads
        assert np.abs(whole.astype(int) - pieces.astype(int)).mean() < 2.0
        assert w.thumbnail(300).shape == (300, 224, 3)
