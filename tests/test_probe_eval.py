"""mil.probe_eval: the linear probe finds a planted signal, stays at chance on noise, splits by patient, and its
corrected resampled t statistics match a hand computation."""

import numpy as np
import pytest
from scipy import stats

from mil.probe_eval import corrected_ci, linear_probe_scores, paired_test, repeated_splits, n_test_over_n_train


def _data(n=60, d=10, signal=2.0, seed=0):
    """Two slides per patient with the patient's class; classes 1 and 2 shift features 0 and 1."""
    rng = np.random.default_rng(seed)
    patients = np.array([f"p{i // 2}" for i in range(n)])
    y = (np.arange(n) // 2) % 3
    X = rng.normal(size=(n, d))
    X[:, 0] += signal * (y == 1)
    X[:, 1] += signal * (y == 2)
    return X, y, patients


def test_splits_are_patient_level_and_reproducible():
    X, y, pat = _data()
    sp = repeated_splits(y, pat, n_folds=5, n_repeats=3, seed=0)
    assert len(sp) == 15
    for tr, te in sp:
        assert not set(pat[tr]) & set(pat[te])
    for r in range(3):  # every slide is tested once per repeat
        tested = np.concatenate([te for _, te in sp[5 * r:5 * r + 5]])
        assert sorted(tested) == list(range(len(y)))
    again = repeated_splits(y, pat, n_folds=5, n_repeats=3, seed=0)
    assert all((a[1] == b[1]).all() for a, b in zip(sp, again))


def test_planted_signal_vs_noise():
    X, y, pat = _data(signal=2.5)
    sp = repeated_splits(y, pat, 5, 2, seed=1)
    good = linear_probe_scores(X, y, sp)
    noise = linear_probe_scores(np.random.default_rng(5).normal(size=X.shape), y, sp)
    assert np.nanmean(good) > 0.85
    assert 0.3 < np.nanmean(noise) < 0.7
    res = paired_test(good, noise, n_test_over_n_train(sp))
    assert res["delta"] > 0.2 and res["p"] < 0.01 and res["ci_low"] > 0


def test_survival_probe_finds_planted_risk():
    rng = np.random.default_rng(0)
    n = 80
    X = rng.normal(size=(n, 6))
    risk = 1.5 * X[:, 0]
    t = rng.exponential(1 / np.exp(risk))
    c = rng.uniform(0.5, 3, n)
    y = np.stack([np.minimum(t, c), (t <= c).astype(float)], 1)
    sp = repeated_splits(y, np.arange(n), 4, 1, seed=0)
    sc = linear_probe_scores(X, y, sp, task="survival")
    assert np.nanmean(sc) > 0.7


def test_corrected_ci_by_hand():
    s = np.array([0.7, 0.8, 0.75, 0.9, 0.65, 0.85])
    m, sd, lo, hi = corrected_ci(s, 0.25)
    half = stats.t.ppf(0.975, 5) * np.sqrt((1 / 6 + 0.25) * s.var(ddof=1))
    assert m == pytest.approx(s.mean()) and sd == pytest.approx(s.std(ddof=1))
    assert (lo, hi) == pytest.approx((s.mean() - half, s.mean() + half))
    same = paired_test(s, s, 0.25)
    assert same["delta"] == 0 and same["p"] == 1.0


def test_corrected_ci_is_clipped_to_the_metric_range():
    """Issue 23.5: AUCs near 1 with fold spread gave upper bounds such as 1.052; mil cv clips, so does the probe."""
    s = np.array([1.0, 0.9, 1.0, 0.7, 1.0, 0.95])
    m, sd, lo, hi = corrected_ci(s, 0.25)
    half = stats.t.ppf(0.975, 5) * np.sqrt((1 / 6 + 0.25) * s.var(ddof=1))
    assert s.mean() + half > 1 and hi == 1.0 and lo == pytest.approx(s.mean() - half)
    assert corrected_ci(np.array([0.0, 0.1, 0.0, 0.3]), 0.25)[2] == 0.0
