"""``zoomfeat mil predict``: apply a model folder (or a CV folder's fold models) to a bag folder and write the
outputs: ``predictions.csv``, ``skipped.csv``, ``attention/{slide}.csv`` and heatmaps; with labels also the external
validation of :mod:`mil.external` (``metrics.csv`` / ``metrics.md`` and ``roc.png`` or ``km.png``)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mil.deploy import Predictor, load_predictor, predict_bags, usable_bags
from mil.external import attach_labels, external_metrics, scored, write_metrics
from mil.heatmap import ThumbnailProvider, instance_coords, slide_heatmap, write_attention_csv
from mil.spec import check_specs
from zoomfeat.bags import list_bags
from zoomfeat.io import atomic_path


@dataclass
class PredictResult:
    predictions: pd.DataFrame
    metrics: pd.DataFrame | None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    out: Path | None = None


def write_attention_maps(out: Path, pred: pd.DataFrame, attn: dict[str, np.ndarray], bag_files: dict[str, Any],
                         pr: Predictor, thumbnails: ThumbnailProvider | None = None, heatmaps: int | None = None) -> int:
    """attention/{slide}.csv for every slide and heatmaps/{slide}.png for the first ``heatmaps`` (None = all), over
    the thumbnails the caller's provider gives (:mod:`mil.heatmap`)."""
    (out / "attention").mkdir(parents=True, exist_ok=True)
    score = "risk" if pr.task == "survival" else None
    made = 0
    for row in pred.itertuples(index=False):
        s = row.slide
        scores = attn.get(s)
        if scores is None:
            continue
        coords, psize = instance_coords(bag_files[s], pr.mag, len(scores))
        write_attention_csv(out / "attention" / f"{s}.csv", coords, scores)
        if coords is None or (heatmaps is not None and made >= heatmaps):
            continue
        title = (f"{s}: risk {row.risk:.2f}" if score
                 else f"{s}: {row.pred_label} ({getattr(row, f'prob_{row.pred}'):.2f})")
        slide_heatmap(s, coords, scores, out / "heatmaps" / f"{s}.png", thumbnails, patch_size=psize, title=title)
        made += 1
    return made


def run_predict(model: str | os.PathLike | Predictor, bags: str | os.PathLike | dict, out: str | os.PathLike,
                labels: str | os.PathLike | None = None, thumbnails: ThumbnailProvider | None = None,
                heatmaps: int | None = None, device: str = "auto", n_boot: int = 1000, seed: int = 0,
                target: str | None = None) -> PredictResult:
    """``zoomfeat mil predict``: refuse bags of another feature spec, predict every usable bag, write the outputs.

    ``model``: a model folder, a CV folder (ensemble of its folds) or a loaded :class:`Predictor`; ``bags``: a
    bag folder (the model's ``features_{encoder}`` is picked when it holds several) or slide → path;
    ``thumbnails``: slide id → thumbnail for the heatmaps (``zoomfeat.slides.thumbnails.SlideThumbnails``; without
    it heatmaps are drawn on the tile grid).
    """
    pr = model if isinstance(model, Predictor) else load_predictor(model)
    files = dict(bags) if isinstance(bags, dict) else list_bags(bags, encoder=_encoder_dir(bags, pr))
    if not files:
        raise FileNotFoundError(f"no bags found in {bags}")
    check_specs(pr.feature_spec, files, pr.mag)
    ok, skipped = usable_bags(files, pr.mag, pr.in_dim)
    if not ok:
        raise ValueError(f"no usable bag: {skipped[0][0]}: {skipped[0][1]}")
    pred, attn = predict_bags(pr, ok, device)
    if labels is not None:
        pred = attach_labels(pred, labels, pr, target)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "predictions.csv") as tmp:
        pred.to_csv(tmp, index=False)
    pd.DataFrame(skipped, columns=["slide", "reason"]).to_csv(out / "skipped.csv", index=False)
    write_attention_maps(out, pred, attn, ok, pr, thumbnails, heatmaps)
    metrics = None
    if labels is not None and scored(pred, pr.task).empty:
        warnings.warn(f"no predicted slide has a usable label in {labels}: no metrics (check slide ids / target)",
                      stacklevel=2)
    elif labels is not None:
        metrics = external_metrics(pred, pr, n_boot, seed)
        write_metrics(out, pred, metrics, pr)
    return PredictResult(pred, metrics, skipped, out)


def _encoder_dir(bags: Any, pr: Predictor) -> str | None:
    """Pick ``features_{encoder}`` of the model's encoder when ``bags`` holds several encoders' folders."""
    enc = pr.feature_spec.get("encoder")
    return enc if enc and (Path(bags) / f"features_{enc}").is_dir() else None
