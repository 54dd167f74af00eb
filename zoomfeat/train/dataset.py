"""Multi-scale ZoomLDM training set: its layout and the reader (shards → Dataset); :mod:`.shards` builds it.

Layout of a dataset folder (all writes atomic; a rerun skips slides whose shard exists):

    meta.json            what built it (SSL encoder, VQ fingerprint, patch_px, pooling) + counts per scale
    index.csv            one row per patch: shard, row, slide, scale, x, y, size_l0
    shards/<slide>.h5    per scale k with patches, a group ``scale_k``:
                           latents [N, C, L, L] float16   VQ-f4 pre-quantisation latents of the patch
                           ssl     [N, D, g, g] float16   raw SSL grid of the patch's 20x tiles (g = min(2^k, pool_to))
                           coords  [N, 2]       int64     level-0 top-left of the region (side ``size_l0``)
    coords/              the multi-scale tiling of each slide (``zoomfeat.slides.tiling``)

A patch at scale k is a 256·2^k px region at 20x resized to ``patch_px``. Its SSL grid has one embedding per 20x
tile of the region (2^k × 2^k, row-major, rows along y); the 20x tiles of a slide are embedded ONCE and reused by
every scale. Grids wider than ``pool_to`` (8, as the official loader does) are average-pooled at build time, so a
k=7 patch stores 8×8 instead of 128×128 embeddings; grids stay *un-normalised* (the per-token z-score of spec
§1.6 runs at train time, after pooling, exactly as the official code). ``pool_to=0`` stores full grids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

FORMAT_VERSION = 1
INDEX_COLUMNS = ["shard", "row", "slide", "scale", "x", "y", "size_l0"]


class DatasetError(ValueError):
    """A training set that cannot be used as is (corrupt shard, missing SSL grids, wrong shapes, ...)."""


# --------------------------------------------------------------------------------------------------- reading
class MultiScaleLatentDataset:
    """Random access to a built training set: item i → latents, raw SSL grid, magnification index.

    Every shard is checked when the dataset opens (readable HDF5, the groups the index refers to, an ``ssl`` and a
    ``latents`` dataset with matching row counts, the expected latent shape and SSL width), so a broken dataset
    fails at start-up naming the shard, not hours into a run. Read errors later name the item; nothing is
    silently re-sampled (the official loader did, spec §9.16).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        latent_shape: Sequence[int] | None = None,
        ssl_dim: int | None = None,
        scales: Sequence[int] | None = None,
        check_finite: bool = True,
    ):
        import pandas as pd

        self.root = Path(root)
        index_path = self.root / "index.csv"
        if not index_path.exists():
            raise FileNotFoundError(f"training set index not found: {index_path} (run `zoomfeat build-dataset` first)")
        meta_path = self.root / "meta.json"
        self.meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        idx = pd.read_csv(index_path)
        missing = [c for c in INDEX_COLUMNS if c not in idx.columns]
        if missing:
            raise DatasetError(f"{index_path}: missing columns {missing}")
        if scales is not None:
            idx = idx[idx["scale"].isin([int(s) for s in scales])]
        if len(idx) == 0:
            raise DatasetError(f"{self.root}: the training set is empty" + (f" for scales {list(scales)}" if scales else ""))
        self.index = idx.reset_index(drop=True)
        self.latent_shape = tuple(int(s) for s in latent_shape) if latent_shape is not None else None
        self.ssl_dim = ssl_dim
        self.check_finite = check_finite
        self._shard = self.index["shard"].to_numpy()
        self._row = self.index["row"].to_numpy(np.int64)
        self._scale = self.index["scale"].to_numpy(np.int64)
        self._slide = self.index["slide"].astype(str).to_numpy()
        self.by_scale = {int(k): np.flatnonzero(self._scale == k) for k in sorted(set(self._scale.tolist()))}
        self._handles: dict[str, Any] = {}
        self._pid = os.getpid()
        self.validate()

    def __len__(self) -> int:
        return len(self.index)

    @property
    def scales(self) -> list[int]:
        return list(self.by_scale)

    def describe(self, i: int) -> str:
        return (f"item {i} (shard {self._shard[i]}, row {self._row[i]}, slide {self._slide[i]}, "
                f"scale {self._scale[i]})")

    def validate(self) -> None:
        """Check every shard the index refers to; raise DatasetError naming the first bad one."""
        import h5py

        need = self.index.groupby(["shard", "scale"])["row"].max()
        for shard in self.index["shard"].unique():
            path = self.root / shard
            if not path.exists():
                raise DatasetError(f"shard {path} listed in index.csv is missing")
            try:
                h5 = h5py.File(path, "r")
            except OSError as exc:
                raise DatasetError(f"corrupt shard {path}: cannot be opened as HDF5 ({exc})") from exc
            with h5:
                for k in need.loc[shard].index:
                    name = f"scale_{int(k)}"
                    where = f"shard {path} group {name}"
                    try:
                        if name not in h5:
                            raise DatasetError(f"{where}: group missing (index.csv lists patches at scale {k})")
                        g = h5[name]
                        if "ssl" not in g:
                            raise DatasetError(f"{where}: missing SSL embeddings (no 'ssl' dataset)")
                        if "latents" not in g:
                            raise DatasetError(f"{where}: missing VQ latents (no 'latents' dataset)")
                        lat, ssl = g["latents"], g["ssl"]
                    except (OSError, KeyError, RuntimeError) as exc:
                        raise DatasetError(f"corrupt shard {path}: {exc}") from exc
                    n_max = int(need.loc[(shard, k)]) + 1
                    if lat.shape[0] < n_max or ssl.shape[0] < n_max:
                        raise DatasetError(
                            f"{where}: index.csv refers to row {n_max - 1} but the shard holds "
                            f"{lat.shape[0]} latents and {ssl.shape[0]} SSL grids (missing SSL embeddings?)"
                        )
                    if lat.shape[0] != ssl.shape[0]:
                        raise DatasetError(f"{where}: {lat.shape[0]} latents but {ssl.shape[0]} SSL grids")
                    if self.latent_shape is not None and tuple(lat.shape[1:]) != self.latent_shape:
                        raise DatasetError(
                            f"{where}: latents have shape {tuple(lat.shape[1:])} per patch but the model expects "
                            f"{self.latent_shape} (was the dataset built with another --patch-px or VQ?)"
                        )
                    if ssl.ndim != 4 or ssl.shape[2] != ssl.shape[3]:
                        raise DatasetError(f"{where}: SSL grids must be [N, D, g, g], found {tuple(ssl.shape)}")
                    if self.ssl_dim is not None and ssl.shape[1] != self.ssl_dim:
                        raise DatasetError(
                            f"{where}: SSL embeddings have {ssl.shape[1]} channels but the model expects {self.ssl_dim}"
                        )

    def _h5(self, shard: str):
        import h5py

        if self._pid != os.getpid():  # forked DataLoader worker: never share HDF5 handles
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(shard)
        if h is None:
            h = self._handles[shard] = h5py.File(self.root / shard, "r")
        return h

    def __getitem__(self, i: int) -> dict:
        import torch

        i = int(i)
        shard, row, k = self._shard[i], int(self._row[i]), int(self._scale[i])
        try:
            g = self._h5(shard)[f"scale_{k}"]
            lat = np.asarray(g["latents"][row], np.float32)
            ssl = np.asarray(g["ssl"][row], np.float32)
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise DatasetError(f"cannot read {self.describe(i)}: {exc}") from exc
        if self.check_finite and not (np.isfinite(lat).all() and np.isfinite(ssl).all()):
            bad = "latents" if not np.isfinite(lat).all() else "SSL embeddings"
            raise DatasetError(f"{self.describe(i)}: non-finite {bad} (missing or corrupt values)")
        return {"latents": torch.from_numpy(lat), "ssl": torch.from_numpy(ssl), "mag": k, "index": i}

    def close(self) -> None:
        for h in self._handles.values():
            h.close()
        self._handles = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state


def collate(items: list[dict]) -> dict:
    """Stack latents; keep SSL grids as a list (grid sides differ between magnifications)."""
    import torch

    return {
        "latents": torch.stack([it["latents"] for it in items]),
        "ssl": [it["ssl"] for it in items],
        "mag": torch.tensor([it["mag"] for it in items], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }


def step_seed(seed: int, step: int, micro: int, rank: int, stream: int) -> list[int]:
    """Seed material for one draw: every random choice of a step is a pure function of (seed, step, micro, rank).

    This is what makes ``--resume`` reproduce an uninterrupted run exactly, whatever the data-loader workers do.
    """
    return [int(seed), int(step), int(micro), int(rank), int(stream)]


class StepBatchSampler:
    """Yields index batches for optimiser steps ``start_step …``: magnification per sample, then a patch.

    ``mag_sampling="uniform"`` (official, spec §3): each sample's magnification is uniform over the scales present,
    then a uniform patch of that scale. ``"proportional"``: uniform over all patches (scales weighted by size).
    Every rank draws its own batches; each batch is a pure function of (seed, step, micro-batch, rank).
    """

    def __init__(self, dataset: MultiScaleLatentDataset, batch_size: int, seed: int = 0, rank: int = 0,
                 start_step: int = 0, max_steps: int | None = None, accum: int = 1, mag_sampling: str = "uniform"):
        if mag_sampling not in ("uniform", "proportional"):
            raise ValueError(f"mag_sampling must be 'uniform' or 'proportional', got {mag_sampling!r}")
        self.by_scale = dataset.by_scale
        self.n = len(dataset)
        self.batch_size, self.seed, self.rank = int(batch_size), int(seed), int(rank)
        self.start_step, self.max_steps, self.accum = int(start_step), max_steps, int(accum)
        self.mag_sampling = mag_sampling

    def batch(self, step: int, micro: int) -> list[int]:
        rng = np.random.default_rng(step_seed(self.seed, step, micro, self.rank, 0))
        if self.mag_sampling == "proportional":
            return rng.integers(0, self.n, self.batch_size).tolist()
        keys = list(self.by_scale)
        mags = rng.integers(0, len(keys), self.batch_size)
        return [int(self.by_scale[keys[m]][rng.integers(0, len(self.by_scale[keys[m]]))]) for m in mags]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while self.max_steps is None or step < self.max_steps:
            for micro in range(self.accum):
                yield self.batch(step, micro)
            step += 1

    def __len__(self) -> int:
        if self.max_steps is None:
            raise TypeError("infinite sampler")
        return max(0, self.max_steps - self.start_step) * self.accum
