"""Writing the multi-scale training set (layout: :mod:`zoomfeat.train.dataset`): one slide → one HDF5 shard of SSL
grids + VQ latents per scale (:func:`build_slide_shard`), the cohort → shards, ``index.csv`` and ``meta.json``
(:func:`build_dataset`, resumable: a rerun only builds the missing shards).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from zoomfeat.cohort import run_cohort
from zoomfeat.io import atomic_h5, atomic_path, write_json_atomic
from zoomfeat.mags import N_SCALES
from zoomfeat.names import resolve_slides, slide_id
from zoomfeat.slides.coords import read_coords
from zoomfeat.slides.grid import child_grid
from zoomfeat.slides.reader import open_slide
from zoomfeat.slides.tiling import tile_slide
from zoomfeat.train.config import ShardConfig

from zoomfeat.train.dataset import FORMAT_VERSION, INDEX_COLUMNS, DatasetError
from zoomfeat.weights import state_dict_sha256


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
    return state_dict_sha256(vq)


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


def _pick_regions(grid, scales: Sequence[int], max_per_scale: int | None, rng: np.random.Generator):
    """Regions to encode per scale, ``{k: (coords, size_l0)}`` (at most ``max_per_scale``, random, order kept), and
    the scales the slide has no region for."""
    scale_grids = getattr(grid, "scales", None) or {}
    regions: dict[int, tuple[np.ndarray, int]] = {}
    skipped: list[int] = []
    for k in scales:
        entry = scale_grids.get(k)
        coords = None if entry is None else np.asarray(entry[0], dtype=np.int64).reshape(-1, 2)
        if coords is None or len(coords) == 0:
            skipped.append(int(k))
            continue
        if max_per_scale and len(coords) > max_per_scale:
            coords = coords[np.sort(rng.choice(len(coords), max_per_scale, replace=False))]
        regions[int(k)] = (coords, int(entry[1]))
    return regions, skipped


def _tile_rows(regions: dict[int, tuple[np.ndarray, int]], tile_l0: int):
    """Every 20x tile any region needs, numbered in order of first use (``{(x, y): row}``), and per scale the
    ``(M, n²)`` rows of each region's tiles, row-major (rows along y) as in the official grids."""
    needed: dict[tuple[int, int], int] = {}
    rows: dict[int, np.ndarray] = {}
    for k, (coords, size_l0) in regions.items():
        side = max(1, int(round(size_l0 / tile_l0)))
        kids = child_grid(coords, tile_l0, side)
        rows[k] = np.array([[needed.setdefault((int(x), int(y)), len(needed)) for x, y in kid] for kid in kids],
                           np.int64).reshape(len(coords), side * side)
    return needed, rows


def _embed_tiles(wsi, needed: dict[tuple[int, int], int], tile_l0: int, ssl_encoder, ssl_px: int, batch_size: int,
                 name: str) -> tuple[np.ndarray | None, int]:
    """SSL embeddings ``[len(needed), D]`` of the 20x tiles (each read and embedded once, shared by all scales) and
    the number of tiles embedded.

    Low-magnification regions reach past the slide (the official set keeps one whole-slide patch at 0.15625x):
    tiles wholly outside it are identical padding, so one embedding serves them all."""
    positions = list(needed)
    if not positions:
        return None, 0
    width, height = (int(v) for v in wsi.dimensions)
    inside = [p for p in positions if p[0] < width and p[1] < height]
    outside = [p for p in positions if not (p[0] < width and p[1] < height)]
    todo = inside + outside[:1]
    feats_by_pos: dict[tuple[int, int], np.ndarray] = {}
    for chunk in _batched(todo, batch_size):
        tiles = np.stack([wsi.read_region_l0(x, y, tile_l0, ssl_px) for x, y in chunk])
        feats = ssl_encoder.encode(tiles).detach().float().cpu().numpy()
        feats_by_pos.update(zip(chunk, feats))
    emb = np.empty((len(positions), len(next(iter(feats_by_pos.values())))), np.float32)
    pad = feats_by_pos[outside[0]] if outside else None
    for p, i in needed.items():
        emb[i] = feats_by_pos[p] if p in feats_by_pos else pad
    if not np.isfinite(emb).all():
        raise DatasetError(f"{name}: the SSL encoder returned non-finite embeddings")
    return emb, len(todo)


def _encode_scale(wsi, coords: np.ndarray, size_l0: int, tile_rows: np.ndarray, emb: np.ndarray, vq_encode: Callable,
                  patch_px: int, pool_to: int, batch_size: int) -> dict:
    """One scale of a shard: VQ latents of the regions resized to ``patch_px`` and their (pooled) SSL grids."""
    import torch

    latents = []
    for batch in _batched(coords, batch_size):
        imgs = np.stack([wsi.read_region_l0(int(x), int(y), size_l0, patch_px) for x, y in batch])
        with torch.inference_mode():
            lat = vq_encode(images_to_unit_range(imgs))
        latents.append(lat.detach().float().cpu().numpy())
    side = int(round(tile_rows.shape[1] ** 0.5))
    grids = [_pool_grid(emb[r].T.reshape(-1, side, side), pool_to) for r in tile_rows]
    return {
        "latents": np.concatenate(latents).astype(np.float16),
        "ssl": np.stack(grids).astype(np.float16),
        "coords": np.asarray(coords, np.int64),
        "size_l0": size_l0,
    }


def _write_shard(shard_path: str | os.PathLike, slide: str | os.PathLike, skipped: list[int], n_embedded: int,
                 out: dict[int, dict]) -> None:
    with atomic_h5(shard_path) as h5:  # built in memory: a full disk is a plain OSError, never an HDF5 crash
        h5.attrs["slide"] = Path(slide).stem
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.attrs["skipped_scales"] = np.asarray(skipped, np.int64)
        h5.attrs["n_20x_tiles_embedded"] = n_embedded
        for k, d in out.items():
            g = h5.create_group(f"scale_{k}")
            g.attrs["size_l0"] = d["size_l0"]
            g.create_dataset("latents", data=d["latents"], chunks=(1,) + d["latents"].shape[1:])
            g.create_dataset("ssl", data=d["ssl"], chunks=(1,) + d["ssl"].shape[1:])
            g.create_dataset("coords", data=d["coords"])


def build_slide_shard(slide: str | os.PathLike, shard_path: str | os.PathLike, grid, ssl_encoder, vq_encode: Callable,
                      cfg: ShardConfig | None = None) -> dict:
    """Encode one slide's multi-scale patches (``grid``: its TileGrid with ``cfg.scales``) into one HDF5 shard.

    Returns ``{"counts": {k: n}, "skipped": [k, ...], "n_20x_tiles": n}``; scales the slide has no region for are
    skipped.
    """
    cfg = cfg or ShardConfig()
    tile_l0 = int(grid.patch_size_level0)
    regions, skipped = _pick_regions(grid, cfg.scales, cfg.max_per_scale, np.random.default_rng(cfg.seed))
    needed, rows = _tile_rows(regions, tile_l0)
    with open_slide(slide, mpp=cfg.mpp, mpp_csv=cfg.mpp_csv) as wsi:
        emb, n_embedded = _embed_tiles(wsi, needed, tile_l0, ssl_encoder, cfg.ssl_px, cfg.batch_size,
                                       Path(slide).name)
        out = {k: _encode_scale(wsi, coords, size_l0, rows[k], emb, vq_encode, cfg.patch_px, cfg.pool_to,
                                cfg.batch_size)
               for k, (coords, size_l0) in regions.items()}
    _write_shard(shard_path, slide, skipped, n_embedded, out)
    return {"counts": {k: len(coords) for k, (coords, _) in regions.items()}, "skipped": skipped,
            "n_20x_tiles": n_embedded}


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


def _settings(ssl_encoder, vq, patch_px: int, ssl_px: int, scales: list[int], pool_to: int,
              max_per_scale: int | None, seed: int) -> dict:
    """What makes a training set: a rerun must use the same (recorded in ``meta.json``)."""
    return {
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
        "vq_sha256": vq_fingerprint(vq),
    }


def _start_meta(out_dir: Path, settings: dict) -> Path:
    """Refuse a folder built with other settings; mark the build as started (``complete: false``)."""
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
    return meta_path


def _vq_encoder(vq) -> Callable:
    """images in [-1, 1] → pre-quantisation latents, on the VQ's device and dtype."""

    def vq_encode(x):
        p = next(vq.parameters())
        enc = vq.encode(x.to(p.device, p.dtype))
        return getattr(enc, "latents", enc)

    return vq_encode


def build_dataset(slides, out_dir: str | os.PathLike, ssl_encoder, vq, cfg: ShardConfig | None = None,
                  tile_kwargs: dict | None = None, progress: bool = True) -> BuildReport:
    """Build (or resume) a multi-scale training set from ``slides`` (folder, file, CSV or list).

    ``ssl_encoder`` is a ``zoomfeat.encoders`` TileEncoder; ``vq`` a diffusers VQModel (or anything whose
    ``encode(x).latents`` / ``encode(x)`` gives pre-quantisation latents of images in [-1, 1]). Per-slide
    failures are reported and the cohort continues; a rerun only builds the missing shards.
    """
    out_dir = Path(out_dir)
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    cfg = cfg or ShardConfig()
    slide_list = resolve_slides(slides) if not isinstance(slides, (list, tuple)) else [Path(s) for s in slides]
    if not slide_list:
        raise FileNotFoundError(f"no slides found in {slides}")
    # what makes the training set: recorded in meta.json and given to every shard, from this one dict
    settings = _settings(ssl_encoder, vq, cfg.patch_px, cfg.ssl_px, list(cfg.scales), cfg.pool_to, cfg.max_per_scale,
                         cfg.seed)
    meta_path = _start_meta(out_dir, settings)
    vq_encode = _vq_encoder(vq)
    tile_kwargs = dict(tile_kwargs or {})

    def shard_of(slide: Path) -> Path:
        return out_dir / "shards" / f"{slide_id(slide)}.h5"

    def process(slide: Path) -> dict:
        cpath = tile_slide(slide, out_dir / "coords", mpp=cfg.mpp, mpp_csv=cfg.mpp_csv, scales=range(N_SCALES),
                           **tile_kwargs)
        return build_slide_shard(slide, shard_of(slide), read_coords(cpath), ssl_encoder, vq_encode, cfg)

    cohort = run_cohort(
        slide_list, process, is_done=lambda s: shard_of(s).exists(), lock_dir=out_dir / ".locks",
        desc="build-dataset", progress=progress,
    )
    cohort.write(out_dir, "build_summary")
    _, counts, skipped = write_index(out_dir)
    write_json_atomic(meta_path, {**settings, "complete": True, "counts": counts, "skipped_slides": skipped,
                                  "n_slides": len(slide_list), "n_failed": len(cohort.failed)})
    return BuildReport(out_dir, cohort, counts, skipped)
