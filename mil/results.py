"""What a cross-validation produced and how it is written: :class:`CVResult`, the out-of-fold prediction rows
shared by MIL heads and the linear probe, the per-metric summary (corrected resampled t CIs, :mod:`mil.stats`) and
the report files of a ``mil cv`` folder (CSVs, ``summary.md``, ROC / KM plot, attention CSVs, heatmaps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mil import plots
from mil.data import Cohort
from mil.heatmap import ThumbnailProvider, instance_coords, slide_heatmap, write_attention_csv
from mil.stats import corrected_ttest, split_ratio
from mil.tasks import make_task
from zoomfeat.io import atomic_path, write_text_atomic


@dataclass
class CVResult:
    """What a cross-validation produced (:func:`mil.cv.cross_validate`, :func:`mil.folds.run_folds`);
    :func:`write_result` puts it on disk. It reads like its per-fold table: ``res["auc"].mean()``,
    ``res[["fold", "auc"]]``, ``len(res)`` (folds), ``"c_index" in res``, ``list(res)`` / ``res.columns`` (its columns)."""

    metrics: pd.DataFrame  # one row per fold
    predictions: pd.DataFrame  # one row per test slide (out-of-fold)
    summary: pd.DataFrame  # one row per metric: mean, std, ci_low, ci_high
    splits: pd.DataFrame
    task: str
    classes: list = field(default_factory=list)
    attention: dict[str, np.ndarray] = field(default_factory=dict)  # slide -> scores (N,)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __getitem__(self, key):
        return self.metrics[key]

    def __len__(self) -> int:
        return len(self.metrics)

    def __iter__(self):
        return iter(self.metrics)

    def __contains__(self, column) -> bool:
        return column in self.metrics

    @property
    def columns(self) -> pd.Index:
        return self.metrics.columns


METRIC_RANGE = (0.0, 1.0)  # every reported metric (AUC, accuracy, balanced accuracy, F1, c-index) lives in [0, 1]


def summarize(metrics: pd.DataFrame, task: str, n_classes: int) -> pd.DataFrame:
    """mean ± std over fold models plus a 95% CI from the corrected resampled t-test over those fold values
    (:func:`mil.stats.corrected_ttest`; clipped to [0, 1]). Each fold model is scored on its own test set:
    predictions of different fold models are never pooled for a CI."""
    names = list(make_task(task, n_classes=max(n_classes, 2)).metric_names)
    n_test = metrics["n_test"].to_numpy(float) if "n_test" in metrics else np.ones(len(metrics))
    n_fit = (metrics["n_train"] + metrics["n_val"]).to_numpy(float) if "n_train" in metrics else n_test * 4
    ratio = split_ratio(n_test, n_fit)
    rows = []
    for m in names:
        v = metrics[m].to_numpy(float)
        v = v[np.isfinite(v)]
        st = corrected_ttest(v, ratio)
        rows.append({"metric": m, "mean": float(v.mean()) if len(v) else float("nan"),
                     "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                     "ci_low": float(np.clip(st["ci_low"], *METRIC_RANGE)),
                     "ci_high": float(np.clip(st["ci_high"], *METRIC_RANGE)), "n_folds": int(len(v))})
    return pd.DataFrame(rows)


def prediction_rows(cohort: Cohort, test_idx, y, pred, fold, n_classes: int) -> list[dict]:
    """Out-of-fold prediction rows of one fold's test slides (``predictions.csv``): slide, patient, fold, then
    y, label, pred, prob_{k} (classification) or time, event, risk (survival). MIL heads and the linear probe."""
    rows = []
    for j, i in enumerate(test_idx):
        row = {"slide": cohort.slides[i], "patient": cohort.patients[i], "fold": int(fold)}
        if cohort.task == "survival":
            row.update(time=float(y[j, 0]), event=int(y[j, 1]), risk=float(pred[j, 0]))
        else:
            row.update(y=int(y[j]), label=cohort.classes[int(y[j])], pred=int(pred[j].argmax()),
                       **{f"prob_{c}": float(pred[j, c]) for c in range(n_classes)})
        rows.append(row)
    return rows



def write_result(res: CVResult, out: Path, cfg, cohort: Cohort | None = None,
                 thumbnails: ThumbnailProvider | None = None, plot_jobs: list | None = None) -> None:
    """Per-fold metrics, predictions, summary (CSV + markdown), ROC or KM plot (unless ``cfg.plots`` is false),
    attention CSVs, heatmaps. ``plot_jobs``: the plot is appended there as a job (:func:`zoomfeat.jobs.run_jobs`)
    instead of drawn here (``compare`` draws them on its pool: drawn beside the fold workers, they slowed them)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, df in (("fold_metrics.csv", res.metrics), ("predictions.csv", res.predictions),
                     ("summary.csv", res.summary)):
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False)
    pd.DataFrame(res.skipped, columns=["slide", "reason"]).to_csv(out / "skipped.csv", index=False)
    extra, job = "", None
    if cfg.plots and res.task == "survival":
        p = plots.km_logrank_p(res.predictions)
        job = (plots.km_plot, (res.predictions, out / "km.png"), {"title": f"{cfg.model} — predicted risk groups",
                                                                  "p": p})
        extra = f"\nKaplan–Meier of out-of-fold risk groups (median split): log-rank p = {p:.3g} (km.png)\n"
    elif cfg.plots:
        job = (plots.roc_plot, (res.predictions, res.classes, out / "roc.png"),
               {"title": f"{cfg.model} — {cfg.target}"})
    if job is not None and plot_jobs is not None:
        plot_jobs.append(job)
    elif job is not None:
        job[0](*job[1], **job[2])
    lines = [f"# MIL cross-validation: {cfg.model} on {cfg.task} ({cfg.target or 'survival'})",
             "", f"bags: {cfg.bags} (mag {cfg.mag}), {len(res.predictions)} slides, "
             f"{res.metrics.shape[0]} folds, seed {cfg.seed}, skipped {len(res.skipped)}", "",
             "| metric | mean ± std | 95% CI (corrected t over folds) |", "|---|---|---|"]
    for r in res.summary.itertuples():
        lines.append(f"| {r.metric} | {r.mean:.3f} ± {r.std:.3f} | [{r.ci_low:.3f}, {r.ci_high:.3f}] |")
    write_text_atomic(out / "summary.md", "\n".join(lines) + "\n" + extra)
    if res.attention and cohort is not None:
        write_attention(res, out, cohort, cfg, thumbnails)


def write_attention(res: CVResult, out: Path, cohort: Cohort, cfg,
                    thumbnails: ThumbnailProvider | None = None) -> None:
    """attention/{slide}.csv (x, y, score, rank) for every test slide; heatmaps for the top-scored few (over the
    thumbnails the caller's provider gives, see :mod:`mil.heatmap`)."""
    adir = out / "attention"
    adir.mkdir(exist_ok=True)
    pos = {s: i for i, s in enumerate(cohort.slides)}
    pred = res.predictions
    score_col = "risk" if res.task == "survival" else f"prob_{len(res.classes) - 1}"
    order = pred.sort_values(score_col, ascending=False)["slide"].tolist()
    n_maps = int(cfg.heatmaps or 0)
    for slide in order:
        scores = res.attention.get(slide)
        coords, psize = instance_coords(cohort.items[pos[slide]], cfg.mag, len(scores))
        write_attention_csv(adir / f"{slide}.csv", coords, scores)
        if n_maps > 0 and coords is not None:
            slide_heatmap(slide, coords, scores, out / "heatmaps" / f"{slide}.png", thumbnails, patch_size=psize,
                          title=f"{slide} ({score_col} {pred.set_index('slide').loc[slide, score_col]:.2f})")
            n_maps -= 1
