"""Independent jobs (CV folds, compare cells, probe feature sets) on a process pool: ``--jobs N``.

One rule for every verb that has independent jobs (``mil cv``, ``compare``, ``mil train --cv``, the linear probe,
``probe``'s evaluation): :func:`run_jobs` runs a list of calls on ``N`` worker processes (joblib's loky backend,
workers reused between calls) and returns their results in the order of the list, so what a caller writes does not
depend on ``N``. Each job seeds itself from its own identity (fold, entry, ...), never from the worker it lands
on, and runs with the threads ``zoomfeat.threads.thread_count(threads, workers=N)`` allows (threads × workers ≤
cores), so ``--jobs 2`` gives byte-identical outputs to ``--jobs 1`` (tests/test_jobs.py).

``jobs`` ≤ 0 or ``None``: the usable cores (:func:`zoomfeat.threads.available_cores`); never more workers than
cores or than jobs. ``ZOOMFEAT_JOBS`` (set by the CLI's ``--jobs``) is the default of library calls.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence

from zoomfeat.threads import available_cores

#: A job: (function, positional args, keyword args); the function must be importable (module level) to pickle.
Job = tuple[Callable[..., Any], tuple, dict]


def resolve_jobs(jobs: int | None = None, n_jobs: int | None = None) -> int:
    """Worker processes for ``n_jobs`` jobs: ``jobs`` (else ``$ZOOMFEAT_JOBS``, else the usable cores), capped at
    the usable cores and at ``n_jobs``; at least 1."""
    if jobs is None:
        env = os.environ.get("ZOOMFEAT_JOBS", "")
        jobs = int(env) if env.strip().lstrip("-").isdigit() else 0
    n = available_cores() if int(jobs) <= 0 else min(int(jobs), available_cores())
    if n_jobs is not None:
        n = min(n, max(1, int(n_jobs)))
    return max(1, n)


def run_jobs(calls: Sequence[Job], jobs: int | None = None) -> list:
    """Results of ``calls`` in their order: in this process when one worker suffices, else on a loky pool of
    :func:`resolve_jobs` workers (an exception in a job is raised here with its own type)."""
    return list(iter_jobs(calls, jobs))


def iter_jobs(calls: Sequence[Job], jobs: int | None = None) -> Iterator:
    """:func:`run_jobs` as a generator: each result as soon as it and those before it are done, so the caller
    writes finished results while the workers compute the next ones."""
    calls = list(calls)
    n = resolve_jobs(jobs, len(calls))
    if n <= 1:  # (workers a warm_workers call started finish their imports on their own)
        return (fn(*args, **kwargs) for fn, args, kwargs in calls)
    from joblib import Parallel, delayed

    _wait_for_warm_workers()
    share = max(1, available_cores() // n)
    return Parallel(n_jobs=n, backend="loky", return_as="generator")(
        delayed(call_with_cores)(share, fn, args, kwargs) for fn, args, kwargs in calls)


_warming: tuple[int, Iterator] | None = None  # warm_workers' (workers, calls) until a pool call takes over


def warm_workers(modules: Sequence[str], jobs: int | None = None) -> None:
    """Start the pool that the next :func:`iter_jobs` / :func:`run_jobs` call with the same ``jobs`` reuses, each
    worker importing ``modules``, and return at once: the workers' start-up (torch, sklearn, ...: 2–3 s each) then
    overlaps what this process does before its first job (reading bags, planning folds) instead of following it.
    Nothing happens when the jobs would run in this process."""
    global _warming
    n = resolve_jobs(jobs)
    if n <= 1 or (_warming is not None and _warming[0] == n):
        return
    _wait_for_warm_workers()
    from joblib import Parallel, delayed

    share = max(1, available_cores() // n)
    _warming = (n, Parallel(n_jobs=n, backend="loky", return_as="generator_unordered")(
        delayed(call_with_cores)(share, import_modules, (tuple(modules),), {}) for _ in range(n)))


def _wait_for_warm_workers() -> None:
    """Let the warm-up calls finish before a pool call dispatches its own (one joblib call at a time)."""
    global _warming
    warming, _warming = _warming, None
    for _ in warming[1] if warming else ():
        pass


def release_workers() -> None:
    """Stop the pool's workers now, killing them: call it when no job is left (a CLI verb that is done). Left to
    interpreter exit, loky lets each worker tear torch down on its own and waits for it: ≈ 1.5 s at the end of a
    ``compare --jobs 2`` that has nothing left to do."""
    global _warming
    _warming = None
    try:
        from joblib.externals.loky import reusable_executor
    except ImportError:  # pragma: no cover - joblib is a dependency
        return
    executor = getattr(reusable_executor, "_executor", None)  # the pool run_jobs / iter_jobs reuse, if started
    if executor is not None:
        executor.shutdown(wait=False, kill_workers=True)


def import_modules(names: Sequence[str]) -> None:
    """Import ``names`` (a pool worker's warm-up)."""
    import importlib

    for name in names:
        importlib.import_module(name)


_blas_cores: int | None = None  # the BLAS / OpenMP limit this process has set (call_with_cores)


def call_with_cores(cores: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Run one job in a pool worker that may use ``cores`` cores: every thread limit of the job
    (:func:`zoomfeat.threads.thread_count`, torch, BLAS / OpenMP) reads that share. The BLAS limit is set once per
    worker (threadpoolctl scans the loaded libraries: ≈ 5 ms, which 450 small compare jobs paid 450 times) and
    stays for the worker's life; the environment variables cover libraries loaded later."""
    global _blas_cores
    cores = int(cores)
    os.environ["ZOOMFEAT_CORES"] = str(cores)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(cores)  # a worker spawned from a shell inherits the parent's (all cores)
    import torch  # every job trains or scores with torch: cap it before the job's first op, not only if imported

    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
    if _blas_cores != cores:
        from threadpoolctl import threadpool_limits

        threadpool_limits(cores)
        _blas_cores = cores
        _thread_lock_for_tqdm()
    return fn(*args, **kwargs)


def _thread_lock_for_tqdm() -> None:
    """tqdm's default lock holds a multiprocessing semaphore; a worker that :func:`release_workers` kills could not
    unlink it (the resource tracker then warns of a leak at exit), and bars in pool workers share no lock anyway."""
    import threading

    from tqdm.std import tqdm

    if "_lock" not in vars(tqdm):
        tqdm.set_lock(threading.RLock())


def worker_count(jobs: int | None = None, n_jobs: int | None = None) -> int:
    """Workers a :func:`run_jobs` call with these arguments uses (0 when it runs in this process): the
    ``workers`` of the threads × workers ≤ cores rule."""
    n = resolve_jobs(jobs, n_jobs)
    return 0 if n <= 1 else n


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process, its finished children and its live descendants (pool workers
    outlive the call that started them, so ``RUSAGE_CHILDREN`` alone would miss them)."""
    import resource

    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return total
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # exited meanwhile: counted in RUSAGE_CHILDREN once reaped
            continue
    return total
