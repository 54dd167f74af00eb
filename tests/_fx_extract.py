"""Helpers for the fast twins of the subprocess tests (extraction, encoders, robustness).

``run_forked`` runs a function in a real second process made with ``os.fork()``: its own pid, file descriptors,
flock locks and ``sys.modules`` copy, killable with a real SIGKILL (``ZOOMFEAT_KILL_AT``), and with stdout / stderr
captured at the file-descriptor level (DataLoader workers and C libraries included) — but without re-importing
torch, timm and diffusers (5-10 s of CPU per ``python -m zoomfeat``). ``fresh=True`` also drops every ``zoomfeat`` /
``mil`` module from the child's ``sys.modules`` first, so the child imports the toolkit from scratch, as a new
interpreter would (plugins, lazy registries), with only the heavy third-party libraries already loaded."""

from __future__ import annotations

import io
import itertools
import os
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

#: Python's own warning filters when run without -W / PYTHONWARNINGS (what `python -m zoomfeat` starts with)
_DEFAULT_FILTERS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, None),
                    ("ignore", PendingDeprecationWarning, None), ("ignore", ImportWarning, None),
                    ("ignore", ResourceWarning, None)]


_COUNT = itertools.count()


@dataclass
class Forked:
    """What ``subprocess.run(..., capture_output=True, text=True)`` would return: ``returncode`` is ``-N`` when the
    child died of signal N."""

    returncode: int
    stdout: str
    stderr: str


def _as_fresh_interpreter(env: dict[str, str], path: list[str], fresh: bool) -> None:
    """In the child: the environment, warnings and logging a new ``python`` process would have (pytest's capture
    of warnings and log records does not reach a real subprocess, so it must not hide them here either)."""
    os.environ.update(env)
    sys.path[:0] = path
    warnings.resetwarnings()
    for action, category, module in reversed(_DEFAULT_FILTERS):
        warnings.filterwarnings(action, category=category, module=module or "")
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
        warnings.formatwarning(message, category, filename, lineno, line))
    import logging

    root = logging.getLogger()
    for h in list(root.handlers):  # pytest's LogCaptureHandler; logging.lastResort then prints to stderr
        root.removeHandler(h)
    root.setLevel(logging.WARNING)
    if fresh:
        for name in [m for m in sys.modules if m.split(".")[0] in ("zoomfeat", "mil")]:
            del sys.modules[name]


def run_forked(fn: Callable[[], int | None], tmp: Path, env: dict[str, str] | None = None, *,
               path: list[str] = (), fresh: bool = False, timeout: float = 300, wait: bool = True):
    """Run ``fn()`` in a forked child whose stdout / stderr (fd 1 and 2) go to files under ``tmp``; its return value
    (or ``SystemExit`` code) is the exit status, an uncaught exception prints its traceback and exits 1. Returns a
    :class:`Forked`, or with ``wait=False`` a :class:`Child` to wait on (two children at once, say)."""
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    n = next(_COUNT)
    out, err = tmp / f"fork{n}.out", tmp / f"fork{n}.err"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            for fd, f in ((1, out), (2, err)):
                h = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(h, fd)
                os.close(h)
            sys.stdin = open(os.devnull)
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _as_fresh_interpreter(dict(env or {}), list(path), fresh)
            try:
                rc = fn()
            except SystemExit as exc:
                rc = exc.code
            if rc is None:
                code = 0
            elif isinstance(rc, int):
                code = rc
            else:
                print(rc, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 — what an uncaught exception does to `python -m`
            traceback.print_exc()
            code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    child = Child(pid, out, err, timeout)
    return child.wait() if wait else child


@dataclass
class Child:
    pid: int
    out: Path
    err: Path
    timeout: float

    def wait(self) -> Forked:
        deadline = time.monotonic() + self.timeout
        while True:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise TimeoutError(f"forked child {self.pid} ran past {self.timeout} s")
            time.sleep(0.02)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return Forked(rc, self.out.read_text(), self.err.read_text())


def zoomfeat_main(args: list[str]) -> Callable[[], int]:
    """``python -m zoomfeat ARGS`` as a function for :func:`run_forked` (``zoomfeat.cli`` imported in the child, so
    with ``fresh=True`` it is a new copy)."""

    import importlib

    # the verb's heavy imports (torch, timm, h5py, ...) happen here, in the parent, once: the child inherits them
    warm = {"extract": "zoomfeat.extract", "tile": "zoomfeat.slides.tiling"}.get(str(args[0]) if args else "")
    importlib.import_module(warm or "zoomfeat.cli")

    def run() -> int:
        from zoomfeat.cli import main

        return main([str(a) for a in args])

    return run


def forked_run_jobs(calls, jobs: int | None = None, *, timeout: float = 300) -> list:
    """:func:`zoomfeat.jobs.run_jobs` with each job in its own forked child, all at once, instead of a loky pool
    (whose workers re-import torch: ~10 s each on the test machine). Like a pool worker, a child gets the job
    pickled (what cannot be pickled fails here too), runs it through ``call_with_cores`` with its share of the
    cores, and sends the result back pickled; results come back in the order of ``calls``, the children's pids
    in ``forked_run_jobs.last_pids``."""
    import pickle
    import tempfile

    from zoomfeat.jobs import call_with_cores, resolve_jobs
    from zoomfeat.threads import available_cores

    calls = list(calls)
    n = resolve_jobs(jobs, len(calls))
    share = max(1, available_cores() // n)
    tmp = Path(tempfile.mkdtemp(prefix="forked_jobs"))
    children = []
    for i, call in enumerate(calls):
        blob, res = pickle.dumps(call), tmp / f"job{i}.pkl"

        def run(blob=blob, res=res) -> int:
            fn, args, kwargs = pickle.loads(blob)
            res.write_bytes(pickle.dumps((os.getpid(), call_with_cores(share, fn, args, kwargs))))
            return 0

        children.append((run_forked(run, tmp, timeout=timeout, wait=False), res))
    out, pids = [], []
    for child, res in children:
        done = child.wait()
        assert done.returncode == 0, done.stderr
        pid, value = pickle.loads(res.read_bytes())
        pids.append(pid)
        out.append(value)
    forked_run_jobs.last_pids = pids
    return out
