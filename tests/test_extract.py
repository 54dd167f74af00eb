"""`zoomfeat extract` end to end with the tiny ZoomLDM: the real CMU slide, synthetic slides, 5x conditioning grids,
kill + resume, rank sharding, per-slide failures, and CLAM-/TRIDENT-style reading of the bags."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests._fx_extract import run_forked, zoomfeat_main
from tests.conftest import ROOT, SLIDES, MICRO_LDM
from zoomfeat.bags import bag_path, list_bags, load_bag
from zoomfeat.cli import main

CKPT = MICRO_LDM / "weights.ckpt"

CMU = SLIDES / "cmu_small_region.svs"
SIZES = [(768, 768), (1024, 768), (640, 896), (768, 1024)]
SEEDS = [0, 1, 2, 5]  # all four give tissue tiles


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four small synthetic slides (2–9 tissue tiles each, one or two 5x regions) and their tiling."""
    from zoomfeat.slides.synthetic import make_slide
    from zoomfeat.slides.tiling import tile_slide

    root = tmp_path_factory.mktemp("cohort")
    for i, size in enumerate(SIZES):
        make_slide(root / "slides" / f"syn{i}.tiff", size_20x=size, seed=SEEDS[i], subtype=i % 2)
        tile_slide(root / "slides" / f"syn{i}.tiff", root / "tiles", qc=False)
    return root


def _ldm_args(out, *extra):
    return ["--encoder", "zoomldm", "--weights", str(CKPT), "--out", str(out), "--workers", "1",
            "--batch-size", "8", "--no-progress", *extra]


def test_cmu_slide_clam_and_trident_readers(tmp_path):
    """Tiny ZoomLDM on the real CMU slide (tiled on the fly), then read the bag the way CLAM and TRIDENT do."""
    import openslide

    rc = main(["extract", str(CMU), *_ldm_args(tmp_path, "--conditioning", "none", "--blocks", "0,3")])
    assert rc == 0
    p = bag_path(tmp_path, "zoomldm", "cmu_small_region")
    b = load_bag(p)
    assert b.features.shape == (37, 64) and b.features_5x.shape == (6, 64)
    assert np.isfinite(b.features).all() and b.features.std() > 0
    assert b.attrs["conditioning"] == "none" and b.attrs["block"] == [0, 3] and b.attrs["t"] == [100]
    assert b.attrs["mpp_level0"] == pytest.approx(0.499) and b.attrs["patch_size"] == 256
    assert b.attrs["encoder_weights_sha256"] and b.attrs["toolkit_version"]
    # each 20x tile lies inside its parent 5x region
    parent = b.coords_5x[b.parent_index]
    s0, s5 = b.attrs["patch_size_level0"], b.attrs["patch_size_level0_5x"]
    assert (b.coords >= parent).all() and (b.coords + s0 <= parent + s5).all()

    with h5py.File(p, "r") as f:  # CLAM (Generic_MIL_Dataset with load_from_h5 + its read_region convention)
        features = torch.from_numpy(f["features"][:])
        coords = f["coords"][:]
        level, ps = int(f["coords"].attrs["patch_level"]), int(f["coords"].attrs["patch_size"])
    assert features.shape == (37, 64) and coords.shape == (37, 2)
    with openslide.OpenSlide(str(CMU)) as osr:
        clam_tile = np.asarray(osr.read_region(tuple(int(v) for v in coords[5]), level, (ps, ps)).convert("RGB"))
    from zoomfeat.slides.reader import open_slide

    with open_slide(CMU) as wsi:
        ours = wsi.read_region_l0(int(coords[5, 0]), int(coords[5, 1]), s0, 256)
    np.testing.assert_array_equal(clam_tile, ours)

    with h5py.File(p, "r") as f:  # TRIDENT (read features + coords, patch size from the coords attributes)
        a = f["coords"].attrs
        ps0 = int(a["patch_size"] * a["level0_magnification"] // a["target_magnification"])
        assert ps0 == a["patch_size_level0"] == s0
        assert f["features"].attrs["encoder"] == "zoomldm" and f["features"].dtype == np.float32

    # rerun: the bag is complete and has the same settings → skipped
    assert main(["extract", str(CMU), *_ldm_args(tmp_path, "--conditioning", "none", "--blocks", "0,3")]) == 0
    summary = (p.parent / "summary.csv").read_text()
    assert "skipped" in summary and "done" not in summary


def test_5x_conditioning_grid_of_children(cohort, tmp_path):
    """With UNI-style conditioning a 5x region's feature is conditioned on the 4×4 grid of its children (background
    children embedded too), and each 20x feature on the tile's own embedding — recomputed here by hand."""
    from zoomfeat.encoders import TileContext, create_encoder
    from zoomfeat.encoders.zoomldm import tile_seed
    from zoomfeat.extract import ExtractOptions, extract_cohort
    from zoomfeat.slides.reader import open_slide

    enc = create_encoder("zoomldm", weights=CKPT, ssl_encoder="tiny-vit")
    slide = cohort / "slides" / "syn0.tiff"
    rep = extract_cohort([slide], enc, tmp_path, tiles_dir=cohort / "tiles",
                         opts=ExtractOptions(workers=0, batch_size=4, progress=False))
    assert rep.exit_code == 0
    info = rep.results[0].info
    b = load_bag(bag_path(tmp_path, "zoomldm", "syn0"))
    assert info["n_20x"] == len(b) and info["children_embedded_5x"] == 16 * len(b.coords_5x) - len(b)
    s = b.attrs["patch_size_level0"]
    with open_slide(slide) as wsi:
        read = lambda x, y, size: torch.from_numpy(np.array(wsi.read_region_l0(int(x), int(y), size, 256)))[None]
        x5, y5 = b.coords_5x[0]
        kids = [read(x5 + i * s, y5 + j * s, s) for j in range(4) for i in range(4)]
        ssl = enc.ssl_encoder.encode(torch.cat(kids))  # row-major: row j (y), column i (x)
        grid = ssl.T.reshape(1, -1, 4, 4)
        f5 = enc.encode(read(x5, y5, 4 * s), TileContext("5x", ssl_grid=grid,
                                                         seeds=[tile_seed("syn0", x5, y5, "5x")]))
        x0, y0 = b.coords[0]
        tile = read(x0, y0, s)
        f20 = enc.encode(tile, TileContext("20x", ssl_grid=enc.ssl_encoder.encode(tile)[:, :, None, None],
                                            seeds=[tile_seed("syn0", x0, y0, "20x")]))
    torch.testing.assert_close(torch.from_numpy(b.features_5x[:1]), f5, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(torch.from_numpy(b.features[:1]), f20, rtol=1e-3, atol=1e-3)

    # --missing-children mean: background children get the mean embedding of the region's tissue children
    rep = extract_cohort([slide], enc, tmp_path / "mean", tiles_dir=cohort / "tiles",
                         opts=ExtractOptions(workers=0, batch_size=4, progress=False, missing_children="mean"))
    bm = load_bag(bag_path(tmp_path / "mean", "zoomldm", "syn0"))
    assert "children_embedded_5x" not in rep.results[0].info and bm.attrs["missing_children_5x"] == "mean"
    np.testing.assert_array_equal(bm.features, b.features)
    kid_xy = [(x5 + i * s, y5 + j * s) for j in range(4) for i in range(4)]
    kept = torch.tensor([any((b.coords[b.parent_index == 0] == xy).all(1)) for xy in kid_xy])
    assert 0 < kept.sum() < 16
    ssl_m = ssl.clone()
    ssl_m[~kept] = ssl[kept].mean(0)
    with open_slide(slide) as wsi:
        region = torch.from_numpy(np.array(wsi.read_region_l0(int(x5), int(y5), 4 * s, 256)))[None]
    f5m = enc.encode(region, TileContext("5x", ssl_grid=ssl_m.T.reshape(1, -1, 4, 4),
                                         seeds=[tile_seed("syn0", x5, y5, "5x")]))
    torch.testing.assert_close(torch.from_numpy(bm.features_5x[:1]), f5m, rtol=1e-3, atol=1e-3)


def _cli_args(out, tiles, slides):
    return ["extract", str(slides), "--tiles", str(tiles), *_ldm_args(out, "--ssl-encoder", "tiny-vit")]


def _same_bag(p: Path, q: Path) -> None:
    a, b = load_bag(p), load_bag(q)
    for k in ("features", "coords", "features_5x", "coords_5x", "parent_index"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=f"{p.name}: {k}")
    drop = {"created_utc", "savetodir"}
    assert {k: v for k, v in a.attrs.items() if k not in drop} == {k: v for k, v in b.attrs.items() if k not in drop}


def _kill_mid_cohort_then_resume(cohort, tmp_path, kill) -> None:
    """``kill(args, feat_dir)`` runs `zoomfeat ARGS` in another process and SIGKILLs it after its first bag."""
    tiles = cohort / "tiles"
    slides = tmp_path / "slides.csv"  # the three smallest slides keep this test short
    slides.write_text("slide\n" + "".join(f"{cohort / 'slides' / f'syn{i}.tiff'}\n" for i in (0, 1, 2)))
    assert main(_cli_args(tmp_path / "full", tiles, slides)) == 0
    full = list_bags(tmp_path / "full")
    assert len(full) == 3

    feat_dir = tmp_path / "killed" / "features_zoomldm"
    kill(_cli_args(tmp_path / "killed", tiles, slides), feat_dir)
    n_before = len(list(feat_dir.glob("*.h5")))
    assert 1 <= n_before < 3, "the kill should land mid-cohort"

    assert main(_cli_args(tmp_path / "killed", tiles, slides)) == 0
    resumed = list_bags(tmp_path / "killed")
    assert sorted(resumed) == sorted(full)
    summary = (feat_dir / "summary.csv").read_text()
    assert summary.count(",skipped,") == n_before and summary.count(",done,") == 3 - n_before
    for sid in full:
        _same_bag(full[sid], resumed[sid])
    assert not list(feat_dir.glob(".*.tmp")) and not list((feat_dir / ".locks").glob("*.lock"))


@pytest.mark.slow
def test_kill_mid_cohort_then_resume_gives_identical_bags(cohort, tmp_path):
    """Uninterrupted run vs a run SIGKILLed after its first bag and then rerun: bit-identical bags. Slow form (a
    `python -m zoomfeat` subprocess killed from outside once a bag appears); the default suite runs the same checks
    with a forked child killed at its first bag: test_kill_mid_cohort_then_resume_gives_identical_bags_fast."""

    def kill(args, feat_dir):
        env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "zoomfeat", *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not list(feat_dir.glob("*.h5")):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    _kill_mid_cohort_then_resume(cohort, tmp_path, kill)


def test_kill_mid_cohort_then_resume_gives_identical_bags_fast(cohort, tmp_path):
    """Fast twin of the test above: the killed run is a forked child of this process, SIGKILLed (for real, by the
    ZOOMFEAT_KILL_AT hook) right after its first bag's rename, its lock still held."""

    def kill(args, feat_dir):
        r = run_forked(zoomfeat_main(args), tmp_path / "_fork", {"ZOOMFEAT_KILL_AT": "cohort:before_unlock"})
        assert r.returncode == -9, r.stderr

    _kill_mid_cohort_then_resume(cohort, tmp_path, kill)


def test_rank_sharding_merges_one_summary(cohort, tmp_path, monkeypatch):
    from zoomfeat.encoders import create_encoder
    from zoomfeat.extract import ExtractOptions, extract_cohort

    enc = create_encoder("tiny-vit")
    slides = sorted((cohort / "slides").glob("*.tiff"))
    opts = ExtractOptions(mags="20x", workers=0, progress=False, clam_pt=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-1")
    feat_dir = tmp_path / "features_tiny-vit"
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        rep = extract_cohort(slides, enc, tmp_path, tiles_dir=cohort / "tiles", opts=opts)
        assert len(rep.results) == (4 if rank == 0 else 2)  # rank 0 finished last → merged report
        if rank == 1:
            assert not (feat_dir / "summary.csv").exists()
    rows = (feat_dir / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 5 and all(",done," in r for r in rows[1:])
    assert sorted(list_bags(tmp_path)) == [f"syn{i}" for i in range(4)]
    b = load_bag(bag_path(tmp_path, "tiny-vit", "syn1"))
    assert b.features.shape[1] == 48 and b.features_5x is None
    pt = load_bag(feat_dir / "pt_files" / "syn1.pt")  # --clam-pt: CLAM's training input, coords from the .h5
    assert pt.layout == "clam_pt"
    np.testing.assert_array_equal(pt.features, b.features)
    np.testing.assert_array_equal(pt.coords, b.coords)


def test_failed_slide_reported_and_missing_weights_fail_early(cohort, tmp_path, monkeypatch, capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(cohort / "slides" / "syn2.tiff", mixed / "good.tiff")
    shutil.copy(SLIDES / "unopenable.tiff", mixed / "broken.tiff")
    out = tmp_path / "out"
    cfg = tmp_path / "extract.yaml"  # options may come from a YAML config; the command line wins
    cfg.write_text("encoder:\n  name: tiny-vit\nmags: 20x\nworkers: 0\nbatch_size: 4\n")
    rc = main(["extract", str(mixed), "--config", str(cfg), "--out", str(out), "--mags", "20x,5x", "--no-progress"])
    assert rc == 3  # partial: one slide failed, the other was written
    assert list(list_bags(out)) == ["good"]
    assert "broken" in (out / "features_tiny-vit" / "summary.json").read_text()
    assert load_bag(bag_path(out, "tiny-vit", "good")).features_5x is not None
    cfg.write_text("encoder:\n  name: tiny-vit\nnot_an_option: 1\n")
    assert main(["extract", str(mixed), "--config", str(cfg), "--out", str(out)]) == 2
    assert "unknown option(s) 'not_an_option'" in capsys.readouterr().err

    empty = tmp_path / "registry.yaml"
    empty.write_text("uni: null\n")
    monkeypatch.setenv("ZOOMFEAT_WEIGHTS_REGISTRY", str(empty))
    rc = main(["extract", str(mixed), "--encoder", "uni", "--out", str(tmp_path / "never")])
    assert rc == 2 and "no weights for encoder 'uni'" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    rc = main(["extract", str(mixed), "--encoder", "zoomldm", "--weights", str(CKPT), "--out", str(tmp_path / "x")])
    assert rc == 2 and "--ssl-weights" in capsys.readouterr().err  # conditioning uni without UNI weights
    with pytest.raises(SystemExit):
        main(["extract", str(mixed), "--encoder", "tiny-vit", "--out", str(out), "--blocks", "a,b"])
    assert main(["extract", str(mixed), "--encoder", "tiny-vit", "--out", str(out), "--mags", "5x"]) == 2


def test_official_ckpt_options_online_and_official_config(tmp_path):
    """`--online` loads the online UNet of an official .ckpt (other features than the EMA default, the same as
    ZoomLDM.load(ema=False)); `--official-config` names a config.yaml that is not beside the checkpoint."""
    from zoomfeat.cli import build_parser
    from zoomfeat.cli.extract import config_from_args
    from zoomfeat.encoders import TileContext, build_from_options, create_encoder
    from zoomfeat.ldm import ZoomLDM

    alone = tmp_path / "ckpt" / "weights.ckpt"
    alone.parent.mkdir()
    shutil.copy(CKPT, alone)  # no config.yaml beside it

    def features(*flags, encoder_out=None):
        args = build_parser().parse_args(["extract", "x.svs", "--encoder", "zoomldm", "--conditioning", "none",
                                          "--precision", "fp32", *flags])
        enc = build_from_options(config_from_args(args).encoder)
        if encoder_out is not None:
            encoder_out.append(enc)
        x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
        return enc.encode(x, TileContext("20x", seeds=[0, 1]))

    built: list = []
    ema = features("--weights", str(CKPT), encoder_out=built)
    online = features("--weights", str(CKPT), "--online", encoder_out=built)
    assert not torch.allclose(ema, online, atol=1e-3)
    # same file, same sha256: the online UNet is recorded, so signatures (resume) and `predict` tell them apart
    assert "unet_weights" not in built[0].full_config() and built[1].full_config()["unet_weights"] == "online"
    from zoomfeat.extract import ExtractOptions, extract_signature

    assert extract_signature(built[0], ExtractOptions(), "t") != extract_signature(built[1], ExtractOptions(), "t")
    ref = create_encoder("zoomldm", ldm=ZoomLDM.load(CKPT, ema=False), conditioning="none", precision="fp32")
    torch.testing.assert_close(online, ref.encode(torch.from_numpy(np.random.default_rng(0).integers(
        0, 256, (2, 64, 64, 3), dtype=np.uint8)), TileContext("20x", seeds=[0, 1])), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        features("--weights", str(alone))
    torch.testing.assert_close(features("--weights", str(alone), "--official-config", str(MICRO_LDM / "config.yaml")),
                               ema, rtol=0, atol=0)
