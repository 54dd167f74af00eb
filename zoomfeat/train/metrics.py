"""Training metrics: ``metrics.csv`` (one row per logged step, rows after a resumed checkpoint replaced) and wandb
through :mod:`zoomfeat.tracking`; written by the main rank only."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import torch

from zoomfeat.config import to_dict
from zoomfeat.io import atomic_path
from zoomfeat.mags import N_SCALES
from zoomfeat.tracking import WandbRun
from zoomfeat.train.config import TrainConfig

#: metrics.csv columns: step, loss, lr, CFG-dropout count, samples, then the mean loss per magnification index.
METRIC_COLUMNS = ["step", "loss", "lr", "n_uncond", "n_samples"] + [f"loss_mag{k}" for k in range(N_SCALES)] + ["elapsed_s"]


def step_row(step: int, losses: torch.Tensor, mags: torch.Tensor, n_uncond: int, lr: float, elapsed_s: float) -> dict:
    """One metrics row from a step's per-sample losses and magnifications (gathered over all ranks)."""
    row = {"step": step, "loss": float(losses.mean()), "lr": lr, "n_uncond": int(n_uncond),
           "n_samples": int(losses.numel()), "elapsed_s": round(elapsed_s, 3)}
    for k in range(N_SCALES):
        sel = mags == k
        row[f"loss_mag{k}"] = float(losses[sel].mean()) if bool(sel.any()) else None
    return row


def _kept_rows(path: Path, resume_step: int | None) -> list[dict]:
    """Rows of an earlier ``metrics.csv`` up to the resumed step (none for a fresh run)."""
    if resume_step is None or not path.exists():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh)  # a row cut short by a kill has a missing last field
                if (r.get("step") or "").isdigit() and int(r["step"]) <= resume_step
                and r.get(METRIC_COLUMNS[-1]) is not None]


class MetricsLog:
    """``metrics.csv`` (append; on resume rows after the checkpoint are dropped) + optional wandb, main rank only."""

    def __init__(self, out_dir: Path, cfg: TrainConfig, resume_step: int | None, enabled: bool):
        self.path = out_dir / "metrics.csv"
        self.enabled = enabled
        self.wandb = None
        if not enabled:
            return
        rows = _kept_rows(self.path, resume_step)
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, METRIC_COLUMNS)
                w.writeheader()
                w.writerows(rows)
        self.fh = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.fh, METRIC_COLUMNS)
        self.wandb = WandbRun(cfg.wandb.project, name=cfg.wandb.name, config=to_dict(cfg), out_dir=out_dir,
                              enabled=cfg.wandb.enabled, resume=True)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.writer.writerow({k: ("" if row.get(k) is None or (isinstance(row.get(k), float) and math.isnan(row[k]))
                                  else row[k]) for k in METRIC_COLUMNS})
        self.fh.flush()
        self.wandb.log(row, step=int(row["step"]))

    def close(self) -> None:
        if not self.enabled:
            return
        self.fh.close()
        self.wandb.finish()


def read_metrics(path: str | os.PathLike):
    """metrics.csv as a pandas DataFrame."""
    import pandas as pd

    return pd.read_csv(path)
