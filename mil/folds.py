"""The fold engine of cross-validation: plan one job per fold (a MIL head or the linear probe), run them on worker
processes (:func:`zoomfeat.jobs.run_jobs`), reuse the folds a killed run already finished, and assemble the results
into a :class:`mil.results.CVResult`. Every fold trains a fresh head on the fold's training patients (features
standardised with that fold's training statistics), early-stops on its validation patients when there are enough
of them (else a fixed schedule on train + val) and is scored once on its test patients."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mil.data import BagDataset, Cohort, fit_standardizer, save_standardizer
from mil.linear import LinearProbe  # noqa: F401  (registers the 'linear' head)
from mil.models import build_model, get_head
from mil.results import CVResult, prediction_rows, summarize
from mil.splits import fold_indices, with_repeat
from mil.tasks import CLASSIFICATION, make_task
from mil.trainer import (HeadTrainConfig, head_settings, head_threads, limited_threads, predict, seed_everything,
                         train_model)
from zoomfeat import __version__
from zoomfeat.io import write_text_atomic
from zoomfeat.jobs import run_jobs


def run_folds(cohort: Cohort, splits: pd.DataFrame, model: str = "abmil", mag: str = "20x", seed: int = 0,
              out_dir: str | os.PathLike | None = None, attention: bool = False, jobs: int | None = None,
              **hparams) -> CVResult:
    """Train/evaluate one head per fold of ``splits`` on ``cohort``; the core shared by the API and the CLI.

    ``model='linear'`` runs the mean-pooling linear probe (:mod:`mil.linear`) on the same folds instead.
    ``jobs``: folds run on that many worker processes (:func:`zoomfeat.jobs.run_jobs`; default: the usable
    cores); the result does not depend on it (each fold seeds itself from the seed and its fold number).
    """
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
    splits = with_repeat(splits)
    folds = sorted(splits["fold"].unique())
    indices = {f: fold_indices(splits, cohort.slides, f) for f in folds}
    entry = get_head(model)
    cfg, head, _ = head_settings(entry.name, cohort.task, hparams, cohort.dim, mag)
    if not entry.trained:  # a head with its own fold jobs (the linear probe)
        return FoldPlan(cohort, splits, entry.name, folds, entry.cls.fold_jobs(cohort, indices, folds, mag, seed,
                                                                               head))
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
    task_name = cohort.task
    cfg, model_hp = head_hparams(model, mag, cohort.dim, hparams, task_name)
    n_classes = len(cohort.classes) if task_name in CLASSIFICATION else 0
    out = Path(out_dir) if out_dir else None
    cache = not any(isinstance(i, (str, os.PathLike)) for i in cohort.items) or bool(cfg.cache)
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
        write_text_atomic(out / f"fold{fold}" / "result.json", fold_result_json(result, key))
    return result


def fold_result_json(result: dict, key: str) -> str:
    """``fold{k}/result.json``: a fold's result with the key of its inputs (floats round-trip exactly)."""
    attn = {s: np.asarray(a).tolist() for s, a in result["attention"].items()}
    dtype = str(next(iter(result["attention"].values())).dtype) if result["attention"] else "float32"
    to_py = lambda v: v.item() if isinstance(v, np.generic) else str(v)  # noqa: E731
    return json.dumps({"key": key, "row": result["row"], "pred": result["pred"], "attention": attn,
                       "attention_dtype": dtype}, default=to_py)


def head_hparams(model: str, mag: str, dim: int, hparams: dict, task: str) -> tuple[HeadTrainConfig, tuple]:
    """Trainer settings and (head options, task options) of one head, every key of ``hparams`` checked
    (:func:`mil.trainer.head_settings`; bag-dependent head defaults such as the two-branch ``split_dim`` filled),
    as ``mil cv`` and ``mil train`` both read them."""
    tcfg, head, topts = head_settings(model, task, hparams, dim, mag)
    return tcfg, (head, topts)


def train_head(cohort: Cohort, model: str, mag: str, cfg: HeadTrainConfig, model_hp: tuple, fit_idx: np.ndarray,
               val_idx: np.ndarray, seed: int, cache: bool, name: str, ckpt_path: Path | None = None,
               log_dir: Path | None = None):
    """Fit one fresh head on ``fit_idx`` (early stopping on ``val_idx`` when it is not empty), features
    standardised with the training slides' statistics: the one training path of ``mil cv`` folds and the final
    ``mil train`` model. Returns (net, task, info, norm); ``norm`` is None without ``standardize``.

    The seeded steps run in a fixed order (seed → task → task fit → head init → datasets) so a seed gives the
    same head whichever caller trains it."""
    n_classes = len(cohort.classes) if cohort.task in CLASSIFICATION else 0
    seed_everything(seed)
    head, topts = model_hp
    task = make_task(cohort.task, n_classes=n_classes, options=topts)
    task.fit(cohort.targets[fit_idx], balance=cfg.class_weights)
    net = build_model(model, cohort.dim, task.n_out, options=head)
    train_ds = BagDataset(cohort.subset(fit_idx), mag, cfg.max_instances, sample=True, seed=seed, cache=cache)
    val_ds = BagDataset(cohort.subset(val_idx), mag, cache=cache) if len(val_idx) else None
    norm = fit_standardizer(train_ds) if cfg.standardize else None
    for ds in (train_ds, val_ds):
        if ds is not None:
            ds.norm = norm
    info = train_model(net, task, train_ds, val_ds, cfg, seed=seed, ckpt_path=ckpt_path, name=name,
                       log_dir=log_dir)
    return net, task, info, norm


