"""Patient-level stratified k-fold with an inner validation split, saved to CSV and reused for every encoder.

Outer folds: sklearn ``StratifiedGroupKFold`` over patients (disjoint test folds, unlike CLAM's Monte-Carlo
splits). Inner: the same splitter on each fold's training patients, taking one of ⌈1/val_fraction⌉ groups as
the early-stopping validation set. Survival folds stratify on the event indicator. A split table has one row
per (fold, slide): ``fold, slide, patient, split, repeat`` with split ∈ {train, val, test}. Repeated k-fold
(``n_repeats``) reshuffles the patients with seed ``seed + r``; fold ids are global (repeat r, fold f →
``r * n_folds + f``) so every consumer iterates over ``fold`` alone. Tables without ``repeat`` (older files)
read as one repeat. :mod:`mil.pathobench` converts to and from Patho-Bench's split TSVs.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold
from zoomfeat.io import atomic_path

SPLIT_COLUMNS = ["fold", "slide", "patient", "split", "repeat"]


def _patient_strata(patients: Sequence[str], strata: Sequence) -> dict[str, object]:
    out: dict[str, object] = {}
    for p, s in zip(patients, strata):
        if p in out and out[p] != s:
            raise ValueError(f"patient {p} has slides in different strata ({out[p]} and {s}); "
                             "one label per patient is required for patient-level folds")
        out[p] = s
    return out


def make_splits(slides: Sequence[str], patients: Sequence[str], strata: Sequence, n_folds: int = 5,
                seed: int = 0, val_fraction: float = 0.2, strict: bool = True, n_repeats: int = 1) -> pd.DataFrame:
    """Patient-level stratified folds (``n_repeats`` × ``n_folds``); ValueError when a class has fewer patients
    than folds.

    ``strict=False`` (survival, where the strata are event/censored) only warns: a fold may then lack
    censored patients, which the c-index tolerates, and at least one event per fold is still required.
    """
    slides, patients = [str(s) for s in slides], [str(p) for p in patients]
    strata = np.asarray(strata)
    if n_folds < 2:
        raise ValueError("n_folds must be at least 2")
    per_patient = _patient_strata(patients, strata.tolist())
    counts = Counter(per_patient.values())
    small = {c: k for c, k in counts.items() if k < n_folds}
    if small and not strict:
        if counts.get(1, 0) < n_folds:
            raise ValueError(f"only {counts.get(1, 0)} patient(s) with an event for {n_folds} folds; "
                             f"need at least one per fold (lower n_folds)")
        warnings.warn("strata with fewer patients than folds: " + ", ".join(f"{c!r}: {k}" for c, k in small.items())
                      + " (folds stay patient-level; some folds lack that stratum)", stacklevel=2)
    elif small:
        raise ValueError(
            "class(es) with fewer patients than folds: "
            + ", ".join(f"{c!r} has {k} patient(s)" for c, k in sorted(small.items(), key=str))
            + f" (n_folds={n_folds}); lower n_folds or drop/merge the class"
        )
    if len(counts) < 2 and strict:
        raise ValueError(f"only one class/stratum ({next(iter(counts))!r}) among the labelled slides")
    rows = []
    for r in range(int(n_repeats)):
        rows += _kfold_rows(slides, patients, strata, n_folds, seed + r, val_fraction, r)
    df = pd.DataFrame(rows, columns=SPLIT_COLUMNS)
    check_splits(df)
    return df


def _kfold_rows(slides: list[str], patients: list[str], strata: np.ndarray, n_folds: int, seed: int,
                val_fraction: float, repeat: int) -> list[tuple]:
    """Rows (fold, slide, patient, split, repeat) of one patient-level stratified k-fold with inner validation."""
    idx = np.arange(len(slides))
    outer = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rows = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")  # warned above (survival only)
        outer_splits = list(outer.split(idx, strata, groups=patients))
    for fold, (train_idx, test_idx) in enumerate(outer_splits):
        val_idx = np.array([], dtype=int)
        if val_fraction and val_fraction > 0:
            n_inner = max(2, int(round(1.0 / val_fraction)))
            tr_pat = [patients[i] for i in train_idx]
            n_inner = min(n_inner, len(set(tr_pat)))
            inner = StratifiedGroupKFold(n_splits=n_inner, shuffle=True, random_state=seed + 1000 + fold)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*least populated class.*")
                warnings.filterwarnings("ignore", message=".*members, which is less than n_splits.*")
                try:
                    _, v = next(inner.split(train_idx, strata[train_idx], groups=tr_pat))
                except ValueError as exc:
                    raise ValueError(_inner_split_error(fold, n_folds, val_fraction, n_inner, tr_pat,
                                                        strata[train_idx], exc)) from None
            val_idx = train_idx[v]
            train_idx = np.setdiff1d(train_idx, val_idx)
        for split, ids in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
            rows += [(repeat * n_folds + fold, slides[i], patients[i], split, repeat) for i in sorted(ids)]
    return rows


def _inner_split_error(fold: int, n_folds: int, val_fraction: float, n_inner: int, tr_pat: list[str],
                       strata: np.ndarray, exc: Exception) -> str:
    """The inner (validation) split failure in terms of the user's settings, not sklearn's."""
    per = Counter(dict(zip(tr_pat, strata.tolist())).values())
    counts = ", ".join(f"{c!r}: {k} patient(s)" for c, k in sorted(per.items(), key=str))
    return (f"fold {fold}: cannot split a validation set off the training patients: val_fraction={val_fraction} "
            f"asks for 1 of {n_inner} patient groups, but the fold's {len(set(tr_pat))} training patients are "
            f"{counts} (n_folds={n_folds}). Lower val_fraction or n_folds, add patients, or set val_fraction: 0 "
            f"(no validation set). [sklearn: {str(exc).splitlines()[0]}]")


def check_splits(df: pd.DataFrame) -> None:
    """Guard against leakage: within a fold a patient is in one split only; each slide is tested exactly once
    per repeat."""
    df = with_repeat(df)
    missing = [c for c in SPLIT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"split table lacks column(s) {missing}")
    per = df.groupby(["fold", "patient"])["split"].nunique()
    leaks = per[per > 1]
    if len(leaks):
        f, p = leaks.index[0]
        raise ValueError(f"split leakage: patient {p} is in more than one of train/val/test in fold {f}")
    if (df.groupby("fold")["repeat"].nunique() > 1).any():
        raise ValueError("split table: a fold id belongs to more than one repeat")
    tests = df[df["split"] == "test"].groupby(["repeat", "slide"])["fold"].nunique()
    if (tests > 1).any():
        r, s = tests[tests > 1].index[0]
        raise ValueError(f"split table tests slide {s} in more than one fold of repeat {r}")
    folds = sorted(df["fold"].unique())
    if any(set(df[df["fold"] == f]["slide"]) != set(df[df["fold"] == folds[0]]["slide"]) for f in folds):
        raise ValueError("split table: folds cover different slides")


def with_repeat(df: pd.DataFrame) -> pd.DataFrame:
    """The table with a ``repeat`` column (0 everywhere for single-repeat tables written before repeats)."""
    if "repeat" in df.columns:
        return df
    return df.assign(repeat=0)


def save_splits(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        with_repeat(df)[SPLIT_COLUMNS].to_csv(tmp, index=False)
    return Path(path)


def load_splits(path: str | os.PathLike | pd.DataFrame, slides: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a saved split table; with ``slides``, drop rows of slides no longer usable (warning) and refuse
    a table that lacks usable slides (re-splitting silently would change folds between encoders)."""
    df = path.copy() if isinstance(path, pd.DataFrame) else pd.read_csv(path, dtype={"slide": str, "patient": str})
    df = with_repeat(df)
    check_splits(df)
    if slides is not None:
        slides = set(map(str, slides))
        known = set(df["slide"])
        extra = slides - known
        if extra:
            raise ValueError(f"split table does not cover {len(extra)} usable slide(s) (e.g. {sorted(extra)[0]}); "
                             "make new splits (delete the splits file) or drop those slides")
        gone = known - slides
        if gone:
            warnings.warn(f"split table: {len(gone)} slide(s) are not usable now and are left out", stacklevel=2)
            df = df[df["slide"].isin(slides)].reset_index(drop=True)
    return df


def fold_indices(df: pd.DataFrame, slides: Sequence[str], fold: int) -> dict[str, np.ndarray]:
    """Row indices into ``slides`` of a fold's train / val / test sets."""
    pos = {s: i for i, s in enumerate(slides)}
    sub = df[df["fold"] == fold]
    return {k: np.asarray(sorted(pos[s] for s in sub.loc[sub["split"] == k, "slide"]), dtype=int)
            for k in ("train", "val", "test")}
