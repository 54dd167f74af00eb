"""Feature extraction: slides + tile coordinates in, one HDF5 bag per slide per encoder out (20x and 5x features).

Per slide: a DataLoader (one slide handle per worker) reads the 20x tiles; each batch goes through the encoder
(for ``zoomldm`` with ``uni`` conditioning, the SSL encoder first, whose embeddings are kept). Then every 5x parent
region is read once (the 4×4-tile region at the tile size) and encoded; ``zoomldm`` conditions it on the 4×4 grid of
its 16 children's SSL embeddings. Children that were not kept as tissue tiles are read and embedded too, so the
grid is always complete — the same input the model saw in training, where the region's whole UNI grid was used.
The bag is written atomically at the end; a rerun skips bags whose settings signature matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from zoomfeat.bags import bag_path, read_bag_attrs, write_bag, write_clam_pt
from zoomfeat.cohort import CohortReport, SlideResult, rank_slice, run_cohort, slide_id
from zoomfeat.io import kill_point, remove_dead_temps
from zoomfeat.precision import resolve_device
from zoomfeat.slides.grid import child_grid

TILES_ON_THE_FLY = "_tiles"


@dataclass
class ExtractOptions:
    """Cohort-level settings (encoder settings live in the encoder's own config)."""

    mags: tuple[str, ...] = ("20x", "5x")
    batch_size: int = 16
    workers: int = 2
    device: str = "auto"
    tag: str | None = None  # features_{tag}/ sub-folder; default: the encoder name
    mpp: float | None = None
    mpp_csv: str | None = None
    min_tissue: float | None = None  # only for on-the-fly tiling
    clam_pt: bool = False  # also write CLAM's pt_files/{slide}.pt
    #: SSL embedding of 5x children that are not tissue tiles: "embed" reads and embeds them (the full grid the
    #: model saw in training; default) or "mean" uses the mean of the region's kept children (no extra forwards)
    missing_children: str = "embed"
    progress: bool = True
    #: "K/N": this process takes share K of N (SLURM array jobs; combined with torchrun ranks, see zoomfeat.sharding)
    shard: str | None = None

    def __post_init__(self) -> None:
        mags = tuple(m.strip().lower() for m in (self.mags.split(",") if isinstance(self.mags, str) else self.mags))
        mags = tuple(m for m in mags if m)
        bad = [m for m in mags if m not in ("20x", "5x")]
        if bad or "20x" not in mags:
            raise ValueError(f"--mags must be '20x' or '20x,5x' (20x features are the bag's root), got {self.mags!r}")
        self.mags = tuple(sorted(set(mags), key=("20x", "5x").index))
        if self.missing_children not in ("embed", "mean"):
            raise ValueError(f"missing_children must be 'embed' or 'mean', got {self.missing_children!r}")
        if self.batch_size < 1 or self.workers < 0:
            raise ValueError("batch size must be ≥ 1 and workers ≥ 0")
        from zoomfeat.sharding import parse_shard

        parse_shard(self.shard)


# ------------------------------------------------------------------------------------------------ data loading


#: Read-request kinds of one slide, in processing order: 20x tiles, background children of 5x regions (SSL only),
#: 5x regions. The 5x conditioning needs every child's embedding, so the regions come last.
KIND_20X, KIND_CHILD, KIND_5X = 0, 1, 2


class RegionDataset(torch.utils.data.Dataset):
    """Square level-0 regions of one slide read at ``out_px``; item = ``(uint8 [out_px, out_px, 3], kind, row)``.

    ``parts[kind] = (coords (n, 2), level-0 side)``. The WSI object pickles without its OpenSlide handle, so each
    DataLoader worker opens its own handle on its first read.
    """

    def __init__(self, wsi, parts: dict[int, tuple[np.ndarray, int]], out_px: int):
        self.wsi = wsi
        self.parts = {k: (np.asarray(c, np.int64).reshape(-1, 2), int(sz)) for k, (c, sz) in parts.items()}
        self.out_px = int(out_px)
        self.index = [(k, i) for k in sorted(self.parts) for i in range(len(self.parts[k][0]))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, j: int):
        kind, i = self.index[j]
        coords, size = self.parts[kind]
        x, y = coords[i]
        tile = np.array(self.wsi.read_region_l0(int(x), int(y), size, self.out_px))  # writable copy
        return torch.from_numpy(tile), kind, i

    def batches(self, batch_size: int) -> list[list[int]]:
        """Batches never mix kinds, so each one goes through one code path; order = processing order."""
        out, start = [], 0
        for k in sorted(self.parts):
            n = len(self.parts[k][0])
            out += [list(range(start + i, start + min(i + batch_size, n))) for i in range(0, n, batch_size)]
            start += n
        return out


def _loader(ds: RegionDataset, opts: ExtractOptions, device: torch.device):
    """One DataLoader (one worker pool, one slide handle per worker) for all of a slide's reads."""
    batches = ds.batches(opts.batch_size)
    workers = min(opts.workers, len(batches))
    return torch.utils.data.DataLoader(
        ds, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )


def _batches(loader, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress or len(loader) < 2)


# ------------------------------------------------------------------------------------------------ one slide


def _coords_attrs(path: Path | None, group: str | None = None) -> dict:
    """The tiling file's attributes on ``coords`` (TRIDENT + CLAM sets), copied onto the bag's coords."""
    if path is None or not Path(path).exists():
        return {}
    import h5py

    from zoomfeat.bags import _attrs_dict

    with h5py.File(path, "r") as f:
        node = f[group] if group else f
        return _attrs_dict(node["coords"]) if "coords" in node else {}


def parents_5x(grid) -> tuple[np.ndarray, np.ndarray, int]:
    """5x regions (coords, parent_index, level-0 size) from the tiling file, or derived on the lattice anchored at
    (0, 0) (4×4 tiles per region) when the coordinate file has none (CLAM/TRIDENT files)."""
    s = int(grid.patch_size_level0)
    if grid.coords_5x is not None and grid.parent_index is not None:
        return (np.asarray(grid.coords_5x, np.int64), np.asarray(grid.parent_index, np.int64),
                int(grid.patch_size_level0_5x or 4 * s))
    from zoomfeat.slides.grid import parent_regions

    coords = np.asarray(grid.coords, np.int64).reshape(-1, 2)
    # CLAM anchors its grid at the tissue contour's corner (e.g. x = 320, y = 70), not at (0, 0): anchor the 5x
    # lattice at the grid's own origin so that every tile lies inside its parent region
    origin = coords[0] % s if len(coords) else np.zeros(2, np.int64)
    if not (coords % s == origin).all():
        origin = np.zeros(2, np.int64)  # irregular grid (overlap): tiles may straddle two regions
    c5, pidx = parent_regions(coords - origin, s, 2)
    return c5 + origin, pidx, 4 * s


def _encode_batch(encoder, imgs: torch.Tensor, mag: str, ssl: torch.Tensor | None, seeds: np.ndarray | None):
    if getattr(encoder, "name", "") == "zoomldm":
        return encoder.encode(imgs, mag=mag, ssl_grid=ssl, seeds=seeds)
    return encoder.encode(imgs)


def extract_slide(
    slide: str | os.PathLike,
    grid,
    encoder,
    out_path: str | os.PathLike,
    opts: ExtractOptions | None = None,
    coords_file: str | os.PathLike | None = None,
    signature: str | None = None,
) -> dict:
    """Extract one slide's bag to ``out_path`` (atomic). Returns timings and counts for the cohort summary."""
    from zoomfeat import __version__
    from zoomfeat.encoders.zoomldm import tile_seeds
    from zoomfeat.precision import effective_precision
    from zoomfeat.slides.reader import open_slide

    opts = opts or ExtractOptions()
    device = encoder.device
    sid = slide_id(slide)  # names outputs; the coordinate file's own name (checked on read) only seeds the noise
    seed_id = grid.slide or sid
    is_ldm = getattr(encoder, "name", "") == "zoomldm"
    ssl_enc = getattr(encoder, "ssl_encoder", None) if is_ldm else None
    s = int(grid.patch_size_level0)
    out_px = int(grid.patch_size)
    coords = np.asarray(grid.coords, np.int64).reshape(-1, 2)
    if len(coords) == 0:
        raise ValueError(f"{sid}: the coordinate file has no tiles")
    timing: dict[str, float] = {}
    with_5x = "5x" in opts.mags
    parts: dict[int, tuple[np.ndarray, int]] = {KIND_20X: (coords, s)}
    feats = np.zeros((len(coords), encoder.dim), np.float32)
    ssl20 = np.zeros((len(coords), ssl_enc.dim), np.float32) if ssl_enc is not None else None
    f5 = c5 = pidx = grids = emb = rows = None
    if with_5x:
        c5, pidx, s5 = parents_5x(grid)
        f5 = np.zeros((len(c5), encoder.dim), np.float32)
        if ssl_enc is not None:
            # SSL grid of each 5x region: kept children reuse their 20x embedding, the others are read and embedded
            kids = child_grid(c5, s).reshape(-1, 2)
            known = {(int(x), int(y)): r for r, (x, y) in enumerate(coords)}
            rows = np.array([known.get((int(x), int(y)), -1) for x, y in kids], np.int64)
            emb = np.zeros((len(kids), ssl_enc.dim), np.float32)
            if opts.missing_children == "embed":
                parts[KIND_CHILD] = (kids[rows < 0], s)
                timing["children_embedded_5x"] = int((rows < 0).sum())
            else:
                timing["children_mean_filled_5x"] = int((rows < 0).sum())
        parts[KIND_5X] = (c5, s5)
    ds = RegionDataset(open_slide(slide, mpp=opts.mpp, mpp_csv=opts.mpp_csv, require_mpp=False), parts, out_px)
    missing = np.flatnonzero(rows < 0) if rows is not None else None
    t0 = t_start = time.perf_counter()
    try:
        for imgs, kind, idx in _batches(_loader(ds, opts, device), sid, opts.progress):
            kind, idx = int(kind[0]), idx.numpy()
            if kind == KIND_20X:
                ssl = None
                if ssl_enc is not None:
                    ssl = ssl_enc.encode(imgs)
                    ssl20[idx] = ssl.cpu().numpy()
                    ssl = ssl[:, :, None, None]
                seeds = tile_seeds(seed_id, coords[idx], "20x", encoder.base_seed) if is_ldm else None
                feats[idx] = _encode_batch(encoder, imgs, "20x", ssl, seeds).cpu().numpy()
                continue
            if "seconds_20x" not in timing:
                timing["seconds_20x"] = time.perf_counter() - t0
                t0 = time.perf_counter()
            if kind == KIND_CHILD:
                emb[missing[idx]] = ssl_enc.encode(imgs).cpu().numpy()
                continue
            if ssl_enc is not None and grids is None:
                emb[rows >= 0] = ssl20[rows[rows >= 0]]
                per_region = emb.reshape(len(c5), 16, -1)
                if opts.missing_children == "mean":
                    kept = (rows >= 0).reshape(len(c5), 16)
                    mean = (per_region * kept[..., None]).sum(1) / kept.sum(1, keepdims=True)
                    per_region[~kept] = np.repeat(mean, (~kept).sum(1), axis=0)
                grids = per_region.reshape(len(c5), 4, 4, -1).transpose(0, 3, 1, 2)  # row-major → (M, C, 4, 4)
            ssl = torch.from_numpy(np.ascontiguousarray(grids[idx])) if grids is not None else None
            seeds = tile_seeds(seed_id, c5[idx], "5x", encoder.base_seed) if is_ldm else None
            f5[idx] = _encode_batch(encoder, imgs, "5x", ssl, seeds).cpu().numpy()
        if "seconds_20x" not in timing:
            timing["seconds_20x"] = time.perf_counter() - t0
        elif with_5x:
            timing["seconds_5x"] = time.perf_counter() - t0
        timing["seconds_total"] = time.perf_counter() - t_start
        mpp0 = grid.mpp_level0 if grid.mpp_level0 is not None else ds.wsi.mpp
    finally:
        ds.wsi.close()

    import openslide

    cfg = encoder.full_config()
    attrs: dict[str, Any] = {
        "slide": sid,
        "encoder": encoder.name,
        "encoder_config": cfg,
        "encoder_weights_sha256": encoder.weights_sha256,
        "encoder_weights_path": getattr(encoder, "weights_path", None),
        "precision": encoder.precision,
        "precision_effective": effective_precision(device, encoder.precision),
        "dim": int(encoder.dim),
        "mags": list(opts.mags),
        "mpp_level0": float(mpp0) if mpp0 is not None else None,
        "mpp_source": grid.mpp_source,
        "target_mpp": grid.target_mpp,
        "patch_size": out_px,
        "patch_size_level0": s,
        "toolkit_version": __version__,
        "reader": "openslide",
        "reader_version": getattr(openslide, "__library_version__", ""),
        "coords_file": str(coords_file) if coords_file else None,
        "extract_signature": signature,
        "device": str(device),
        "input_size": cfg.get("input_size"),
        "mean": cfg.get("mean"),
        "std": cfg.get("std"),
        "feature_token": cfg.get("feature_token", cfg.get("pool")),
    }
    if is_ldm:
        attrs.update({"block": encoder.blocks, "t": encoder.t, "conditioning": encoder.conditioning,
                      "missing_children_5x": opts.missing_children if ssl_enc is not None else None,
                      "ssl_encoder": ssl_enc.name if ssl_enc else None,
                      "ssl_weights_sha256": ssl_enc.weights_sha256 if ssl_enc else None})
    if with_5x:
        attrs.update({"patch_size_level0_5x": int(s5), "target_magnification_5x": 5,
                      "region_px_20x_5x": 4 * out_px})
    cattrs = _coords_attrs(Path(coords_file) if coords_file else None)
    cattrs.setdefault("patch_size", out_px)
    cattrs.setdefault("patch_size_level0", s)
    cattrs.setdefault("name", sid)
    remove_dead_temps(out_path)
    if opts.clam_pt:  # side output first: the bag is the slide's completion marker and is written last
        write_clam_pt(clam_pt_path(out_path), feats)
        kill_point("extract:after_pt")
    write_bag(out_path, feats, coords, attrs, f5, c5, pidx, coords_attrs=cattrs)
    return {"n_20x": int(len(coords)), "n_5x": int(0 if c5 is None else len(c5)), **timing}


# ------------------------------------------------------------------------------------------------ cohort


def extract_signature(encoder, opts: ExtractOptions, tiles_source: str) -> str:
    """Hash of everything that changes a bag's content: encoder config + weights, mags, tiling source."""
    payload = {"encoder": encoder.full_config(), "weights": encoder.weights_sha256, "mags": list(opts.mags),
               "tiles": tiles_source, "mpp": opts.mpp, "missing_children": opts.missing_children}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def clam_pt_path(bag: str | os.PathLike) -> Path:
    """``--clam-pt`` output of a bag: ``pt_files/{id}.pt`` beside it (id = the bag's, never a file attribute)."""
    from zoomfeat.cohort import output_path

    return output_path(Path(bag).parent / "pt_files", Path(bag).stem, ".pt")


def bag_done(path: Path, signature: str, clam_pt: bool = False) -> bool:
    """A slide is done when its bag (written last) exists, opens and has the same settings signature, and, with
    ``--clam-pt``, its ``.pt`` exists too (a bag from a run without ``--clam-pt`` is redone, not trusted)."""
    if not path.exists() or (clam_pt and not clam_pt_path(path).exists()):
        return False
    try:
        return read_bag_attrs(path).get("extract_signature") == signature
    except (OSError, ValueError):
        return False


def _load_grid(slide: Path, tiles_dir: Path | None, out_dir: Path, opts: ExtractOptions):
    from zoomfeat.slides.coords import coords_path, find_coords, read_coords

    sid = slide_id(slide)
    if tiles_dir is not None:
        try:
            cp = find_coords(tiles_dir, sid)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e} (run `zoomfeat tile` first, or omit --tiles)") from None
    else:
        from zoomfeat.slides.tiling import tile_slide

        tdir = out_dir / TILES_ON_THE_FLY
        cp = coords_path(tdir, sid)
        if not cp.exists():
            kw = {"mpp": opts.mpp, "mpp_csv": opts.mpp_csv,
                  "scales": (0, 2) if "5x" in opts.mags else (0,)}
            if opts.min_tissue is not None:
                kw["min_tissue"] = opts.min_tissue
            cp = Path(tile_slide(slide, tdir, **kw))
    grid = read_coords(cp, mpp=opts.mpp)
    if grid.attrs.get("format") != "zoomfeat" and opts.mpp is None:
        # CLAM records no resolution and TRIDENT only a magnification (mpp assumed 10/mag): use the slide's own
        from zoomfeat.slides.reader import open_slide

        with open_slide(slide, mpp_csv=opts.mpp_csv, require_mpp=False) as wsi:
            if wsi.mpp is not None and np.isfinite(wsi.mpp):
                grid = read_coords(cp, mpp=float(wsi.mpp))
    return grid, cp


def extract_cohort(
    slides: Sequence[str | os.PathLike],
    encoder,
    out_dir: str | os.PathLike,
    tiles_dir: str | os.PathLike | None = None,
    opts: ExtractOptions | None = None,
) -> CohortReport:
    """Extract every slide of this rank's share (torchrun RANK/WORLD_SIZE) into ``out_dir/features_{tag}/``.

    Completed bags with the same settings are skipped, per-slide errors are collected, and a summary is written:
    ``summary.csv/json`` for a single process, or ``summary_rank{r}`` per rank merged into ``summary`` by the
    last rank to finish.
    """
    opts = opts or ExtractOptions()
    out_dir = Path(out_dir)
    tiles_dir = Path(tiles_dir) if tiles_dir is not None else None
    if tiles_dir is not None and not tiles_dir.is_dir():
        raise FileNotFoundError(f"--tiles folder not found: {tiles_dir}")
    device = resolve_device(opts.device)
    from zoomfeat.precision import check_supported

    check_supported(device, encoder.precision)
    encoder.to(device)
    tag = opts.tag or encoder.name
    sig = extract_signature(encoder, opts, "tiles:" + (str(tiles_dir.resolve()) if tiles_dir else "on-the-fly"))
    from zoomfeat.sharding import process_share

    share = process_share(opts.shard)  # torchrun rank and/or --shard K/N: one round-robin split
    rank, world = share.index, share.count
    mine = rank_slice(list(slides), rank, world)
    feat_dir = bag_path(out_dir, tag, "x").parent
    feat_dir.mkdir(parents=True, exist_ok=True)

    def is_done(slide: Path) -> bool:
        return bag_done(bag_path(out_dir, tag, slide_id(slide)), sig, opts.clam_pt)

    def process(slide: Path) -> dict:
        grid, cp = _load_grid(slide, tiles_dir, out_dir, opts)
        return extract_slide(slide, grid, encoder, bag_path(out_dir, tag, slide_id(slide)), opts, cp, sig)

    report = run_cohort(mine, process, is_done, lock_dir=feat_dir / ".locks", all_slides=slides,
                        desc=f"extract {tag}" + (f" rank {rank}/{world}" if world > 1 else ""),
                        progress=opts.progress)
    _write_timings(report, feat_dir, rank if world > 1 else None)
    if world > 1:
        report.write(feat_dir, f"summary_rank{rank}")
        from zoomfeat.io import write_json_atomic

        write_json_atomic(feat_dir / f"summary_rank{rank}.meta.json",
                          {"run_id": share.run_id, "rank": rank, "world": world})
        merged = merge_rank_summaries(feat_dir, world, share.run_id)
        if merged is not None:
            return merged if rank == 0 else report
    else:
        report.write(feat_dir, "summary")
    return report


def _run_id() -> str:
    return os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("ZOOMFEAT_RUN_ID") or ""


def _write_timings(report: CohortReport, feat_dir: Path, rank: int | None) -> None:
    rows = [{"slide": r.slide, "status": r.status, "seconds": round(r.seconds, 3), **r.info}
            for r in report.results if r.info]
    if rows:
        from zoomfeat.io import write_json_atomic

        write_json_atomic(feat_dir / ("timings.json" if rank is None else f"timings_rank{rank}.json"), rows)


def merge_rank_summaries(feat_dir: str | os.PathLike, world: int, run_id: str | None = None) -> CohortReport | None:
    """Merge ``summary_rank{r}`` of all ranks into ``summary`` once all are present from the same run.

    Every rank calls this after writing its own file; the last one to finish finds all and merges (a concurrent
    double merge writes the same content atomically). Returns the merged report, or None if ranks are missing.
    """
    import csv

    feat_dir = Path(feat_dir)
    run_id = _run_id() if run_id is None else run_id
    results: list[SlideResult] = []
    for r in range(world):
        meta, rows = feat_dir / f"summary_rank{r}.meta.json", feat_dir / f"summary_rank{r}.csv"
        if not meta.exists() or not rows.exists():
            return None
        try:
            m = json.loads(meta.read_text())
            if m.get("run_id", "") != run_id or int(m.get("world", world)) != world:
                return None
        except ValueError:
            return None
        with open(rows, newline="") as fh:
            for row in csv.DictReader(fh):
                results.append(SlideResult(row["slide"], row["status"], float(row["seconds"] or 0), row["error"]))
    merged = CohortReport(sorted(results, key=lambda x: x.slide))
    merged.write(feat_dir, "summary")
    return merged


__all__ = ["ExtractOptions", "extract_slide", "extract_cohort", "extract_signature", "merge_rank_summaries",
           "parents_5x", "RegionDataset"]
