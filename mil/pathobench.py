"""Split tables in Patho-Bench's layout: one TSV per task, ``case_id, slide_id, <label column(s)>, fold_0 …
fold_{J−1}``, each fold column holding ``train`` / ``test`` (``val`` too when exported with ``keep_val``).

Our repeated k-fold (repeat r, fold f → global fold ``r·k + f``) becomes columns ``fold_{r·k+f}``. On import, the
repeats are recovered as the smallest block of consecutive columns whose test sets cover every slide once
(Monte-Carlo splits, where no such block exists, become one repeat per column). Imported folds have no ``val``
rows unless the file has them, so MIL heads train them on the fixed schedule (see :mod:`mil.trainer`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from mil.splits import SPLIT_COLUMNS, check_splits, with_repeat
from zoomfeat.io import atomic_path

VALUES = ("train", "val", "test")


def write_pathobench(splits: pd.DataFrame, path: str | os.PathLike, labels: pd.DataFrame | None = None,
                     label_columns: Sequence[str] = (), keep_val: bool = False) -> Path:
    """Write a split table as a Patho-Bench TSV; ``labels`` (with a ``slide`` column) supplies
    ``label_columns``; validation slides are written as ``train`` unless ``keep_val``."""
    splits = with_repeat(splits)
    check_splits(splits)
    folds = sorted(splits["fold"].unique())
    wide = splits.pivot(index="slide", columns="fold", values="split")
    if not keep_val:
        wide = wide.replace("val", "train")
    wide.columns = [f"fold_{i}" for i, _ in enumerate(folds)]
    first = splits.drop_duplicates("slide").set_index("slide")
    out = pd.DataFrame({"case_id": first.loc[wide.index, "patient"].to_numpy(), "slide_id": wide.index})
    for col in label_columns:
        if labels is None or col not in labels.columns:
            raise ValueError(f"label column {col!r} not found in the labels table")
        out[col] = labels.set_index(labels["slide"].astype(str))[col].reindex(wide.index).to_numpy()
    out = pd.concat([out.reset_index(drop=True), wide.reset_index(drop=True)], axis=1)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, sep="\t", index=False)
    return Path(path)


def read_pathobench(path: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """A Patho-Bench split TSV → our split table (fold, slide, patient, split, repeat); checks for leakage."""
    df = path.copy() if isinstance(path, pd.DataFrame) else pd.read_csv(path, sep="\t", dtype=str)
    missing = [c for c in ("case_id", "slide_id") if c not in df.columns]
    fold_cols = sorted((c for c in df.columns if c.startswith("fold_")), key=lambda c: int(c.split("_", 1)[1]))
    if missing or not fold_cols:
        raise ValueError(f"{path}: a Patho-Bench split file needs case_id, slide_id and fold_0… columns "
                         f"(has {list(df.columns)})")
    values = df[fold_cols].apply(lambda c: c.str.strip().str.lower())
    bad = set(values.stack().dropna()) - set(VALUES)
    if bad:
        raise ValueError(f"{path}: fold columns hold {sorted(bad)}; expected train / val / test")
    k = _block_size(values)
    rows = []
    for j, col in enumerate(fold_cols):
        for slide, patient, split in zip(df["slide_id"], df["case_id"], values[col]):
            if isinstance(split, str):
                rows.append((j, str(slide), str(patient), split, j // k))
    out = pd.DataFrame(rows, columns=SPLIT_COLUMNS)
    check_splits(out)
    return out


def _block_size(values: pd.DataFrame) -> int:
    """Smallest number of consecutive fold columns whose test sets partition the slides (1: Monte Carlo)."""
    n = values.shape[1]
    test = (values == "test").to_numpy()
    for k in range(2, n + 1):
        if n % k:
            continue
        blocks = test.reshape(len(test), n // k, k).sum(2)
        if (blocks == 1).all():
            return k
    return 1
