"""mil.data.BagCache: a bag is read once per process while its file is unchanged; a rewritten bag is read again."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

import mil.data as data
from mil.data import BagCache, BagDataset, read_features
from zoomfeat.bags import write_bag


def _bag(path, value: float, n: int = 5, d: int = 4):
    write_bag(path, np.full((n, d), value, np.float32), np.arange(2 * n).reshape(n, 2) * 256)
    return path


@pytest.fixture
def cache(monkeypatch):
    c = BagCache(1 << 20)
    monkeypatch.setattr(data, "BAG_CACHE", c)
    return c


def test_second_read_is_served_from_the_cache(tmp_path, cache, monkeypatch):
    path = _bag(tmp_path / "a.h5", 1.0)
    first = read_features(path)
    calls = []
    monkeypatch.setattr(data, "read_bag", lambda *a, **k: calls.append(a) or np.zeros((1, 4), np.float32))
    again = read_features(path)
    assert again is first and not calls and not again.flags.writeable
    assert read_features(path, "20x+5x") is not first  # another view of the bag is its own entry
    assert len(calls) == 1


def test_a_rewritten_bag_is_read_again(tmp_path, cache):
    path = _bag(tmp_path / "a.h5", 1.0)
    assert read_features(path)[0, 0] == 1.0
    _bag(tmp_path / "b.h5", 2.0)
    os.replace(tmp_path / "b.h5", path)  # atomic replace: a new inode
    assert read_features(path)[0, 0] == 2.0
    with h5py.File(path, "r+") as h5:  # in place, same size: the mtime moves
        h5["features"][0, 0] = 3.0
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert read_features(path)[0, 0] == 3.0


def test_budget_evicts_least_recently_used_and_tensors_are_writable(tmp_path, cache):
    cache.max_bytes = 4 * 5 * 4 * 4  # four bags of 5 × 4 float32
    paths = [_bag(tmp_path / f"{i}.h5", float(i)) for i in range(6)]
    for p in paths:
        read_features(p)
    assert cache.bytes <= cache.max_bytes and len(cache.entries) == 4
    assert {k[0] for k in cache.entries} == {os.fspath(p) for p in paths[2:]}
    cache.max_bytes = 0  # off: nothing kept, arrays writable
    cache.clear()
    assert read_features(paths[0]).flags.writeable and not cache.entries

    cache.max_bytes = 1 << 20
    cohort = data.Cohort([p.stem for p in paths], list(paths), np.zeros(6, np.int64), [p.stem for p in paths],
                         "hrd", dim=4)
    x = BagDataset(cohort)[1]["x"]  # no standardiser: the cached (read-only) array is copied for torch
    x += 1  # writable, and the cache is untouched
    assert read_features(paths[1])[0, 0] == 1.0


def test_budget_follows_the_environment_and_the_machine(monkeypatch):
    import psutil

    from zoomfeat.threads import available_cores

    monkeypatch.setenv("ZOOMFEAT_BAG_CACHE_MB", "0")
    assert data.bag_cache_budget() == 0
    monkeypatch.setenv("ZOOMFEAT_BAG_CACHE_MB", "2.5")
    assert data.bag_cache_budget() == int(2.5 * (1 << 20))
    monkeypatch.delenv("ZOOMFEAT_BAG_CACHE_MB")
    quarter = psutil.virtual_memory().total / (4 * available_cores())
    assert data.bag_cache_budget() == int(min(1 << 30, quarter))  # one cache per core's process ≤ 1/4 of RAM
