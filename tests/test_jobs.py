"""``--jobs N``: folds / compare cells / probe feature sets on a process pool give byte-identical outputs to
``--jobs 1`` (seeds per job, never per worker), workers respect threads × workers ≤ cores, CPU time counts them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.compare_jobs import digests
from tests.conftest import good_and_noise_bags
from zoomfeat.cli import main
from zoomfeat.jobs import call_with_cores, process_cpu_seconds, resolve_jobs, run_jobs, worker_count
from zoomfeat.threads import available_cores, thread_count

TINY = ["hparams.embed_dim=8", "hparams.attn_dim=4", "hparams.epochs=2", "hparams.min_epochs=0",
        "hparams.patience=2", "hparams.lr=3e-3", "hparams.progress=false", "hparams.wandb=false", "n_folds=2",
        "n_repeats=2"]


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    return good_and_noise_bags(tmp_path_factory.mktemp("jobs"), 8, good="zoomldm")


@pytest.mark.skipif(available_cores() < 2, reason="needs 2 usable cores for a 2-worker pool")
def test_compare_jobs_2_is_byte_identical_to_jobs_1(bags, tmp_path):
    good, noise, labels = bags
    outs = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        rc = main(["compare", "--config", "configs/mil/compare.yaml", "--out", str(out), "--labels", str(labels),
                   "--frameworks", "linear,abmil", "--bags", f"a={good}:20x", "--bags", f"b={noise}:20x",
                   "--tasks", "hrd,survival", "--jobs", str(jobs), *TINY])
        assert rc == 0
        outs[jobs] = digests(out)
    # both tasks' folds share one pool stream; the plots are drawn on the pool after the folds
    assert len(outs[1]) > 40 and "compare.csv" in outs[1] and "b/abmil/hrd/fold3/best.pt" in outs[1]
    assert {"a/abmil/hrd/roc.png", "b/linear/survival/km.png", "b/abmil/survival/fold3/best.pt"} <= outs[1].keys()
    assert outs[1].keys() == outs[2].keys()
    differ = [k for k in outs[1] if outs[1][k] != outs[2][k]]
    assert not differ, f"--jobs 2 differs from --jobs 1 in {differ}"


def test_a_task_whose_fold_fails_is_skipped_and_the_next_task_reads_its_own_results(bags, tmp_path, monkeypatch):
    """compare runs every task's folds as one stream: a ValueError in one fold of hrd's first ABMIL cell skips hrd
    (the cells after it are not written, their results are taken from the stream) and survival gets exactly the
    results it gets when it runs alone."""
    import mil.folds
    from mil.compare import compare

    good, noise, labels = bags
    cfg = {"labels": str(labels), "frameworks": ["linear", "abmil"], "n_folds": 2, "n_repeats": 2,
           "encoders": [f"a={good}:20x", f"b={noise}:20x"], "plots": False,
           "hparams": {"embed_dim": 8, "attn_dim": 4, "epochs": 2, "min_epochs": 0, "patience": 2, "lr": 3e-3,
                       "progress": False, "wandb": False}}
    alone = compare({**cfg, "tasks": ["survival"]}, tmp_path / "alone", jobs=1)
    real = mil.folds.fit_fold

    def fails_on_hrd_a(cohort, idx, fold, model, mag, *args, **kwargs):
        if cohort.task == "binary" and fold == 1 and "noise" not in str(cohort.items[0]):
            raise ValueError("planted failure")
        return real(cohort, idx, fold, model, mag, *args, **kwargs)

    monkeypatch.setattr(mil.folds, "fit_fold", fails_on_hrd_a)
    with pytest.warns(UserWarning, match="task hrd skipped: planted failure"):
        both = compare({**cfg, "tasks": ["hrd", "survival"]}, tmp_path / "both", jobs=1)
    assert set(both["task"]) == {"survival"}
    cols = ["encoder", "framework", "metric", "mean", "std"]
    pd.testing.assert_frame_equal(both[cols].reset_index(drop=True), alone[cols].reset_index(drop=True))
    assert (tmp_path / "both" / "b" / "linear" / "hrd" / "summary.csv").exists()  # written before the failure
    assert not (tmp_path / "both" / "a" / "abmil" / "hrd" / "summary.csv").exists()
    assert not (tmp_path / "both" / "b" / "abmil" / "hrd" / "summary.csv").exists()
    assert "hrd: planted failure" in (tmp_path / "both" / "compare.md").read_text()


@pytest.mark.skipif(available_cores() < 2, reason="needs 2 usable cores for a 2-worker pool")
def test_warm_workers_start_the_pool_the_next_call_reuses():
    import zoomfeat.jobs as zj

    zj.warm_workers(["mil.folds"], jobs=1)
    assert zj._warming is None  # jobs that run in this process need no pool
    zj.warm_workers(["mil.folds"], jobs=2)
    first = zj._warming
    zj.warm_workers(["mil.folds"], jobs=2)
    assert zj._warming is first  # a second call neither waits for nor replaces the pending warm-up
    res = run_jobs([(_pid_threads, (i,), {}) for i in range(4)], jobs=2)
    assert zj._warming is None and [r[0] for r in res] == [0, 1, 2, 3] and os.getpid() not in {r[1] for r in res}
    # the BLAS limit a worker set stays for its life (set once, not per job)
    limits = run_jobs([(_blas_threads, (), {}) for _ in range(4)], jobs=2)
    assert all(n == max(1, available_cores() // 2) for lim in limits for n in lim)


@pytest.mark.skipif(available_cores() < 2, reason="needs 2 usable cores for a 2-worker pool")
def test_release_workers_kills_the_idle_pool_and_a_later_call_starts_another():
    import psutil
    from joblib.externals.loky import reusable_executor

    import zoomfeat.jobs as zj

    pids = {r[1] for r in run_jobs([(_pid_threads, (i,), {}) for i in range(4)], jobs=2)}
    # a worker's tqdm lock holds no multiprocessing semaphore that killing it would leak
    assert set(run_jobs([(_tqdm_lock_kind, (), {}) for _ in range(4)], jobs=2)) == {"RLock"}
    zj.release_workers()
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=10)
    assert not alive
    assert [r[0] for r in run_jobs([(_pid_threads, (i,), {}) for i in range(3)], jobs=2)] == [0, 1, 2]
    assert reusable_executor._executor is not None and not pids & {p.pid for p in psutil.Process().children()}


def _tqdm_lock_kind() -> str:
    from tqdm.auto import tqdm

    for _ in tqdm(range(2), disable=True):
        pass
    return type(tqdm.get_lock()).__name__.lstrip("_")


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info()]


def _pid_threads(x: int) -> tuple[int, int, int, str]:
    return x, os.getpid(), thread_count(), os.environ.get("ZOOMFEAT_CORES", "")


def test_run_jobs_keeps_order_and_shares_the_cores(monkeypatch):
    monkeypatch.setenv("ZOOMFEAT_JOBS", "1")
    assert run_jobs([(_pid_threads, (i,), {}) for i in range(3)])[2][0] == 2
    assert {r[1] for r in run_jobs([(_pid_threads, (i,), {}) for i in range(3)])} == {os.getpid()}  # in-process
    assert resolve_jobs(99) == available_cores() and resolve_jobs(0) == available_cores()
    assert resolve_jobs(None, n_jobs=1) == 1 and worker_count(1) == 0
    monkeypatch.setenv("ZOOMFEAT_JOBS", "0")
    assert resolve_jobs(None) == available_cores()
    # a pool worker's thread limit is its share of the cores (threads × workers ≤ cores)
    monkeypatch.setenv("ZOOMFEAT_CORES", "")  # call_with_cores sets it (in this process here): undone at teardown
    x, pid, threads, share = call_with_cores(1, _pid_threads, (7,), {})
    assert (x, pid, threads, share) == (7, os.getpid(), 1, "1")


def _burn(seconds: float) -> float:
    import time

    t0 = time.process_time()
    v = np.ones(1000)
    while time.process_time() - t0 < seconds:
        v = np.sqrt(v + 1.0)
    return float(v[0])


@pytest.mark.skipif(available_cores() < 2, reason="needs 2 usable cores for a 2-worker pool")
def test_pool_workers_run_elsewhere_and_their_cpu_is_counted():
    c0 = process_cpu_seconds()
    own0 = os.times()
    res = run_jobs([(_pid_threads, (i,), {}) for i in range(4)] + [(_burn, (0.6,), {}), (_burn, (0.6,), {})], jobs=2)
    assert [r[0] for r in res[:4]] == [0, 1, 2, 3]
    assert os.getpid() not in {r[1] for r in res[:4]}
    assert {(r[2], r[3]) for r in res[:4]} == {(max(1, available_cores() // 2), str(max(1, available_cores() // 2)))}
    own = (os.times().user - own0.user) + (os.times().system - own0.system)
    assert process_cpu_seconds() - c0 >= own + 1.0  # the workers' 1.2 s of burning is counted


def test_probe_evaluation_is_identical_with_a_pool():
    from zoomfeat.probe import SweepSpec, evaluate

    rng = np.random.default_rng(0)
    n = 24
    y = np.array(["a", "b"] * (n // 2))
    sets = [({"encoder": "e", "block": b, "t": 0, "conditioning": "none", "mag": "20x"},
             rng.normal(size=(n, 6)) + (y == "a")[:, None] * b) for b in range(3)]
    spec = SweepSpec(blocks=[0, 1, 2], t=[0], conditioning=["none"], mags=["20x"], tasks=["subtype"], n_folds=3,
                     n_repeats=2)
    args = ({"subtype": y}, np.array([f"p{i}" for i in range(n)]), np.ones(n, bool), spec, "all", {0: 1.0})
    one = evaluate(sets, *args, jobs=1)
    two = evaluate(sets, *args, jobs=2)
    assert pd.DataFrame(one[0]).equals(pd.DataFrame(two[0])) and len(one[0]) == 3
    assert one[1].keys() == two[1].keys() and all(np.array_equal(one[1][k], two[1][k], equal_nan=True)
                                                   for k in one[1])
    assert one[0][2]["mean"] > one[0][0]["mean"]  # block 2 carries the label, block 0 does not



def test_killed_cv_resumes_at_the_fold(bags, tmp_path):
    """A fold whose result.json matches its inputs is read back, not retrained; other settings retrain it."""
    import json

    good, _, labels = bags
    out = tmp_path / "cv"
    args = ["mil", "cv", "--config", "configs/mil/abmil_hrd.yaml", "--out", str(out), "--jobs", "1",
            f"labels={labels}", f"bags={good}", "heatmaps=0", *TINY]
    assert main(args) == 0
    first = pd.read_csv(out / "fold_metrics.csv")
    done = json.loads((out / "fold0" / "result.json").read_text())
    done["row"]["auc"] = 0.123  # a marker: only a reused fold can report it
    (out / "fold0" / "result.json").write_text(json.dumps(done))
    (out / "fold1" / "result.json").unlink()  # "killed" before fold 1 finished
    assert main(args) == 0
    again = pd.read_csv(out / "fold_metrics.csv")
    assert again.loc[0, "auc"] == 0.123
    pd.testing.assert_frame_equal(again.drop(index=0), first.drop(index=0))  # fold 1 retrained: same numbers
    assert main([*args, "hparams.lr=1e-3"]) == 0  # other settings: nothing reused
    assert pd.read_csv(out / "fold_metrics.csv").loc[0, "auc"] != 0.123
