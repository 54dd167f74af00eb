"""Tile slides: tissue mask → linked multi-scale grid → coordinate HDF5 + QC PNG + GeoJSON, per slide and per cohort.

A slide is done when its coordinate HDF5 exists (it is written last and atomically), so a killed run
resumes by rerunning and never trusts a partial file.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from zoomfeat.cohort import CohortReport, SlideResult, one_line_error, run_cohort
from zoomfeat.io import file_fingerprint, kill_point, remove_dead_temps, sweep_locks
from zoomfeat.mags import BASE_MPP, MAG_LABELS, N_SCALES, mag_to_index
from zoomfeat.names import id_collisions, resolve_slides, slide_id
from zoomfeat.slides import grid as G
from zoomfeat.slides.coords import (
    TileGrid,
    coord_attrs,
    coords_path,
    geojson_path,
    qc_path,
    write_coords,
)
from zoomfeat.slides.reader import MPP_RANGE, MppError, open_slide, plausible_mpp, read_mpp_csv
from zoomfeat.slides.tissue import detect_tissue, mask_polygons, save_qc_png, tile_tissue_fraction, write_geojson

DEFAULT_SCALES = (0, 2)
DEFAULT_MIN_TISSUE = 0.25
#: Resolution of the tissue-detection thumbnail (µm/px): 16 thumbnail px per 256-px 20x tile.
THUMB_MPP = 8.0


@dataclass
class TilingConfig:
    """Every default of ``zoomfeat tile``: ``--config`` YAML (e.g. configs/tiling.yaml) and CLI flags only override
    these (:func:`zoomfeat.config.load_config`)."""

    base_mpp: float = field(default=BASE_MPP, metadata={
        "help": "µm/px that defines 20x (magnification is defined by resolution, not pyramid level)"})
    target_mpp: float | None = field(default=None, metadata={"help": "µm/px of the 20x tiles (default: base mpp)"})
    patch_px: int = field(default=256, metadata={"help": "tile side at the target resolution"})
    scales: str = field(default="20x,5x", metadata={"help": "'20x,5x' or 'all' (the 8 ZoomLDM scales, training "
                                                            "data)"})
    min_tissue: float = field(default=DEFAULT_MIN_TISSUE, metadata={"help": "minimum tissue fraction per 20x tile"})
    thumb_mpp: float = field(default=THUMB_MPP, metadata={"help": "µm/px of the tissue-detection thumbnail"})
    qc: bool = field(default=True, metadata={"flag": "--no-qc", "help": "skip the QC PNG (qc/{slide}.png)"})
    workers: int = field(default=1, metadata={"help": "slide-level worker processes"})

    def tile_kwargs(self) -> dict:
        """The :func:`tile_slide` / :func:`tile_cohort` keyword arguments of this config."""
        return {"min_tissue": float(self.min_tissue), "scales": self.scales, "target_mpp": self.target_mpp,
                "base_mpp": float(self.base_mpp), "patch_px": int(self.patch_px), "thumb_mpp": float(self.thumb_mpp),
                "qc": bool(self.qc)}


class NoTissueError(ValueError):
    """The tissue detector kept no tile (blank slide, or --min-tissue too high)."""


class SlideTooSmallError(ValueError):
    """The slide is smaller than one tile at the target resolution."""


def parse_scales(spec: str | Sequence[int | str] | None) -> tuple[int, ...]:
    """``"all"`` → 0..7; ``"20x,5x"`` or ``[0, 2]`` → (0, 2). 20x (k=0) is always included."""
    if spec is None:
        return DEFAULT_SCALES
    if isinstance(spec, str):
        if spec.strip().lower() == "all":
            return tuple(range(N_SCALES))
        items: list = [s for s in spec.replace(" ", "").split(",") if s]
    else:
        items = list(spec)
    ks = {mag_to_index(s) for s in items} | {0}
    return tuple(sorted(ks))


def build_grid(
    wsi,
    min_tissue: float = DEFAULT_MIN_TISSUE,
    scales: Sequence[int] = DEFAULT_SCALES,
    target_mpp: float | None = None,
    patch_px: int = 256,
    thumb_mpp: float = THUMB_MPP,
    out_dir: str | os.PathLike | None = None,
):
    """Compute the linked grid for an open slide. Returns ``(TileGrid, scale_attrs, tissue_mask)``."""
    target_mpp = float(target_mpp or wsi.base_mpp)
    scales = tuple(sorted(set(int(k) for k in scales) | {0}))
    ps0, _ = G.patch_size_level0(wsi.mpp, wsi.level_downsamples, target_mpp, patch_px)
    w, h = wsi.dimensions
    if w < ps0 or h < ps0:
        raise SlideTooSmallError(
            f"{wsi.path.name}: slide is {w}x{h} px at {wsi.mpp:.4g} µm/px, smaller than one {patch_px}-px tile "
            f"at {target_mpp} µm/px ({ps0} level-0 px)"
        )
    thumb, scale = wsi.thumbnail_at_mpp(thumb_mpp)
    tm = detect_tissue(thumb, scale)
    cand = G.full_grid(w, h, ps0)
    frac = tile_tissue_fraction(tm, cand, ps0)
    keep = frac >= float(min_tissue)
    if min_tissue <= 0:
        keep = frac > 0
    coords = cand[keep]
    if len(coords) == 0:
        raise NoTissueError(
            f"{wsi.path.name}: no tile has tissue fraction ≥ {min_tissue} (tissue covers "
            f"{100 * tm.fraction:.1f}% of the thumbnail); lower --min-tissue or check the slide"
        )
    scale_map: dict[int, tuple[np.ndarray, int]] = {0: (coords, ps0)}
    parents: dict[int, np.ndarray] = {}
    for k in scales:
        if k == 0:
            continue
        regions, pidx = G.parent_regions(coords, ps0, k)
        scale_map[k] = (regions, ps0 << k)
        parents[k] = pidx
        if not G.check_nesting(coords, ps0, regions, ps0 << k, pidx):  # cannot happen by construction
            raise RuntimeError(f"{wsi.path.name}: internal error, a 20x tile lies outside its scale-{k} region")
    savetodir = str(out_dir) if out_dir is not None else ""

    def clam_attrs(size: int) -> dict | None:
        # CLAM's patch_level/patch_size only where a level holds the region natively at patch_px
        lvl = G.native_level(size, wsi.level_downsamples, patch_px)
        if lvl is None:
            return None
        return {"patch_level": lvl, "downsample": wsi.level_downsamples[lvl], "level_dim": wsi.level_dimensions[lvl]}

    scale_attrs = {
        k: coord_attrs(
            wsi.name, patch_px, size, wsi.mpp, wsi.mpp_source, target_mpp * 2**k, w, h, savetodir, k,
            base_mpp=wsi.base_mpp, clam=clam_attrs(size),
        )
        for k, (_, size) in scale_map.items()
    }
    c5 = scale_map.get(2)
    grid = TileGrid(
        slide=wsi.name,
        coords=coords,
        patch_size=patch_px,
        patch_size_level0=ps0,
        target_mpp=target_mpp,
        mpp_level0=wsi.mpp,
        mpp_source=wsi.mpp_source,
        coords_5x=None if c5 is None else c5[0],
        patch_size_level0_5x=None if c5 is None else c5[1],
        parent_index=parents.get(2),
        scales=scale_map,
        attrs=dict(scale_attrs[0]),
        tissue_fraction=frac[keep],
    )
    return grid, scale_attrs, tm


def tile_slide(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    mpp: float | None = None,
    mpp_csv: str | os.PathLike | dict | None = None,
    min_tissue: float = DEFAULT_MIN_TISSUE,
    scales: Sequence[int] | str = DEFAULT_SCALES,
    target_mpp: float | None = None,
    base_mpp: float = BASE_MPP,
    patch_px: int = 256,
    thumb_mpp: float = THUMB_MPP,
    qc: bool = True,
) -> Path:
    """Tile one slide into ``out_dir`` (coords/, qc/, geojson/) and return the coordinate file path.

    Raises a clear per-slide error for unopenable files, unreadable pixels, missing/implausible mpp
    (naming ``--mpp-csv``), slides smaller than one tile and slides without tissue.
    """
    out_dir = Path(out_dir)
    scales = parse_scales(scales)
    sid = slide_id(path)
    fingerprint = file_fingerprint(path)  # of the bytes about to be read, recorded so a replaced slide is redone
    for final in (coords_path(out_dir, sid), qc_path(out_dir, sid), geojson_path(out_dir, sid)):
        remove_dead_temps(final)
    with open_slide(path, mpp=mpp, mpp_csv=mpp_csv, base_mpp=base_mpp) as wsi:
        wsi.check_readable()
        grid, scale_attrs, tm = build_grid(
            wsi, min_tissue=min_tissue, scales=scales, target_mpp=target_mpp, patch_px=patch_px,
            thumb_mpp=thumb_mpp, out_dir=out_dir,
        )
        # side outputs first: the coordinate file is the completion marker, written last
        geom = mask_polygons(tm)
        write_geojson(geom, geojson_path(out_dir, sid), {"slide": sid})
        if qc:
            c5 = grid.scales.get(2)
            save_qc_png(
                tm, qc_path(out_dir, sid), grid.coords, grid.patch_size_level0,
                parents=None if c5 is None else c5[0], parent_size_l0=None if c5 is None else c5[1],
                title=f"{sid}  {len(grid)} tiles @ {grid.target_mpp} um/px  mpp={wsi.mpp:.4g} ({wsi.mpp_source})",
            )
        import openslide

        file_attrs = {
            "slide_path": str(Path(path).resolve()),
            "slide_fingerprint": fingerprint,
            "min_tissue": float(min_tissue),
            "tissue_threshold_saturation": float(tm.threshold),
            "thumb_scale_level0_px": float(tm.scale),
            "reader": "openslide",
            "reader_version": f"openslide-python {openslide.__version__}, libopenslide {openslide.__library_version__}",
            "vendor": wsi.vendor or "unknown",
            "objective_power": wsi.objective_power,
            "level_downsamples": np.asarray(wsi.level_downsamples, np.float64),
        }
        return write_coords(coords_path(out_dir, sid), grid, scale_attrs, file_attrs)


def coords_done(out_dir: str | os.PathLike, slide: str | os.PathLike) -> bool:
    """A slide is tiled when its coordinate file exists and was made from this very slide: the file's recorded
    ``slide_fingerprint`` (:func:`zoomfeat.io.file_fingerprint`) matches the slide now. A file that records none
    (written before zoomfeat recorded it) is trusted, as before."""
    cp = coords_path(out_dir, slide_id(slide))
    if not cp.exists():
        return False
    rec = recorded_fingerprint(cp)
    return rec is None or rec == file_fingerprint(slide)


def recorded_fingerprint(coords_file: str | os.PathLike) -> str | None:
    """The ``slide_fingerprint`` a zoomfeat coordinate file records (None: none recorded, or unreadable)."""
    import h5py

    try:
        with h5py.File(coords_file, "r") as f:
            v = f.attrs.get("slide_fingerprint")
    except (OSError, ValueError):
        return None
    return None if v is None else (v.decode() if isinstance(v, bytes) else str(v))


def _tile_one(slide: str, out_dir: str, kwargs: dict) -> SlideResult:
    """Worker entry for parallel tiling: the same run_cohort semantics (lock, skip, error capture) per slide."""
    rep = run_cohort(
        [slide], lambda p: _process(p, out_dir, kwargs), lambda p: coords_done(out_dir, p),
        lock_dir=Path(out_dir) / ".locks", desc="tile", progress=False, sweep=False,
    )
    return rep.results[0]


def _process(p: Path, out_dir: str | os.PathLike, kwargs: dict) -> dict:
    path = tile_slide(p, out_dir, **kwargs)
    import h5py

    with h5py.File(path, "r") as f:
        n = int(f["coords"].shape[0])
        n5 = int(f["5x/coords"].shape[0]) if "5x" in f else 0
        mpp_src = f["coords"].attrs.get("mpp_source")
    return {"tiles_20x": n, "regions_5x": n5, "mpp_source": mpp_src}


def tile_cohort(
    slides: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    workers: int = 1,
    progress: bool = True,
    summary_name: str = "summary",
    **kwargs,
) -> CohortReport:
    """Tile every slide (folder, file, CSV or list); per-slide failures are recorded, others go on.

    Writes ``out_dir/summary.csv`` + ``summary.json``; slides whose coordinate file exists are skipped.
    ``kwargs`` go to :func:`tile_slide` (mpp, mpp_csv, min_tissue, scales, target_mpp, …).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(slides, (list, tuple)) and all(Path(s).is_file() for s in slides):
        paths = [Path(s) for s in slides]
    else:
        paths = resolve_slides(slides)
    if "scales" in kwargs:
        kwargs["scales"] = parse_scales(kwargs["scales"])
    # cohort-wide options are validated once, before any slide: a bad CSV is the user's error, not the slides'
    if kwargs.get("mpp_csv") is not None and not isinstance(kwargs["mpp_csv"], dict):
        kwargs["mpp_csv"] = read_mpp_csv(kwargs["mpp_csv"])
    if kwargs.get("mpp") is not None and not plausible_mpp(float(kwargs["mpp"])):
        raise MppError(
            f"--mpp {kwargs['mpp']} is outside the plausible range {MPP_RANGE[0]}–{MPP_RANGE[1]} µm/px; "
            "use a per-slide --mpp-csv file with the right values"
        )
    if workers <= 1 or len(paths) <= 1:
        report = run_cohort(
            paths, lambda p: _process(p, out_dir, kwargs), lambda p: coords_done(out_dir, p),
            lock_dir=out_dir / ".locks", desc="tile", progress=progress,
        )
    else:
        report = _tile_parallel(paths, out_dir, workers, kwargs, progress)
    report.write(out_dir, summary_name)
    return report


def _die_with_parent(parent_pid: int) -> None:
    """Pool-worker initializer: a worker exits when the process that started it dies (kill -9 included), so a
    killed ``tile --workers N`` leaves no orphans (and the resource tracker, whose pipe they hold, exits too)."""
    import signal
    import threading
    import time

    try:  # Linux: the kernel sends SIGKILL the moment the parent dies
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # elsewhere (and for a parent that died before prctl): poll the parent pid
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


def _tile_parallel(paths: list[Path], out_dir: Path, workers: int, kwargs: dict, progress: bool) -> CohortReport:
    """Slide-level process pool (spawn); workers die with this process; shared slide ids fail before any work."""
    import multiprocessing as mp

    from tqdm.auto import tqdm

    clashes = id_collisions(paths)
    sweep_locks(out_dir / ".locks")
    results: dict[int, SlideResult] = {
        i: SlideResult(p.stem, "failed", error=clashes[p.stem]) for i, p in enumerate(paths) if p.stem in clashes}
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_die_with_parent, initargs=(os.getpid(),)) as ex:
        futs = {ex.submit(_tile_one, str(p), str(out_dir), kwargs): i
                for i, p in enumerate(paths) if i not in results}
        for fut in tqdm(as_completed(futs), total=len(futs), desc="tile", unit="slide", disable=not progress):
            i = futs[fut]
            try:
                results[i] = fut.result()
            except Exception as exc:  # noqa: BLE001 - a crashed worker is one slide's failure
                results[i] = SlideResult(paths[i].stem, "failed", error=one_line_error(exc))
            kill_point("tile:pool_running")
    return CohortReport([results[i] for i in range(len(paths))])


def iter_tiles(wsi, grid: TileGrid, k: int = 0, out_px: int | None = None) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(xy, rgb uint8)`` for each scale-k region of ``grid`` in file (row-major) order."""
    coords, size = grid.region(k)
    out_px = out_px or grid.patch_size
    for xy in coords:
        yield xy, wsi.read_region_l0(int(xy[0]), int(xy[1]), size, out_px)


__all__ = [
    "DEFAULT_SCALES", "DEFAULT_MIN_TISSUE", "NoTissueError", "SlideTooSmallError", "parse_scales", "build_grid",
    "tile_slide", "tile_cohort", "iter_tiles", "MAG_LABELS", "coords_done", "recorded_fingerprint",
]
