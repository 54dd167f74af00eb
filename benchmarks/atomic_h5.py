"""Cost of building HDF5 bags in memory (zoomfeat.io.atomic_h5, one plain write + fsync + rename) versus h5py
writing a temp file directly (the previous way, which segfaulted on a full disk), measured in this one run.

    .venv/bin/python benchmarks/atomic_h5.py [--rows 20000] [--dim 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zoomfeat.bags import CHUNK_ROWS, write_bag  # noqa: E402
from zoomfeat.io import atomic_path  # noqa: E402


def direct(path: Path, feats: np.ndarray, coords: np.ndarray) -> None:
    """The old layout path: h5py writes the temp file itself (same datasets and chunking as write_bag)."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("features", data=feats, chunks=(min(len(feats), CHUNK_ROWS), feats.shape[1]),
                              maxshape=(None, feats.shape[1]))
            h5.create_dataset("coords", data=coords, chunks=(min(len(feats), CHUNK_ROWS), 2), maxshape=(None, 2))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(args.rows, args.dim)).astype(np.float32)
    coords = rng.integers(0, 100000, size=(args.rows, 2)).astype(np.int64)
    mb = feats.nbytes / 2**20
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t_direct = best(lambda: direct(d / "direct.h5", feats, coords), args.repeats)
        t_mem = best(lambda: write_bag(d / "mem.h5", feats, coords, {"encoder": "bench"}), args.repeats)
        size = (d / "mem.h5").stat().st_size / 2**20
    print(f"bag {args.rows} x {args.dim} float32 ({mb:.0f} MiB features, file {size:.0f} MiB), best of {args.repeats}")
    print(f"  h5py writes the temp file directly : {t_direct:.3f} s")
    print(f"  built in memory + one write (now) : {t_mem:.3f} s")
    print(f"  ratio in-memory / direct           : {t_mem / t_direct:.2f}x   (peak extra memory ≈ one file size)")


if __name__ == "__main__":
    main()
