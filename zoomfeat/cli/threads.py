"""``--threads`` on every verb: CPU threads never exceed the cores this process may use.

Why: on a 2-core machine shared with other jobs, the demo's TransMIL comparison took 2,420 s against 222 s idle,
its CPU time showing OpenMP threads spinning at barriers rather than working. Rule: intra-op threads ×
max(1, worker processes) ≤ cores in the affinity mask (``os.sched_getaffinity``). Without ``--threads`` the
default is that limit (torch's own default can count cores this process may not use); MIL head training
defaults to 1 thread (see ``mil.trainer.head_threads``) unless ``--threads`` is given.
"""

from __future__ import annotations

import argparse
import os
import sys

from zoomfeat.threads import available_cores  # noqa: F401  (re-exported: the CLI's historical home)
from zoomfeat.threads import thread_count




def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads`` to ``parser`` and to every (nested) sub-command parser that lacks it."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # argparse has no public walk
    if not subs and not any("--threads" in a.option_strings for a in parser._actions):
        parser.add_argument("--threads", type=int, default=None, metavar="N",
                            help="CPU threads (torch intra-op); default and ceiling: the cores this process may "
                                 "use divided by --workers")
    for action in subs:
        for sub in action.choices.values():
            add_threads_option(sub)


def apply_threads(args: argparse.Namespace) -> int:
    """Cap torch / OpenMP threads for this run; returns the thread count in force."""
    workers = getattr(args, "workers", 0) or 0
    limit = thread_count(None, workers)
    requested = getattr(args, "threads", None)
    n = thread_count(requested, workers)
    if requested:
        os.environ["ZOOMFEAT_THREADS"] = str(n)  # MIL heads read it (their default is 1 thread)
    if "torch" in sys.modules:
        import torch

        if requested or torch.get_num_threads() > limit:
            torch.set_num_threads(n)
        return torch.get_num_threads()
    if requested or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) > limit or "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(n)  # read by torch when a verb imports it
    return n
