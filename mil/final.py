"""The final model: one head fitted on every labelled slide, saved as a self-describing folder (``zoomfeat mil train``).

Cross-validation estimates how well a head does; the model people apply is then trained once on the whole
cohort. How long to train it cannot be chosen on data it is trained on, so two documented strategies:

* ``final.strategy: val`` (default): hold out ``val_fraction`` of the *patients* (stratified, the same splitter
  as the CV's inner split) for early stopping, as CLAM/STAMP do; the head trains on the rest.
* ``final.strategy: epochs``: train on every slide for a fixed number of epochs: ``final.epochs``, or, when a CV
  was run (``--cv``) or given (``--cv-from DIR``), one more than the median of the folds' best epochs. With no
  validation set the trainer keeps the epoch with the lowest training loss among them.

The folder: ``model.safetensors`` (weights), ``model.json`` (head config, task, classes, feature spec, training
cohort summary, CV estimate; written last, so its presence means the folder is complete), ``config.yaml``,
``history.csv``, ``training_slides.csv``, ``README.md`` (the model card, :mod:`mil.card`) and ``cv/`` when ``--cv``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mil.cv import CVConfig, cv_config, prepare_cohort, run_cv as cross_validate_run
from mil.data import Cohort
from mil.folds import head_hparams, train_head
from mil.heatmap import ThumbnailProvider
from mil.modelfile import MODEL_FORMAT, jsonable, save_model, write_cv_spec
from mil.models import get_head
from mil.spec import cohort_spec
from mil.splits import fold_indices, make_splits
from mil.tasks import CLASSIFICATION, TASKS
from mil.trainer import check_hparams
from zoomfeat import __version__
from zoomfeat.config import to_dict

@dataclass
class FinalSection:
    """How long the final head trains (see the module docstring)."""

    strategy: str = "val"  # val: early stopping on held-out patients | epochs: a fixed epoch count
    epochs: int | None = None  # with strategy 'epochs': fixed count (default: 1 + median best epoch of the CV)


@dataclass
class FinalConfig(CVConfig):
    """``zoomfeat mil train``: a ``mil cv`` config plus the ``final`` section."""

    final: FinalSection = field(default_factory=FinalSection)


def _cv_estimate(cv_dir: Path) -> dict:
    """The CV summary and per-fold best epochs of a ``mil cv`` output folder (for the card and ``epochs``)."""
    summ, folds = cv_dir / "summary.csv", cv_dir / "fold_metrics.csv"
    if not summ.is_file() or not folds.is_file():
        raise FileNotFoundError(f"{cv_dir}: not a finished `zoomfeat mil cv` folder (summary.csv, fold_metrics.csv)")
    fm = pd.read_csv(folds)
    return {"source": str(cv_dir), "n_folds": int(len(fm)), "summary": pd.read_csv(summ).to_dict("records"),
            "best_epochs": [int(e) for e in fm["best_epoch"]] if "best_epoch" in fm else []}


def _val_split(cohort: Cohort, cfg: FinalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Patient-level stratified hold-out of ``val_fraction`` for early stopping (fold 0 of a k = 1/val split)."""
    frac = float(cfg.val_fraction or 0.2)
    per_patient = pd.Series(list(cohort.strata), index=cohort.patients).groupby(level=0).first()
    smallest = int(per_patient.value_counts().min()) if cohort.task != "survival" else len(per_patient)
    k = max(2, min(int(round(1.0 / frac)), smallest))  # a rare class still gets a validation patient
    splits = make_splits(cohort.slides, cohort.patients, cohort.strata, k, int(cfg.seed), 0.0,
                         strict=cohort.task != "survival")
    idx = fold_indices(splits, cohort.slides, 0)
    return idx["train"], idx["test"]


def _plan(cohort: Cohort, cfg: FinalConfig, cv: dict | None) -> tuple[np.ndarray, np.ndarray, dict, str]:
    """Train/val indices, trainer overrides and a one-line description of the strategy."""
    strategy = str(cfg.final.strategy)
    every = np.arange(len(cohort))
    if strategy == "val":
        tr, va = _val_split(cohort, cfg)
        return tr, va, {}, (f"early stopping on a held-out {len(va)} slide(s) "
                            f"({len({cohort.patients[i] for i in va})} patients, val_fraction "
                            f"{cfg.val_fraction}); trained on the other {len(tr)}")
    if strategy != "epochs":
        raise ValueError(f"final.strategy must be 'val' or 'epochs', got {strategy!r}")
    n = cfg.final.epochs
    how = "final.epochs"
    if n is None:
        if not cv or not cv.get("best_epochs"):
            raise ValueError("final.strategy 'epochs' needs final.epochs or a CV (--cv or --cv-from DIR) "
                             "to take the epoch count from")
        n = int(np.median(cv["best_epochs"])) + 1
        how = f"1 + median best epoch of {len(cv['best_epochs'])} CV folds {cv['best_epochs']}"
    n = int(n)
    return every, every[:0], {"epochs": n, "patience": n + 1, "min_epochs": n}, (
        f"all {len(every)} slides for {n} epochs ({how}); weights of the lowest-training-loss epoch")


def fit_head(cohort: Cohort, cfg: FinalConfig, train_idx: np.ndarray, val_idx: np.ndarray, overrides: dict,
             log_dir: Path | None = None):
    """Train one head on ``train_idx`` (early-stopping on ``val_idx`` if any); returns (net, task, info, model_hp)."""
    hparams = {**(cfg.hparams or {}), **overrides}
    name, mag = str(cfg.model).lower(), cfg.mag
    tcfg, model_hp = head_hparams(name, mag, cohort.dim, hparams, cohort.task)
    net, task, info, norm = train_head(cohort, name, mag, tcfg, model_hp, train_idx, val_idx, int(cfg.seed),
                                       bool(tcfg.cache), name=f"{name}-{cohort.task}-final",
                                       log_dir=log_dir)
    info["norm"] = norm
    return net.cpu(), task, info, model_hp


def _task_meta(cohort: Cohort, cfg: FinalConfig, task) -> dict:
    meta = {"name": cohort.task, "target": cfg.target, "classes": jsonable(list(cohort.classes))}
    if cohort.task == "survival":
        meta.update(surv_loss=task.kind, n_bins=task.n_bins, alpha=task.alpha,
                    edges=None if task.edges is None else [float(e) for e in task.edges],
                    time_col=cfg.time_col, event_col=cfg.event_col)
    return meta


def _training_meta(cohort: Cohort, tr: np.ndarray, va: np.ndarray, info: dict, how: str, cfg: FinalConfig) -> dict:
    counts = None
    if cohort.task in CLASSIFICATION:
        counts = {str(c): int((cohort.targets == i).sum()) for i, c in enumerate(cohort.classes)}
    else:
        counts = {"events": int(cohort.targets[:, 1].sum()), "censored": int((cohort.targets[:, 1] == 0).sum())}
    return {"labels": str(cfg.labels), "bags": str(cfg.bags), "n_slides": len(cohort),
            "n_patients": len(set(cohort.patients)), "class_counts": counts, "n_train": int(len(tr)),
            "n_val": int(len(va)), "strategy": how, "best_epoch": int(info["best_epoch"]),
            "epochs_run": int(info["epochs_run"]), "skipped": [list(s) for s in cohort.skipped]}


def train_final(cfg: dict | FinalConfig, out_dir: str | os.PathLike, run_cv: bool = False,
                cv_from: str | os.PathLike | None = None, thumbnails: ThumbnailProvider | None = None,
                jobs: int | None = None) -> dict:
    """``zoomfeat mil train``: (optionally cross-validate,) fit the head on every labelled slide, write MODEL/.

    ``cfg`` is a ``mil cv`` config plus an optional ``final`` section (:class:`FinalConfig`); ``thumbnails`` feeds
    the CV's heatmaps (:func:`mil.cv.run_cv`); ``jobs``: worker processes for its folds. Returns the model
    metadata written to ``model.json``.
    """
    cfg = cv_config(cfg, FinalConfig)
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; choose one of {TASKS}")
    out = Path(out_dir)
    check_hparams(cfg.model, cfg.task, cfg.hparams or {})  # before the bags are read
    if not get_head(cfg.model).trained:
        raise ValueError(f"mil train: model {cfg.model!r} is not a trainable head")
    cohort = prepare_cohort(cfg)
    spec = cohort_spec([i for i in cohort.items if isinstance(i, (str, os.PathLike))], cfg.mag)
    cv = None
    if run_cv:
        cross_validate_run(cv_config(cfg), out / "cv", thumbnails, cohort=cohort,
                           jobs=jobs)
        write_cv_spec(out / "cv", spec, cohort.dim)
        cv_from = out / "cv"
    if cv_from is not None:
        cv = _cv_estimate(Path(cv_from))
    tr, va, overrides, how = _plan(cohort, cfg, cv)
    net, task, info, model_hp = fit_head(cohort, cfg, tr, va, overrides, log_dir=out / "train_logs")
    meta = {"format": MODEL_FORMAT, "toolkit_version": __version__,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": {"name": str(cfg.model).lower(), "in_dim": int(cohort.dim), "n_out": int(task.n_out),
                      "kwargs": jsonable({**dataclasses.asdict(model_hp[0]),
                                           **getattr(net, "sizes", {})})},
            "task": _task_meta(cohort, cfg, task), "mag": cfg.mag, "seed": int(cfg.seed),
            "feature_spec": spec, "training": _training_meta(cohort, tr, va, info, how, cfg), "cv": cv,
            "standardize": info.get("norm") is not None}
    split = np.array(["train"] * len(cohort), dtype=object)
    split[va] = "val"
    slides = pd.DataFrame({"slide": cohort.slides, "patient": cohort.patients, "split": split})
    if cohort.task in CLASSIFICATION:
        slides["label"] = [cohort.classes[int(y)] for y in cohort.targets]
    save_model(out, net, meta, to_dict(cfg), {"history.csv": pd.DataFrame(info["history"]), "training_slides.csv": slides},
               norm=info.get("norm"))
    return meta
