"""Multi-scale ZoomLDM training set: build it from slides (SSL grids + VQ latents, sharded HDF5) and read it back.

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

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from zoomfeat.io import atomic_h5, atomic_path, write_json_atomic
from zoomfeat.mags import N_SCALES

FORMAT_VERSION = 1
INDEX_COLUMNS = ["shard", "row", "slide", "scale", "x", "y", "size_l0"]


class DatasetError(ValueError):
    """A training set that cannot be used as is (corrupt shard, missing SSL grids, wrong shapes, ...)."""


# --------------------------------------------------------------------------------------------------- building
@dataclass
class BuildReport:
    """What ``build_dataset`` did: per-slide results plus patch counts and skipped (too small) slides per scale."""

    out_dir: Path
    cohort: Any  # zoomfeat.cohort.CohortReport
    counts: dict[int, int] = field(default_factory=dict)
    skipped: dict[int, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return self.cohort.exit_code

    def print(self, echo: Callable[[str], None] = print) -> None:
        self.cohort.print(echo)
        echo("patches per scale: " + ", ".join(f"{k}:{self.counts.get(k, 0)}" for k in range(N_SCALES)))
        echo("slides too small, per scale: " + ", ".join(f"{k}:{self.skipped.get(k, 0)}" for k in range(N_SCALES)))


def images_to_unit_range(images: np.ndarray):
    """uint8 [B, H, W, 3] → float tensor [B, 3, H, W] in [-1, 1] (the VQ's input range)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


def vq_fingerprint(vq) -> str:
    """Hash of the VQ weights: latents are only meaningful to the model whose VQ encoded them."""
    from zoomfeat.encoders.base import state_dict_sha256

    return state_dict_sha256(vq)


def _subtile_positions(x: int, y: int, size_l0: int, tile_l0: int) -> list[tuple[int, int]]:
    """Top-left corners of the 20x tiles of a region, row-major (rows along y), as in the official grids."""
    n = max(1, int(round(size_l0 / tile_l0)))
    return [(x + j * tile_l0, y + i * tile_l0) for i in range(n) for j in range(n)]


def _pool_grid(grid: np.ndarray, pool_to: int) -> np.ndarray:
    """[D, n, n] → [D, p, p] by average pooling (n a multiple of p) when n > pool_to."""
    d, n, _ = grid.shape
    if not pool_to or n <= pool_to:
        return grid
    if n % pool_to:
        import torch
        import torch.nn.functional as F

        return F.adaptive_avg_pool2d(torch.from_numpy(grid)[None], pool_to)[0].numpy()
    f = n // pool_to
    return grid.reshape(d, pool_to, f, pool_to, f).mean(axis=(2, 4))


def _batched(items: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def build_slide_shard(
    slide: str | os.PathLike,
    shard_path: str | os.PathLike,
    grid,
    ssl_encoder,
    vq_encode: Callable,
    patch_px: int = 256,
    ssl_px: int = 256,
    scales: Sequence[int] = range(N_SCALES),
    pool_to: int = 8,
    max_per_scale: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    mpp: float | None = None,
    mpp_csv: str | None = None,
) -> dict:
    """Encode one slide's multi-scale patches (``grid``: its TileGrid with ``scales``) into one HDF5 shard.

    Returns ``{"counts": {k: n}, "skipped": [k, ...]}``; scales the slide has no region for are skipped.
    """
    import torch

    from zoomfeat.slides.reader import open_slide

    rng = np.random.default_rng(seed)
    scale_grids = getattr(grid, "scales", None) or {}
    tile_l0 = int(grid.patch_size_level0)
    regions: dict[int, tuple[np.ndarray, int]] = {}
    skipped: list[int] = []
    for k in scales:
        entry = scale_grids.get(k)
        coords = None if entry is None else np.asarray(entry[0], dtype=np.int64).reshape(-1, 2)
        if coords is None or len(coords) == 0:
            skipped.append(int(k))
            continue
        size_l0 = int(entry[1])
        if max_per_scale and len(coords) > max_per_scale:
            coords = coords[np.sort(rng.choice(len(coords), max_per_scale, replace=False))]
        regions[int(k)] = (coords, size_l0)

    counts: dict[int, int] = {}
    with open_slide(slide, mpp=mpp, mpp_csv=mpp_csv) as wsi:
        # 1) every 20x tile any region needs, embedded once and shared by all scales
        needed: dict[tuple[int, int], int] = {}
        for coords, size_l0 in regions.values():
            for x, y in coords:
                for pos in _subtile_positions(int(x), int(y), size_l0, tile_l0):
                    needed.setdefault(pos, len(needed))
        # Low-magnification regions reach past the slide (the official set keeps one whole-slide patch at
        # 0.15625x): tiles wholly outside it are identical padding, so one embedding serves them all.
        positions = list(needed)
        width, height = (int(v) for v in wsi.dimensions)
        inside = [p for p in positions if p[0] < width and p[1] < height]
        outside = [p for p in positions if not (p[0] < width and p[1] < height)]
        todo = inside + outside[:1]
        feats_by_pos: dict[tuple[int, int], np.ndarray] = {}
        for chunk in _batched(todo, batch_size):
            tiles = np.stack([wsi.read_region_l0(x, y, tile_l0, ssl_px) for x, y in chunk])
            feats = ssl_encoder.encode(tiles).detach().float().cpu().numpy()
            feats_by_pos.update(zip(chunk, feats))
        emb = None
        if positions:
            emb = np.empty((len(positions), len(next(iter(feats_by_pos.values())))), np.float32)
            pad = feats_by_pos[outside[0]] if outside else None
            for p, i in needed.items():
                emb[i] = feats_by_pos[p] if p in feats_by_pos else pad
        if emb is not None and not np.isfinite(emb).all():
            raise DatasetError(f"{Path(slide).name}: the SSL encoder returned non-finite embeddings")

        # 2) per scale: SSL grid from the shared embeddings + VQ latent of the resized region
        out: dict[int, dict[str, np.ndarray]] = {}
        for k, (coords, size_l0) in regions.items():
            grids, latents = [], []
            for batch in _batched(coords, batch_size):
                imgs = np.stack([wsi.read_region_l0(int(x), int(y), size_l0, patch_px) for x, y in batch])
                with torch.inference_mode():
                    lat = vq_encode(images_to_unit_range(imgs))
                latents.append(lat.detach().float().cpu().numpy())
                for x, y in batch:
                    pos = _subtile_positions(int(x), int(y), size_l0, tile_l0)
                    n = int(round(len(pos) ** 0.5))
                    g = emb[[needed[p] for p in pos]].T.reshape(-1, n, n)
                    grids.append(_pool_grid(g, pool_to))
            out[k] = {
                "latents": np.concatenate(latents).astype(np.float16),
                "ssl": np.stack(grids).astype(np.float16),
                "coords": np.asarray(coords, np.int64),
                "size_l0": size_l0,
            }
            counts[k] = len(coords)

    with atomic_h5(shard_path) as h5:  # built in memory: a full disk is a plain OSError, never an HDF5 crash
        h5.attrs["slide"] = Path(slide).stem
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.attrs["skipped_scales"] = np.asarray(skipped, np.int64)
        h5.attrs["n_20x_tiles_embedded"] = len(todo) if positions else 0
        for k, d in out.items():
            g = h5.create_group(f"scale_{k}")
            g.attrs["size_l0"] = d["size_l0"]
            g.create_dataset("latents", data=d["latents"], chunks=(1,) + d["latents"].shape[1:])
            g.create_dataset("ssl", data=d["ssl"], chunks=(1,) + d["ssl"].shape[1:])
            g.create_dataset("coords", data=d["coords"])
    return {"counts": counts, "skipped": skipped, "n_20x_tiles": len(todo) if positions else 0}


def write_index(out_dir: str | os.PathLike) -> tuple[Path, dict[int, int], dict[int, int]]:
    """(Re)write ``index.csv`` from the shards present; return it with patch counts and skipped slides per scale."""
    import h5py

    out_dir = Path(out_dir)
    counts = {k: 0 for k in range(N_SCALES)}
    skipped = {k: 0 for k in range(N_SCALES)}
    with atomic_path(out_dir / "index.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(INDEX_COLUMNS)
            for shard in sorted((out_dir / "shards").glob("*.h5")):
                rel = shard.relative_to(out_dir).as_posix()
                try:
                    with h5py.File(shard, "r") as h5:
                        slide = str(h5.attrs.get("slide", shard.stem))
                        for k in np.asarray(h5.attrs.get("skipped_scales", []), np.int64).tolist():
                            skipped[int(k)] = skipped.get(int(k), 0) + 1
                        for name in sorted(h5.keys()):
                            if not name.startswith("scale_"):
                                continue
                            k = int(name.split("_")[1])
                            coords = h5[name]["coords"][()]
                            size_l0 = int(h5[name].attrs["size_l0"])
                            for row, (x, y) in enumerate(coords):
                                w.writerow([rel, row, slide, k, int(x), int(y), size_l0])
                            counts[k] = counts.get(k, 0) + len(coords)
                except (OSError, KeyError) as exc:
                    raise DatasetError(f"corrupt shard {shard}: {exc}") from exc
    return out_dir / "index.csv", counts, skipped


def build_dataset(
    slides,
    out_dir: str | os.PathLike,
    ssl_encoder,
    vq,
    patch_px: int = 256,
    ssl_px: int = 256,
    scales: Sequence[int] = range(N_SCALES),
    pool_to: int = 8,
    max_per_scale: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    mpp: float | None = None,
    mpp_csv: str | None = None,
    tile_kwargs: dict | None = None,
    progress: bool = True,
) -> BuildReport:
    """Build (or resume) a multi-scale training set from ``slides`` (folder, file, CSV or list).

    ``ssl_encoder`` is a ``zoomfeat.encoders`` Encoder; ``vq`` a diffusers VQModel (or anything whose
    ``encode(x).latents`` / ``encode(x)`` gives pre-quantisation latents of images in [-1, 1]). Per-slide
    failures are reported and the cohort continues; a rerun only builds the missing shards.
    """
    import torch

    from zoomfeat.cohort import resolve_slides, run_cohort, slide_id
    from zoomfeat.slides.coords import read_coords
    from zoomfeat.slides.tiling import tile_slide

    out_dir = Path(out_dir)
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    scales = [int(k) for k in scales]
    slide_list = resolve_slides(slides) if not isinstance(slides, (list, tuple)) else [Path(s) for s in slides]
    if not slide_list:
        raise FileNotFoundError(f"no slides found in {slides}")

    vq_fp = vq_fingerprint(vq)
    settings = {
        "format_version": FORMAT_VERSION,
        "patch_px": int(patch_px),
        "ssl_px": int(ssl_px),
        "pool_to": int(pool_to or 0),
        "scales": scales,
        "max_per_scale": max_per_scale,
        "seed": int(seed),
        "ssl_encoder": getattr(ssl_encoder, "name", type(ssl_encoder).__name__),
        "ssl_dim": int(getattr(ssl_encoder, "dim", 0)),
        "ssl_weights_sha256": getattr(ssl_encoder, "weights_sha256", None),
        "vq_sha256": vq_fp,
    }
    meta_path = out_dir / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise DatasetError(
                f"{out_dir} was built with other settings ({', '.join(f'{k}: {a!r} != {b!r}' for k, (a, b) in diff.items())}); "
                "use a new --out folder"
            )
    write_json_atomic(meta_path, {**settings, "complete": False})

    def vq_encode(x: torch.Tensor) -> torch.Tensor:
        p = next(vq.parameters())
        enc = vq.encode(x.to(p.device, p.dtype))
        return getattr(enc, "latents", enc)

    coords_dir = out_dir / "coords"
    tile_kwargs = dict(tile_kwargs or {})

    def shard_of(slide: Path) -> Path:
        return out_dir / "shards" / f"{slide_id(slide)}.h5"

    def process(slide: Path) -> dict:
        cpath = tile_slide(slide, coords_dir, mpp=mpp, mpp_csv=mpp_csv, scales=range(N_SCALES), **tile_kwargs)
        grid = read_coords(cpath)
        return build_slide_shard(
            slide, shard_of(slide), grid, ssl_encoder, vq_encode, patch_px=patch_px, ssl_px=ssl_px,
            scales=scales, pool_to=pool_to, max_per_scale=max_per_scale, seed=seed, batch_size=batch_size,
            mpp=mpp, mpp_csv=mpp_csv,
        )

    cohort = run_cohort(
        slide_list, process, is_done=lambda s: shard_of(s).exists(), lock_dir=out_dir / "locks",
        desc="build-dataset", progress=progress,
    )
    cohort.write(out_dir, "build_summary")
    _, counts, skipped = write_index(out_dir)
    write_json_atomic(meta_path, {**settings, "complete": True, "counts": counts, "skipped_slides": skipped,
                                  "n_slides": len(slide_list), "n_failed": len(cohort.failed)})
    return BuildReport(out_dir, cohort, counts, skipped)


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
