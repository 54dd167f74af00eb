"""Cohort runner shared by `tile`, `extract` and `build-dataset`: a slide list in, one job per slide.

Per-slide failures are caught, reported (one line each) and written to a summary file while the other slides go
on; slides whose output already exists are skipped; a kernel lock per slide lets several processes share a
cohort; ranks of a torchrun job take disjoint slices of the list. Two slides with one id are both failed, naming
each other (slide ids and output paths: :mod:`zoomfeat.names`; see docs/robustness.md).
"""

from __future__ import annotations

import contextlib
import csv
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

from zoomfeat.io import SlideLock, atomic_path, is_disk_full, kill_point, sweep_locks, write_json_atomic
from zoomfeat.names import SlideIdError, id_collisions, resolve_slides, slide_id  # noqa: F401  resolve_slides: old path

#: Exit codes of cohort commands (documented in docs/tiling.md).
EXIT_OK = 0          # every slide done or skipped
EXIT_PARTIAL = 3     # some slides failed or were locked by another process (not done), others succeeded
EXIT_ALL_FAILED = 2  # every attempted slide failed, or no slide was found

#: Consecutive disk-full (ENOSPC/EDQUOT) slide failures after which a cohort stops trying further slides.
DISK_FULL_STOP_AFTER = 2


def one_line_error(exc: BaseException) -> str:
    """``Type: first line`` of an exception; for a DataLoader worker's re-raised error (whose message embeds the
    worker's whole traceback) the worker's own final ``Type: message`` line."""
    msg = str(exc).strip()
    if "Original Traceback" in msg:
        lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
        return lines[-1]
    return f"{type(exc).__name__}: {msg.splitlines()[0]}" if msg else type(exc).__name__


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
    def locked(self) -> list[SlideResult]:
        """Slides another process held until the end: not done by this run (they count against exit 0)."""
        return [r for r in self.results if r.status == "locked"]

    @property
    def exit_code(self) -> int:
        attempted = [r for r in self.results if r.status in ("done", "failed")]
        if not self.results or (attempted and all(r.status == "failed" for r in attempted)):
            return EXIT_ALL_FAILED
        return EXIT_PARTIAL if self.failed or self.locked else EXIT_OK

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for r in self.results:
            c[r.status] = c.get(r.status, 0) + 1
        return c

    def write(self, out_dir: str | os.PathLike, name: str = "summary") -> Path:
        """Merge this run's rows into ``{name}.csv`` (one row per slide) and ``{name}.json`` (counts, failures).

        Under a lock, so concurrent processes sharing a cohort add up instead of overwriting each other: a slide
        this run handled takes this run's row, except that "locked" never replaces another process's row. A write
        error (full disk) is printed as one line and does not raise: the slides' own outputs are what counts.
        """
        out_dir = Path(out_dir)
        try:
            from filelock import FileLock

            out_dir.mkdir(parents=True, exist_ok=True)
            with FileLock(str(out_dir / f".{name}.lock"), timeout=120):
                self._write_merged(out_dir, name)
        except OSError as exc:
            print(f"zoomfeat: could not write {out_dir / name}.csv: {one_line_error(exc)}", file=sys.stderr)
        return out_dir / f"{name}.csv"

    def _write_merged(self, out_dir: Path, name: str) -> None:
        rows: dict[str, list[str]] = {}
        old = out_dir / f"{name}.csv"
        if old.exists():
            with contextlib.suppress(OSError, ValueError, KeyError), open(old, newline="") as fh:
                for r in csv.DictReader(fh):
                    rows[r["slide"]] = [r["slide"], r["status"], r["seconds"], r["error"]]
        for r in self.results:
            if r.status != "locked" or r.slide not in rows:
                rows[r.slide] = [r.slide, r.status, f"{r.seconds:.3f}", r.error]
        merged = CohortReport([SlideResult(v[0], v[1], float(v[2] or 0), v[3]) for v in rows.values()])
        write_json_atomic(out_dir / f"{name}.json", {
            "counts": merged.counts(),
            "exit_code": merged.exit_code,
            "failed": [{"slide": r.slide, "error": r.error} for r in merged.failed],
            "locked": [r.slide for r in merged.locked],
            "this_run": {"counts": self.counts(), "exit_code": self.exit_code},
        })
        with atomic_path(old) as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["slide", "status", "seconds", "error"])
                w.writerows(rows.values())

    def print(self, echo: Callable[[str], None] = print) -> None:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts().items()))
        echo(f"{len(self.results)} slides ({counts})")
        for r in self.failed:
            echo(f"  FAILED {r.slide}: {r.error}")
        for r in self.locked:
            echo(f"  LOCKED {r.slide}: {r.error} (not done; rerun when the other process ends)")


def run_cohort(
    slides: Iterable[str | os.PathLike],
    process: Callable[[Path], dict | None],
    is_done: Callable[[Path], bool],
    lock_dir: str | os.PathLike | None = None,
    desc: str = "slides",
    progress: bool = True,
    all_slides: Iterable[str | os.PathLike] | None = None,
    sweep: bool = True,
) -> CohortReport:
    """Run ``process(slide)`` for each slide not ``is_done``; catch and record per-slide failures.

    ``process`` must write its outputs atomically, the one ``is_done`` checks last; it may return a small dict
    recorded in the summary. Slide ids shared by two files of ``all_slides`` (default: ``slides``; pass the whole
    cohort when ``slides`` is one rank's share) fail both. A slide locked by another process is retried once at
    the end, waiting up to ``$ZOOMFEAT_LOCK_WAIT`` s (default 0) for its holder (done by then → skipped; lock
    free → processed here; else "locked" = not done). After
    ``DISK_FULL_STOP_AFTER`` disk-full failures in a row the remaining slides are not attempted.
    ``KeyboardInterrupt`` is not caught: a killed run leaves only complete outputs and is resumed by rerunning.
    ``sweep`` removes unheld lock files first (off in pool workers: their parent sweeps once).
    """
    slides = [Path(s) for s in slides]
    clashes = id_collisions(slides if all_slides is None else all_slides)
    if lock_dir is not None and sweep:
        sweep_locks(lock_dir)
    state = {"full_in_a_row": 0, "wait": 0.0}
    results = [_run_one(s, process, is_done, lock_dir, clashes, state)
               for s in tqdm(slides, desc=desc, unit="slide", disable=not progress)]
    state["wait"] = float(os.environ.get("ZOOMFEAT_LOCK_WAIT", 0) or 0)  # retry: optionally wait for the holder
    for i, r in enumerate(results):
        if r.status == "locked":
            results[i] = _run_one(slides[i], process, is_done, lock_dir, clashes, state)
    return CohortReport(results)


def _run_one(slide: Path, process, is_done, lock_dir, clashes: dict[str, str], state: dict) -> SlideResult:
    """One slide: id checks, done check, lock, done re-check under the lock, process, one-line error capture."""
    try:
        sid = slide_id(slide)
    except SlideIdError as exc:
        return SlideResult(slide.stem, "failed", error=one_line_error(exc))
    if sid in clashes:
        return SlideResult(sid, "failed", error=clashes[sid])
    if state["full_in_a_row"] >= DISK_FULL_STOP_AFTER:
        return SlideResult(sid, "failed", error=f"not attempted: the output volume is full "
                                                f"({state['full_in_a_row']} slides in a row failed with ENOSPC)")
    t0 = time.perf_counter()
    lock = SlideLock(Path(lock_dir) / f"{sid}.lock") if lock_dir is not None else None
    try:
        if is_done(slide):
            return SlideResult(sid, "skipped")
        if lock is not None and not lock.acquire(timeout=state.get("wait", 0)):
            return SlideResult(sid, "locked", error=f"another process holds {lock.path}")
        if lock is not None and is_done(slide):  # finished by another process between the check and the lock
            return SlideResult(sid, "skipped")
        t0 = time.perf_counter()
        info = process(slide) or {}
        kill_point("cohort:before_unlock")
        state["full_in_a_row"] = 0
        return SlideResult(sid, "done", time.perf_counter() - t0, info=info)
    except Exception as exc:  # noqa: BLE001 — per-slide isolation is the point
        state["full_in_a_row"] = state["full_in_a_row"] + 1 if is_disk_full(exc) else 0
        msg = one_line_error(exc)
        if os.environ.get("ZOOMFEAT_DEBUG"):
            msg += "\n" + traceback.format_exc()
        return SlideResult(sid, "failed", time.perf_counter() - t0, error=msg)
    finally:
        if lock is not None:
            lock.release()
