"""Cross-validation: the Python API ``cross_validate`` and the config-driven ``run_cv`` behind ``zoomfeat mil cv``.

Both run the fold engine of :mod:`mil.folds` (one fresh head per fold, scored once on its test patients) and
return a :class:`mil.results.CVResult`; summary CIs aggregate the per-fold scores (corrected resampled t,
:mod:`mil.stats`); out-of-fold predictions are pooled only for plots. :class:`CVConfig` is every option of
``zoomfeat mil cv`` with its default.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mil.data import Cohort, build_cohort, load_labels
from mil.folds import run_folds
from mil.heatmap import ThumbnailProvider
from mil.results import CVResult, write_result
from mil.spec import check_cohort_specs
from mil.splits import check_splits, load_splits, make_splits, save_splits
from mil.tasks import TASKS
from mil.trainer import check_hparams
from zoomfeat.bags import list_bags
from zoomfeat.config import load_config, save_yaml, to_dict


def cross_validate(bags: Sequence[Any], labels: Sequence[Any], groups: Sequence[Any] | None = None,
                   model: str = "abmil", task: str = "binary", n_folds: int = 5, seed: int = 0,
                   **hparams) -> CVResult:
    """Patient-level stratified k-fold CV of a MIL head; returns a :class:`mil.results.CVResult` that reads like
    its per-fold table (``res["auc"]``, ``len(res)``): one row per fold with ``auc``, ``accuracy``,
    ``balanced_accuracy``, ``f1`` (classification) or ``c_index`` (survival); ``res.predictions`` (out-of-fold),
    ``res.summary``.

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
    plots: bool = True  # roc.png / km.png per run (compare: per cell, + compare.png, compare_forest.png); false: none
    on_bad: str = "skip"  # skip | error
    hparams: dict = field(default_factory=dict)
    out: str | None = None  # output folder when --out is not given


def cv_config(cfg: dict | CVConfig | None, schema: type = CVConfig) -> CVConfig:
    """A config (mapping or ``schema`` instance) as a ``schema`` instance with every default filled in; unknown
    keys are errors. An instance of a subclass (``mil train``'s :class:`mil.final.FinalConfig`) gives its
    ``schema`` fields only."""
    if type(cfg) is schema:
        return cfg
    if isinstance(cfg, schema):
        return schema(**{f.name: getattr(cfg, f.name) for f in fields(schema)})
    return load_config(schema, to_dict(cfg or {}))


def prepare_cohort(cfg: CVConfig, bags: str | os.PathLike | None = None, mag: str | None = None,
                   encoder: str | None = None) -> Cohort:
    """Labels CSV + bag folder (``zoomfeat.bags.list_bags``) → validated :class:`Cohort` for ``cfg.task``."""
    bags = bags or cfg.bags
    if not cfg.labels or not bags:
        raise ValueError("config needs 'labels' (CSV) and 'bags' (folder of {slide}.h5)")
    df, skipped = load_labels(cfg.labels, cfg.task, cfg.target, cfg.time_col, cfg.event_col)
    files = list_bags(bags, encoder=encoder or cfg.encoder)
    check_cohort_specs({s: files[s] for s in df["slide"] if s in files}, mag or cfg.mag,
                       what=f"bags of {bags}")  # every bag against the majority's spec, before any training
    return build_cohort(df, files, cfg.task, cfg.target, mag=mag or cfg.mag, on_bad=cfg.on_bad,
                        time_col=cfg.time_col, event_col=cfg.event_col, skipped=skipped)


def splits_for(cohort: Cohort, cfg: CVConfig, path: str | os.PathLike) -> pd.DataFrame:
    """Reuse the split table at ``path`` when it exists (same folds for every encoder), else make and save it."""
    path = Path(path)
    if path.exists():
        return load_splits(path, cohort.slides)
    df = make_splits(cohort.slides, cohort.patients, cohort.strata, int(cfg.n_folds), int(cfg.seed),
                     float(cfg.val_fraction), strict=cohort.task != "survival", n_repeats=int(cfg.n_repeats))
    save_splits(df, path)
    return df


def run_cv(cfg: dict | CVConfig, out_dir: str | os.PathLike, thumbnails: ThumbnailProvider | None = None,
           cohort: Cohort | None = None, jobs: int | None = None) -> CVResult:
    """``zoomfeat mil cv``: validate inputs, make or reuse splits, run the folds and write every output; heatmaps
    are drawn over the thumbnails ``thumbnails`` gives (:mod:`mil.heatmap`; else on the tile grid). ``cohort``:
    the config's cohort when the caller already built it (:func:`prepare_cohort`), so the bags are scanned once.
    ``jobs``: worker processes for the folds (:func:`mil.folds.run_folds`)."""
    cfg = cv_config(cfg)
    if cfg.slides and thumbnails is None and cfg.heatmaps:
        warnings.warn("config 'slides' is read by the caller: pass thumbnails=zoomfeat.slides.thumbnails."
                      "SlideThumbnails(slides) for heatmaps over the slides (drawing them on the tile grid)",
                      stacklevel=2)
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; choose one of {TASKS}")
    check_hparams(cfg.model, cfg.task, cfg.hparams or {})  # before any output or bag is read
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(to_dict(cfg), out / "config.yaml")
    if cohort is None:
        cohort = prepare_cohort(cfg)
    splits = splits_for(cohort, cfg, cfg.splits or out / "splits.csv")
    check_splits(splits)
    res = run_folds(cohort, splits, model=cfg.model, mag=cfg.mag, seed=int(cfg.seed), out_dir=out,
                    attention=True, jobs=jobs, **(cfg.hparams or {}))
    write_result(res, out, cfg, cohort, thumbnails)
    return res
