"""zoomfeat probe: the recipe sweep writes its table, heatmaps and an extract-ready recipe, resumes from its cache
and continues past a bad slide (micro ZoomLDM fixture, a small synthetic cohort)."""

import numpy as np
import pandas as pd
import pytest

from tests.conftest import MICRO_LDM


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from zoomfeat.slides.synthetic import make_cohort
    from zoomfeat.slides.tiling import tile_cohort

    root = tmp_path_factory.mktemp("probe_cohort")
    labels = make_cohort(root / "cohort", n_slides=10, seed=1, sizes_20x=(1024,), progress=False)
    tile_cohort(root / "cohort" / "slides", root / "tiles", progress=False, qc=False)
    return root, labels


def test_sweep_outputs_resume_and_bad_slide(cohort):
    from zoomfeat.ldm import ZoomLDM
    from zoomfeat.probe import PROBE_COLUMNS, SweepSpec, sweep

    root, labels = cohort
    weights = MICRO_LDM / "weights.ckpt"
    spec = SweepSpec(blocks=[0, 2], t=[0, 100], conditioning=["none", "uni"], tasks=["hrd"], baselines=["tiny-vit"],
                     tiles_per_slide=2, n_folds=2, n_repeats=2, ssl_encoder="tiny-vit")
    out = root / "probe"
    res = sweep(root / "cohort" / "slides", root / "tiles", labels, weights, out, spec, progress=False)
    df = pd.read_csv(out / "probe.csv")
    assert list(df.columns) == PROBE_COLUMNS
    assert len(df) == 2 * 2 * 2 * 3 + 3 and set(df["subset"]) == {"all"}
    assert df["mean"].between(0, 1).all() and (df["n_splits"] == 4).all()
    ab = float(ZoomLDM.from_official(weights, MICRO_LDM / "config.yaml").alphas_cumprod[100])
    assert np.allclose(df.loc[df["t"] == 100, "alpha_bar"], ab, atol=1e-4)
    assert np.allclose(df.loc[df["t"] == 100, "noise_pct"], 100 * (1 - ab), atol=1e-2)
    for mag in ("20x", "5x", "20x+5x"):
        assert (out / f"heatmap_hrd_{mag}.png").stat().st_size > 1000
    best = res["best"]
    zl = df[df["encoder"] == "zoomldm"]
    assert best["mean"] == pytest.approx(zl["mean"].max(), abs=1e-4)
    # best_recipe.yaml is an extract config
    from zoomfeat.extract import load_extract_config

    rcfg = load_extract_config(out / "best_recipe.yaml")
    enc = rcfg.encoder
    assert enc.name == "zoomldm" and enc.blocks == [int(best["block"])] and enc.t == [int(best["t"])]
    # scores per split are stored for paired tests
    sc = pd.read_csv(out / "probe_scores.csv")
    assert len(sc) == 4 * len(df)

    # resume: cached slides are not recomputed; a slide without coordinates fails alone
    cache = sorted((out / "cache").glob("*.npz"))
    mtimes = [p.stat().st_mtime_ns for p in cache]
    victim = sorted((root / "tiles" / "coords").glob("*.h5"))[0]
    (out / "cache" / f"{victim.stem}.npz").unlink()
    victim.rename(victim.with_suffix(".bak"))
    try:
        res2 = sweep(root / "cohort" / "slides", root / "tiles", labels, weights, out, spec, progress=False)
    finally:
        victim.with_suffix(".bak").rename(victim)
    assert [f["slide"] for f in res2["failed"]] == [victim.stem]
    assert [p.stat().st_mtime_ns for p in cache if p.exists()] == [m for p, m in zip(cache, mtimes) if p.exists()]
    assert res2["n_slides"] == res["n_slides"] - 1


def test_tuning_split_and_report_rows_on_planted_means():
    """Held-out tuning: patient-level split; the chosen cell is the planted one; report rows cover the chosen cell
    on every task, the other task's own best cell and the baselines, all on the report patients only."""
    from zoomfeat.probe import SweepSpec, choose_recipe, evaluate, report_rows, tune_report_split, _feature_sets

    rng = np.random.default_rng(0)
    n = 60
    patients = np.array([f"p{i // 2}" for i in range(n)])
    y_a = (np.arange(n) // 2) % 2  # task a: carried by block 1 at t = 0
    y_b = (np.arange(n) // 4) % 2  # task b: carried by block 0 at t = 50
    chans = {0: 3, 1: 3}
    means = {}
    for i in range(n):
        m = rng.normal(size=(2, 6)).astype(np.float32)  # (n_t, block 0 | block 1)
        m[0, 3] += 3 * y_a[i]
        m[1, 0] += 3 * y_b[i]
        means[f"s{i}"] = {"none|20x": m, "none|5x": rng.normal(size=(2, 6)), "tiny-vit|20x": rng.normal(size=(1, 4)),
                          "tiny-vit|5x": rng.normal(size=(1, 4))}
    sids = list(means)
    spec = SweepSpec(blocks=[0, 1], t=[0, 50], conditioning=["none"], mags=["20x", "5x"], tasks=["a", "b"],
                     baselines=["tiny-vit"], n_folds=3, n_repeats=1, tune_fraction=0.5)
    tune = tune_report_split(patients, y_a.astype(str), 0.5, 0)
    assert abs(tune.sum() - n / 2) <= 4 and not set(patients[tune]) & set(patients[~tune])
    targets = {"a": y_a, "b": y_b}
    alpha = {0: 1.0, 50: 0.9}
    rows, _ = evaluate(_feature_sets(means, sids, spec, chans), targets, patients, tune, spec, "tune", alpha)
    best = choose_recipe(rows, "a", "tune")
    assert (best["block"], best["t"], best["mag"]) == (1, 0, "20x") and best["mean"] > 0.9
    rep, scores = report_rows(means, sids, spec, chans, rows, best, targets, patients, ~tune, alpha, "tune")
    assert {r["subset"] for r in rep} == {"report"} and {r["n_slides"] for r in rep} == {int((~tune).sum())}
    cells = {(r["encoder"], r["block"], r["t"], r["task"]) for r in rep}
    assert ("zoomldm", 1, 0, "a") in cells and ("zoomldm", 1, 0, "b") in cells  # the chosen cell on every task
    assert ("zoomldm", 0, 50, "b") in cells and ("zoomldm", 0, 50, "a") not in cells  # b's own cell, on b only
    assert {("tiny-vit", "", "", "a"), ("tiny-vit", "", "", "b")} <= cells
    assert next(r for r in rep if (r["block"], r["t"], r["task"], r["mag"]) == (0, 50, "b", "20x"))["mean"] > 0.9
    assert len(scores) == len(rep)


def test_probe_summary_says_a_best_cell_without_tuning_split_is_optimistic(capsys):
    """Issue 23.5: without --tune-fraction the printed best cell is the maximum of the grid on its own patients."""
    from zoomfeat.cli.probe import print_summary

    best = {"subset": "all", "task": "subtype", "mag": "20x", "block": 3, "t": 0, "alpha_bar": 1.0, "noise_pct": 0.0,
            "conditioning": "none", "metric": "auc", "mean": 0.9, "ci_low": 0.8, "ci_high": 1.0}
    res = {"best": best, "report": None, "failed": [], "probe_csv": "p.csv", "best_recipe": "r.yaml"}
    print_summary(res)
    assert "optimistic" in capsys.readouterr().out
    print_summary({**res, "best": {**best, "subset": "tune"},
                   "report": {"n_slides": 30, "metric": "auc", "mean": 0.8, "ci_low": 0.7, "ci_high": 0.9}})
    out = capsys.readouterr().out
    assert "optimistic" not in out and "30 held-out report slides" in out


TWO_CORES = pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="needs 2 usable cores")


def _means_one_vs_two(cohort, tmp_path):
    """compute_means on 3 slides + a missing one with jobs=1 and jobs=2: {jobs: (means, failed)}."""
    from zoomfeat.ldm import ZoomLDM
    from zoomfeat.probe import SweepSpec, compute_means

    root, _ = cohort
    ldm = ZoomLDM.load(MICRO_LDM / "weights.ckpt").eval()
    spec = SweepSpec(blocks=[0], t=[0], conditioning=["none"], tasks=["hrd"], tiles_per_slide=2)
    slides = sorted((root / "cohort" / "slides").glob("*.tiff"))[:3] + [root / "cohort" / "missing.tiff"]
    got = {jobs: compute_means(slides, root / "tiles", tmp_path / f"c{jobs}", ldm, spec, "m", None, {}, False, jobs)
           for jobs in (1, 2)}
    assert list(got[1][0]) == list(got[2][0]) == [s.stem for s in slides[:3]]
    assert [f["slide"] for f in got[2][1]] == ["missing"] == [f["slide"] for f in got[1][1]]
    for sid, m in got[1][0].items():
        assert m.keys() == got[2][0][sid].keys() and all(np.array_equal(m[k], got[2][0][sid][k]) for k in m)
    assert sorted(p.name for p in (tmp_path / "c2").glob("*.npz")) == [f"{s.stem}.npz" for s in slides[:3]]
    return got


@TWO_CORES
def test_slide_means_on_two_forked_workers_match_one(cohort, tmp_path, monkeypatch):
    """Fast default twin of the loky-pool test below: the same split of the slides over two workers (each job
    pickled to its own forked process with its own model copy, results pickled back), checked the same way; the
    loky pool itself (whose workers re-import torch, ~20 s) is the slow test's and tests/test_jobs.py's."""
    import os

    import zoomfeat.probe
    from tests._fx_extract import forked_run_jobs

    calls = []
    monkeypatch.setattr(zoomfeat.probe, "run_jobs", lambda c, n: calls.append(len(c)) or forked_run_jobs(c, n))
    _means_one_vs_two(cohort, tmp_path)
    assert calls == [2]  # jobs=2: two chunks on two workers (jobs=1 stays in this process)
    assert os.getpid() not in forked_run_jobs.last_pids and len(set(forked_run_jobs.last_pids)) == 2


@pytest.mark.slow
@TWO_CORES
def test_slide_means_on_two_workers_match_one(cohort, tmp_path):
    """The probe's per-slide features split over two workers (one model copy each, a real loky pool) equal the
    in-process ones, in the slides' order, a failing slide included (fast twin of the slow whole-sweep check below;
    by default test_slide_means_on_two_forked_workers_match_one covers it with forked workers)."""
    _means_one_vs_two(cohort, tmp_path)


@pytest.mark.slow
@TWO_CORES
def test_sweep_with_two_jobs_matches_one_job(cohort, tmp_path):
    """--jobs 2 (slides split over two workers, each with its own model copy; feature sets on a pool) writes the
    same probe table, per-split scores and per-slide cache as --jobs 1, a failing slide included (~2 min)."""
    from zoomfeat.probe import SweepSpec, sweep

    root, labels = cohort
    spec = SweepSpec(blocks=[0, 2], t=[0], conditioning=["none", "uni"], tasks=["hrd"], baselines=["tiny-vit"],
                     tiles_per_slide=4, n_folds=2, n_repeats=2, ssl_encoder="tiny-vit")
    slides = sorted((root / "cohort" / "slides").glob("*.tiff")) + [root / "cohort" / "missing.tiff"]
    res = {}
    for jobs in (1, 2):
        res[jobs] = sweep(slides, root / "tiles", labels, MICRO_LDM / "weights.ckpt", tmp_path / f"j{jobs}", spec,
                          progress=False, jobs=jobs)
    assert [f["slide"] for f in res[2]["failed"]] == ["missing"] == [f["slide"] for f in res[1]["failed"]]
    for name in ("probe.csv", "probe_scores.csv", "split_patients.csv", "best_recipe.yaml"):
        a, b = (tmp_path / "j1" / name).read_text(), (tmp_path / "j2" / name).read_text()
        assert a == b.replace(str(tmp_path / "j2"), str(tmp_path / "j1")), name
    for p in sorted((tmp_path / "j1" / "cache").glob("*.npz")):
        with np.load(p) as x, np.load(tmp_path / "j2" / "cache" / p.name) as y:
            assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files), p.name
