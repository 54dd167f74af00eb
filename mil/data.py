"""Labels and bags for MIL: validate a labels table, match it to bag files, and serve (padded) bags to torch.

Bad-input policy (issue §7), the same for the Python API and the CLI:
  * a labels row whose slide has no bag, or whose bag is unreadable, empty, NaN/inf or of the wrong width
    → **skipped** with a warning and listed in ``skipped.csv`` (``on_bad="error"`` stops instead);
  * a labels row with an empty target → skipped the same way;
  * bags without a labels row → ignored (counted in the warning);
  * a patient whose slides carry different labels, duplicated slide rows → **stop** (ValueError), because
    any automatic choice would leak or mislabel;
  * a class with fewer patients than folds → stop (raised by :mod:`mil.splits`).
Bags are checked once before the splits are made, so a skipped slide never changes one fold only.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from zoomfeat.bags import read_bag
from zoomfeat.io import atomic_path

SURVIVAL = "survival"


class BadBagError(ValueError):
    """A bag that cannot be used (missing, unreadable, empty, NaN/inf, wrong width)."""


class BagCache:
    """The bags a process has read, kept up to ``max_bytes`` (least recently used first out).

    Why: cross-validation reads every bag several times per fold (the cohort check, the standardiser, the training
    and validation sets, the test predictions) and again in every fold, repeat, head and task — in the demo's
    comparison that was 18 % of the CPU time. An entry is keyed on the file's identity (device, inode, mtime, size),
    so a bag rewritten in place or replaced by an atomic rename is read again. Cached arrays are read-only.
    Budget: :func:`bag_cache_budget` (``ZOOMFEAT_BAG_CACHE_MB=0`` turns the cache off)."""

    def __init__(self, max_bytes: int):
        from collections import OrderedDict

        self.max_bytes = int(max_bytes)
        self.entries: OrderedDict = OrderedDict()
        self.bytes = 0

    @staticmethod
    def key(path: Path, mag: str) -> tuple:
        st = path.stat()
        return os.fspath(path), mag, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size

    def get(self, key: tuple) -> np.ndarray | None:
        arr = self.entries.get(key)
        if arr is not None:
            self.entries.move_to_end(key)
        return arr

    def put(self, key: tuple, arr: np.ndarray) -> np.ndarray:
        """Keep ``arr`` (made read-only) and return it; returned as given when the cache is off (budget 0) or it is
        too large (over a quarter of the budget: one bag never pushes out most of the others)."""
        if self.max_bytes <= 0 or arr.nbytes > self.max_bytes // 4:
            return arr
        arr.flags.writeable = False
        self.entries[key] = arr
        self.bytes += arr.nbytes
        while self.bytes > self.max_bytes:
            self.bytes -= self.entries.popitem(last=False)[1].nbytes
        return arr

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0


def bag_cache_budget() -> int:
    """Bytes per process: ``ZOOMFEAT_BAG_CACHE_MB``, else 1 GiB but never more than a quarter of the RAM shared
    by one process per usable core (a ``--jobs`` pool of N workers holds N caches)."""
    env = os.environ.get("ZOOMFEAT_BAG_CACHE_MB")
    if env not in (None, ""):
        return int(float(env) * (1 << 20))
    import psutil
    from zoomfeat.threads import available_cores

    return int(min(1 << 30, psutil.virtual_memory().total / (4 * max(1, available_cores()))))


BAG_CACHE = BagCache(bag_cache_budget())


def read_features(item: Any, mag: str = "20x") -> np.ndarray:
    """Features of one bag as float32 (N, D): a path goes through ``zoomfeat.bags.read_bag``, once per process
    while the file is unchanged (:class:`BagCache`; the array is then read-only: copy it to write)."""
    if not isinstance(item, (str, os.PathLike)):
        return _as_rows(item.detach().cpu().numpy() if hasattr(item, "detach") else item)
    path = Path(item)
    if not path.exists():
        raise BadBagError(f"missing bag: {path}")
    key = BagCache.key(path, mag)
    cached = BAG_CACHE.get(key)
    if cached is not None:
        return cached
    try:
        arr = read_bag(path, mag=mag)
    except (OSError, KeyError) as exc:
        raise BadBagError(f"unreadable bag {path}: {exc}") from exc
    except ValueError as exc:
        raise BadBagError(str(exc)) from exc
    return BAG_CACHE.put(key, _as_rows(arr))


def _as_rows(arr) -> np.ndarray:
    """float32, one row per instance (a 1-D bag is one instance)."""
    arr = np.asarray(arr, dtype=np.float32)
    return arr[None, :] if arr.ndim == 1 else arr


def features_tensor(arr: np.ndarray) -> torch.Tensor:
    """``arr`` as a tensor; a read-only array (a cached bag, :class:`BagCache`) is copied first, so nothing that
    writes to the tensor can change the cache."""
    return torch.from_numpy(np.ascontiguousarray(arr) if arr.flags.writeable else arr.copy())


def check_features(arr: np.ndarray, name: str, dim: int | None = None) -> None:
    """Raise :class:`BadBagError` with the slide name for empty, non-2-D, wrong-width or non-finite bags."""
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise BadBagError(f"{name}: bag is empty or not 2-D (shape {arr.shape})")
    if dim is not None and arr.shape[1] != dim:
        raise BadBagError(f"{name}: feature width {arr.shape[1]} differs from the cohort's {dim}")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = int(bad.any(axis=1).sum())
        raise BadBagError(f"{name}: {rows} of {arr.shape[0]} instances contain NaN or inf")


@dataclass
class Cohort:
    """Slides that survived validation: bag items, integer/float targets, patients, and what was skipped."""

    slides: list[str]
    items: list[Any]  # arrays or paths, one per slide
    targets: np.ndarray  # (n,) int64 class codes, or (n, 2) float (time, event)
    patients: list[str]
    task: str
    classes: list[Any] = field(default_factory=list)
    dim: int = 0
    n_instances: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (slide, reason)

    def __len__(self) -> int:
        return len(self.slides)

    @property
    def strata(self) -> np.ndarray:
        """What the folds stratify on: the class, or the event indicator for survival (as STAMP does)."""
        return self.targets[:, 1].astype(int) if self.task == SURVIVAL else self.targets

    def subset(self, idx: Sequence[int]) -> "Cohort":
        idx = list(idx)
        return Cohort(
            [self.slides[i] for i in idx], [self.items[i] for i in idx], self.targets[idx],
            [self.patients[i] for i in idx], self.task, self.classes, self.dim,
            [self.n_instances[i] for i in idx] if self.n_instances else [], self.skipped,
        )


def encode_targets(values: Sequence[Any], task: str) -> tuple[np.ndarray, list[Any]]:
    """Class labels → int codes (sorted class list), or (time, event) pairs → float (n, 2)."""
    if task == SURVIVAL:
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError("survival labels must be (time, event) pairs")
        if not np.isfinite(arr).all():
            raise ValueError(f"survival labels must be finite; rows {np.flatnonzero(~np.isfinite(arr).all(1))[:10].tolist()}")
        if (arr[:, 0] < 0).any():
            raise ValueError("survival times must be non-negative")
        if not np.isin(arr[:, 1], (0, 1)).all():
            raise ValueError("survival events must be 0 (censored) or 1 (event)")
        return arr, []
    vals = list(values)
    classes = sorted(set(vals), key=lambda v: (str(type(v)), v))
    lookup = {c: i for i, c in enumerate(classes)}
    return np.asarray([lookup[v] for v in vals], dtype=np.int64), classes


def check_patient_labels(patients: Sequence[str], targets: Sequence[Any], slides: Sequence[str]) -> None:
    """A patient's slides must agree on the label (else folds would be ambiguous): ValueError naming them."""
    per: dict[str, dict[str, Any]] = {}
    for p, t, s in zip(patients, targets, slides):
        per.setdefault(p, {})[s] = tuple(np.atleast_1d(t).tolist()) if np.ndim(t) else t
    conflicts = {p: v for p, v in per.items() if len(set(v.values())) > 1}
    if conflicts:
        show = "; ".join(f"patient {p}: " + ", ".join(f"{s}={t}" for s, t in v.items())
                         for p, v in list(conflicts.items())[:5])
        raise ValueError(f"{len(conflicts)} patient(s) have slides with different labels ({show}); "
                         "fix the labels table (one label per patient)")


def check_survival_columns(df: pd.DataFrame, time_col: str = "time", event_col: str = "event") -> None:
    """Survival times must be finite numbers (``inf`` would pass the fits and then break the KM plot after the
    summary is written): ValueError naming the rows."""
    times = pd.to_numeric(df[time_col], errors="coerce")
    events = pd.to_numeric(df[event_col], errors="coerce")
    bad = ~np.isfinite(times.to_numpy(np.float64)) | ~np.isfinite(events.to_numpy(np.float64))
    if bad.any():
        rows = [f"row {i + 2} ({s}: {time_col}={t!r}, {event_col}={e!r})" for i, s, t, e in
                zip(df.index[bad], df.loc[bad, "slide"], df.loc[bad, time_col], df.loc[bad, event_col])]
        raise ValueError(f"labels table: non-finite or non-numeric survival values in {len(rows)} row(s): "
                         f"{', '.join(rows[:10])}{' …' if len(rows) > 10 else ''}")


def load_labels(labels: str | os.PathLike | pd.DataFrame, task: str, target: str | None = None,
                time_col: str = "time", event_col: str = "event") -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Read and validate a labels table (columns ``slide``, optional ``patient``, the target column(s)).

    Returns the usable rows (with a ``patient`` column filled from ``slide`` when absent) and the skipped
    (slide, reason) pairs for rows with an empty target.
    """
    df = (pd.read_csv(labels, dtype={"slide": str, "patient": str}) if not isinstance(labels, pd.DataFrame)
          else labels.copy())
    if "slide" not in df.columns:
        raise ValueError(f"labels table needs a 'slide' column; it has {list(df.columns)}")
    df["slide"] = df["slide"].astype(str)
    if "patient" not in df.columns:
        df["patient"] = df["slide"]
    no_patient = df["patient"].isna() | (df["patient"].astype(str).str.strip() == "")
    if no_patient.any():  # "nan" would silently become one patient holding all these slides
        rows = [f"row {i + 2} ({s})" for i, s in zip(df.index[no_patient], df.loc[no_patient, "slide"])]
        raise ValueError(f"labels table: empty 'patient' in {len(rows)} row(s): {', '.join(rows[:10])}"
                         f"{' …' if len(rows) > 10 else ''}; fill them (the slide id if each slide is its own patient)")
    df["patient"] = df["patient"].astype(str)
    dup = df["slide"][df["slide"].duplicated()].unique()
    if len(dup):
        raise ValueError(f"labels table lists slide(s) more than once: {', '.join(map(str, dup[:5]))}")
    cols = [time_col, event_col] if task == SURVIVAL else [target]
    if task != SURVIVAL and not target:
        raise ValueError(f"task {task!r} needs a target column (e.g. target: subtype)")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"labels table has no column(s) {missing}; it has {list(df.columns)}")
    empty = df[cols].isna().any(axis=1)
    skipped = [(s, f"empty {'/'.join(cols)} in labels") for s in df.loc[empty, "slide"]]
    if task == SURVIVAL:
        check_survival_columns(df.loc[~empty], time_col, event_col)
    return df.loc[~empty].reset_index(drop=True), skipped


def majority_width(widths: Sequence[int]) -> int:
    """The feature width most bags have (a tie: the one seen first among the most common)."""
    counts: dict[int, int] = {}
    for w in widths:
        counts[w] = counts.get(w, 0) + 1
    return max(counts, key=lambda w: counts[w])


def build_cohort(
    df: pd.DataFrame,
    bag_files: dict[str, Any],
    task: str,
    target: str | None = None,
    mag: str = "20x",
    on_bad: str = "skip",
    time_col: str = "time",
    event_col: str = "event",
    skipped: list[tuple[str, str]] | None = None,
    scan: bool = True,
) -> Cohort:
    """Match validated labels rows to bags, check every bag once (finite, non-empty, one width), apply ``on_bad``."""
    if on_bad not in ("skip", "error"):
        raise ValueError("on_bad must be 'skip' or 'error'")
    skipped = list(skipped or [])
    if on_bad == "error" and skipped:
        raise ValueError(f"labels: {skipped[0][0]}: {skipped[0][1]}")
    unlabeled = set(bag_files) - set(df["slide"])
    if unlabeled:
        warnings.warn(f"{len(unlabeled)} bag(s) have no labels row and are ignored", stacklevel=2)
    keep_rows, items, n_inst, widths = [], [], [], []
    for i, slide in enumerate(df["slide"]):
        item = bag_files.get(slide)
        try:
            if item is None:
                raise BadBagError(f"{slide}: no bag for this slide (labels name a slide the bag folder lacks)")
            if scan:
                arr = read_features(item, mag)
                check_features(arr, slide)
                widths.append(int(arr.shape[1]))
                n_inst.append(int(arr.shape[0]))
        except BadBagError as exc:
            if on_bad == "error":
                raise
            skipped.append((slide, str(exc)))
            continue
        keep_rows.append(i)
        items.append(item)
    dim = majority_width(widths) if widths else None
    odd = [j for j, w in enumerate(widths) if w != dim]  # the cohort's width is the majority's, never the first bag's
    for j in odd:
        slide = df["slide"].iloc[keep_rows[j]]
        exc = BadBagError(f"{slide}: feature width {widths[j]} differs from the cohort's {dim} (the majority)")
        if on_bad == "error":
            raise exc
        skipped.append((slide, str(exc)))
    if odd:
        drop = set(odd)
        keep_rows, items, n_inst = ([v for j, v in enumerate(lst) if j not in drop]
                                    for lst in (keep_rows, items, n_inst))
    if skipped:
        warnings.warn(f"skipped {len(skipped)} slide(s): " + "; ".join(f"{s} ({r})" for s, r in skipped[:5])
                      + (" …" if len(skipped) > 5 else ""), stacklevel=2)
    if not keep_rows:
        raise ValueError("no usable slides: every labelled slide was missing a bag or had a bad bag")
    kept = df.iloc[keep_rows].reset_index(drop=True)
    raw = kept[[time_col, event_col]].to_numpy() if task == SURVIVAL else kept[target].tolist()
    patients = kept["patient"].tolist()
    check_patient_labels(patients, [tuple(r) for r in raw] if task == SURVIVAL else raw, kept["slide"].tolist())
    targets, classes = encode_targets(raw, task)
    return Cohort(kept["slide"].tolist(), items, targets, patients, task, classes, int(dim or 0), n_inst, skipped)


class BagDataset(Dataset):
    """Bags as float32 tensors, read lazily per item (paths) with optional instance sampling for training.

    ``max_instances`` draws a random subset of larger bags (training only: pass ``sample=True``); the
    generator is seeded, so with ``num_workers=0`` the same seed gives the same draws.
    """

    def __init__(self, cohort: Cohort, mag: str = "20x", max_instances: int | None = None, sample: bool = False,
                 seed: int = 0, cache: bool = False):
        self.cohort = cohort
        self.mag = mag
        self.max_instances = int(max_instances) if max_instances else None
        self.sample = sample
        self.rng = np.random.default_rng(seed)
        self.cache: dict[int, np.ndarray] | None = {} if cache else None
        self.norm: tuple[np.ndarray, np.ndarray] | None = None  # (mean, std) from the training fold

    def __len__(self) -> int:
        return len(self.cohort)

    def features(self, i: int) -> np.ndarray:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        arr = read_features(self.cohort.items[i], self.mag)
        check_features(arr, self.cohort.slides[i], self.cohort.dim or None)
        if self.cache is not None:
            self.cache[i] = arr
        return arr

    def __getitem__(self, i: int) -> dict:
        arr = self.features(i)
        if self.sample and self.max_instances and arr.shape[0] > self.max_instances:
            arr = arr[np.sort(self.rng.choice(arr.shape[0], self.max_instances, replace=False))]
        if self.norm is not None:
            arr = (arr - self.norm[0]) / self.norm[1]
        y = self.cohort.targets[i]
        return {"x": features_tensor(arr), "y": torch.as_tensor(y), "index": i}


def save_standardizer(norm: tuple[np.ndarray, np.ndarray], path: str | os.PathLike) -> None:
    """Write a fitted (mean, std) beside a head's weights (``.npz``, atomic): applying the head needs it."""
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, mean=norm[0], std=norm[1])


def load_standardizer(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray] | None:
    """The (mean, std) saved with a head, or None when it was trained without standardisation."""
    path = Path(path)
    if not path.is_file():
        return None
    import zipfile

    if not zipfile.is_zipfile(path):  # np.load would take it for a pickle and advise allow_pickle
        raise ValueError(f"{path}: not a standardizer (.npz with float arrays 'mean' and 'std'): not an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as z:
            return np.asarray(z["mean"], np.float32), np.asarray(z["std"], np.float32)
    except (ValueError, KeyError, EOFError) as exc:  # an object array (pickle), a missing array, a broken file
        raise ValueError(f"{path}: not a standardizer (.npz with float arrays 'mean' and 'std'): "
                         f"{type(exc).__name__}: {exc}") from exc


def fit_standardizer(ds: BagDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over every instance of ``ds``'s bags (the training fold), float32.

    Why: encoders differ in feature scale by orders of magnitude (and ZoomLDM's UNet activations are far from
    unit scale); without it a head's first epochs are spent undoing the scale, and on small cohorts it never
    gets past predicting one class. Constant features get std 1.
    """
    n, s1, s2 = 0, None, None
    for i in range(len(ds)):
        a = ds.features(i).astype(np.float64)
        s1 = a.sum(0) if s1 is None else s1 + a.sum(0)
        s2 = (a * a).sum(0) if s2 is None else s2 + (a * a).sum(0)
        n += a.shape[0]
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    std = np.where(std > 1e-6 * max(1.0, float(np.abs(mean).max())), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def collate_bags(batch: list[dict]) -> dict:
    """Pad bags to the longest in the batch; ``mask`` is True on real instances."""
    n = max(b["x"].shape[0] for b in batch)
    d = batch[0]["x"].shape[1]
    x = torch.zeros(len(batch), n, d, dtype=torch.float32)
    mask = torch.zeros(len(batch), n, dtype=torch.bool)
    for j, b in enumerate(batch):
        k = b["x"].shape[0]
        x[j, :k] = b["x"]
        mask[j, :k] = True
    return {"x": x, "mask": mask, "y": torch.stack([b["y"] for b in batch]),
            "index": torch.as_tensor([b["index"] for b in batch])}
