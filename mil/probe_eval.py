"""Linear probe on slide-level features: repeated patient-level stratified group k-fold, one score per fold model.

Why: a recipe sweep evaluates hundreds of feature variants; a linear head on mean-pooled features (standardised
on the training fold) is the cheap, low-variance readout that feature benchmarks (eva, Patho-Bench) use, and
scores per fold model (never pooled predictions of different models) let splits be compared pairwise.
Classification: ``StandardScaler`` + ``LogisticRegression`` (AUC; one-vs-rest macro for > 2 classes).
Survival: ``StandardScaler`` + PCA (≤ 8 components, fitted on the training fold) + lifelines ``CoxPHFitter``
(ridge 0.1; c-index on the test fold). Summary CIs: the corrected resampled t-test (Nadeau & Bengio 2003), whose
variance term ``(1/J + n_test/n_train)·s²`` accounts for overlapping training sets across repeated splits.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from mil.linear import fit_predict_classifier, fit_predict_cox
from mil.stats import corrected_ttest

SURVIVAL = "survival"


def repeated_splits(y: np.ndarray, groups: Sequence, n_folds: int = 5, n_repeats: int = 3,
                    seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_idx, test_idx) for ``n_repeats`` × ``n_folds`` patient-level stratified splits (same for every
    feature set given the same labels, groups and seed). ``y``: class codes, or (time, event) → stratified by event."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y)
    strata = y[:, 1].astype(int) if y.ndim == 2 else y
    groups = np.asarray([str(g) for g in groups])
    out = []
    for r in range(int(n_repeats)):
        cv = StratifiedGroupKFold(n_splits=int(n_folds), shuffle=True, random_state=int(seed) + r)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*least populated class.*")
            out += [(np.asarray(a), np.asarray(b)) for a, b in cv.split(np.zeros(len(y)), strata, groups)]
    return out


def _fit_score_clf(Xtr, ytr, Xte, yte) -> float:
    """Test AUC of the probe (:func:`mil.linear.fit_predict_classifier`, unweighted classes); one-vs-rest macro
    over the classes present in the test fold for > 2 classes."""
    from sklearn.metrics import roc_auc_score

    classes = np.unique(ytr)
    if len(np.unique(yte)) < 2 or len(classes) < 2:
        return float("nan")
    n_classes = int(max(classes.max(), np.max(yte))) + 1
    prob = fit_predict_classifier(Xtr, ytr, Xte, n_classes, balanced=False, max_iter=2000)[:, classes.astype(int)]
    if len(classes) == 2:
        return float(roc_auc_score(yte, prob[:, 1]))
    present = np.isin(classes, np.unique(yte))
    if present.sum() < len(classes):  # a class absent from the test fold: macro AUC over the present ones
        return float(np.mean([roc_auc_score(yte == c, prob[:, k]) for k, c in enumerate(classes) if present[k]]))
    return float(roc_auc_score(yte, prob, multi_class="ovr", average="macro", labels=classes))


def _fit_score_cox(Xtr, ytr, Xte, yte) -> float:
    """Test c-index of the probe's risk (:func:`mil.linear.fit_predict_cox`, one component per 6 slides)."""
    from lifelines.utils import concordance_index

    if ytr[:, 1].sum() < 2 or yte[:, 1].sum() < 1:
        return float("nan")
    risk = fit_predict_cox(Xtr, ytr, Xte, seed=0, slides_per_pc=6)[:, 0]
    return float(concordance_index(yte[:, 0], -risk, yte[:, 1]))


def linear_probe_scores(X: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]],
                        task: str = "classification") -> np.ndarray:
    """One score per split (AUC, or c-index when ``task == 'survival'``; NaN where undefined)."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y)
    fit = _fit_score_cox if task == SURVIVAL else _fit_score_clf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([fit(X[tr], y[tr], X[te], y[te]) for tr, te in splits])


def corrected_ci(scores: np.ndarray, test_over_train: float, level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, std, ci_low, ci_high) of per-split scores with the Nadeau–Bengio corrected variance
    (:func:`mil.stats.corrected_ttest`, the same test ``compare`` uses), the CI clipped to the metrics' range [0, 1]
    (AUC, c-index; as ``mil cv`` clips its summary)."""
    s = np.asarray(scores, float)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        return (float("nan"),) * 4
    r = corrected_ttest(s, test_over_train, level)
    lo, hi = np.clip([r["ci_low"], r["ci_high"]], 0.0, 1.0)
    return r["mean"], float(s.std(ddof=1)) if len(s) > 1 else 0.0, float(lo), float(hi)


def paired_test(a: np.ndarray, b: np.ndarray, test_over_train: float) -> dict:
    """Corrected resampled paired t-test of per-split scores ``a − b`` (same splits): Δ mean, 95% CI, two-sided p."""
    d = np.asarray(a, float) - np.asarray(b, float)
    r = corrected_ttest(d, test_over_train)
    return {"delta": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "p": r["p"],
            "n_splits": r["n_splits"]}


def n_test_over_n_train(splits: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """n_test / n_train averaged over splits (the correction term of the resampled t-test)."""
    return float(np.mean([len(te) / max(1, len(tr)) for tr, te in splits]))


def probe_feature_set(keys: dict, X: np.ndarray, splits: dict, subset: str,
                      alpha_bar: dict[int, float]) -> tuple[list[dict], dict]:
    """One feature set's probe.csv rows and per-split scores, for every task in ``splits`` ({task: (y, splits)});
    ``X`` holds the evaluated slides only."""
    rows, scores = [], {}
    for task, (yy, sp) in splits.items():
        sc = linear_probe_scores(X, yy, sp, "survival" if task == "survival" else "classification")
        m, sd, lo, hi = corrected_ci(sc, n_test_over_n_train(sp))
        ab = alpha_bar.get(keys["t"]) if keys["t"] != "" else None
        rows.append({**keys, "task": task, "metric": "c_index" if task == "survival" else "auc", "mean": m,
                     "std": sd, "ci_low": lo, "ci_high": hi, "alpha_bar": ab,
                     "noise_pct": None if ab is None else 100 * (1 - ab), "subset": subset,
                     "n_slides": int(len(X)), "n_splits": int(np.isfinite(sc).sum())})
        scores[(subset, task) + tuple(keys.values())] = sc
    return rows, scores
