"""Cohort runner shared by `tile`, `extract` and `build-dataset`: a slide list in, one job per slide.

Per-slide failures are caught, reported and written to a summary file while the other slides go on;
slides whose output already exists are skipped; a lock file per slide lets several processes share
a cohort; ranks of a torchrun job take disjoint slices of the list.
"""

from __future__ import annotations

import csv
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm.auto import tqdm

from zoomfeat.io import SlideLock, atomic_path, write_json_atomic

#: File endings treated as slides when SLIDES is a folder (OpenSlide formats + generic TIFF + DICOM).
SLIDE_SUFFIXES = {
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm", ".czi",
}

#: Exit codes of cohort commands (documented in docs/tiling.md).
EXIT_OK = 0          # every slide done or skipped
EXIT_PARTIAL = 3     # some slides failed, others succeeded (see the summary file)
EXIT_ALL_FAILED = 2  # every attempted slide failed, or no slide was found


def slide_id(path: str | os.PathLike) -> str:
    """Slide id = file name without its (last) suffix, e.g. ``TCGA-XX.svs`` → ``TCGA-XX``."""
    return Path(path).stem


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


def rank_slice(items: Sequence, rank: int | None = None, world: int | None = None) -> list:
    """The share of ``items`` for this process (torchrun's RANK/WORLD_SIZE by default): every world-th item."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    return list(items)[rank::world]


@dataclass
class SlideResult:
    slide: str
    status: str  # "done" | "skipped" | "failed" | "locked"
    seconds: float = 0.0
    error: str = ""
    info: dict = field(default_factory=dict)


@dataclass
class CohortReport:
    results: list[SlideResult]

    @property
    def failed(self) -> list[SlideResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        attempted = [r for r in self.results if r.status in ("done", "failed")]
        if not self.results or (attempted and all(r.status == "failed" for r in attempted)):
            return EXIT_ALL_FAILED
        return EXIT_PARTIAL if self.failed else EXIT_OK

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for r in self.results:
            c[r.status] = c.get(r.status, 0) + 1
        return c

    def write(self, out_dir: str | os.PathLike, name: str = "summary") -> Path:
        """Write ``{name}.csv`` (one row per slide) and ``{name}.json`` (counts + failures) atomically."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / f"{name}.json", {
            "counts": self.counts(),
            "exit_code": self.exit_code,
            "failed": [{"slide": r.slide, "error": r.error} for r in self.failed],
        })
        with atomic_path(out_dir / f"{name}.csv") as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["slide", "status", "seconds", "error"])
                for r in self.results:
                    w.writerow([r.slide, r.status, f"{r.seconds:.3f}", r.error])
        return out_dir / f"{name}.csv"

    def print(self, echo: Callable[[str], None] = print) -> None:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts().items()))
        echo(f"{len(self.results)} slides ({counts})")
        for r in self.failed:
            echo(f"  FAILED {r.slide}: {r.error}")


def run_cohort(
    slides: Iterable[str | os.PathLike],
    process: Callable[[Path], dict | None],
    is_done: Callable[[Path], bool],
    lock_dir: str | os.PathLike | None = None,
    desc: str = "slides",
    progress: bool = True,
) -> CohortReport:
    """Run ``process(slide)`` for each slide not ``is_done``; catch and record per-slide failures.

    ``process`` must write its output atomically; it may return a small dict recorded in the summary.
    ``KeyboardInterrupt`` is not caught: a killed run leaves only complete outputs and is resumed by rerunning.
    """
    results: list[SlideResult] = []
    slides = [Path(s) for s in slides]
    for slide in tqdm(slides, desc=desc, unit="slide", disable=not progress):
        sid = slide_id(slide)
        if is_done(slide):
            results.append(SlideResult(sid, "skipped"))
            continue
        lock = SlideLock(Path(lock_dir) / f"{sid}.lock") if lock_dir is not None else None
        if lock is not None and not lock.acquire():
            results.append(SlideResult(sid, "locked", error="another process holds the lock"))
            continue
        t0 = time.perf_counter()
        try:
            info = process(slide) or {}
            results.append(SlideResult(sid, "done", time.perf_counter() - t0, info=info))
        except Exception as exc:  # noqa: BLE001 — per-slide isolation is the point
            msg = f"{type(exc).__name__}: {exc}"
            if os.environ.get("ZOOMFEAT_DEBUG"):
                msg += "\n" + traceback.format_exc()
            results.append(SlideResult(sid, "failed", time.perf_counter() - t0, error=msg))
        finally:
            if lock is not None:
                lock.release()
    return CohortReport(results)
