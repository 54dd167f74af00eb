"""How many CPU cores this process may use: the one number every thread limit is computed from.

Lives below the CLI (``zoomfeat.cli.threads`` adds ``--threads`` to every verb; ``mil.trainer`` caps MIL heads) so
that library code never imports the CLI layer.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)
