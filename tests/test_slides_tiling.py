"""Tiling: linked 20x/5x grids, coordinate HDF5 interop (CLAM/TRIDENT), resume after a kill, per-slide errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest

from tests.conftest import ROOT, SLIDES
from zoomfeat.cli import main as cli_main
from zoomfeat.slides import coords_path, geojson_path, open_slide, qc_path, read_coords
from zoomfeat.slides import tiling
from zoomfeat.slides.synthetic import make_slide
from zoomfeat.slides.tissue import read_geojson

CMU = SLIDES / "cmu_small_region.svs"
SIZE = (1536, 1280)  # 20x px


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("syn")
    out = {
        "s20": make_slide(d / "s20.tiff", subtype=2, latent_risk=0.3, hrd=1, mpp=0.5, size_20x=SIZE, seed=5),
        "s40": make_slide(d / "s40.tiff", subtype=2, latent_risk=0.3, hrd=1, mpp=0.25, size_20x=SIZE, seed=5,
                          downsamples=(1, 2, 8)),
        "a": make_slide(d / "a.tiff", subtype=0, mpp=0.5, size_20x=(1280, 1024), seed=1),
        "b": make_slide(d / "b.tiff", subtype=1, mpp=0.5, size_20x=(1280, 1024), seed=2),
        "nompp": make_slide(d / "nompp.tiff", subtype=1, mpp=None, size_20x=(1280, 1024), seed=3),
    }
    return {k: d / f"{v.slide}.tiff" for k, v in out.items()}


@pytest.fixture(scope="module")
def cmu_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cmu")
    rc = cli_main(["tile", str(CMU), "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


VOLATILE = {"created_utc", "savetodir", "save_path"}  # time and output folder


def _h5_content(path: Path) -> dict:
    """Everything in a coordinate file except the creation time and the output folder name."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()].tobytes()
            for k, v in obj.attrs.items():
                if k not in VOLATILE:
                    out[f"{name}@{k}"] = repr(v)
        f.visititems(visit)
        for k, v in f.attrs.items():
            if k not in VOLATILE:
                out[f"@{k}"] = repr(v)
    return out


def test_cmu_tiles_consistent_with_size(cmu_out):
    g = read_coords(coords_path(cmu_out, "cmu_small_region"))
    assert g.mpp_level0 == pytest.approx(0.499) and g.target_mpp == 0.5
    # 0.499 µm/px is within the 1 % snap tolerance → 256 level-0 px per tile, read natively at level 0
    assert g.patch_size == 256 and g.patch_size_level0 == 256 and g.patch_level == 0
    nx, ny = 2220 // 256, 2967 // 256
    assert 20 <= len(g) <= nx * ny  # tissue covers a good part of the crop, never more than the full grid
    assert g.coords.dtype == np.int64 and (g.coords % 256 == 0).all()
    assert (g.coords[:, 0] + 256 <= 2220).all() and (g.coords[:, 1] + 256 <= 2967).all()
    # row-major order
    order = np.lexsort((g.coords[:, 0], g.coords[:, 1]))
    assert (order == np.arange(len(g))).all()
    assert (g.tissue_fraction >= 0.25).all()
    assert qc_path(cmu_out, "cmu_small_region").stat().st_size > 1000
    summary = json.loads((cmu_out / "summary.json").read_text())
    assert summary["counts"] == {"done": 1}


def test_every_20x_tile_inside_its_5x_parent(cmu_out):
    g = read_coords(coords_path(cmu_out, "cmu_small_region"))
    assert g.patch_size_level0_5x == 4 * g.patch_size_level0
    p = g.coords_5x[g.parent_index]
    assert (g.coords >= p).all() and (g.coords + g.patch_size_level0 <= p + g.patch_size_level0_5x).all()
    # 5x lattice = floor(ix/4), floor(iy/4); every region has at least one kept child, no duplicates
    idx = g.coords // g.patch_size_level0
    np.testing.assert_array_equal(g.coords_5x[g.parent_index] // g.patch_size_level0_5x, idx // 4)
    assert set(g.parent_index.tolist()) == set(range(len(g.coords_5x)))
    assert len(np.unique(g.coords_5x, axis=0)) == len(g.coords_5x)


def test_tissue_geojson_matches_tiles(cmu_out):
    geom = read_geojson(geojson_path(cmu_out, "cmu_small_region"))
    assert geom.area > 0.1 * 2220 * 2967
    from shapely.geometry import box

    g = read_coords(coords_path(cmu_out, "cmu_small_region"))
    inter = [geom.intersection(box(x, y, x + 256, y + 256)).area / 256**2 for x, y in g.coords]
    assert np.mean(inter) > 0.5  # kept tiles are mostly inside the tissue polygons


def test_clam_and_trident_style_reads_of_our_files(cmu_out, syn, tmp_path):
    # CLAM: read_region(coords[i], patch_level, (patch_size,)*2) gives exactly our tile
    path = coords_path(cmu_out, "cmu_small_region")
    with h5py.File(path, "r") as f:
        c = f["coords"][:]
        a = dict(f["coords"].attrs)
    osr = openslide.OpenSlide(str(CMU))
    with open_slide(CMU) as w:
        for i in (0, len(c) // 2, len(c) - 1):
            clam = np.asarray(osr.read_region(tuple(int(v) for v in c[i]), int(a["patch_level"]),
                                              (int(a["patch_size"]),) * 2).convert("RGB"))
            np.testing.assert_array_equal(clam, w.read_region_l0(int(c[i, 0]), int(c[i, 1]), 256, 256))
    # TRIDENT on a 40x slide: patch_size_src = patch_size * level0_mag / target_mag, best level + resize
    tiling.tile_cohort([syn["s40"]], tmp_path, progress=False, min_tissue=0.5)
    with h5py.File(coords_path(tmp_path, "s40"), "r") as f:
        c = f["coords"][:]
        a = dict(f["coords"].attrs)
    assert a["level0_magnification"] == 40 and a["target_magnification"] == 20 and a["patch_size_level0"] == 512
    assert a["patch_level"] == 1 and a["patch_size"] == 256  # the 2x level holds the 20x tile natively
    src = int(a["patch_size"] * a["level0_magnification"] / a["target_magnification"])
    osr = openslide.OpenSlide(str(syn["s40"]))
    level = osr.get_best_level_for_downsample(src / a["patch_size"] + 0.1)
    with open_slide(syn["s40"]) as w:
        for i in (0, len(c) - 1):
            ds = osr.level_downsamples[level]
            rd = int(round(src / ds))
            img = osr.read_region(tuple(int(v) for v in c[i]), level, (rd, rd)).convert("RGB").resize((256, 256))
            ours = w.read_region_l0(int(c[i, 0]), int(c[i, 1]), 512, 256)
            assert np.abs(np.asarray(img).astype(int) - ours.astype(int)).mean() < 2.0


def test_read_clam_and_trident_coordinate_files(tmp_path):
    c = np.array([[0, 0], [512, 0], [0, 512]], np.int64)
    clam = tmp_path / "patches" / "slideA.h5"
    clam.parent.mkdir()
    with h5py.File(clam, "w") as f:  # as CLAM's create_patches_fp.py writes it
        d = f.create_dataset("coords", data=c, chunks=(1, 2), maxshape=(None, 2))
        d.attrs.update({"patch_size": 256, "patch_level": 1, "downsample": np.array([2.0, 2.0]),
                        "downsampled_level_dim": np.array([5000, 4000]), "level_dim": np.array([5000, 4000]),
                        "name": "slideA", "save_path": str(tmp_path)})
    g = read_coords(clam, mpp=0.25)
    assert g.attrs["format"] == "clam" and g.slide == "slideA"
    assert g.patch_size_level0 == 512 and g.target_mpp == pytest.approx(0.5) and g.patch_level == 1
    np.testing.assert_array_equal(g.coords, c)
    assert read_coords(clam).mpp_level0 is None  # CLAM records no resolution
    trident = tmp_path / "20x_256px_0px_overlap" / "patches" / "slideB_patches.h5"
    trident.parent.mkdir(parents=True)
    with h5py.File(trident, "w") as f:  # as TRIDENT's IO.coords_to_h5 writes it
        d = f.create_dataset("coords", data=c, chunks=(1, 2), maxshape=(None, 2))
        d.attrs.update({"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                        "target_magnification": 20, "overlap": 0, "name": "slideB", "savetodir": "x",
                        "level0_width": 5000, "level0_height": 4000})
    g = read_coords(trident)
    assert g.attrs["format"] == "trident" and g.slide == "slideB"
    assert g.patch_size_level0 == 512 and g.mpp_level0 == pytest.approx(0.25) and g.target_mpp == pytest.approx(0.5)
    with pytest.raises(ValueError):
        bad = tmp_path / "bad.h5"
        with h5py.File(bad, "w") as f:
            f.create_dataset("features", data=np.zeros((2, 3)))
        read_coords(bad)


def test_20x_and_40x_slides_give_same_physical_grid(syn, tmp_path):
    rep = tiling.tile_cohort([syn["s20"], syn["s40"]], tmp_path, progress=False, scales="all")
    assert rep.exit_code == 0
    g20 = read_coords(coords_path(tmp_path, "s20"))
    g40 = read_coords(coords_path(tmp_path, "s40"))
    assert g20.patch_size_level0 == 256 and g40.patch_size_level0 == 512
    s20 = {tuple(v) for v in g20.coords // 256}
    s40 = {tuple(v) for v in g40.coords // 512}
    assert len(s20 & s40) / len(s20 | s40) > 0.95  # same lattice; tissue calls agree up to border tiles
    assert sorted(g20.scales) == list(range(8)) and sorted(g40.scales) == list(range(8))
    for k in range(1, 8):
        c20, z20 = g20.scales[k]
        c40, z40 = g40.scales[k]
        assert z40 == 2 * z20 == 2 * 256 * 2**k
    # CLAM attributes per scale where a level holds the region natively: 5x = 256 px at level 1 (4x) of s20
    with h5py.File(coords_path(tmp_path, "s20"), "r") as f:
        a5 = dict(f["5x/coords"].attrs)
        c5 = f["5x/coords"][:]
        assert a5["patch_level"] == 1 and a5["patch_size"] == 256 and a5["patch_size_level0"] == 1024
        assert "patch_level" not in f["10x/coords"].attrs  # 512 level-0 px is 512 or 128 px at the levels
    osr = openslide.OpenSlide(str(syn["s20"]))
    with open_slide(syn["s20"]) as w:
        x5, y5 = (int(v) for v in c5[0])
        clam5 = np.asarray(osr.read_region((x5, y5), 1, (256, 256)).convert("RGB"))
        np.testing.assert_array_equal(clam5, w.read_region_l0(x5, y5, 1024, 256))
    # the same physical 20x tile reads (almost) the same from both slides
    x, y = sorted(s20 & s40)[len(s20 & s40) // 2]
    with open_slide(syn["s20"]) as a, open_slide(syn["s40"]) as b:
        t20 = a.read_at_mpp(x * 256, y * 256, 256, 0.5).astype(int)
        t40 = b.read_at_mpp(x * 512, y * 512, 256, 0.5).astype(int)
    assert np.abs(t20 - t40).mean() < 4.0


def test_missing_mpp_fails_naming_mpp_csv_then_tiles_with_override(syn, tmp_path):
    rep = tiling.tile_cohort([syn["nompp"], syn["a"]], tmp_path, progress=False)
    assert rep.exit_code == 3
    err = {r.slide: r.error for r in rep.results}["nompp"]
    assert "--mpp-csv" in err and "MppError" in err
    assert not coords_path(tmp_path, "nompp").exists()
    csv_path = tmp_path / "mpp.csv"
    csv_path.write_text("slide,mpp\nnompp,0.5\n")
    rc = cli_main(["tile", str(syn["nompp"]), "--out", str(tmp_path), "--mpp-csv", str(csv_path), "--no-progress"])
    assert rc == 0
    g = read_coords(coords_path(tmp_path, "nompp"))
    assert g.mpp_level0 == 0.5 and "--mpp-csv" in g.mpp_source and len(g) > 0


def test_fixture_folder_per_slide_errors_and_exit_codes(tmp_path, capsys):
    rc = cli_main(["tile", str(SLIDES), "--out", str(tmp_path), "--no-progress"])
    assert rc == 3  # CMU tiles, the others fail
    rows = {r.split(",")[0]: r for r in (tmp_path / "summary.csv").read_text().splitlines()[1:]}
    assert "done" in rows["cmu_small_region"]
    assert "SlideOpenError" in rows["unopenable"]
    assert "SlideReadError" in rows["unreadable"]
    assert "--mpp-csv" in rows["boxes"]  # 352 µm/px in its TIFF tags
    assert "smaller than one" in rows["boxes_0"]  # 16x16 DICOM
    printed = capsys.readouterr().out
    assert "FAILED unopenable" in printed
    # rerun: CMU skipped; every slide attempted this time failed → 2 (zoomfeat.cohort's documented rule)
    assert cli_main(["tile", str(SLIDES), "--out", str(tmp_path), "--no-progress"]) == 2
    assert "skipped" in (tmp_path / "summary.csv").read_text()
    # all failed → 2
    assert cli_main(["tile", str(SLIDES / "unopenable.tiff"), "--out", str(tmp_path / "x"), "--no-progress"]) == 2


def test_injected_crash_then_rerun_gives_identical_output(syn, tmp_path, monkeypatch):
    slides = [syn["a"], syn["b"], syn["s20"]]
    clean = tmp_path / "clean"
    assert tiling.tile_cohort(slides, clean, progress=False).exit_code == 0
    crashed = tmp_path / "crashed"
    real = tiling.write_coords
    calls = {"n": 0}

    def dying(path, grid, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            with h5py.File(Path(path).with_name(".partial.h5"), "w") as f:  # a half-written temp file
                f.create_dataset("coords", data=grid.coords[:1])
            raise KeyboardInterrupt  # like Ctrl-C / a kill: not caught per slide
        return real(path, grid, *a, **k)

    monkeypatch.setattr(tiling, "write_coords", dying)
    with pytest.raises(KeyboardInterrupt):
        tiling.tile_cohort(slides, crashed, progress=False)
    monkeypatch.setattr(tiling, "write_coords", real)
    assert coords_path(crashed, "a").exists() and not coords_path(crashed, "b").exists()
    rep = tiling.tile_cohort(slides, crashed, progress=False)
    assert [r.status for r in rep.results] == ["skipped", "done", "done"]
    for s in ("a", "b", "s20"):
        assert _h5_content(coords_path(clean, s)) == _h5_content(coords_path(crashed, s))


def test_killed_subprocess_then_rerun_gives_identical_output(syn, tmp_path):
    slides = [syn["a"], syn["b"], syn["s20"], syn["s40"]]
    out = tmp_path / "killed"
    code = (
        "import sys; from zoomfeat.slides.tiling import tile_cohort; "
        f"tile_cohort({[str(s) for s in slides]!r}, {str(out)!r}, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < 60 and not coords_path(out, "a").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-cohort, possibly mid-write
    proc.wait()
    done_before = {s.stem for s in slides if coords_path(out, s.stem).exists()}
    assert len(done_before) < len(slides)
    rep = tiling.tile_cohort(slides, out, progress=False)
    assert rep.exit_code == 0
    assert {r.slide for r in rep.results if r.status == "skipped"} == done_before
    assert not list((out / "coords").glob(".*.tmp"))  # temp files of the killed run were cleaned up
    assert not list((out / ".locks").glob("*.lock"))  # its stale lock was taken over and released
    clean = tmp_path / "clean"
    tiling.tile_cohort(slides, clean, progress=False)
    for s in slides:
        assert _h5_content(coords_path(clean, s.stem)) == _h5_content(coords_path(out, s.stem))


def test_parallel_workers_match_sequential(syn, tmp_path):
    slides = [syn["a"], syn["b"]]
    seq = tiling.tile_cohort(slides, tmp_path / "seq", progress=False)
    par = tiling.tile_cohort(slides, tmp_path / "par", workers=2, progress=False)
    assert [r.status for r in par.results] == ["done", "done"] == [r.status for r in seq.results]
    for s in ("a", "b"):
        assert _h5_content(coords_path(tmp_path / "seq", s)) == _h5_content(coords_path(tmp_path / "par", s))


def test_blank_slide_fails_with_no_tissue(tmp_path):
    from zoomfeat.slides.synthetic import write_pyramid_tiff

    blank = np.full((768, 768, 3), 241, np.uint8)
    write_pyramid_tiff(tmp_path / "blank.tiff", blank, mpp=0.5)
    rep = tiling.tile_cohort([tmp_path / "blank.tiff"], tmp_path / "out", progress=False)
    assert rep.exit_code == 2
    assert "NoTissueError" in rep.results[0].error and "--min-tissue" in rep.results[0].error
