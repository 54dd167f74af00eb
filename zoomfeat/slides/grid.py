"""The linked multi-scale tile lattice: 20x tiles and their parents at the 8 ZoomLDM scales.

One lattice per slide, anchored at level-0 (0, 0): the 20x tile (ix, iy) covers
``[ix·s, (ix+1)·s) × [iy·s, (iy+1)·s)`` level-0 px with ``s = patch_size_level0``. The scale-k region
(a 256·2^k px 20x region shown at 256 px) with index (jx, jy) holds exactly the 20x tiles with
``ix >> k == jx`` and ``iy >> k == jy`` — e.g. each 5x region (k = 2) holds a 4×4 block of 20x tiles —
so a 20x tile always lies inside its parent and the link is an integer division, not a search.
A region is kept when any of its 20x children is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Relative mismatch below which a tile is read natively at a pyramid level (no resize), e.g. a
#: 0.499 µm/px slide gives 256-px 20x tiles of 256 level-0 px instead of resampling by 0.2 %.
SNAP_TOLERANCE = 0.01


def patch_size_level0(
    mpp: float,
    level_downsamples: tuple[float, ...] | list[float],
    target_mpp: float,
    patch_px: int = 256,
    snap_tol: float = SNAP_TOLERANCE,
) -> tuple[int, int | None]:
    """Level-0 side (int px) of one ``patch_px`` tile at ``target_mpp``, and the pyramid level that
    holds it natively (``patch_px`` px at that level, so CLAM-style reads work) or None.

    The exact size ``patch_px·target_mpp/mpp`` is used (rounded to whole level-0 px) unless a level gives
    ``patch_px`` px within ``snap_tol``; then that level's measured downsample defines the size.
    """
    exact = patch_px * float(target_mpp) / float(mpp)
    for level in sorted(range(len(level_downsamples)), key=lambda i: -level_downsamples[i]):
        ds = float(level_downsamples[level])
        if abs(exact / ds - patch_px) <= snap_tol * patch_px:
            return max(1, int(round(patch_px * ds))), level
    return max(1, int(round(exact))), None


def native_level(
    size_l0: int, level_downsamples: tuple[float, ...] | list[float], patch_px: int = 256,
    snap_tol: float = SNAP_TOLERANCE,
) -> int | None:
    """The pyramid level at which a ``size_l0`` level-0 region is ``patch_px`` px (within ``snap_tol``), if any."""
    for level in sorted(range(len(level_downsamples)), key=lambda i: -level_downsamples[i]):
        if abs(size_l0 / float(level_downsamples[level]) - patch_px) <= snap_tol * patch_px:
            return level
    return None


def full_grid(width: int, height: int, size_l0: int) -> np.ndarray:
    """All whole tiles that fit in the slide, (N, 2) int64 level-0 top-left, row-major (y, then x)."""
    nx, ny = int(width) // int(size_l0), int(height) // int(size_l0)
    if nx == 0 or ny == 0:
        return np.zeros((0, 2), np.int64)
    iy, ix = np.meshgrid(np.arange(ny, dtype=np.int64), np.arange(nx, dtype=np.int64), indexing="ij")
    return np.stack([ix.ravel(), iy.ravel()], axis=1) * np.int64(size_l0)


def parent_regions(coords: np.ndarray, size_l0: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale-k regions holding the given 20x tiles, and for each tile the row of its region.

    Returns ``(region_coords (M, 2) int64 row-major, parent_index (N,) int64)``.
    """
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    if len(coords) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    idx = coords // np.int64(size_l0)
    pidx = idx >> k
    # row-major order of regions: sort by (y, x)
    keys = pidx[:, 1] * (int(pidx[:, 0].max()) + 1) + pidx[:, 0]
    uniq, inverse = np.unique(keys, return_inverse=True)
    first = np.zeros(len(uniq), np.int64)
    first[inverse[::-1]] = np.arange(len(keys))[::-1]
    regions = pidx[first] * np.int64(size_l0 << k)
    return regions.astype(np.int64), inverse.astype(np.int64).ravel()


def child_grid(coords: np.ndarray, size_l0: int, side: int = 4) -> np.ndarray:
    """Level-0 top-left of the ``side × side`` 20x tiles (level-0 side ``size_l0``) of each region in ``coords``:
    ``(M, side², 2)``, row-major (y, then x) — the order of the SSL grid a ZoomLDM region is conditioned on (a 5x
    region holds 4×4 20x tiles, a scale-k region 2^k × 2^k). The one place this geometry is written."""
    j, i = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    offs = np.stack([i.ravel(), j.ravel()], axis=1).astype(np.int64) * np.int64(size_l0)  # (side², 2) (x, y)
    return np.asarray(coords, np.int64).reshape(-1, 2)[:, None, :] + offs[None]


def scale_sizes(size_l0: int, scales) -> dict[int, int]:
    """Level-0 side of a scale-k region: 2^k 20x tiles."""
    return {int(k): int(size_l0) << int(k) for k in scales}


def check_nesting(coords: np.ndarray, size_l0: int, parents: np.ndarray, parent_size: int, parent_index: np.ndarray) -> bool:
    """True when every tile lies inside its parent region (used by tests and as a write-time assertion)."""
    if len(coords) == 0:
        return True
    p = parents[parent_index]
    return bool(
        np.all(coords >= p) and np.all(coords + size_l0 <= p + parent_size)
    )


def n_tiles_expected(width: int, height: int, size_l0: int) -> int:
    return (int(width) // int(size_l0)) * (int(height) // int(size_l0))


def region_count(n: int, k: int) -> int:
    return math.ceil(n / 2**k)


# ------------------------------------------------------------------------------------------------ 5x regions and SSL grids

#: Read-request kinds of one slide, in processing order: 20x tiles, background children of 5x regions (SSL only),
#: 5x regions. The 5x conditioning needs every child's embedding, so the regions come last.
KIND_20X, KIND_CHILD, KIND_5X = 0, 1, 2


def parents_5x(grid) -> tuple[np.ndarray, np.ndarray, int]:
    """5x regions (coords, parent_index, level-0 size) from the tiling file, or derived on the lattice anchored at
    (0, 0) (4×4 tiles per region) when the coordinate file has none (CLAM/TRIDENT files)."""
    s = int(grid.patch_size_level0)
    if grid.coords_5x is not None and grid.parent_index is not None:
        return (np.asarray(grid.coords_5x, np.int64), np.asarray(grid.parent_index, np.int64),
                int(grid.patch_size_level0_5x or 4 * s))
    coords = np.asarray(grid.coords, np.int64).reshape(-1, 2)
    # CLAM anchors its grid at the tissue contour's corner (e.g. x = 320, y = 70), not at (0, 0): anchor the 5x
    # lattice at the grid's own origin so that every tile lies inside its parent region
    origin = coords[0] % s if len(coords) else np.zeros(2, np.int64)
    if not (coords % s == origin).all():
        origin = np.zeros(2, np.int64)  # irregular grid (overlap): tiles may straddle two regions
    c5, pidx = parent_regions(coords - origin, s, 2)
    return c5 + origin, pidx, 4 * s


@dataclass
class ReadPlan:
    """What one slide's extraction reads (``parts[kind] = (coords, level-0 side)``, in processing order) and where
    each read's output goes: 20x tiles, 5x regions and, for an encoder with an SSL encoder, each region's children
    (``kid_rows``: row in ``coords`` of every child, row-major per region; -1 = background, read when embedded)."""

    coords: np.ndarray
    size: int
    out_px: int
    parts: dict[int, tuple[np.ndarray, int]]
    c5: np.ndarray | None = None
    pidx: np.ndarray | None = None
    size_5x: int | None = None
    kid_rows: np.ndarray | None = None
    counts: dict = field(default_factory=dict)


def plan_reads(grid, opts, with_ssl: bool, sid: str = "") -> ReadPlan:
    """The read plan of one slide: 20x tiles, then background children of 5x regions (SSL grids only), then the
    5x regions (their conditioning needs every child's embedding, so they come last). ``opts``: the extraction
    options (:class:`zoomfeat.extract.ExtractOptions`; its ``mags`` and ``missing_children`` are read)."""
    s = int(grid.patch_size_level0)
    coords = np.asarray(grid.coords, np.int64).reshape(-1, 2)
    if len(coords) == 0:
        raise ValueError(f"{sid}: the coordinate file has no tiles")
    plan = ReadPlan(coords, s, int(grid.patch_size), {KIND_20X: (coords, s)})
    if "5x" not in opts.mags:
        return plan
    plan.c5, plan.pidx, plan.size_5x = parents_5x(grid)
    if with_ssl:
        # SSL grid of each 5x region: kept children reuse their 20x embedding, the others are read and embedded
        kids = child_grid(plan.c5, s).reshape(-1, 2)
        known = {(int(x), int(y)): r for r, (x, y) in enumerate(coords)}
        rows = np.array([known.get((int(x), int(y)), -1) for x, y in kids], np.int64)
        plan.kid_rows = rows
        if opts.missing_children == "embed":
            plan.parts[KIND_CHILD] = (kids[rows < 0], s)
            plan.counts["children_embedded_5x"] = int((rows < 0).sum())
        else:
            plan.counts["children_mean_filled_5x"] = int((rows < 0).sum())
    plan.parts[KIND_5X] = (plan.c5, plan.size_5x)
    return plan


def ssl_grids_5x(ssl20: np.ndarray, emb: np.ndarray, kid_rows: np.ndarray, missing: str) -> np.ndarray:
    """(M, C, 4, 4) SSL grids of the 5x regions from their children, row-major: tissue children take their 20x
    embedding (``ssl20``), background ones their own (``emb``, ``missing='embed'``) or the mean of the region's
    tissue children (``missing='mean'``). Fills ``emb`` in place."""
    emb[kid_rows >= 0] = ssl20[kid_rows[kid_rows >= 0]]
    n = len(kid_rows) // 16
    per_region = emb.reshape(n, 16, -1)
    if missing == "mean":
        kept = (kid_rows >= 0).reshape(n, 16)
        mean = (per_region * kept[..., None]).sum(1) / kept.sum(1, keepdims=True)
        per_region[~kept] = np.repeat(mean, (~kept).sum(1), axis=0)
    return per_region.reshape(n, 4, 4, -1).transpose(0, 3, 1, 2)  # row-major → (M, C, 4, 4)
