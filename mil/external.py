"""External validation: labels joined to predictions, metrics with patient-grouped bootstrap CIs (vectorised over
the draws), ROC / Kaplan–Meier plots and the metrics report; :mod:`mil.predict` runs it for ``zoomfeat mil predict``.

The CI resamples *patients* with replacement (all slides of a drawn patient come along), so two slides of one
patient never count as independent evidence; metrics are per slide. Percentile intervals, 1000 draws by default.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from mil import plots
from mil.data import load_labels
from mil.deploy import Predictor
from mil.tasks import c_index
from zoomfeat.io import atomic_path, write_text_atomic


def attach_labels(pred: pd.DataFrame, labels: str | os.PathLike | pd.DataFrame, pr: Predictor,
                  target: str | None = None) -> pd.DataFrame:
    """Join the labels table on ``slide``; rows with a usable label get ``y``/``label`` (or ``time``/``event``)."""
    meta = pr.meta.get("task", {}) if pr.kind == "model" else pr.meta.get("config", {})
    target = target or meta.get("target")
    tcol, ecol = meta.get("time_col", "time"), meta.get("event_col", "event")
    df, _ = load_labels(labels, pr.task, target, tcol, ecol)
    df = df.set_index("slide")
    out = pred.copy()
    out["patient"] = [df.at[s, "patient"] if s in df.index else s for s in out["slide"]]
    if pr.task == "survival":
        out["time"] = out["slide"].map(df[tcol])
        out["event"] = out["slide"].map(df[ecol])
        return out
    lookup = {str(c): i for i, c in enumerate(pr.classes)}
    raw = out["slide"].map(df[target]) if target in df.columns else pd.Series(np.nan, index=out.index)
    unknown = sorted({str(v) for v in raw.dropna() if str(v) not in lookup and str(_intlike(v)) not in lookup})
    if unknown:
        warnings.warn(f"labels {unknown} are not among the model's classes {pr.classes}: those slides are not scored",
                      stacklevel=2)
    out["y"] = [lookup.get(str(v), lookup.get(str(_intlike(v)))) if pd.notna(v) else None for v in raw]
    out["label"] = [pr.classes[int(y)] if y is not None and not pd.isna(y) else None for y in out["y"]]
    return out


def _intlike(v: Any) -> Any:
    """CSV readers turn 0 into 0.0 when a column has gaps; match it to the class 0."""
    try:
        f = float(v)
        return int(f) if f.is_integer() else v
    except (TypeError, ValueError):
        return v


def scored(pred: pd.DataFrame, task: str) -> pd.DataFrame:
    """The prediction rows with a usable label (``y``, or ``time`` and ``event``)."""
    cols = ["time", "event"] if task == "survival" else ["y"]
    if not set(cols) <= set(pred.columns):
        return pred.iloc[:0]
    return pred.dropna(subset=cols).reset_index(drop=True)


def boot_classification_metrics(y: np.ndarray, prob: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Vectorised metrics for B resampled sets at once: y (B, n) int, prob (B, n, C) → arrays of B values.

    Same definitions as sklearn (checked in tests): accuracy; balanced accuracy = mean recall over classes
    present in y; macro-F1 over all classes with zero_division=0; AUC = Mann–Whitney rank sum (ties get
    average ranks), one-vs-rest macro for C > 2, NaN when a class is absent.
    """
    b, n = y.shape
    c = n_classes
    pred = prob.argmax(-1)
    cm = np.bincount((np.arange(b)[:, None] * c * c + y * c + pred).ravel(), minlength=b * c * c).reshape(b, c, c)
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(float)
    support, predicted = cm.sum(2).astype(float), cm.sum(1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        denom = support + predicted
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)

        def auc(score: np.ndarray, pos: np.ndarray) -> np.ndarray:
            ranks = rankdata(score, axis=1)
            n1 = pos.sum(1).astype(float)
            u = (ranks * pos).sum(1) - n1 * (n1 + 1) / 2
            return np.where((n1 > 0) & (n1 < n), u / (n1 * (n - n1)), np.nan)

        if c == 2:
            aucs = auc(prob[..., 1], y == 1)
        else:
            aucs = np.mean([auc(prob[..., k], y == k) for k in range(c)], axis=0)  # NaN if a class is absent
        return {"auc": aucs, "accuracy": tp.sum(1) / n, "balanced_accuracy": np.nanmean(recall, axis=1),
                "f1": f1.mean(1)}


def grouped_bootstrap_ci(pred: pd.DataFrame, task: str, n_classes: int, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile CIs of per-slide metrics, resampling patients (column ``patient``) with replacement."""
    rng = np.random.default_rng(seed)
    groups = pred.groupby("patient").indices
    members = list(groups.values())
    draws: dict[str, list[float]] = {}
    for _ in range(int(n_boot)):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
        sub = pred.iloc[idx]
        if task == "survival":
            vals = {"c_index": c_index(sub["time"].to_numpy(float), sub["event"].to_numpy(float),
                                       sub["risk"].to_numpy(float))}
        else:
            y = sub["y"].to_numpy(int)[None]
            p = sub[[f"prob_{c}" for c in range(n_classes)]].to_numpy(float)[None]
            vals = {k: float(v[0]) for k, v in boot_classification_metrics(y, p, n_classes).items()}
        for k, v in vals.items():
            draws.setdefault(k, []).append(v)
    a = (1 - level) / 2
    out = {}
    for k, v in draws.items():
        v = np.asarray(v)
        v = v[np.isfinite(v)]
        out[k] = (float(np.quantile(v, a)), float(np.quantile(v, 1 - a))) if len(v) else (float("nan"),) * 2
    return out


def external_metrics(pred: pd.DataFrame, pr: Predictor, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Point estimate on every labelled slide + patient-grouped bootstrap CI, one row per metric."""
    sc = scored(pred, pr.task)
    if sc.empty:
        raise ValueError("no predicted slide has a usable label: check the labels CSV's slide ids and target")
    task = pr.task_obj()
    if pr.task == "survival":
        point = task.metrics(sc[["time", "event"]].to_numpy(float), sc[["risk"]].to_numpy(float))
    else:
        point = task.metrics(sc["y"].to_numpy(int), sc[[f"prob_{c}" for c in range(pr.n_classes)]].to_numpy(float))
    ci = grouped_bootstrap_ci(sc, pr.task, pr.n_classes, n_boot, seed)
    return pd.DataFrame([{"metric": m, "value": v, "ci_low": ci.get(m, (np.nan,) * 2)[0],
                          "ci_high": ci.get(m, (np.nan,) * 2)[1], "n_slides": len(sc),
                          "n_patients": sc["patient"].nunique(), "n_boot": int(n_boot)} for m, v in point.items()])


def write_metrics(out: Path, pred: pd.DataFrame, metrics: pd.DataFrame, pr: Predictor) -> None:
    """``metrics.csv``, ``metrics.md`` and ``roc.png`` or ``km.png`` of an external validation."""
    with atomic_path(out / "metrics.csv") as tmp:
        metrics.to_csv(tmp, index=False)
    sc = scored(pred, pr.task)
    extra = ""
    if pr.task == "survival":
        p = plots.km_plot(sc, out / "km.png", title=f"{Path(pr.source).name}: predicted risk groups")
        extra = f"\nKaplan–Meier of predicted risk groups (median split): log-rank p = {p:.3g} (km.png)\n"
    else:
        plots.roc_plot(sc.assign(fold="external"), pr.classes, out / "roc.png", title=f"{Path(pr.source).name}")
    r0 = metrics.iloc[0]
    lines = [f"# External validation of {pr.source} ({pr.kind}, {len(pr.nets)} head(s))", "",
             f"{int(r0.n_slides)} labelled slides from {int(r0.n_patients)} patients; 95% CI: percentile bootstrap "
             f"over patients ({int(r0.n_boot)} draws)", "", "| metric | value | 95% CI |", "|---|---|---|"]
    lines += [f"| {r.metric} | {r.value:.3f} | [{r.ci_low:.3f}, {r.ci_high:.3f}] |" for r in metrics.itertuples()]
    write_text_atomic(out / "metrics.md", "\n".join(lines) + "\n" + extra)
