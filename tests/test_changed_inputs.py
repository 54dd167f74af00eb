"""Issue 25, finding 3: `tile` and `extract` record what they consumed (the slide's size + partial content hash,
the coordinate file's sha256) and redo — or refuse with one line — an output whose input changed; a replaced slide
is never reported "skipped"."""

from __future__ import annotations

import csv
import shutil

import pytest

from zoomfeat.bags import bag_path, read_bag_attrs
from zoomfeat.cli import main


def _status(folder) -> dict[str, str]:
    with open(folder / "summary.csv", newline="") as fh:
        return {r["slide"]: r["status"] for r in csv.DictReader(fh)}


@pytest.fixture()
def cohort(tmp_path):
    """Two small synthetic slides and a spare third one with other pixels (the 'replacement')."""
    from zoomfeat.slides.synthetic import make_slide

    slides = tmp_path / "slides"
    make_slide(slides / "syn000.tiff", size_20x=(768, 768), seed=0, subtype=0)
    make_slide(slides / "syn001.tiff", size_20x=(768, 768), seed=1, subtype=1)
    make_slide(tmp_path / "other.tiff", size_20x=(1024, 768), seed=5, subtype=0)
    return tmp_path


def _extract(root, out, *extra) -> int:
    return main(["extract", str(root / "slides"), "--encoder", "tiny-vit", "--out", str(out), "--workers", "1",
                 "--batch-size", "8", "--no-progress", *extra])


def test_file_fingerprint_sees_replacement_not_copy(tmp_path):
    from zoomfeat.io import file_fingerprint

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * (3 << 20))
    shutil.copy(a, b)  # a copy (new mtime) is the same input
    assert file_fingerprint(a) == file_fingerprint(b)
    b.write_bytes(b"x" * (3 << 20 - 1) + b"y")  # last byte differs
    assert file_fingerprint(a) != file_fingerprint(b)
    b.write_bytes(b"x" * (3 << 20) + b"x")  # size differs
    assert file_fingerprint(a) != file_fingerprint(b)


def test_replaced_slide_is_retiled_and_reextracted(cohort):
    root, tiles, out = cohort, cohort / "tiles", cohort / "feats"
    assert main(["tile", str(root / "slides"), "--out", str(tiles), "--no-progress"]) == 0
    assert _extract(root, out, "--tiles", str(tiles)) == 0
    feat = bag_path(out, "tiny-vit", "syn001").parent
    old_bag = read_bag_attrs(bag_path(out, "tiny-vit", "syn001"))
    assert old_bag["slide_fingerprint"] and old_bag["coords_sha256"]
    # unchanged inputs: both steps skip everything
    assert main(["tile", str(root / "slides"), "--out", str(tiles), "--no-progress"]) == 0
    assert set(_status(tiles).values()) == {"skipped"}
    assert _extract(root, out, "--tiles", str(tiles)) == 0
    assert set(_status(feat).values()) == {"skipped"}

    shutil.copy(root / "other.tiff", root / "slides" / "syn001.tiff")  # another slide copied over syn001
    # extract before re-tiling: the coordinate file belongs to the old slide → refused in one line, not skipped
    assert _extract(root, out, "--tiles", str(tiles)) == 2
    st = _status(feat)
    assert st == {"syn000": "skipped", "syn001": "failed"}
    err = next(r for r in csv.DictReader(open(feat / "summary.csv"))
               if r["slide"] == "syn001")["error"]
    assert err.startswith("InputChangedError:") and "re-run `zoomfeat tile`" in err and "\n" not in err
    # tile notices the replaced slide and redoes it
    assert main(["tile", str(root / "slides"), "--out", str(tiles), "--no-progress"]) == 0
    assert _status(tiles) == {"syn000": "skipped", "syn001": "done"}
    # extract redoes the bag: it now matches the new slide and its new coordinates
    assert _extract(root, out, "--tiles", str(tiles)) == 0
    assert _status(feat) == {"syn000": "skipped", "syn001": "done"}
    new_bag = read_bag_attrs(bag_path(out, "tiny-vit", "syn001"))
    assert new_bag["slide_fingerprint"] != old_bag["slide_fingerprint"]
    assert new_bag["coords_sha256"] != old_bag["coords_sha256"]


def test_retiled_coords_redo_the_bag_and_on_the_fly_tiles_follow_the_slide(cohort):
    """Deleting the coordinates and re-tiling with other settings changes the coords file: the bag is redone. Without
    --tiles, the on-the-fly tiling of a replaced slide is redone too."""
    root, tiles, out = cohort, cohort / "tiles", cohort / "feats"
    assert main(["tile", str(root / "slides"), "--out", str(tiles), "--no-progress"]) == 0
    assert _extract(root, out, "--tiles", str(tiles)) == 0
    (tiles / "coords" / "syn000.h5").unlink()
    assert main(["tile", str(root / "slides"), "--out", str(tiles), "--no-progress", "--min-tissue", "0.05"]) == 0
    assert _extract(root, out, "--tiles", str(tiles)) == 0
    assert _status(bag_path(out, "tiny-vit", "x").parent)["syn000"] == "done"

    fly = root / "fly"
    assert _extract(root, fly) == 0
    shutil.copy(root / "other.tiff", root / "slides" / "syn000.tiff")
    assert _extract(root, fly) == 0
    assert _status(bag_path(fly, "tiny-vit", "x").parent) == {"syn000": "done", "syn001": "skipped"}
    from zoomfeat.io import file_fingerprint
    from zoomfeat.slides.tiling import recorded_fingerprint

    fp = file_fingerprint(root / "slides" / "syn000.tiff")
    assert recorded_fingerprint(fly / "_tiles" / "coords" / "syn000.h5") == fp
    assert read_bag_attrs(bag_path(fly, "tiny-vit", "syn000"))["slide_fingerprint"] == fp


def test_bags_without_input_record_stay_valid(cohort):
    """Backward compatibility: a bag written before inputs were recorded is trusted (skipped) as before."""
    import h5py

    root, out = cohort, cohort / "feats"
    assert _extract(root, out) == 0
    for sid in ("syn000", "syn001"):
        with h5py.File(bag_path(out, "tiny-vit", sid), "a") as f:
            del f.attrs["slide_fingerprint"], f.attrs["coords_sha256"]
    assert _extract(root, out) == 0
    assert set(_status(bag_path(out, "tiny-vit", "x").parent).values()) == {"skipped"}


def test_probe_cache_notices_a_replaced_slide(cohort, monkeypatch):
    """`zoomfeat probe` cached each slide's means under its id and the sweep settings only: after another slide was
    copied over syn000.tiff it returned the old slide's means, exit 0, even after re-tiling (issue-25 re-trial).
    Now the cache entry is keyed by the slide's fingerprint and its coordinate file too: stale coordinates fail that
    slide with one line, re-tiling recomputes it, the untouched slide stays cached. (UNet passes stubbed.)"""
    import numpy as np

    from zoomfeat import probe
    from zoomfeat.slides.tiling import tile_cohort

    root = cohort
    tile_cohort(root / "slides", root / "tiles", progress=False, qc=False)
    calls: list[str] = []
    monkeypatch.setattr(probe, "read_probe_tiles", lambda slide, *a, **k: slide)
    monkeypatch.setattr(probe, "zoomldm_slide_means",
                        lambda ldm, tiles, sid, spec, ssl: calls.append(sid) or {"m": np.zeros(1)})
    monkeypatch.setattr(probe, "baseline_slide_means", lambda *a: {})

    def run():
        return probe.compute_means(sorted((root / "slides").glob("*.tiff")), root / "tiles", root / "cache", None,
                                   probe.SweepSpec(), "model-key", None, {}, progress=False)

    run()
    run()
    assert calls == ["syn000", "syn001"]  # the second run is answered from the cache
    shutil.copy(root / "other.tiff", root / "slides" / "syn000.tiff")
    means, failed = run()
    assert [f["slide"] for f in failed] == ["syn000"] and "InputChangedError" in failed[0]["error"]
    assert list(means) == ["syn001"] and calls == ["syn000", "syn001"]
    tile_cohort(root / "slides", root / "tiles", progress=False, qc=False)
    means, failed = run()
    assert not failed and calls == ["syn000", "syn001", "syn000"]
