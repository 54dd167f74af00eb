"""How many CPU cores this process may use: the one number every thread limit is computed from.

Lives below the CLI (``zoomfeat.cli.threads`` adds ``--threads`` to every verb; ``mil.trainer`` caps MIL heads) so
that library code never imports the CLI layer.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores in this process's affinity mask, or its share of them in a ``--jobs`` pool worker
    (``ZOOMFEAT_CORES``, set by :func:`zoomfeat.jobs.run_jobs`: cores // workers)."""
    try:
        n = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        n = max(1, os.cpu_count() or 1)
    share = os.environ.get("ZOOMFEAT_CORES", "")
    return max(1, min(n, int(share))) if share.isdigit() and int(share) > 0 else n


def thread_count(threads: int | None = None, workers: int = 0) -> int:
    """Threads per process so that threads × max(1, ``workers``) ≤ :func:`available_cores`: ``threads`` capped at
    that limit, or the limit itself when ``threads`` is not given (oversubscribed OpenMP threads spin at barriers
    waiting for descheduled peers instead of working)."""
    limit = max(1, available_cores() // max(1, int(workers or 0)))
    return limit if not threads else max(1, min(int(threads), limit))
