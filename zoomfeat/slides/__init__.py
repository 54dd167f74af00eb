"""Slides stage: OpenSlide reading at any µm/px, tissue detection, linked multi-scale tile grids, synthetic cohorts.

Public names are resolved on first use (PEP 562): tiling and synthetic slides pull in skimage, shapely and tifffile,
which a module reading only the grid geometry (:mod:`zoomfeat.slides.grid`) does not need.
"""

from zoomfeat.exports import lazy_getattr

#: public name → its module
_EXPORTS = {
    "WSI": "reader", "MppError": "reader", "SlideOpenError": "reader", "SlideReadError": "reader",
    "open_slide": "reader",
    "TileGrid": "coords", "coords_path": "coords", "geojson_path": "coords", "qc_path": "coords",
    "read_coords": "coords", "write_coords": "coords",
    "tile_slide": "tiling", "tile_cohort": "tiling",
    "make_cohort": "synthetic", "make_slide": "synthetic",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
