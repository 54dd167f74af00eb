"""The linear probe on slide-level features: the ``linear`` framework of ``zoomfeat compare`` (:func:`run_linear`)
and the readout of the recipe sweep (:mod:`mil.probe_eval`) both fit it with the two functions here.

Per fold: mean-pool every bag, fit a StandardScaler on the fold's training slides (train + val: a linear probe
needs no early stopping), then sklearn ``LogisticRegression`` (L2, C=1; balanced class weights in ``compare``)
for classification, or lifelines ``CoxPHFitter`` (penalizer 0.1, Efron ties) on the first principal components
(≤ 8, fitted on the training fold: a Cox fit on hundreds of dimensions and a few dozen slides does not
converge) for survival. Scored with the same metrics as the MIL heads, one fold model per test fold.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mil.data import Cohort, read_features
from mil.models import register_head
from mil.results import prediction_rows
from mil.splits import fold_indices
from mil.tasks import CLASSIFICATION, make_task


def pooled_features(cohort: Cohort, mag: str = "20x") -> np.ndarray:
    """(n_slides, D) mean of each bag's instance features."""
    return np.stack([read_features(item, mag).astype(np.float64).mean(0) for item in cohort.items])


def fit_predict_classifier(x_tr, y_tr, x_te, n_classes: int, seed: int = 0, balanced: bool = True,
                           max_iter: int = 5000) -> np.ndarray:
    """StandardScaler + logistic regression (L2, C=1) fitted on (``x_tr``, class codes ``y_tr``) →
    (len(x_te), n_classes) probabilities; 0 for a class absent from the training rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=max_iter, random_state=seed,
                                                             class_weight="balanced" if balanced else None))
    clf.fit(x_tr, y_tr)
    prob = np.zeros((len(x_te), n_classes))
    prob[:, clf.classes_.astype(int)] = clf.predict_proba(x_te)
    return prob


def fit_predict_cox(x_tr, y_tr, x_te, seed: int = 0, slides_per_pc: int = 5) -> np.ndarray:
    """StandardScaler + PCA (≤ 8 components, at most one per ``slides_per_pc`` training slides) + lifelines Cox
    (ridge 0.1) fitted on (``x_tr``, (time, event) ``y_tr``) → (len(x_te), 1) log partial hazards (risk)."""
    from lifelines import CoxPHFitter
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = int(max(1, min(8, x_tr.shape[1], len(x_tr) // int(slides_per_pc))))
    proj = make_pipeline(StandardScaler(), PCA(n_components=k, random_state=seed)).fit(x_tr)
    cols = [f"pc{i}" for i in range(k)]
    df = pd.DataFrame(proj.transform(x_tr), columns=cols).assign(time=y_tr[:, 0], event=y_tr[:, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cph = CoxPHFitter(penalizer=0.1).fit(df, "time", "event")
    return cph.predict_log_partial_hazard(pd.DataFrame(proj.transform(x_te), columns=cols)).to_numpy()[:, None]


def run_linear(cohort: Cohort, splits: pd.DataFrame, mag: str = "20x", seed: int = 0) -> tuple[pd.DataFrame,
                                                                                                pd.DataFrame]:
    """Per-fold metrics and out-of-fold predictions of the linear probe, in :func:`mil.cv.run_folds`' layout
    (folds one after another here; ``run_folds(model='linear', jobs=N)`` runs them on N workers)."""
    x = pooled_features(cohort, mag)
    res = [linear_fold(cohort, x, fold_indices(splits, cohort.slides, f), f, seed)
           for f in sorted(splits["fold"].unique())]
    return pd.DataFrame([r["row"] for r in res]), pd.DataFrame([p for r in res for p in r["pred"]])


def linear_fold(cohort: Cohort, x: np.ndarray, idx: dict, fold: int, seed: int = 0) -> dict:
    """One fold job of the linear probe on pooled features ``x``: fit on train + val, score the test slides;
    returns {row, pred} as :func:`mil.folds.fit_fold` does (seeded by ``seed`` + fold)."""
    n_classes = len(cohort.classes) if cohort.task in CLASSIFICATION else 0
    task = make_task(cohort.task, n_classes=max(n_classes, 2))
    tr = np.concatenate([idx["train"], idx["val"]])
    te = idx["test"]
    y_tr, y_te = cohort.targets[tr], cohort.targets[te]
    if cohort.task in CLASSIFICATION:
        pred = fit_predict_classifier(x[tr], y_tr, x[te], n_classes, seed + int(fold))
    else:
        pred = fit_predict_cox(x[tr], y_tr, x[te], seed + int(fold))
    met = task.metrics(y_te, pred)
    return {"row": {"fold": int(fold), **met, "n_train": len(tr), "n_val": 0, "n_test": len(te)},
            "pred": prediction_rows(cohort, te, y_te, pred, fold, n_classes)}


@dataclass
class LinearOptions:
    """The linear probe reads no option from ``hparams`` (L2 C=1, balanced class weights; Cox ridge 0.1)."""


@register_head("linear", options=LinearOptions)
class LinearProbe:
    """The ``linear`` framework: mean-pooled bags → logistic regression / Cox, one fit per fold. Not an
    ``nn.Module`` trained by :mod:`mil.trainer`: it declares its own fold jobs."""

    @classmethod
    def fold_jobs(cls, cohort: Cohort, indices: dict, folds: list, mag: str, seed: int,
                  options: LinearOptions) -> list:
        """One :func:`linear_fold` job per fold (zoomfeat.jobs.Job tuples), on features pooled once."""
        x = pooled_features(cohort, mag)
        return [(linear_fold, (cohort, x, indices[f], f, seed), {}) for f in folds]
