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
import traceback
from typing import Callable, Mapping, Sequence

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(fn: Callable[[], int | None], env: Mapping[str, str]) -> None:
    """In the forked child: set the environment, run ``fn``, and leave with its exit code, never returning into
    pytest (``os._exit``: no atexit hooks, no fixture finalisers, no second report)."""
    code = 1
    try:
        os.environ.update(env)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        from accelerate.state import AcceleratorState, PartialState  # a fork inherits the parent's singletons

        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
        rc = fn()
        code = int(rc or 0)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - report anything to the parent's captured stderr
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_forked(fns: Sequence[Callable[[], int | None]], envs: Sequence[Mapping[str, str]],
               timeout: float = 300) -> list[int]:
    """Run each ``fns[i]`` in its own forked process with ``envs[i]`` added, all at once; return their exit codes
    in the style of ``subprocess``: ``-N`` for a process killed by signal ``N``."""
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    pids = []
    for fn, env in zip(fns, envs):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            _child(fn, env)
        pids.append(pid)
    import time

    deadline = time.monotonic() + timeout
    codes: dict[int, int] = {}
    while len(codes) < len(pids):
        for pid in pids:
            if pid in codes:
                continue
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                codes[pid] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if len(codes) < len(pids):
            if time.monotonic() > deadline:
                for pid in pids:
                    if pid not in codes:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                raise TimeoutError(f"forked processes did not finish in {timeout} s")
            time.sleep(0.05)
    return [codes[p] for p in pids]


def torchrun_envs(world: int, run_id: str = "t24-fork") -> list[dict[str, str]]:
    """What ``torchrun --standalone --nproc_per_node WORLD`` puts in each rank's environment (the part the code
    reads: ranks, world size, rendezvous address, run id)."""
    port = str(_free_port())
    return [{"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
             "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "TORCHELASTIC_RUN_ID": run_id,
             "OMP_NUM_THREADS": "1"} for r in range(world)]
