"""zoomfeat.io: atomic writes leave nothing partial; temps of killed writers are removed, live ones kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from zoomfeat.io import atomic_path, remove_dead_temps


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert final.read_text() == "old" and list(tmp_path.iterdir()) == [final]
    with atomic_path(final) as tmp:
        tmp.write_text("new")
    assert final.read_text() == "new" and list(tmp_path.iterdir()) == [final]


def test_remove_dead_temps(tmp_path):
    final = tmp_path / "slide.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dead_tmp = tmp_path / f".slide.h5.{dead.pid}.tmp"
    live_tmp = tmp_path / f".slide.h5.{os.getpid()}.tmp"  # a concurrent writer (this process)
    odd_tmp = tmp_path / ".slide.h5.notapid.tmp"
    other = tmp_path / f".other.h5.{dead.pid}.tmp"
    for p in (dead_tmp, live_tmp, odd_tmp, other):
        p.write_text("x")
    remove_dead_temps(final)
    assert not dead_tmp.exists()
    assert live_tmp.exists() and odd_tmp.exists() and other.exists()
