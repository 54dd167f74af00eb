"""Helpers of the training / extraction tests (t24): real extra processes without a fresh interpreter.

``run_forked`` forks the test process (torch, diffusers and zoomfeat already imported), so a child costs
milliseconds instead of the 5-10 s of CPU a ``python -m zoomfeat`` or ``torchrun`` start spends on imports. The
children are real processes: a SIGKILL really kills one mid-run, and two of them really run side by side (and, for
training, rendezvous over gloo through the same torchrun environment variables that ``torch.distributed.run``
sets). The slow twins of these tests still go through ``python -m zoomfeat`` / ``torchrun`` as a user does.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pytest

from tests._fx_extract import run_forked as fork


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_fresh_accelerate(fn: Callable[[], int | None]) -> Callable[[], int | None]:
    """``fn`` run after resetting accelerate's singletons, which a fork inherits from the parent."""
    def run() -> int | None:
        from accelerate.state import AcceleratorState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
        return fn()

    return run


def run_forked(fns: Sequence[Callable[[], int | None]], envs: Sequence[Mapping[str, str]],
               timeout: float = 300) -> list[int]:
    """Run each ``fns[i]`` in its own forked process with ``envs[i]`` added, all at once (the fork helper of
    tests/_fx_extract.py); return their exit codes in the style of ``subprocess``: ``-N`` for a process killed by
    signal ``N``. A failing process's output is echoed to stderr (shown with the failing test)."""
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    tmp = Path(tempfile.mkdtemp(prefix="forked_ranks"))
    kids = [fork(_with_fresh_accelerate(fn), tmp, dict(env), timeout=timeout, wait=False) for fn, env in zip(fns, envs)]
    done = []
    try:
        for kid in kids:
            done.append(kid.wait())
    except TimeoutError:
        for kid in kids[len(done) + 1:]:
            os.kill(kid.pid, signal.SIGKILL)
            os.waitpid(kid.pid, 0)
        raise
    for r in done:
        if r.returncode:
            sys.stderr.write(r.stdout + r.stderr)
    return [r.returncode for r in done]


def torchrun_envs(world: int, run_id: str = "t24-fork") -> list[dict[str, str]]:
    """What ``torchrun --standalone --nproc_per_node WORLD`` puts in each rank's environment (the part the code
    reads: ranks, world size, rendezvous address, run id)."""
    port = str(_free_port())
    return [{"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
             "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "TORCHELASTIC_RUN_ID": run_id,
             "OMP_NUM_THREADS": "1"} for r in range(world)]
