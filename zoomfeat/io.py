"""Small I/O helpers every stage shares: atomic writes, file hashes, per-slide lock files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
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


class SlideLock:
    """An exclusive ``<name>.lock`` file carrying pid/host/time, so parallel jobs skip each other's slides.

    A lock whose pid is dead on this host (or older than ``stale_after`` seconds) is stale and is taken over.
    """

    def __init__(self, path: str | os.PathLike, stale_after: float = 24 * 3600):
        self.path = Path(path)
        self.stale_after = stale_after
        self.held = False

    def _is_stale(self) -> bool:
        try:
            info = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return True
        if time.time() - float(info.get("time", 0)) > self.stale_after:
            return True
        if info.get("host") == socket.gethostname():
            try:
                os.kill(int(info["pid"]), 0)
            except (ProcessLookupError, ValueError, KeyError):
                return True
            except PermissionError:
                return False
        return False

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._is_stale():
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(payload)
            self.held = True
            return True
        return False

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.held = False

    def __enter__(self) -> "SlideLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
