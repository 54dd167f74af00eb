"""Paired statistics of `zoomfeat compare`: corrected resampled t-test, Holm, identical repeated splits for every
row, win/tie/loss on a planted difference, verdict sentence, forest plot, Patho-Bench split TSV round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mil.pathobench import read_pathobench, write_pathobench
from mil.splits import load_splits, make_splits
from mil.stats import corrected_ttest, holm
from tests.conftest import good_and_noise_bags
from zoomfeat.cli import main


def test_corrected_ttest_against_hand_values_and_plain_t():
    r = corrected_ttest([1, 2, 3, 4, 5], test_train_ratio=0.25)
    se = np.sqrt((1 / 5 + 0.25) * 2.5)  # Nadeau & Bengio: (1/J + n_test/n_train) · s²
    assert r["mean"] == 3.0 and r["n_splits"] == 5
    assert r["ci_low"] == pytest.approx(3 - stats.t.ppf(0.975, 4) * se)
    assert r["ci_high"] == pytest.approx(3 + stats.t.ppf(0.975, 4) * se)
    assert r["p"] == pytest.approx(2 * stats.t.sf(3 / se, 4))
    v = np.random.default_rng(0).normal(0.1, 1, 12)  # ratio 0 is the ordinary one-sample t-test
    assert corrected_ttest(v, 0.0)["p"] == pytest.approx(stats.ttest_1samp(v, 0).pvalue)
    assert corrected_ttest([0.0, 0.0, 0.0], 0.25)["p"] == 1.0  # identical models: no difference
    assert np.isnan(corrected_ttest([0.4], 0.25)["p"])


def test_holm_by_hand():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, np.nan])[:3], [0.03, 0.06, 0.06])
    assert np.isnan(holm([0.01, np.nan])[1])
    from statsmodels.stats.multitest import multipletests

    p = np.r_[np.random.default_rng(0).uniform(0, 0.2, 12), 0.01, 0.01, 0.9, 1.0]  # ties, values clipped at 1
    np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=0, atol=1e-15)


def test_repeated_splits_are_patient_level_per_repeat():
    slides = [f"s{i}" for i in range(40)]
    patients = [f"p{i // 2}" for i in range(40)]
    y = np.asarray([(i // 2) % 2 for i in range(40)])
    df = make_splits(slides, patients, y, n_folds=4, seed=0, n_repeats=3)
    assert sorted(df["fold"].unique()) == list(range(12)) and sorted(df["repeat"].unique()) == [0, 1, 2]
    test = df[df["split"] == "test"]
    assert (test.groupby(["repeat", "slide"]).size() == 1).all() and test.groupby("repeat").size().eq(40).all()
    a = test[test["repeat"] == 0].set_index("slide")["fold"]
    b = test[test["repeat"] == 1].set_index("slide")["fold"] - 4
    assert not a.sort_index().equals(b.sort_index())  # the repeats reshuffle the patients


@pytest.mark.parametrize("keep_val", [True, False])
def test_pathobench_round_trip(tmp_path, keep_val):
    slides = [f"s{i}" for i in range(30)]
    patients = [f"p{i // 2}" for i in range(30)]
    y = np.asarray([(i // 2) % 3 for i in range(30)])
    ours = make_splits(slides, patients, y, n_folds=3, seed=1, n_repeats=2)
    labels = pd.DataFrame({"slide": slides, "subtype": y})
    path = write_pathobench(ours, tmp_path / "subtype.tsv", labels, ["subtype"], keep_val=keep_val)
    raw = pd.read_csv(path, sep="\t")
    assert list(raw.columns) == ["case_id", "slide_id", "subtype"] + [f"fold_{i}" for i in range(6)]
    assert set(raw["fold_0"]) == ({"train", "val", "test"} if keep_val else {"train", "test"})
    back = read_pathobench(path)
    expect = ours if keep_val else ours.assign(split=ours["split"].replace("val", "train"))
    key = ["fold", "slide"]
    pd.testing.assert_frame_equal(back.sort_values(key).reset_index(drop=True),
                                  expect.sort_values(key).reset_index(drop=True), check_dtype=False)
    load_splits(back, slides)  # a valid split table for the cohort


def test_pathobench_leak_is_refused(tmp_path):
    pd.DataFrame({"case_id": ["a", "a"], "slide_id": ["s1", "s2"], "fold_0": ["train", "test"]}).to_csv(
        tmp_path / "bad.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match="leakage"):
        read_pathobench(tmp_path / "bad.tsv")


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    return good_and_noise_bags(tmp_path_factory.mktemp("cmpstats"), 48)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """24 slides: for the tests that check the table's shape, not a planted difference."""
    return good_and_noise_bags(tmp_path_factory.mktemp("cmpsmall"), 24)


def test_compare_paired_statistics_find_planted_difference(bags, tmp_path):
    good, noise, labels = bags
    out = tmp_path / "cmp"
    rc = main(["compare", "--config", "configs/mil/compare.yaml", "--out", str(out), "--labels", str(labels),
               "--bags", f"noise={noise}:20x", "--bags", f"good={good}:20x", "--bags", f"good-again={good}:20x",
               "--tasks", "subtype", "--reference", "noise", "--frameworks", "linear", "n_repeats=2", "n_folds=4",
               "reference_note=random features, a floor"])
    assert rc == 0
    table = pd.read_csv(out / "compare.csv")
    assert {"delta", "delta_ci_low", "delta_ci_high", "p", "p_adj", "outcome", "framework"} <= set(table.columns)
    auc = table[table["metric"] == "auc"].set_index("encoder")
    assert auc.loc["noise", "outcome"] == "ref" and np.isnan(auc.loc["noise", "delta"])
    for enc in ("good", "good-again"):  # the informative bags beat noise on the same 2 × 4 splits
        r = auc.loc[enc]
        assert r["outcome"] == "win" and r["delta"] > 0.2 and r["delta_ci_low"] > 0 and r["p_adj"] < 0.05
        assert r["p_adj"] >= r["p"]
    assert auc.loc["good", "delta"] == auc.loc["good-again", "delta"]  # same bags, same splits, same numbers
    folds = pd.read_csv(out / "compare_folds.csv")
    assert folds.groupby(["encoder", "metric"]).size().eq(8).all()  # per-split values, 2 repeats × 4 folds
    md = (out / "compare.md").read_text()
    assert "| good | " in md and "win" in md and "Verdict:" in md and "**Power:** with the observed" in md
    assert "Reference: **noise/linear** (random features, a floor)" in md and "(random features, a floor) (2 comp" in md
    assert (out / "compare_forest.png").stat().st_size > 1000

    from mil.compare import verdict

    v = verdict(table)
    assert "noise" in v and "good beats it" in v and "\n" not in v


def test_identical_rows_tie_and_verdict_says_no_difference(small, tmp_path):
    good, _, labels = small
    out = tmp_path / "same"
    assert main(["compare", "--config", "configs/mil/compare.yaml", "--out", str(out), "--labels", str(labels),
                 "--bags", f"a={good}:20x", "--bags", f"b={good}:20x", "--tasks", "hrd,survival",
                 "--frameworks", "linear", "n_repeats=1", "n_folds=3"]) == 0
    table = pd.read_csv(out / "compare.csv")
    for metric in ("auc", "c_index"):  # logistic regression and the lifelines Cox probe: same bags, same numbers
        b = table[(table["encoder"] == "b") & (table["metric"] == metric)].iloc[0]
        assert b["delta"] == 0 and b["p"] == 1 and b["outcome"] == "tie" and b["n_folds"] == 3
    from mil.compare import verdict

    assert "no row differs" in verdict(table)


def test_splits_cli_round_trip(tmp_path):
    slides = [f"s{i}" for i in range(20)]
    ours = make_splits(slides, [f"p{i // 2}" for i in range(20)], np.asarray([(i // 2) % 2 for i in range(20)]),
                       n_folds=2, seed=0, n_repeats=2)
    from mil.splits import save_splits

    save_splits(ours, tmp_path / "splits.csv")
    pd.DataFrame({"slide": slides, "hrd": [(i // 2) % 2 for i in range(20)]}).to_csv(tmp_path / "l.csv", index=False)
    assert main(["mil", "splits", "--to-pathobench", str(tmp_path / "splits.csv"), "--labels", str(tmp_path / "l.csv"),
                 "--label-columns", "hrd", "--keep-val", "--out", str(tmp_path / "hrd.tsv")]) == 0
    assert main(["mil", "splits", "--from-pathobench", str(tmp_path / "hrd.tsv"), "--out", str(tmp_path / "b.csv")]) == 0
    back = load_splits(tmp_path / "b.csv")
    key = ["fold", "slide"]
    pd.testing.assert_frame_equal(back.sort_values(key).reset_index(drop=True),
                                  ours.sort_values(key).reset_index(drop=True), check_dtype=False)


def test_mil_compare_is_callable_and_has_verdict(small, tmp_path):
    import mil

    good, noise, labels = small
    cfg = {"labels": str(labels), "encoders": [{"name": "n", "bags": str(noise)}, {"name": "g", "bags": str(good)}],
           "tasks": ["subtype"], "frameworks": ["linear"], "n_repeats": 1, "n_folds": 3}
    for k in range(2):  # a second call still works (importing the submodule must not shadow the callable)
        table = mil.compare(cfg, tmp_path / f"c{k}")
    assert "against n/linear" in mil.compare.verdict(table).lower()


def test_two_frameworks_share_splits_and_compare_within_framework(small, tmp_path):
    good, noise, labels = small
    out = tmp_path / "fw"
    assert main(["compare", "--config", "configs/mil/compare.yaml", "--out", str(out), "--labels", str(labels),
                 "--bags", f"noise={noise}:20x", "--bags", f"good={good}:20x", "--tasks", "subtype",
                 "--frameworks", "linear,abmil", "n_repeats=1", "n_folds=3", "hparams.embed_dim=16",
                 "hparams.attn_dim=8", "hparams.epochs=2", "hparams.progress=false", "hparams.wandb=false"]) == 0
    table = pd.read_csv(out / "compare.csv")
    auc = table[table["metric"] == "auc"]
    assert len(auc) == 4 and set(auc["reference"]) == {"noise/linear", "noise/abmil"}
    assert auc.groupby("framework")["is_reference"].sum().eq(1).all()
    test = pd.read_csv(out / "splits_subtype.csv").query("split == 'test'").set_index("slide")["fold"]
    for fw in ("linear", "abmil"):  # every framework scored on exactly the shared test folds
        pred = pd.read_csv(out / "good" / fw / "subtype" / "predictions.csv").set_index("slide")["fold"]
        assert (pred == test.loc[pred.index]).all()
    from mil.compare import verdict

    assert "within each framework" in verdict(table)


def _long_table(shifts: dict) -> pd.DataFrame:
    """A compare long table (rows with per-split ``_folds``) of a reference row and shifted rows per task/metric:
    {(task, metric): {encoder: per-split delta}}; 2 repeats × 5 folds, 40 train / 10 test slides."""
    rng = np.random.default_rng(0)
    rows = []
    for (task, metric), encs in shifts.items():
        base = rng.uniform(0.6, 0.8, 10)
        for enc, d in {"ref": np.zeros(10), **encs}.items():
            f = pd.DataFrame({"fold": range(10), "repeat": np.repeat([0, 1], 5), "n_train": 32, "n_val": 8,
                              "n_test": 10, "value": base + d})
            rows.append({"encoder": enc, "framework": "linear", "task": task, "metric": metric, "mean": f["value"].mean(),
                         "std": f["value"].std(), "ci_low": 0.0, "ci_high": 1.0, "n_folds": 10, "n_slides": 50,
                         "_folds": f})
    return pd.DataFrame(rows)


def test_holm_is_one_family_over_every_row_and_task_auc_and_c_index_together():
    """Issue 23.1: two AUC and two c-index comparisons: per-metric Holm (2 + 2) and one family of 4 differ; the
    table, compare.md and the verdict must all use the one family of 4."""
    from mil.compare import family_size, paired_statistics, to_markdown, verdict
    from mil.stats import split_ratio

    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.04, (4, 10))
    shifts = {("subtype", "auc"): {"a": 0.05 + noise[0], "b": 0.02 + noise[1]},
              ("survival", "c_index"): {"a": 0.04 + noise[2], "b": 0.01 + noise[3]}}
    table = paired_statistics(_long_table(shifts), {"encoder": "ref", "framework": None})
    ratio = split_ratio([10] * 10, [40] * 10)
    raw = {(t, e): corrected_ttest(d, ratio)["p"] for (t, _), encs in shifts.items() for e, d in encs.items()}
    expect = dict(zip(raw, holm(list(raw.values()))))
    per_metric = {**dict(zip(list(raw)[:2], holm(list(raw.values())[:2]))),
                  **dict(zip(list(raw)[2:], holm(list(raw.values())[2:])))}
    assert not np.allclose(list(expect.values()), list(per_metric.values()))  # the two definitions differ here
    got = table[~table["is_reference"]].set_index(["task", "encoder"])["p_adj"]
    for key, p in expect.items():
        assert got.loc[key] == pytest.approx(p), key
    assert family_size(table) == 4
    assert "(4 comparisons, Holm-adjusted" in verdict(table)
    assert "the table's 4 primary-metric comparisons" in to_markdown(table, {"n_folds": 5})


def test_detectable_delta_by_hand():
    """Issue 23.6: the smallest Δ detectable at 80% power (two-sided α 0.05) from the corrected standard error."""
    from statsmodels.stats.power import TTestPower

    from mil.stats import detectable_delta, se_from_ci

    v = np.random.default_rng(2).normal(0.02, 0.05, 15)
    s = v.std(ddof=1)
    # ratio 0 is the plain one-sample t-test: statsmodels' effect size (in units of s) × s
    es = TTestPower().solve_power(effect_size=None, nobs=15, alpha=0.05, power=0.8, alternative="two-sided")
    assert detectable_delta(s / np.sqrt(15), 15) == pytest.approx(es * s, rel=1e-4)
    se = np.sqrt((1 / 15 + 0.25) * s**2)  # corrected variance, 3 × 5-fold
    d = detectable_delta(se, 15)
    nc, crit = d / se, stats.t.ppf(0.975, 14)  # by hand: the power at d is 0.8
    assert stats.nct.sf(crit, 14, nc) + stats.nct.cdf(-crit, 14, nc) == pytest.approx(0.8, abs=1e-6)
    assert d == pytest.approx((crit + stats.t.ppf(0.8, 14)) * se, rel=0.02)  # the textbook approximation
    r = corrected_ttest(v, 0.25)
    assert se_from_ci(r["ci_low"], r["ci_high"], 15) == pytest.approx(se)
    assert np.isnan(detectable_delta(float("nan"), 15)) and np.isnan(detectable_delta(0.1, 1))
    for j in (2, 3, 4, 5, 6, 10, 15, 30):  # scipy's nct far tail is NaN at large non-centralities: still a number
        assert np.isfinite(detectable_delta(0.1, j)), j


def test_verdict_names_the_reference_and_the_power_statement():
    """Issue 23.6 / 23.5: the verdict says what the reference is, compare.md carries the power line."""
    from mil.compare import paired_statistics, power_statement, to_markdown, verdict
    from mil.stats import detectable_delta, se_from_ci

    noise = np.random.default_rng(3).normal(0, 0.05, (2, 10))
    table = paired_statistics(_long_table({("subtype", "auc"): {"a": noise[0], "b": 0.01 + noise[1]}}),
                              {"encoder": "ref", "framework": None})
    v = verdict(table, note="random-init tiny-vit")
    assert v.startswith("Against ref/linear (random-init tiny-vit) (2 comparisons")
    rows = table[~table["is_reference"]]
    d = [detectable_delta(se_from_ci(r.delta_ci_low, r.delta_ci_high, 10), 10) for r in rows.itertuples()]
    line = power_statement(table)
    assert f"|Δauc| ≥ {np.median(d):.3f} at 80% power" in line and f"{min(d):.3f}–{max(d):.3f}" in line
    md = to_markdown(table, {"n_folds": 5, "reference_note": "random-init tiny-vit"})
    assert "(random-init tiny-vit)" in md and "**Power:** " + line in md


def test_forest_plot_says_its_bars_are_unadjusted_and_its_colours_holm(monkeypatch, tmp_path):
    """Issue 23.5: a CI that misses 0 can be grey (Holm p_adj ≥ 0.05): the plot must say what it draws."""
    import mil.plots as plots
    from mil.compare import paired_statistics

    noise = np.random.default_rng(4).normal(0, 0.05, (2, 10))
    table = paired_statistics(_long_table({("subtype", "auc"): {"a": 0.04 + noise[0], "b": noise[1]}}),
                              {"encoder": "ref", "framework": None})
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    plots.forest_plot(table[table["metric"] == "auc"], tmp_path / "f.png")
    (ax,) = figs[0].axes
    assert "unadjusted 95% CI" in ax.get_xlabel() and "Holm" in ax.get_xlabel()
