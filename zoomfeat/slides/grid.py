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
