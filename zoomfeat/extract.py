"""Feature extraction: slides + tile coordinates in, one HDF5 bag per slide per encoder out (20x and 5x features).

Per slide (:func:`extract_slide`): a read plan (:func:`plan_reads`), a DataLoader (one slide handle per worker)
reading it, the encoder on every batch with the batch's :class:`~zoomfeat.encoders.base.TileContext`, the bag.
The extractor asks the encoder for capabilities, never for its name: an encoder with an ``ssl_encoder`` (ZoomLDM
with ``uni`` conditioning) gets its 20x tiles' SSL embeddings, which are kept, and for every 5x parent region (read
once, the 4×4-tile region at the tile size) the 4×4 grid of its 16 children's embeddings. Children that were not
kept as tissue tiles are read and embedded too, so the grid is always complete — the same input the model saw in
training, where the region's whole UNI grid was used. The bag is written atomically at the end; a rerun skips bags
whose settings signature matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from zoomfeat import __version__
from zoomfeat.bags import attrs_dict, bag_path, read_bag_attrs, write_bag, write_clam_pt
from zoomfeat.cohort import CohortReport, SlideResult, one_line_error, run_cohort
from zoomfeat.config import from_dict, load_config
from zoomfeat.encoders import get_encoder
from zoomfeat.encoders.base import TileContext
from zoomfeat.io import file_fingerprint, kill_point, remove_dead_temps, sha256_file, write_json_atomic
from zoomfeat.names import output_path, slide_id
from zoomfeat.precision import check_supported, effective_precision, resolve_device
from zoomfeat.sharding import parse_shard, process_share
from zoomfeat.slides.coords import coords_path, find_coords, read_coords
from zoomfeat.slides.grid import KIND_20X, KIND_CHILD, ReadPlan, plan_reads, ssl_grids_5x
from zoomfeat.slides.reader import open_slide
from zoomfeat.slides.tiling import coords_done, recorded_fingerprint, tile_slide

TILES_ON_THE_FLY = "_tiles"


@dataclass
class ExtractOptions:
    """Cohort-level settings (encoder settings live in the encoder's own config)."""

    mags: tuple[str, ...] = field(default=("20x", "5x"), metadata={"help": "'20x' or '20x,5x'"})
    batch_size: int = field(default=16, metadata={"help": "tiles per forward"})
    workers: int = field(default=2, metadata={"help": "DataLoader workers, each with its own slide handle"})
    device: str = field(default="auto", metadata={"help": "auto (this rank's GPU if any, else cpu), cpu, cuda, "
                                                          "cuda:1 …"})
    tag: str | None = field(default=None, metadata={"help": "name of the features_{tag} folder (default: encoder "
                                                            "name)"})
    mpp: float | None = field(default=None, metadata={"help": "force the level-0 µm/px of every slide"})
    mpp_csv: str | None = field(default=None, metadata={"help": "CSV slide,mpp overriding slide metadata"})
    min_tissue: float | None = field(default=None, metadata={"help": "minimum tissue fraction per 20x tile (on-the-fly "
                                                                     "tiling only)"})
    clam_pt: bool = field(default=False, metadata={"help": "also write CLAM pt_files/{slide}.pt"})
    #: SSL embedding of 5x children that are not tissue tiles: "embed" reads and embeds them (the full grid the
    #: model saw in training; default) or "mean" uses the mean of the region's kept children (no extra forwards)
    missing_children: str = field(default="embed", metadata={
        "choices": ("embed", "mean"), "help": "5x SSL grids: embed background children too (training-faithful) or "
                                              "use the mean of the region's tissue children (no extra SSL forwards)"})
    progress: bool = field(default=True, metadata={"flag": "--no-progress", "help": "no progress bars"})
    #: "K/N": this process takes share K of N (SLURM array jobs; combined with torchrun ranks, see zoomfeat.sharding)
    shard: str | None = field(default=None, metadata={
        "metavar": "K/N", "help": "process share K of N (0-based) of the slide list, the same round-robin split as "
                                  "torchrun ranks: one SLURM array task each, e.g. --shard "
                                  "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT"})

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

        parse_shard(self.shard)


@dataclass
class ExtractConfig(ExtractOptions):
    """Everything ``zoomfeat extract`` takes besides the slides; every default lives here. A YAML config sets these
    keys at the top level and the encoder under ``encoder:`` (its name + its options table, see
    :func:`load_extract_config`); the command line overrides both."""

    out: str | None = field(default=None, metadata={"help": "output folder (bags go to OUT/features_{encoder}/); "
                                                            "required"})
    tiles: str | None = field(default=None, metadata={"help": "folder written by `zoomfeat tile` (default: tile on "
                                                              "the fly into OUT/_tiles)"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (CPU runs on a busy machine are "
                                                                "often faster with 1)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the encoder; features are unchanged, the "
                                                           "first batches pay the compile time"})
    compile_backend: str = field(default="inductor", metadata={"help": "torch.compile backend (aot_eager traces "
                                                                       "the same graphs without code generation, a "
                                                                       "quick check on CPUs)"})
    compile_mode: str | None = field(default=None, metadata={"choices": ("default", "reduce-overhead", "max-autotune"),
                                                             "help": "torch.compile mode for inductor (default: "
                                                                     "default)"})
    channels_last: bool = field(default=False, metadata={"help": "channels-last weights for the conv nets (ZoomLDM "
                                                                 "VQ + UNet); features are unchanged"})
    #: the encoder's name and options: a mapping (or a bare name) as read, its options dataclass once loaded
    encoder: Any = field(default_factory=dict)


def load_extract_config(path: str | os.PathLike | dict | None = None, overrides: dict | None = None,
                        encoder_overrides: dict | None = None) -> ExtractConfig:
    """Dataclass defaults ← YAML ``path`` ← ``overrides`` (e.g. the options given on the command line; None values
    are "not given"). ``encoder:`` becomes the named encoder's options dataclass (``get_encoder(name).options``),
    so its unknown keys are errors too; options of an encoder other than the one named are dropped."""
    where = str(path) if isinstance(path, (str, os.PathLike)) else "config"
    cfg = load_config(ExtractConfig, path)
    cfg = from_dict(ExtractConfig, {k: v for k, v in (overrides or {}).items() if v is not None}, "command line",
                    base=cfg)
    enc = cfg.encoder if isinstance(cfg.encoder, dict) else {"name": cfg.encoder}
    enc_over = {k: v for k, v in (encoder_overrides or {}).items() if v is not None}
    name = enc_over.get("name") or enc.get("name")
    if not name:
        raise ValueError("--encoder is required (on the command line or as encoder: name in --config)")
    schema = get_encoder(name).options
    opts = from_dict(schema, {**(enc if enc.get("name") in (None, name) else {}), "name": name}, f"{where}: encoder")
    known = {f.name for f in dataclasses.fields(schema)}
    opts = from_dict(schema, {k: v for k, v in enc_over.items() if k in known}, "command line", base=opts)
    return dataclasses.replace(cfg, encoder=opts)


# ------------------------------------------------------------------------------------------------ data loading


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


def region_loader(ds: RegionDataset, opts: ExtractOptions, device: torch.device):
    """One DataLoader (one worker pool, one slide handle per worker) for all of a slide's reads."""
    batches = ds.batches(opts.batch_size)
    workers = min(opts.workers, len(batches))
    return torch.utils.data.DataLoader(
        ds, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )


def _batches(loader, desc: str, progress: bool):
    """The loader's batches; its worker processes are stopped as soon as the loop ends or fails. A failing slide's
    iterator would otherwise live on in the traceback, be inherited by the next slide's forked workers and print
    "can only test a child process" tracebacks from their ``__del__``."""
    from tqdm.auto import tqdm

    it = iter(loader)
    try:
        yield from tqdm(it, total=len(loader), desc=desc, unit="batch", leave=False,
                        disable=not progress or len(loader) < 2)
    finally:
        stop = getattr(it, "_shutdown_workers", None)  # torch's own clean-up of a multi-process iterator
        if stop is not None:
            stop()


# ------------------------------------------------------------------------------------------------ one slide


def _coords_attrs(path: Path | None, group: str | None = None) -> dict:
    """The tiling file's attributes on ``coords`` (TRIDENT + CLAM sets), copied onto the bag's coords."""
    if path is None or not Path(path).exists():
        return {}
    import h5py

    with h5py.File(path, "r") as f:
        node = f[group] if group else f
        return attrs_dict(node["coords"]) if "coords" in node else {}


def _encode_20x(encoder, imgs: torch.Tensor, ctx: TileContext, ssl20: np.ndarray | None, idx: np.ndarray):
    """20x tiles → features; with an SSL encoder its embeddings are kept (5x grids) and passed as 1×1 grids."""
    ssl_enc = getattr(encoder, "ssl_encoder", None)
    if ssl_enc is not None:
        emb = ssl_enc.encode(imgs)
        ssl20[idx] = emb.cpu().numpy()
        ctx.ssl_grid = emb[:, :, None, None]
    return encoder.encode(imgs, ctx).cpu().numpy()


def encode_reads(ds: RegionDataset, plan: ReadPlan, encoder, opts: ExtractOptions, seed_id: str,
                 desc: str = "") -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Every read of the plan through the encoder, one kind at a time: (20x features, 5x features, timing)."""
    ssl_enc = getattr(encoder, "ssl_encoder", None)
    feats = np.zeros((len(plan.coords), encoder.dim), np.float32)
    f5 = np.zeros((len(plan.c5), encoder.dim), np.float32) if plan.c5 is not None else None
    ssl20 = np.zeros((len(plan.coords), ssl_enc.dim), np.float32) if ssl_enc is not None else None
    emb = np.zeros((len(plan.kid_rows), ssl_enc.dim), np.float32) if plan.kid_rows is not None else None
    missing = np.flatnonzero(plan.kid_rows < 0) if plan.kid_rows is not None else None
    grids, timing = None, dict(plan.counts)
    t0 = t_start = time.perf_counter()
    for imgs, kind, idx in _batches(region_loader(ds, opts, encoder.device), desc, opts.progress):
        kind, idx = int(kind[0]), idx.numpy()
        if kind == KIND_20X:
            feats[idx] = _encode_20x(encoder, imgs, TileContext("20x", plan.coords[idx], seed_id), ssl20, idx)
            continue
        if "seconds_20x" not in timing:
            timing["seconds_20x"] = time.perf_counter() - t0
            t0 = time.perf_counter()
        if kind == KIND_CHILD:
            emb[missing[idx]] = ssl_enc.encode(imgs).cpu().numpy()
            continue
        if emb is not None and grids is None:
            grids = ssl_grids_5x(ssl20, emb, plan.kid_rows, opts.missing_children)
        ssl = torch.from_numpy(np.ascontiguousarray(grids[idx])) if grids is not None else None
        f5[idx] = encoder.encode(imgs, TileContext("5x", plan.c5[idx], seed_id, ssl)).cpu().numpy()
    if "seconds_20x" not in timing:
        timing["seconds_20x"] = time.perf_counter() - t0
    elif plan.c5 is not None:
        timing["seconds_5x"] = time.perf_counter() - t0
    timing["seconds_total"] = time.perf_counter() - t_start
    return feats, f5, timing


def bag_attrs(encoder, opts: ExtractOptions, grid, plan: ReadPlan, sid: str, mpp0: float | None,
              coords_file: str | os.PathLike | None, signature: str | None) -> dict:
    """The bag's file attributes: encoder, settings and provenance, then the encoder's own (``bag_attrs`` hook)."""
    import openslide

    cfg = encoder.full_config()
    device = encoder.device
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
        "patch_size": plan.out_px,
        "patch_size_level0": plan.size,
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
    hook = getattr(encoder, "bag_attrs", None)
    attrs.update(hook(opts) if hook is not None else {})
    if plan.c5 is not None:
        attrs.update({"patch_size_level0_5x": int(plan.size_5x), "target_magnification_5x": 5,
                      "region_px_20x_5x": 4 * plan.out_px})
    return attrs


def write_slide_bag(out_path: str | os.PathLike, plan: ReadPlan, feats: np.ndarray, f5: np.ndarray | None,
                    attrs: dict, sid: str, coords_file: str | os.PathLike | None, clam_pt: bool) -> None:
    """The bag (atomic, written last: it marks the slide done), after the optional CLAM ``.pt`` side output."""
    cattrs = _coords_attrs(Path(coords_file) if coords_file else None)
    cattrs.setdefault("patch_size", plan.out_px)
    cattrs.setdefault("patch_size_level0", plan.size)
    cattrs.setdefault("name", sid)
    remove_dead_temps(out_path)
    if clam_pt:
        write_clam_pt(clam_pt_path(out_path), feats)
        kill_point("extract:after_pt")
    write_bag(out_path, feats, plan.coords, attrs, f5, plan.c5, plan.pidx, coords_attrs=cattrs)


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
    opts = opts or ExtractOptions()
    sid = slide_id(slide)  # names outputs; the coordinate file's own name (checked on read) only seeds the noise
    inputs = input_record(slide, coords_file)  # what this bag is made from, taken before any pixel is read
    plan = plan_reads(grid, opts, getattr(encoder, "ssl_encoder", None) is not None, sid)
    ds = RegionDataset(open_slide(slide, mpp=opts.mpp, mpp_csv=opts.mpp_csv, require_mpp=False), plan.parts,
                       plan.out_px)
    try:
        feats, f5, timing = encode_reads(ds, plan, encoder, opts, grid.slide or sid, sid)
        mpp0 = grid.mpp_level0 if grid.mpp_level0 is not None else ds.wsi.mpp
    finally:
        ds.wsi.close()
    attrs = {**bag_attrs(encoder, opts, grid, plan, sid, mpp0, coords_file, signature), **inputs}
    write_slide_bag(out_path, plan, feats, f5, attrs, sid, coords_file, opts.clam_pt)
    return {"n_20x": int(len(plan.coords)), "n_5x": int(0 if plan.c5 is None else len(plan.c5)), **timing}


# ------------------------------------------------------------------------------------------------ cohort


def extract_signature(encoder, opts: ExtractOptions, tiles_source: str) -> str:
    """Hash of everything that changes a bag's content: encoder config + weights, mags, tiling source."""
    payload = {"encoder": encoder.full_config(), "weights": encoder.weights_sha256, "mags": list(opts.mags),
               "tiles": tiles_source, "mpp": opts.mpp, "missing_children": opts.missing_children}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def clam_pt_path(bag: str | os.PathLike) -> Path:
    """``--clam-pt`` output of a bag: ``pt_files/{id}.pt`` beside it (id = the bag's, never a file attribute)."""
    return output_path(Path(bag).parent / "pt_files", Path(bag).stem, ".pt")


class InputChangedError(ValueError):
    """A coordinate file made from another version of its slide (the slide was replaced after tiling)."""


def input_record(slide: str | os.PathLike, coords_file: str | os.PathLike | None) -> dict:
    """What a bag is made from: the slide's :func:`~zoomfeat.io.file_fingerprint` and the coordinate file's sha256
    (bag attributes ``slide_fingerprint`` and ``coords_sha256``)."""
    rec = {"slide_fingerprint": file_fingerprint(slide)}
    if coords_file is not None and Path(coords_file).is_file():
        rec["coords_sha256"] = sha256_file(coords_file)
    return rec


def bag_done(path: Path, signature: str, clam_pt: bool = False, inputs: dict | None = None) -> bool:
    """A slide is done when its bag (written last) exists, opens and has the same settings signature, and, with
    ``--clam-pt``, its ``.pt`` exists too (a bag from a run without ``--clam-pt`` is redone, not trusted).

    ``inputs`` (:func:`input_record` of the slide and coordinate file now): every value the bag recorded must be
    the same, so a replaced slide or re-tiled coordinates redo the bag. A bag that records none (extracted before
    zoomfeat recorded its inputs) is trusted, as before."""
    if not path.exists() or (clam_pt and not clam_pt_path(path).exists()):
        return False
    try:
        attrs = read_bag_attrs(path)
    except (OSError, ValueError):
        return False
    if attrs.get("extract_signature") != signature:
        return False
    return all(attrs.get(k) in (None, v) for k, v in (inputs or {}).items())


def load_grid(slide: Path, tiles_dir: Path | None, out_dir: Path, opts: ExtractOptions):
    """The slide's tile grid and coordinate file: from ``tiles_dir`` (a zoomfeat, CLAM or TRIDENT folder; peer
    files get the slide's own mpp) or tiled on the fly into ``out_dir/_tiles``."""
    sid = slide_id(slide)
    if tiles_dir is not None:
        try:
            cp = find_coords(tiles_dir, sid)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e} (run `zoomfeat tile` first, or omit --tiles)") from None
    else:
        tdir = out_dir / TILES_ON_THE_FLY
        cp = coords_path(tdir, sid)
        if not coords_done(tdir, slide):  # missing, or tiled from a slide since replaced: tile (again)
            kw = {"mpp": opts.mpp, "mpp_csv": opts.mpp_csv,
                  "scales": (0, 2) if "5x" in opts.mags else (0,)}
            if opts.min_tissue is not None:
                kw["min_tissue"] = opts.min_tissue
            cp = Path(tile_slide(slide, tdir, **kw))
    check_coords_slide(cp, slide)
    grid = read_coords(cp, mpp=opts.mpp)
    if grid.attrs.get("format") != "zoomfeat" and opts.mpp is None:
        # CLAM records no resolution and TRIDENT only a magnification (mpp assumed 10/mag): use the slide's own

        with open_slide(slide, mpp_csv=opts.mpp_csv, require_mpp=False) as wsi:
            if wsi.mpp is not None and np.isfinite(wsi.mpp):
                grid = read_coords(cp, mpp=float(wsi.mpp))
    return grid, cp


def check_coords_slide(coords_file: Path, slide: Path) -> None:
    """Refuse (:class:`InputChangedError`, one line) a coordinate file whose recorded slide fingerprint is not the
    slide's now: its tiles were found on other pixels."""
    rec = recorded_fingerprint(coords_file)
    if rec is not None and rec != file_fingerprint(slide):
        raise InputChangedError(f"{coords_file} was tiled from another version of {slide} (the slide changed since "
                                "`zoomfeat tile`); re-run `zoomfeat tile` on it")


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

    check_supported(device, encoder.precision)
    encoder.to(device)
    tag = opts.tag or encoder.name
    sig = extract_signature(encoder, opts, "tiles:" + (str(tiles_dir.resolve()) if tiles_dir else "on-the-fly"))

    share = process_share(opts.shard)  # torchrun rank and/or --shard K/N: one round-robin split
    rank, world = share.index, share.count
    mine = share.take(slides)
    feat_dir = bag_path(out_dir, tag, "x").parent
    feat_dir.mkdir(parents=True, exist_ok=True)

    def is_done(slide: Path) -> bool:
        bag = bag_path(out_dir, tag, slide_id(slide))
        if not bag_done(bag, sig, opts.clam_pt):
            return False
        return bag_done(bag, sig, opts.clam_pt, input_record(slide, current_coords(slide, tiles_dir, out_dir)))

    def process(slide: Path) -> dict:
        grid, cp = load_grid(slide, tiles_dir, out_dir, opts)
        return extract_slide(slide, grid, encoder, bag_path(out_dir, tag, slide_id(slide)), opts, cp, sig)

    report = run_cohort(mine, process, is_done, lock_dir=feat_dir / ".locks", all_slides=slides,
                        desc=f"extract {tag}" + (f" rank {rank}/{world}" if world > 1 else ""),
                        progress=opts.progress)
    _write_timings(report, feat_dir, rank if world > 1 else None)
    if world > 1:
        report.write(feat_dir, f"summary_rank{rank}")

        write_json_atomic(feat_dir / f"summary_rank{rank}.meta.json",
                          {"run_id": share.run_id, "rank": rank, "world": world})
        merged = merge_rank_summaries(feat_dir, world, share.run_id)
        if merged is not None:
            return merged if rank == 0 else report
    else:
        report.write(feat_dir, "summary")
    return report


def current_coords(slide: Path, tiles_dir: Path | None, out_dir: Path) -> Path | None:
    """The coordinate file extract would use for ``slide`` now (None: none yet)."""
    if tiles_dir is None:
        return coords_path(out_dir / TILES_ON_THE_FLY, slide_id(slide))
    try:
        return find_coords(tiles_dir, slide_id(slide))
    except FileNotFoundError:
        return None


def _write_timings(report: CohortReport, feat_dir: Path, rank: int | None) -> None:
    """Per-slide timings; a write error (full disk) is one line on stderr and the summary is still written."""
    import sys

    rows = [{"slide": r.slide, "status": r.status, "seconds": round(r.seconds, 3), **r.info}
            for r in report.results if r.info]
    path = feat_dir / ("timings.json" if rank is None else f"timings_rank{rank}.json")
    if rows:
        try:
            write_json_atomic(path, rows)
        except OSError as exc:
            print(f"zoomfeat: could not write {path}: {one_line_error(exc)}", file=sys.stderr)


def merge_rank_summaries(feat_dir: str | os.PathLike, world: int, run_id: str | None = None) -> CohortReport | None:
    """Merge ``summary_rank{r}`` of all ranks into ``summary`` once all are present from the same run.

    Every rank calls this after writing its own file; the last one to finish finds all and merges (a concurrent
    double merge writes the same content atomically). Returns the merged report, or None if ranks are missing.
    """
    import csv

    feat_dir = Path(feat_dir)
    if run_id is None:  # this process's job id, by the one rule of zoomfeat.sharding

        run_id = process_share().run_id
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


__all__ = ["ExtractOptions", "ExtractConfig", "load_extract_config", "extract_slide", "encode_reads", "bag_attrs",
           "write_slide_bag", "extract_cohort", "extract_signature", "merge_rank_summaries", "load_grid",
           "RegionDataset", "region_loader", "bag_done", "input_record", "InputChangedError", "check_coords_slide",
           "current_coords"]
