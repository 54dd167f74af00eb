"""Statistics over cross-validation splits: corrected resampled t-test (Nadeau & Bengio 2003), Holm, verdicts.

Why: the J = repeats × folds per-split scores share training data, so their plain standard error is far too
small. Nadeau & Bengio's correction inflates the variance of the mean by (1/J + n_test/n_train):

    mean ± t_{J−1, 0.975} · sqrt((1/J + n_test/n_train) · s²)

with s² the sample variance of the per-split values. Applied to one model's per-split metric it gives the
metric's CI; applied to the per-split difference of two models on the same splits (paired) it gives the CI and
p-value of Δ. Every value comes from one fold model on its own test set: predictions of different fold models
are never pooled.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def corrected_ttest(values: Sequence[float], test_train_ratio: float, level: float = 0.95) -> dict[str, float]:
    """Mean, corrected CI and two-sided p (H0: mean 0) of per-split values; NaN values are dropped.

    ``test_train_ratio`` = n_test / n_train of a split (1/(k−1) for k-fold). With fewer than two values the CI
    and p are NaN; with zero variance the CI collapses to the mean and p is 1 (mean 0) or 0.
    """
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    j = len(v)
    out = {"mean": float(v.mean()) if j else float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
           "p": float("nan"), "n_splits": j}
    if j < 2:
        return out
    var = (1.0 / j + float(test_train_ratio)) * v.var(ddof=1)
    se = math.sqrt(var)
    q = stats.t.ppf(0.5 + level / 2, j - 1)
    out.update(ci_low=out["mean"] - q * se, ci_high=out["mean"] + q * se)
    if se == 0:
        out["p"] = 1.0 if out["mean"] == 0 else 0.0
    else:
        out["p"] = float(2 * stats.t.sf(abs(out["mean"]) / se, j - 1))
    return out


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and are not counted. The same numbers as statsmodels'
    ``multipletests(p, method="holm")[1]`` (tests/test_mil_stats.py checks it), written out because that function
    runs a full ``gc.collect()`` on every call (0.1–0.5 s in a process holding torch; compare calls it per family)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok):
        order = np.argsort(p[ok], kind="stable")
        m = len(order)
        adj = np.minimum(1.0, np.maximum.accumulate(p[ok][order] * np.arange(m, 0, -1)))
        out[ok[order]] = adj
    return out


def split_ratio(n_test, n_fit) -> float:
    """The ``test_train_ratio`` of :func:`corrected_ttest`: mean of n_test / n_fit over the splits (n_fit = the
    slides a fold model was fitted on, validation slides included; at least 1)."""
    return float(np.mean(np.asarray(n_test, dtype=float) / np.maximum(np.asarray(n_fit, dtype=float), 1)))


def outcome(delta: float, p_adj: float, alpha: float = 0.05) -> str:
    """'win' / 'loss' when the Holm-adjusted p is below ``alpha`` (sign of Δ), else 'tie'."""
    if not np.isfinite(p_adj) or p_adj >= alpha:
        return "tie"
    return "win" if delta > 0 else "loss"


def detectable_delta(se: float, n_splits: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """Smallest true mean Δ a two-sided corrected t-test (df = J − 1, standard error ``se`` = the corrected
    sqrt((1/J + n_test/n_train) · s²) of :func:`corrected_ttest`) rejects with probability ``power`` at ``alpha``:
    the non-centrality δ/se solving P(|T'| > t_{1−α/2}) = power for T' ~ noncentral t (scipy ``nct``). NaN when
    ``se`` is not finite or there are fewer than two splits."""
    from scipy import optimize, stats

    if not (np.isfinite(se) and n_splits >= 2):
        return float("nan")
    df = int(n_splits) - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def gap(nc: float) -> float:  # the far tail is ~0 and scipy returns NaN for it at large nc
        return float(stats.nct.sf(crit, df, nc) + np.nan_to_num(stats.nct.cdf(-crit, df, nc))) - power

    hi = 1.0
    while gap(hi) < 0 and hi < 256:  # bracket the root (nct is NaN for huge non-centralities)
        hi *= 2
    return float(optimize.brentq(gap, 0.0, hi) * se)


def se_from_ci(ci_low: float, ci_high: float, n_splits: int, level: float = 0.95) -> float:
    """The corrected standard error behind a :func:`corrected_ttest` interval (its half-width / t quantile)."""
    from scipy import stats

    if n_splits < 2:
        return float("nan")
    return float((ci_high - ci_low) / (2 * stats.t.ppf(0.5 + level / 2, int(n_splits) - 1)))
