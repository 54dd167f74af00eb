"""Magnifications as ZoomLDM sees them: one table, so tiling, models and extraction agree.

Magnification is defined by resolution, not by a pyramid level: 20x = 0.5 µm/px (configurable through
``base_mpp``). ZoomLDM scale index k (0 … 7) is a 256·2^k px region at 20x shown at 256 px, i.e.
20/2^k x = 0.5·2^k µm/px.
"""

from __future__ import annotations

import re

BASE_MAG = 20.0
BASE_MPP = 0.5
N_SCALES = 8
#: ZoomLDM BRCA magnification table (index → label), spec §1.5.
MAG_LABELS = ["20x", "10x", "5x", "2.5x", "1.25x", "0.625x", "0.3125x", "0.15625x"]

_MAG_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*[xX]?\s*$")


def mag_to_index(mag: int | str | float) -> int:
    """Return the ZoomLDM scale index for ``mag``.

    Accepts an index (0 = 20x … 7 = 0.15625x) as int, or a string/float magnification such as "5x",
    "2.5x", "2_5x" or 1.25. Raises ValueError for anything that is not one of the 8 scales.
    """
    if isinstance(mag, bool):
        raise ValueError(f"invalid magnification {mag!r}")
    if isinstance(mag, int):
        if 0 <= mag < N_SCALES:
            return mag
        raise ValueError(f"magnification index {mag} out of range 0..{N_SCALES - 1}")
    if isinstance(mag, float):
        value = mag
    else:
        s = str(mag).replace("_", ".")
        m = _MAG_RE.match(s)
        if not m:
            raise ValueError(f"cannot parse magnification {mag!r}; use an index 0..7 or a string like '5x'")
        if s.strip().isdigit() and "x" not in s.lower():
            return mag_to_index(int(s))
        value = float(m.group(1))
    for k in range(N_SCALES):
        if abs(value - BASE_MAG / 2**k) < 1e-6 * max(1.0, value):
            return k
    raise ValueError(f"magnification {mag!r} is not a ZoomLDM scale; valid: {', '.join(MAG_LABELS)}")


def index_to_label(k: int) -> str:
    return MAG_LABELS[mag_to_index(k)]


def mag_to_mpp(mag: int | str | float, base_mpp: float = BASE_MPP) -> float:
    """µm/px of a 256-px patch at ZoomLDM scale ``mag`` (20x → base_mpp, each scale halves the mag)."""
    return base_mpp * 2 ** mag_to_index(mag)


def region_px_20x(mag: int | str | float, patch_px: int = 256) -> int:
    """Side of the 20x region (px) that a ``patch_px`` patch at scale ``mag`` covers: 256·2^k."""
    return patch_px * 2 ** mag_to_index(mag)
