"""Multi-scale training set: build on a tiny synthetic cohort, resume, shard layout, bad-input errors, sampling."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

TINY_LDM_CFG = "ldm/zoomldm_tiny.yaml"
MAX_PER_SCALE = 6


def tiny_train_cfg(root: Path, **train) -> dict:
    """The tiny training config pointed at a shared, small dataset (2 slides of 2048² px at 20x)."""
    from zoomfeat.train.config import load_train_config

    cfg = load_train_config("configs/train/tiny.yaml")
    cfg["model"]["config"] = TINY_LDM_CFG  # the shared dataset was encoded by this random VQ: no first-stage training
    cfg["first_stage"] = {"train": False}
    cfg["dataset"]["root"] = str(root)
    cfg["dataset"]["build"]["synthetic"] = {"n_slides": 2, "seed": 0, "sizes_20x": [2048], "progress": False}
    cfg["dataset"]["build"]["max_per_scale"] = MAX_PER_SCALE
    cfg["wandb"]["enabled"] = False
    cfg["train"].update(train)
    return cfg



@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Build (once per test run) the tiny config's dataset through the self-contained path of `zoomfeat train`.

    Under pytest-xdist the workers share one build: it lives in the run's common base folder (the parent of each
    worker's own), and the first worker to take the file lock builds it while the others wait, then find it
    complete (``ensure_dataset`` skips a complete dataset). Tests that write into a dataset work on a copy."""
    from filelock import FileLock

    from zoomfeat.train.loop import ensure_dataset, make_model

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # one folder per run, common to its workers
    root = base / "train_tiny_dataset"
    with FileLock(str(base / "train_tiny_dataset.lock")):
        cfg = tiny_train_cfg(root)
        ensure_dataset(cfg, root, make_model(cfg), progress=False)
    return root


def tiny_ldm():
    from zoomfeat.train.loop import make_model

    return make_model(tiny_train_cfg(Path("unused")))


def test_build_layout_counts_and_shared_ssl(tiny_dataset):
    import json

    import pandas as pd

    meta = json.loads((tiny_dataset / "meta.json").read_text())
    assert meta["complete"] and meta["patch_px"] == 64 and meta["ssl_dim"] == 48 and meta["pool_to"] == 8
    idx = pd.read_csv(tiny_dataset / "index.csv")
    counts = idx.groupby("scale").size().to_dict()
    assert {int(k): int(v) for k, v in counts.items()} == {int(k): v for k, v in meta["counts"].items() if v}
    assert sum(meta["counts"].values()) == len(idx)
    assert set(idx["slide"]) == {"syn000", "syn001"}
    assert set(idx["scale"]) >= {0, 1, 2, 3}
    assert (idx.groupby(["slide", "scale"]).size() <= MAX_PER_SCALE).all()
    with h5py.File(tiny_dataset / idx["shard"].iloc[0]) as h5:
        for name in h5:
            k = int(name.split("_")[1])
            g = h5[name]
            assert g["latents"].shape[1:] == (3, 16, 16)
            side = min(2**k, 8)
            assert g["ssl"].shape[1:] == (48, side, side)
            assert g["latents"].shape[0] == g["ssl"].shape[0] == g["coords"].shape[0]
            assert g.attrs["size_l0"] == 256 * 2**k
        # the 20x tiles are embedded once and reused: a 10x grid's tokens are the 20x embeddings of its 4 tiles
        c0 = {tuple(c): i for i, c in enumerate(h5["scale_0"]["coords"][()])}
        ssl0, found = h5["scale_0"]["ssl"][()], 0
        for (x, y), grid in zip(h5["scale_1"]["coords"][()], h5["scale_1"]["ssl"][()]):
            for r, (dx, dy) in enumerate([(0, 0), (256, 0), (0, 256), (256, 256)]):  # row-major, rows along y
                j = c0.get((x + dx, y + dy))
                if j is not None:
                    np.testing.assert_array_equal(grid[:, r // 2, r % 2], ssl0[j, :, 0, 0])
                    found += 1
        assert found > 0, "no 10x region overlaps a sampled 20x tile; enlarge MAX_PER_SCALE"


def test_rerun_skips_done_slides(tiny_dataset, tmp_path):
    from zoomfeat.encoders import create_encoder
    from zoomfeat.train.config import ShardConfig
    from zoomfeat.train.shards import build_dataset

    slides = tiny_dataset / "cohort" / "slides"
    # a rerun rewrites meta.json (complete: false while it runs): on a copy, as other workers read the shared build
    tiny_dataset = tmp_path / "ds"
    shutil.copytree(slides.parent.parent, tiny_dataset, ignore=shutil.ignore_patterns("cohort"))
    before = (tiny_dataset / "index.csv").read_text()
    ldm = tiny_ldm()
    report = build_dataset(slides, tiny_dataset, create_encoder("tiny-vit", dim=48, seed=0),
                           ldm.vq, ShardConfig(patch_px=64, ssl_px=64, max_per_scale=MAX_PER_SCALE), progress=False)
    assert report.cohort.counts() == {"skipped": 2}
    assert (tiny_dataset / "index.csv").read_text() == before
    # a different VQ (or other settings) must not be mixed into the same folder
    torch.manual_seed(123)
    other = type(ldm).from_config(ldm.config)
    with pytest.raises(ValueError, match="vq_sha256"):
        build_dataset(slides, tiny_dataset, create_encoder("tiny-vit", dim=48, seed=0),
                      other.vq, ShardConfig(patch_px=64, ssl_px=64, max_per_scale=MAX_PER_SCALE), progress=False)


def test_scales_too_small_are_skipped_and_counted(tiny_dataset, tmp_path):
    from types import SimpleNamespace

    from zoomfeat.encoders import create_encoder
    from zoomfeat.train.config import ShardConfig
    from zoomfeat.train.shards import build_slide_shard, write_index

    slide = tiny_dataset / "cohort" / "slides" / "syn000.tiff"
    grid = SimpleNamespace(patch_size_level0=256, scales={0: (np.array([[512, 512], [768, 512]]), 256), 1: (np.zeros((0, 2)), 512)})
    ldm = tiny_ldm()
    (tmp_path / "shards").mkdir()
    info = build_slide_shard(slide, tmp_path / "shards" / "syn000.h5", grid, create_encoder("tiny-vit", dim=48, seed=0),
                             lambda x: ldm.vq.encode(x).latents, ShardConfig(patch_px=64, ssl_px=64, scales=[0, 1, 2]))
    assert info["counts"] == {0: 2} and info["skipped"] == [1, 2]
    _, counts, skipped = write_index(tmp_path)
    assert counts[0] == 2 and skipped[1] == 1 and skipped[2] == 1 and skipped[0] == 0


def _copy(ds: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(ds, dst, ignore=shutil.ignore_patterns("cohort", "coords"))
    return dst


def test_corrupt_shard_is_named(tiny_dataset, tmp_path):
    from zoomfeat.train.dataset import DatasetError, MultiScaleLatentDataset

    ds = _copy(tiny_dataset, tmp_path)
    shard = ds / "shards" / "syn001.h5"
    data = shard.read_bytes()
    shard.write_bytes(data[:100] + b"\x00garbage" * 50)
    with pytest.raises(DatasetError, match=r"corrupt shard .*syn001\.h5"):
        MultiScaleLatentDataset(ds, latent_shape=(3, 16, 16), ssl_dim=48)


def test_missing_ssl_embeddings_are_named(tiny_dataset, tmp_path):
    from zoomfeat.train.dataset import DatasetError, MultiScaleLatentDataset

    ds = _copy(tiny_dataset, tmp_path)
    with h5py.File(ds / "shards" / "syn000.h5", "a") as h5:
        del h5["scale_2"]["ssl"]
    with pytest.raises(DatasetError, match=r"syn000\.h5 group scale_2: missing SSL embeddings"):
        MultiScaleLatentDataset(ds, latent_shape=(3, 16, 16), ssl_dim=48)
    # NaNs in a stored grid: the item is named when read, never replaced by another sample
    ds2 = _copy(tiny_dataset, tmp_path / "b")
    with h5py.File(ds2 / "shards" / "syn000.h5", "a") as h5:
        h5["scale_0"]["ssl"][1] = np.nan
    data = MultiScaleLatentDataset(ds2, latent_shape=(3, 16, 16), ssl_dim=48)
    i = int(data.index.index[(data.index["slide"] == "syn000") & (data.index["scale"] == 0) & (data.index["row"] == 1)][0])
    with pytest.raises(DatasetError, match=r"shard shards/syn000\.h5, row 1, slide syn000, scale 0.*non-finite SSL"):
        data[i]


def test_wrong_latent_shape_and_ssl_dim_are_named(tiny_dataset):
    from zoomfeat.train.dataset import DatasetError, MultiScaleLatentDataset

    with pytest.raises(DatasetError, match=r"syn00\d\.h5 group scale_\d: latents have shape \(3, 16, 16\).*expects \(3, 64, 64\)"):
        MultiScaleLatentDataset(tiny_dataset, latent_shape=(3, 64, 64), ssl_dim=48)
    with pytest.raises(DatasetError, match=r"48 channels but the model expects 1024"):
        MultiScaleLatentDataset(tiny_dataset, latent_shape=(3, 16, 16), ssl_dim=1024)


def test_sampler_uniform_and_proportional(tiny_dataset):
    from zoomfeat.train.dataset import MultiScaleLatentDataset, StepBatchSampler

    data = MultiScaleLatentDataset(tiny_dataset, latent_shape=(3, 16, 16), ssl_dim=48)
    n_scales = len(data.scales)
    uni = StepBatchSampler(data, 64, seed=0, mag_sampling="uniform")
    mags = np.concatenate([data._scale[uni.batch(s, 0)] for s in range(100)])
    freq = np.bincount(mags, minlength=8)[data.scales] / len(mags)
    np.testing.assert_allclose(freq, 1 / n_scales, atol=0.02)
    prop = StepBatchSampler(data, 64, seed=0, mag_sampling="proportional")
    mags = np.concatenate([data._scale[prop.batch(s, 0)] for s in range(100)])
    sizes = np.array([len(data.by_scale[k]) for k in data.scales])
    np.testing.assert_allclose(np.bincount(mags, minlength=8)[data.scales] / len(mags), sizes / sizes.sum(), atol=0.02)
    # a batch is a pure function of (seed, step, micro, rank): reproducible, and ranks differ
    assert uni.batch(7, 0) == StepBatchSampler(data, 64, seed=0).batch(7, 0)
    assert uni.batch(7, 0) != StepBatchSampler(data, 64, seed=0, rank=1).batch(7, 0)
    with pytest.raises(ValueError, match="mag_sampling"):
        StepBatchSampler(data, 8, mag_sampling="sizes")


def test_cfg_dropout_rate_over_many_draws():
    """The training draw (per-step generator → Summarizer.drop_condition) zeroes 10% of contexts."""
    from zoomfeat.train.objective import draw_step_noise

    summ = tiny_ldm().summarizer
    ctx = torch.ones(256, 65, 64)
    dropped = n = 0
    for step in range(200):
        _, _, g = draw_step_noise(0, step, 0, 0, (1, 3, 2, 2), 1000)
        out = summ.drop_condition(ctx, 0.1, g)
        zero = out.flatten(1).abs().amax(1) == 0
        assert bool(((out == 0) | (out == 1)).all()) and bool((out[~zero] == 1).all())  # whole contexts only
        dropped += int(zero.sum())
        n += len(zero)
    assert abs(dropped / n - 0.1) < 0.005, dropped / n  # 51,200 draws: sd 0.0013


def test_cli_build_dataset(tiny_dataset, tmp_path, capsys):
    from zoomfeat.cli import main

    slides = str(tiny_dataset / "cohort" / "slides")
    common = ["--ssl-encoder", "tiny-vit", "--ldm-config", "ldm/zoomldm_tiny.yaml", "--ssl-px", "64"]
    rc = main(["build-dataset", slides, *common, "--out", str(tmp_path / "ds"), "--scales", "0,5x",
               "--max-per-scale", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "2 slides (done: 2)" in out and "patches per scale: 0:4, 1:0, 2:4," in out
    from zoomfeat.train.dataset import MultiScaleLatentDataset

    data = MultiScaleLatentDataset(tmp_path / "ds", latent_shape=(3, 16, 16), ssl_dim=48)
    assert data.scales == [0, 2] and data[0]["latents"].shape == (3, 16, 16)
    # an SSL encoder whose width does not fit the model's Summarizer is refused before any work
    rc = main(["build-dataset", slides, *common, "--ssl-dim", "32", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "expects 48" in capsys.readouterr().err
