"""Cross-validation: the Python API ``cross_validate`` and the config-driven ``run_cv`` behind ``zoomfeat mil cv``.

Every fold trains a fresh head on the fold's training patients (features standardised with that fold's training
statistics), early-stops on its validation patients when there are enough of them (else a fixed schedule on
train + val, see :func:`run_folds`) and is scored once on its test patients. Summary CIs aggregate the per-fold
scores (corrected resampled t, :mod:`mil.stats`); out-of-fold predictions are pooled only for plots.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mil.data import BagDataset, Cohort, build_cohort, fit_standardizer, load_labels, save_standardizer
from mil.heatmap import ThumbnailProvider
from mil.models import build_model, with_split_dim
from mil.splits import check_splits, fold_indices, load_splits, make_splits, save_splits
from mil.tasks import CLASSIFICATION, TASKS, make_task
from mil.trainer import HeadTrainConfig, predict, seed_everything, train_model


@dataclass
class CVResult:
    """What a cross-validation produced (:func:`cross_validate`, :func:`run_folds`); :func:`write_result` puts it on
    disk. It reads like its per-fold table: ``res["auc"].mean()``, ``res[["fold", "auc"]]``, ``len(res)`` (folds),
    ``"c_index" in res``, ``list(res)`` / ``res.columns`` (its columns)."""

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


def boot_classification_metrics(y: np.ndarray, prob: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Vectorised metrics for B resampled sets at once: y (B, n) int, prob (B, n, C) → arrays of B values.

    Same definitions as sklearn (checked in tests): accuracy; balanced accuracy = mean recall over classes
    present in y; macro-F1 over all classes with zero_division=0; AUC = Mann–Whitney rank sum (ties get
    average ranks), one-vs-rest macro for C > 2, NaN when a class is absent.
    """
    from scipy.stats import rankdata

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


METRIC_RANGE = (0.0, 1.0)  # every reported metric (AUC, accuracy, balanced accuracy, F1, c-index) lives in [0, 1]


def summarize(metrics: pd.DataFrame, task: str, n_classes: int) -> pd.DataFrame:
    """mean ± std over fold models plus a 95% CI from the corrected resampled t-test over those fold values
    (:func:`mil.stats.corrected_ttest`; clipped to [0, 1]). Each fold model is scored on its own test set:
    predictions of different fold models are never pooled for a CI."""
    from mil.stats import corrected_ttest, split_ratio

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


def run_folds(cohort: Cohort, splits: pd.DataFrame, model: str = "abmil", mag: str = "20x", seed: int = 0,
              out_dir: str | os.PathLike | None = None, attention: bool = False, jobs: int | None = None,
              **hparams) -> CVResult:
    """Train/evaluate one head per fold of ``splits`` on ``cohort``; the core shared by the API and the CLI.

    ``model='linear'`` runs the mean-pooling linear probe (:mod:`mil.linear`) on the same folds instead.
    ``jobs``: folds run on that many worker processes (:func:`zoomfeat.jobs.run_jobs`; default: the usable
    cores); the result does not depend on it (each fold seeds itself from the seed and its fold number).
    """
    from zoomfeat.jobs import run_jobs

    plan = plan_folds(cohort, splits, model, mag, seed, out_dir, attention, **hparams)
    return finish_folds(plan, run_jobs(plan.calls, jobs))


@dataclass
class FoldPlan:
    """The fold jobs of one cross-validation still to run (:func:`plan_folds`), the folds a killed run already
    finished (read back from their ``fold{k}/result.json``), and what :func:`finish_folds` needs to assemble both
    into a :class:`CVResult`."""

    cohort: Cohort
    splits: pd.DataFrame
    model: str
    folds: list = field(default_factory=list)  # every fold, in order
    calls: list = field(default_factory=list)  # zoomfeat.jobs.Job tuples of the folds still to run, in fold order
    done: dict = field(default_factory=dict)  # fold → result of a fold finished by an earlier (killed) run


def plan_folds(cohort: Cohort, splits: pd.DataFrame, model: str = "abmil", mag: str = "20x", seed: int = 0,
               out_dir: str | os.PathLike | None = None, attention: bool = False, **hparams) -> FoldPlan:
    """One job per fold (:func:`fit_fold` for MIL heads, :func:`mil.linear.linear_fold` for the linear probe);
    run them with :func:`zoomfeat.jobs.run_jobs` (several plans may share one run: ``compare``). A MIL fold whose
    ``out_dir/fold{k}/result.json`` was written for the same inputs (:func:`fold_key`) is reused, not rerun."""
    from mil.splits import with_repeat

    splits = with_repeat(splits)
    folds = sorted(splits["fold"].unique())
    indices = {f: fold_indices(splits, cohort.slides, f) for f in folds}
    if str(model).lower() == "linear":
        from mil.linear import linear_fold, pooled_features

        x = pooled_features(cohort, mag)
        calls = [(linear_fold, (cohort, x, indices[f], f, seed), {}) for f in folds]
        return FoldPlan(cohort, splits, "linear", folds, calls)
    cfg = HeadTrainConfig.from_hparams(hparams)
    if not any(len(indices[f]["val"]) for f in folds):
        warnings.warn("no validation patients (val_fraction: 0 or a split table without 'val' rows): each fold runs "
                      f"a fixed schedule of {cfg.epochs} epochs and keeps the last one; set val_fraction > 0 for "
                      "early stopping on held-out patients", stacklevel=3)
    plan = FoldPlan(cohort, splits, model, folds)
    for f in folds:
        key = fold_key(cohort, indices[f], f, model, mag, seed, attention, hparams) if out_dir else None
        done = read_fold_result(Path(out_dir) / f"fold{f}" / "result.json", key) if key else None
        if done is not None:
            plan.done[f] = done
        else:
            plan.calls.append((fit_fold, (cohort, indices[f], f, model, mag, seed, out_dir, attention, hparams),
                               {"key": key}))
    return plan


def finish_folds(plan: FoldPlan, results: list[dict]) -> CVResult:
    """The :class:`CVResult` of a plan from its jobs' results (in the plan's order) and its finished folds."""
    cohort, splits = plan.cohort, plan.splits
    fresh = iter(results)
    results = [plan.done[f] if f in plan.done else next(fresh) for f in plan.folds]
    task_name = cohort.task
    n_classes = len(cohort.classes) if task_name in CLASSIFICATION else 0
    metrics = pd.DataFrame([r["row"] for r in results])
    pred = pd.DataFrame([p for r in results for p in r["pred"]])
    attn = {k: v for r in results for k, v in (r.get("attention") or {}).items()}
    repeat_of = splits.groupby("fold")["repeat"].first()
    metrics.insert(1, "repeat", metrics["fold"].map(repeat_of).astype(int))
    summary = summarize(metrics, task_name, n_classes)
    return CVResult(metrics, pred, summary, splits, task_name, list(cohort.classes), attn, list(cohort.skipped))


def fold_key(cohort: Cohort, idx: dict, fold: int, model: str, mag: str, seed: int, attention: bool,
             hparams: dict) -> str | None:
    """What a MIL fold's result depends on, hashed: toolkit version, head, settings, seed, fold, the slides of each
    split with their targets, and each bag file's path, size and modification time. None for in-memory bags."""
    import hashlib
    import json

    from zoomfeat import __version__

    if not all(isinstance(i, (str, os.PathLike)) for i in cohort.items):
        return None
    parts = {k: [[cohort.slides[i], np.asarray(cohort.targets[i]).tolist()] for i in v] for k, v in idx.items()}
    files = sorted({str(cohort.items[i]) for v in idx.values() for i in v})
    stats = [[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files]
    blob = json.dumps({"version": __version__, "model": str(model), "mag": mag, "seed": int(seed), "fold": int(fold),
                       "attention": bool(attention), "hparams": hparams, "splits": parts, "bags": stats},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_fold_result(path: Path, key: str) -> dict | None:
    """A finished fold's result (:func:`fit_fold`) if ``path`` holds one written for ``key``, else None."""
    import json

    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if got.get("key") != key:
        return None
    got["attention"] = {s: np.asarray(a, dtype=got.get("attention_dtype", "float32"))
                        for s, a in got.get("attention", {}).items()}
    return got


def fit_fold(cohort: Cohort, idx: dict, fold: int, model: str, mag: str, seed: int,
             out_dir: str | os.PathLike | None, attention: bool, hparams: dict, key: str | None = None) -> dict:
    """One MIL fold job: train on the fold's training (+ validation) slides, score its test slides; returns
    {row (fold_metrics.csv), pred (predictions.csv rows), attention (slide → scores)}. Seeded by ``seed`` and
    ``fold`` only, so any worker gives the same head. With ``out_dir`` and ``key`` (:func:`fold_key`) the result is
    also written to ``fold{k}/result.json`` (last, atomically): a rerun of a killed CV reuses it."""
    from mil.trainer import head_threads, limited_threads

    task_name = cohort.task
    cfg, model_hp = head_hparams(model, mag, cohort.dim, hparams)
    n_classes = len(cohort.classes) if task_name in CLASSIFICATION else 0
    out = Path(out_dir) if out_dir else None
    cache = not any(isinstance(i, (str, os.PathLike)) for i in cohort.items) or bool(hparams.get("cache", False))
    fold_seed = int(seed) * 1000 + int(fold)
    fixed = len(idx["val"]) < cfg.min_val_slides  # too few validation slides to select epochs on
    fit_idx = np.concatenate([idx["train"], idx["val"]]) if fixed else idx["train"]
    ckpt = out / f"fold{fold}" / "best.pt" if out else None
    with limited_threads(head_threads(cfg.threads), cfg.num_workers):
        net, task, info, norm = train_head(cohort, model, mag, cfg, model_hp, fit_idx,
                                           idx["val"][:0] if fixed else idx["val"], fold_seed, cache,
                                           name=f"{model}-{task_name}-fold{fold}", ckpt_path=ckpt, log_dir=out)
        if out and norm is not None:
            save_standardizer(norm, out / f"fold{fold}" / "standardize.npz")
        test_ds = BagDataset(cohort.subset(idx["test"]), mag, cache=cache)
        test_ds.norm = norm
        res = predict(net, task, test_ds, batch_size=1, device=next(net.parameters()).device, attention=attention)
    y = cohort.targets[idx["test"]]
    row = {"fold": int(fold), **task.metrics(y, res["pred"]), "test_loss": res["loss"],
           "best_epoch": info["best_epoch"], "epochs_run": info["epochs_run"],
           "schedule": "fixed" if fixed else "early_stopping", "n_train": len(fit_idx),
           "n_val": 0 if fixed else len(idx["val"]), "n_test": len(idx["test"])}
    if out:
        pd.DataFrame(info["history"]).to_csv(out / f"fold{fold}" / "history.csv", index=False)
    attn = {cohort.slides[i]: res["attention"][j] for j, i in enumerate(idx["test"])} if attention else {}
    result = {"row": row, "pred": prediction_rows(cohort, idx["test"], y, res["pred"], fold, n_classes),
              "attention": attn}
    if out and key:
        from zoomfeat.io import write_text_atomic

        write_text_atomic(out / f"fold{fold}" / "result.json", fold_result_json(result, key))
    return result


def fold_result_json(result: dict, key: str) -> str:
    """``fold{k}/result.json``: a fold's result with the key of its inputs (floats round-trip exactly)."""
    import json

    attn = {s: np.asarray(a).tolist() for s, a in result["attention"].items()}
    dtype = str(next(iter(result["attention"].values())).dtype) if result["attention"] else "float32"
    to_py = lambda v: v.item() if isinstance(v, np.generic) else str(v)  # noqa: E731
    return json.dumps({"key": key, "row": result["row"], "pred": result["pred"], "attention": attn,
                       "attention_dtype": dtype}, default=to_py)


def head_hparams(model: str, mag: str, dim: int, hparams: dict) -> tuple[HeadTrainConfig, dict]:
    """Trainer settings and head / task settings (``HeadTrainConfig.extra``, with the two-branch ``split_dim``
    default) of one head, as ``mil cv`` and ``mil train`` both read them."""
    tcfg = HeadTrainConfig.from_hparams(hparams)
    return tcfg, with_split_dim(model, dict(tcfg.extra), dim, mag)


def train_head(cohort: Cohort, model: str, mag: str, cfg: HeadTrainConfig, model_hp: dict, fit_idx: np.ndarray,
               val_idx: np.ndarray, seed: int, cache: bool, name: str, ckpt_path: Path | None = None,
               log_dir: Path | None = None):
    """Fit one fresh head on ``fit_idx`` (early stopping on ``val_idx`` when it is not empty), features
    standardised with the training slides' statistics: the one training path of ``mil cv`` folds and the final
    ``mil train`` model. Returns (net, task, info, norm); ``norm`` is None without ``standardize``.

    The seeded steps run in a fixed order (seed → task → task fit → head init → datasets) so a seed gives the
    same head whichever caller trains it."""
    n_classes = len(cohort.classes) if cohort.task in CLASSIFICATION else 0
    seed_everything(seed)
    task = make_task(cohort.task, n_classes=n_classes, **model_hp)
    task.fit(cohort.targets[fit_idx], balance=cfg.class_weights)
    net = build_model(model, cohort.dim, task.n_out, **model_hp)
    train_ds = BagDataset(cohort.subset(fit_idx), mag, cfg.max_instances, sample=True, seed=seed, cache=cache)
    val_ds = BagDataset(cohort.subset(val_idx), mag, cache=cache) if len(val_idx) else None
    norm = fit_standardizer(train_ds) if cfg.standardize else None
    for ds in (train_ds, val_ds):
        if ds is not None:
            ds.norm = norm
    info = train_model(net, task, train_ds, val_ds, cfg, seed=seed, ckpt_path=ckpt_path, name=name,
                       log_dir=log_dir)
    return net, task, info, norm


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


def cross_validate(bags: Sequence[Any], labels: Sequence[Any], groups: Sequence[Any] | None = None,
                   model: str = "abmil", task: str = "binary", n_folds: int = 5, seed: int = 0,
                   **hparams) -> CVResult:
    """Patient-level stratified k-fold CV of a MIL head; returns a :class:`CVResult` that reads like its per-fold
    table (``res["auc"]``, ``len(res)``): one row per fold with ``auc``, ``accuracy``, ``balanced_accuracy``,
    ``f1`` (classification) or ``c_index`` (survival); ``res.predictions`` (out-of-fold), ``res.summary``.

    ``bags``: N_i×D arrays or bag paths; ``labels``: class labels, or (time, event) pairs for survival;
    ``groups``: patient ids (default: one patient per bag). Extra keywords: trainer settings (``lr``,
    ``epochs``, ``patience``, ``min_epochs``, ``smooth``, ``min_val_slides``, ``standardize``, ``threads``,
    ``batch_size``, ``max_instances``, ...; see :class:`mil.trainer.HeadTrainConfig`), head settings (``embed_dim``,
    ``attn_dim``, ``dropout``, ``heads``, ``num_landmarks``, ``mask_aware``, ...), survival settings
    (``surv_loss='cox'|'nll'``, ``n_bins``), and ``slide_ids``, ``mag``, ``val_fraction`` (0.2), ``splits``
    (a saved split table or its CSV path, reused as is), ``n_repeats`` (1; repeated k-fold, one row per
    repeat × fold), ``out_dir`` (checkpoints), ``on_bad`` ('skip'|'error'), ``model='linear'`` (the mean-pooling
    linear probe on the same folds).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    bags = list(bags)
    if len(labels) != len(bags):
        raise ValueError(f"{len(bags)} bags but {len(labels)} labels")
    slide_ids = [str(s) for s in hparams.pop("slide_ids", None) or [f"bag{i:05d}" for i in range(len(bags))]]
    groups = [str(g) for g in groups] if groups is not None else list(slide_ids)
    if len(groups) != len(bags) or len(slide_ids) != len(bags):
        raise ValueError("groups and slide_ids must have one entry per bag")
    if task == "survival":
        lab = np.asarray(labels, dtype=float)
        df = pd.DataFrame({"slide": slide_ids, "patient": groups, "time": lab[:, 0], "event": lab[:, 1]})
        target = None
    else:
        df = pd.DataFrame({"slide": slide_ids, "patient": groups, "target": list(labels)})
        target = "target"
    mag = hparams.pop("mag", "20x")
    df, skipped = load_labels(df, task, target)
    cohort = build_cohort(df, dict(zip(slide_ids, bags)), task, target, mag=mag,
                          on_bad=hparams.pop("on_bad", "skip"), skipped=skipped)
    splits = hparams.pop("splits", None)
    val_fraction = hparams.pop("val_fraction", 0.2)
    n_repeats = int(hparams.pop("n_repeats", 1))
    if splits is None:
        splits = make_splits(cohort.slides, cohort.patients, cohort.strata, n_folds, seed, val_fraction,
                             strict=task != "survival", n_repeats=n_repeats)
    else:
        splits = load_splits(splits, cohort.slides)
    return run_folds(cohort, splits, model=model, mag=mag, seed=seed, out_dir=hparams.pop("out_dir", None),
                     **hparams)


# ------------------------------------------------------------------------------------------------ config / CLI

@dataclass
class CVConfig:
    """``zoomfeat mil cv``: every option with its default (``configs/mil/*.yaml`` and ``key=value`` overrides only
    change them; :func:`zoomfeat.config.load_config`). ``hparams`` are trainer / head / task settings
    (:class:`mil.trainer.HeadTrainConfig`)."""

    labels: str | None = None  # CSV: slide, patient, target column(s)
    bags: str | None = None  # folder of {slide}.h5
    encoder: str | None = None  # pick features_{encoder} when `bags` holds several
    mag: str = "20x"  # 20x | 5x | 20x+5x
    task: str = "binary"  # binary | multiclass | survival
    target: str | None = None
    time_col: str = "time"
    event_col: str = "event"
    model: str = "abmil"
    n_folds: int = 5
    n_repeats: int = 1
    seed: int = 0
    val_fraction: float = 0.2
    splits: Any = None  # a saved split table to reuse (default: <out>/splits.csv, reused if present)
    slides: str | None = None  # folder of WSIs: heatmaps over thumbnails (read by the CLI layer)
    heatmaps: int = 3  # heatmap PNGs for the highest-scored test slides
    on_bad: str = "skip"  # skip | error
    hparams: dict = field(default_factory=dict)
    out: str | None = None  # output folder when --out is not given


def cv_config(cfg: dict | CVConfig | None, schema: type = CVConfig) -> dict:
    """A config (mapping or ``schema`` instance) with every default filled in, as the dict the code consumes;
    unknown keys are errors."""
    from zoomfeat.config import load_config, to_dict

    return to_dict(cfg if isinstance(cfg, schema) else load_config(schema, to_dict(cfg or {})))


def prepare_cohort(cfg: dict, bags: str | os.PathLike | None = None, mag: str | None = None,
                   encoder: str | None = None) -> Cohort:
    """Labels CSV + bag folder (``zoomfeat.bags.list_bags``) → validated :class:`Cohort` for ``cfg['task']``."""
    from mil.spec import check_cohort_specs
    from zoomfeat.bags import list_bags

    bags = bags or cfg.get("bags")
    if not cfg.get("labels") or not bags:
        raise ValueError("config needs 'labels' (CSV) and 'bags' (folder of {slide}.h5)")
    df, skipped = load_labels(cfg["labels"], cfg["task"], cfg.get("target"), cfg.get("time_col", "time"),
                              cfg.get("event_col", "event"))
    files = list_bags(bags, encoder=encoder or cfg.get("encoder"))
    check_cohort_specs({s: files[s] for s in df["slide"] if s in files}, mag or cfg.get("mag", "20x"),
                       what=f"bags of {bags}")  # every bag against the majority's spec, before any training
    return build_cohort(df, files, cfg["task"], cfg.get("target"), mag=mag or cfg.get("mag", "20x"),
                        on_bad=cfg.get("on_bad", "skip"), time_col=cfg.get("time_col", "time"),
                        event_col=cfg.get("event_col", "event"), skipped=skipped)


def splits_for(cohort: Cohort, cfg: dict, path: str | os.PathLike) -> pd.DataFrame:
    """Reuse the split table at ``path`` when it exists (same folds for every encoder), else make and save it."""
    path = Path(path)
    if path.exists():
        return load_splits(path, cohort.slides)
    df = make_splits(cohort.slides, cohort.patients, cohort.strata, int(cfg["n_folds"]), int(cfg["seed"]),
                     float(cfg.get("val_fraction", 0.2)), strict=cohort.task != "survival",
                     n_repeats=int(cfg.get("n_repeats", 1)))
    save_splits(df, path)
    return df


def write_result(res: CVResult, out: Path, cfg: dict, cohort: Cohort | None = None,
                 thumbnails: ThumbnailProvider | None = None) -> None:
    """Per-fold metrics, predictions, summary (CSV + markdown), ROC or KM plot, attention CSVs, heatmaps."""
    from mil import plots
    from zoomfeat.io import atomic_path, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    for name, df in (("fold_metrics.csv", res.metrics), ("predictions.csv", res.predictions),
                     ("summary.csv", res.summary)):
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False)
    pd.DataFrame(res.skipped, columns=["slide", "reason"]).to_csv(out / "skipped.csv", index=False)
    extra = ""
    if res.task == "survival":
        p = plots.km_plot(res.predictions, out / "km.png", title=f"{cfg.get('model')} — predicted risk groups")
        extra = f"\nKaplan–Meier of out-of-fold risk groups (median split): log-rank p = {p:.3g} (km.png)\n"
    else:
        plots.roc_plot(res.predictions, res.classes, out / "roc.png", title=f"{cfg.get('model')} — {cfg.get('target')}")
    lines = [f"# MIL cross-validation: {cfg.get('model')} on {cfg.get('task')} ({cfg.get('target') or 'survival'})",
             "", f"bags: {cfg.get('bags')} (mag {cfg.get('mag')}), {len(res.predictions)} slides, "
             f"{res.metrics.shape[0]} folds, seed {cfg.get('seed')}, skipped {len(res.skipped)}", "",
             "| metric | mean ± std | 95% CI (corrected t over folds) |", "|---|---|---|"]
    for r in res.summary.itertuples():
        lines.append(f"| {r.metric} | {r.mean:.3f} ± {r.std:.3f} | [{r.ci_low:.3f}, {r.ci_high:.3f}] |")
    write_text_atomic(out / "summary.md", "\n".join(lines) + "\n" + extra)
    if res.attention and cohort is not None:
        write_attention(res, out, cohort, cfg, thumbnails)


def write_attention(res: CVResult, out: Path, cohort: Cohort, cfg: dict,
                    thumbnails: ThumbnailProvider | None = None) -> None:
    """attention/{slide}.csv (x, y, score, rank) for every test slide; heatmaps for the top-scored few (over the
    thumbnails the caller's provider gives, see :mod:`mil.heatmap`)."""
    from mil.heatmap import instance_coords, slide_heatmap, write_attention_csv

    adir = out / "attention"
    adir.mkdir(exist_ok=True)
    pos = {s: i for i, s in enumerate(cohort.slides)}
    pred = res.predictions
    score_col = "risk" if res.task == "survival" else f"prob_{len(res.classes) - 1}"
    order = pred.sort_values(score_col, ascending=False)["slide"].tolist()
    n_maps = int(cfg.get("heatmaps", 3) or 0)
    for slide in order:
        scores = res.attention.get(slide)
        coords, psize = instance_coords(cohort.items[pos[slide]], cfg.get("mag"), len(scores))
        write_attention_csv(adir / f"{slide}.csv", coords, scores)
        if n_maps > 0 and coords is not None:
            slide_heatmap(slide, coords, scores, out / "heatmaps" / f"{slide}.png", thumbnails, patch_size=psize,
                          title=f"{slide} ({score_col} {pred.set_index('slide').loc[slide, score_col]:.2f})")
            n_maps -= 1


def run_cv(cfg: dict | CVConfig, out_dir: str | os.PathLike, thumbnails: ThumbnailProvider | None = None,
           cohort: Cohort | None = None, jobs: int | None = None) -> CVResult:
    """``zoomfeat mil cv``: validate inputs, make or reuse splits, run the folds and write every output; heatmaps
    are drawn over the thumbnails ``thumbnails`` gives (:mod:`mil.heatmap`; else on the tile grid). ``cohort``:
    the config's cohort when the caller already built it (:func:`prepare_cohort`), so the bags are scanned once.
    ``jobs``: worker processes for the folds (:func:`run_folds`)."""
    from zoomfeat.config import save_yaml

    cfg = cv_config(cfg)
    if cfg.get("slides") and thumbnails is None and cfg.get("heatmaps"):
        warnings.warn("config 'slides' is read by the caller: pass thumbnails=zoomfeat.slides.thumbnails."
                      "SlideThumbnails(slides) for heatmaps over the slides (drawing them on the tile grid)",
                      stacklevel=2)
    if cfg["task"] not in TASKS:
        raise ValueError(f"unknown task {cfg['task']!r}; choose one of {TASKS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    if cohort is None:
        cohort = prepare_cohort(cfg)
    splits = splits_for(cohort, cfg, cfg.get("splits") or out / "splits.csv")
    check_splits(splits)
    res = run_folds(cohort, splits, model=cfg["model"], mag=cfg["mag"], seed=int(cfg["seed"]), out_dir=out,
                    attention=True, jobs=jobs, **(cfg.get("hparams") or {}))
    write_result(res, out, cfg, cohort, thumbnails)
    return res
