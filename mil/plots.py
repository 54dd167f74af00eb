"""PNG plots of cross-validation results: ROC curves, Kaplan–Meier curves of predicted risk groups, encoder comparison."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from zoomfeat.io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    _plt().close(fig)
    return path


def roc_plot(pred: pd.DataFrame, classes: Sequence, path: str | os.PathLike, title: str = "") -> Path:
    """Binary: one ROC per fold plus the pooled out-of-fold curve. Multiclass: pooled one-vs-rest per class."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    n = len(classes)
    y = pred["y"].to_numpy(int)
    if n == 2:
        for fold, g in pred.groupby("fold"):
            if g["y"].nunique() == 2:
                fpr, tpr, _ = roc_curve(g["y"], g["prob_1"])
                ax.plot(fpr, tpr, lw=1, alpha=0.5, label=f"fold {fold} (AUC {roc_auc_score(g['y'], g['prob_1']):.2f})")
        if len(np.unique(y)) == 2:
            fpr, tpr, _ = roc_curve(y, pred["prob_1"])
            ax.plot(fpr, tpr, lw=2.5, color="k", label=f"pooled (AUC {roc_auc_score(y, pred['prob_1']):.2f})")
    else:
        for c in range(n):
            yc = (y == c).astype(int)
            if 0 < yc.sum() < len(yc):
                fpr, tpr, _ = roc_curve(yc, pred[f"prob_{c}"])
                ax.plot(fpr, tpr, lw=2, label=f"{classes[c]} vs rest (AUC {roc_auc_score(yc, pred[f'prob_{c}']):.2f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title or "ROC (out-of-fold)")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def risk_groups(risk: np.ndarray, n_groups: int = 2) -> np.ndarray:
    """Quantile groups of predicted risk (0 = lowest risk); 2 groups = median split."""
    edges = np.quantile(risk, np.linspace(0, 1, n_groups + 1)[1:-1])
    return np.searchsorted(edges, risk, side="right")


def km_plot(pred: pd.DataFrame, path: str | os.PathLike, n_groups: int = 2, title: str = "",
            p: float | None = None) -> float:
    """Kaplan–Meier curves (lifelines) of out-of-fold risk groups; returns the log-rank p-value (multivariate
    log-rank for more than two groups; ``p``: :func:`km_logrank_p` already computed for these predictions)."""
    from lifelines import KaplanMeierFitter

    plt = _plt()
    t, e, r = pred["time"].to_numpy(float), pred["event"].to_numpy(int), pred["risk"].to_numpy(float)
    g = risk_groups(r, n_groups)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    names = ["low risk", "high risk"] if n_groups == 2 else [f"risk Q{k + 1}" for k in range(n_groups)]
    for k in range(n_groups):
        m = g == k
        if m.any():
            KaplanMeierFitter(label=f"{names[k]} (n={int(m.sum())})").fit(t[m], e[m]).plot_survival_function(ax=ax)
    p = km_logrank_p(pred, n_groups) if p is None else p
    ax.set(xlabel="time", ylabel="survival probability", title=(title or "Kaplan–Meier") + f"\nlog-rank p = {p:.3g}")
    _save(fig, path)
    return p


def km_logrank_p(pred: pd.DataFrame, n_groups: int = 2) -> float:
    """The log-rank p-value :func:`km_plot` prints: out-of-fold risk groups (median split for two), multivariate
    log-rank for more than two groups; NaN with one group."""
    from lifelines.statistics import logrank_test, multivariate_logrank_test

    t, e = pred["time"].to_numpy(float), pred["event"].to_numpy(int)
    g = risk_groups(pred["risk"].to_numpy(float), n_groups)
    if len(np.unique(g)) < 2:
        return float("nan")
    if n_groups == 2:
        return float(logrank_test(t[g == 0], t[g == 1], e[g == 0], e[g == 1]).p_value)
    return float(multivariate_logrank_test(t, g, e).p_value)


def compare_plot(table: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """Grouped bars: one group per task, one bar per encoder, height = mean primary metric, error bar = std."""
    plt = _plt()
    tasks = list(dict.fromkeys(table["task"]))
    encs = list(dict.fromkeys(table["encoder"]))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(tasks) * max(1, len(encs)) / 2), 4))
    w = 0.8 / max(1, len(encs))
    for j, enc in enumerate(encs):
        sub = table[table["encoder"] == enc].set_index("task")
        x = np.arange(len(tasks)) + (j - (len(encs) - 1) / 2) * w
        means = [sub.loc[t, "mean"] if t in sub.index else np.nan for t in tasks]
        stds = [sub.loc[t, "std"] if t in sub.index else np.nan for t in tasks]
        ax.bar(x, means, w, yerr=np.nan_to_num(stds), capsize=3, label=enc)
    labels = [f"{t}\n({table[table['task'] == t]['metric'].iloc[0]})" for t in tasks]
    ax.set_xticks(np.arange(len(tasks)), labels)
    ax.axhline(0.5, ls="--", color="grey", lw=1)
    ax.set(ylim=(0, 1.05), ylabel="mean over folds (± std)", title=title or "encoder comparison")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, path)


def forest_plot(table: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """One panel per task: each non-reference row's mean Δ to the reference with its unadjusted 95% CI (green:
    win, red: loss, grey: tie at Holm-adjusted p < 0.05, so a CI that misses 0 can still be grey), a line at Δ = 0;
    the plot says both on its axis label."""
    plt = _plt()
    tasks = list(dict.fromkeys(table["task"]))
    rows = table[~table["is_reference"].astype(bool)]
    n_rows = max(1, rows.groupby("task").size().max() if len(rows) else 1)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 1.8 + 0.5 * n_rows), squeeze=False)
    colors = {"win": "tab:green", "loss": "tab:red", "tie": "tab:grey"}
    for ax, task in zip(axes[0], tasks):
        g = rows[rows["task"] == task].iloc[::-1]
        y = np.arange(len(g))
        for k, r in enumerate(g.itertuples()):
            lo, hi = r.delta - r.delta_ci_low, r.delta_ci_high - r.delta
            ax.errorbar(r.delta, k, xerr=[[np.nan_to_num(lo)], [np.nan_to_num(hi)]], fmt="o", capsize=3,
                        color=colors.get(r.outcome, "k"))
        ax.axvline(0, color="k", lw=1, ls="--")
        ax.set_yticks(y, list(g["encoder"]))
        metric = table[table["task"] == task]["metric"].iloc[0]
        ref = table["reference"].iloc[0] if "reference" in table else "reference"
        ax.set(xlabel=f"Δ {metric} vs {ref}\nbars: unadjusted 95% CI; colour: Holm p_adj < 0.05", title=task)
    fig.suptitle(title or "paired differences to the reference", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
