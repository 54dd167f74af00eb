"""Slide naming: which files are slides, a slide's id (its file name stem, checked to be safe), the output path of
each per-slide file, ids shared by two files, and finding a slide file by id (in a folder or a labels CSV's
``path`` column). The one place that turns a slide path (or a file attribute) into a slide id and an output path:
ids never leave their output folder (see docs/robustness.md)."""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path
from typing import Iterable, Sequence

#: File endings treated as slides when SLIDES is a folder (OpenSlide formats + generic TIFF + DICOM).
SLIDE_SUFFIXES = {
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm", ".czi",
}

class SlideIdError(ValueError):
    """A slide id that could name a file outside its output folder, or one shared by two slides."""


def check_slide_id(sid: str, source: str = "slide id") -> str:
    """Return ``sid`` if it is a plain file-name stem; raise :class:`SlideIdError` if it could leave a folder
    (path separators, ``..``, a leading dot, NUL) — ids also come from file attributes others send us."""
    s = str(sid)
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if not s or s.startswith(".") or "\x00" in s or any(c in s for c in seps):
        raise SlideIdError(f"{source} {s!r} is not a safe slide id (no path separators, no leading '.', not empty)")
    return s


def slide_id(path: str | os.PathLike) -> str:
    """Slide id = file name without its (last) suffix, e.g. ``TCGA-XX.svs`` → ``TCGA-XX`` (checked to be safe)."""
    return check_slide_id(Path(path).stem, f"slide id of {path}:")


def output_path(folder: str | os.PathLike, sid: str, suffix: str) -> Path:
    """``folder/{sid}{suffix}`` for a checked id; every per-slide output path is built here."""
    folder = Path(folder)
    out = folder / f"{check_slide_id(sid)}{suffix}"
    if Path(os.path.abspath(out)).parent != Path(os.path.abspath(folder)):  # defence in depth
        raise SlideIdError(f"slide id {sid!r} would write outside {folder}")
    return out


def id_collisions(slides: Iterable[str | os.PathLike]) -> dict[str, str]:
    """Slide ids shared by different files (``a/x.svs`` + ``b/x.svs``, ``x.svs`` + ``x.tiff``) → a one-line error
    naming every file. Such slides are failed, never merged: outputs are named by id alone."""
    by_id: dict[str, list[Path]] = {}
    for p in slides:
        with contextlib.suppress(SlideIdError):
            files = by_id.setdefault(slide_id(p), [])
            if not any(os.path.abspath(p) == os.path.abspath(f) for f in files):
                files.append(Path(p))
    return {sid: f"SlideIdError: slide id {sid!r} is shared by {' and '.join(map(str, fs))}; rename all but one "
                 "(outputs are named by slide id)" for sid, fs in by_id.items() if len(fs) > 1}


def resolve_slides(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Turn SLIDES (a folder, one slide file, or a CSV with a ``slide`` column) into a sorted path list.

    Relative paths in a CSV are resolved against the CSV's folder. In a DICOM folder only the first
    ``.dcm`` of each series folder is kept (OpenSlide opens the series from any one file).
    """
    if isinstance(spec, (list, tuple)):
        out: list[Path] = []
        for s in spec:
            out.extend(resolve_slides(s))
        return out
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"SLIDES not found: {p}")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SLIDE_SUFFIXES)
        dcm_seen: set[Path] = set()
        out = []
        for f in files:
            if f.suffix.lower() == ".dcm":
                if f.parent in dcm_seen:
                    continue
                dcm_seen.add(f.parent)
            out.append(f)
        return out
    if p.suffix.lower() == ".csv":
        with open(p, newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "slide" not in reader.fieldnames:
                raise ValueError(f"{p}: a slide list CSV needs a 'slide' column (found {reader.fieldnames})")
            rows = [r["slide"].strip() for r in reader if r.get("slide", "").strip()]
        return [(Path(r) if Path(r).is_absolute() else (p.parent / r)) for r in rows]
    return [p]


def find_slide(slides: str | os.PathLike | None, sid: str) -> Path | None:
    """The slide file named ``sid`` in folder ``slides`` (any of :data:`SLIDE_SUFFIXES`), ``slides`` itself when it is
    that file, or None."""
    if not slides:
        return None
    root = Path(slides)
    if root.is_file():
        return root if root.stem == sid else None
    if not root.is_dir():
        return None
    for p in sorted(root.glob(f"{sid}.*")):
        if p.suffix.lower() in SLIDE_SUFFIXES:
            return p
    return None


def label_slide_paths(labels: str | os.PathLike | None) -> dict[str, Path]:
    """slide id → existing slide file from the ``path`` column of a labels CSV (relative paths: next to the CSV);
    empty when there is no such CSV or column."""
    if labels is None or not isinstance(labels, (str, os.PathLike)) or not Path(labels).is_file():
        return {}
    with open(labels, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "path" not in reader.fieldnames or "slide" not in reader.fieldnames:
            return {}
        rows = [(r["slide"], r["path"]) for r in reader]
    root = Path(labels).resolve().parent
    paths = {s: (Path(q) if Path(q).is_absolute() else root / q) for s, q in rows if q}
    return {s: q for s, q in paths.items() if q.exists()}
