"""Real multi-process extraction: `torchrun --nproc_per_node 2` (two CPU processes) and `--shard K/N` (SLURM array
tasks) each do every slide exactly once, merge one summary, and write bags identical to a one-process run."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import MICRO_LDM, ROOT
from zoomfeat.bags import bag_path, load_bag
from zoomfeat.cli import main
from zoomfeat.sharding import parse_shard, process_share

SIZES = [(768, 768), (1024, 768), (640, 896), (768, 1024)]
SEEDS = [0, 1, 2, 5]
NAMES = [f"syn{i}" for i in range(len(SIZES))]


def test_shares_partition_the_cohort_like_torchrun_ranks():
    items = list(range(11))
    assert parse_shard("2/3") == (2, 3) and parse_shard(None) is None
    for bad in ("3/3", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    # --shard K/N takes what rank K of an N-process torchrun takes
    for k in range(3):
        assert process_share(f"{k}/3", env={}).take(items) == process_share(env={"RANK": str(k), "WORLD_SIZE": "3"}).take(items)
    # array tasks × torchrun ranks: still every item exactly once
    seen = [x for k in range(3) for r in range(2)
            for x in process_share(f"{k}/3", env={"RANK": str(r), "WORLD_SIZE": "2"}).take(items)]
    assert sorted(seen) == items
    env = {"SLURM_ARRAY_JOB_ID": "77", "TORCHELASTIC_RUN_ID": "differs-per-task", "RANK": "1", "WORLD_SIZE": "2"}
    s = process_share("1/4", env=env)
    assert (s.index, s.count, s.run_id) == (3, 8, "77")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four small synthetic slides, tiled once (the tiling is shared by every run below)."""
    from zoomfeat.slides.synthetic import make_slide
    from zoomfeat.slides.tiling import tile_slide

    root = tmp_path_factory.mktemp("shard_cohort")
    for name, size, seed in zip(NAMES, SIZES, SEEDS):
        make_slide(root / "slides" / f"{name}.tiff", size_20x=size, seed=seed, subtype=seed % 2)
        tile_slide(root / "slides" / f"{name}.tiff", root / "tiles", qc=False)
    return root


def _args(cohort, out, *extra):
    return [str(cohort / "slides"), "--encoder", "zoomldm", "--weights", str(MICRO_LDM / "weights.ckpt"),
            "--ssl-encoder", "tiny-vit", "--tiles", str(cohort / "tiles"), "--out", str(out), "--workers", "0",
            "--batch-size", "4", "--threads", "1", "--no-progress", *extra]


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_process")
    assert main(["extract", *_args(cohort, out)]) == 0
    return out


def _summary(path) -> dict[str, str]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    slides = [r["slide"] for r in rows]
    assert len(slides) == len(set(slides)), slides  # one row per slide
    return {r["slide"]: r["status"] for r in rows}


def _same_bags(out, reference):
    for name in NAMES:
        a, b = load_bag(bag_path(reference, "zoomldm", name)), load_bag(bag_path(out, "zoomldm", name))
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.features_5x, b.features_5x)
        np.testing.assert_array_equal(a.coords, b.coords)
        drop = ("created_utc", "savetodir")  # when and where the bag was written
        assert {k: v for k, v in a.attrs.items() if k not in drop} == {k: v for k, v in b.attrs.items() if k not in drop}


def _shares(feat_dir, world) -> list[list[str]]:
    return [sorted(_summary(feat_dir / f"summary_rank{r}.csv")) for r in range(world)]


@pytest.mark.slow
def test_torchrun_two_processes(cohort, reference, tmp_path):
    """Through `torchrun`; test_torchrun_two_processes_fast covers the same two concurrent ranks by default."""
    out = tmp_path / "torchrun"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "zoomfeat", "extract", *_args(cohort, out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _two_ranks_checks(out, reference)


def test_torchrun_two_processes_fast(cohort, reference, tmp_path):
    """The default twin: `zoomfeat extract` (cli.main) in two forked processes running side by side, each with the
    environment torchrun gives its rank (tests/_fx_train.py), instead of two fresh interpreters."""
    from tests._fx_train import run_forked, torchrun_envs

    out = tmp_path / "torchrun"
    argv = ["extract", *_args(cohort, out)]
    assert run_forked([lambda: main(argv)] * 2, torchrun_envs(2)) == [0, 0]
    _two_ranks_checks(out, reference)


def _two_ranks_checks(out, reference):
    feat_dir = out / "features_zoomldm"
    shares = _shares(feat_dir, 2)
    assert shares == [sorted(NAMES[0::2]), sorted(NAMES[1::2])]  # two real processes, disjoint round-robin halves
    assert _summary(feat_dir / "summary.csv") == {n: "done" for n in NAMES}  # merged by the last to finish
    _same_bags(out, reference)


def test_shard_k_of_n_like_slurm_array_tasks(cohort, reference, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    for k in ("2", "0", "1"):  # array tasks finish in any order; the last one merges
        monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
        assert main(["extract", *_args(cohort, out, "--shard", f"{k}/3")]) == 0
        assert (out / "features_zoomldm" / "summary.csv").exists() == (k == "1")
    feat_dir = out / "features_zoomldm"
    assert _shares(feat_dir, 3) == [sorted(NAMES[k::3]) for k in range(3)]
    assert _summary(feat_dir / "summary.csv") == {n: "done" for n in NAMES}
    _same_bags(out, reference)
    # a rerun of one task skips its finished slides and keeps the merged summary whole
    assert main(["extract", *_args(cohort, out, "--shard", "0/3")]) == 0
    assert set(_summary(feat_dir / "summary.csv").values()) == {"done", "skipped"}
    assert len(_summary(feat_dir / "summary.csv")) == len(NAMES)
