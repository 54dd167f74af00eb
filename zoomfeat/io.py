"""Small I/O helpers every stage shares: atomic writes (plain and HDF5), file hashes, per-slide locks, kill points."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only if the block succeeds.

    A crash or exception leaves no partial ``final`` behind (the temp file is removed), so a rerun can
    trust that an existing output is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(final, os.getpid())
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _temp_path(final: Path, pid: int | str) -> Path:
    """``.{name}.{pid}.tmp`` beside ``final``: hidden, and the writer's pid says whether it is still alive."""
    return final.with_name(f".{final.name}.{pid}.tmp")


def remove_dead_temps(final: str | os.PathLike) -> None:
    """Delete ``.{name}.{pid}.tmp`` files that a killed run (SIGKILL skips ``atomic_path``'s cleanup) left next
    to ``final``; a temp whose pid is still alive belongs to a concurrent writer and is kept."""
    final = Path(final)
    for tmp in final.parent.glob(_temp_path(final, "*").name):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                tmp.unlink()
        except (ValueError, PermissionError, OSError):
            continue


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: str | os.PathLike, data) -> None:
    """``data`` (bytes or a buffer serialised in memory) to ``path`` with one plain write, fsync and rename: a full
    disk is an ordinary ``OSError`` from ``write`` and the final name never holds a partial file."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, or of every file below a folder (sorted by relative path)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


#: bytes read from each end of a slide by :func:`file_fingerprint`
FINGERPRINT_CHUNK = 1 << 20


def file_fingerprint(path: str | os.PathLike, chunk: int = FINGERPRINT_CHUNK) -> str:
    """What an input slide *is*, cheaply: ``"{size}:{sha256 of size + first and last MiB}"``. A slide replaced by
    another one (or re-scanned) changes it; a copy or ``touch`` does not (mtime is not used). An edit of the
    middle bytes that keeps the size is not seen (WSI headers and tile tables sit at the ends)."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(chunk))
        if size > chunk:
            fh.seek(max(chunk, size - chunk))
            h.update(fh.read(chunk))
    return f"{size}:{h.hexdigest()}"


class SlideLock:
    """An exclusive per-slide lock on ``<name>.lock`` (the ``filelock`` library: a kernel ``flock``).

    The kernel drops the lock when its process dies (kill -9, segfault, OOM), so a lock is never stale and never
    needs guessing from pids or hosts; ``release`` deletes the file while still holding it (filelock re-checks the
    inode after locking, so a racing taker retries instead of sharing).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.held = False
        self._lock = None

    def acquire(self, timeout: float = 0) -> bool:
        """Take the lock, waiting up to ``timeout`` s (default: not at all); False when another process (or
        another lock object) holds it."""
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path), timeout=timeout)
        try:
            lock.acquire()
        except Timeout:
            return False
        self._lock, self.held = lock, True
        return True

    def release(self) -> None:
        if not self.held:
            return
        try:
            with contextlib.suppress(OSError):
                self.path.unlink()
        finally:
            self._lock.release()
            self._lock, self.held = None, False

    def __enter__(self) -> "SlideLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def sweep_locks(lock_dir: str | os.PathLike) -> int:
    """Delete lock files nobody holds (left by a process killed between its last write and its release);
    returns how many were removed. Held locks are untouched."""
    n = 0
    for p in sorted(Path(lock_dir).glob("*.lock")) if Path(lock_dir).is_dir() else []:
        lock = SlideLock(p)
        if lock.acquire():
            lock.release()
            n += 1
    return n


def kill_point(name: str) -> None:
    """Test hook: SIGKILL this process at the named point when ``ZOOMFEAT_KILL_AT`` equals ``name``, so tests place
    a kill exactly (between a rename and a lock release, say) instead of racing a timer."""
    if os.environ.get("ZOOMFEAT_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_h5(final: str | os.PathLike) -> Iterator:
    """Yield a writable ``h5py.File`` built in memory; on success its bytes go to ``final`` with one plain write,
    fsync and rename (:func:`atomic_path`).

    HDF5 never writes to the disk itself, so a full disk (ENOSPC) or any other I/O error is an ordinary Python
    ``OSError`` from ``write``, and never an HDF5 error state (h5py 3.16 + HDF5 2.0 segfault while unwinding one).
    """
    import io

    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        yield f
    write_bytes_atomic(final, buf.getbuffer())


#: errno values meaning "the output volume is full"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is ENOSPC / EDQUOT."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and (exc.errno in DISK_FULL_ERRNOS or "No space left on device" in str(exc)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
