"""Slides stage: OpenSlide reading at any µm/px, tissue detection, linked multi-scale tile grids, synthetic cohorts."""

from zoomfeat.slides.coords import TileGrid, coords_path, geojson_path, qc_path, read_coords, write_coords
from zoomfeat.slides.reader import WSI, MppError, SlideOpenError, SlideReadError, open_slide

__all__ = [
    "WSI", "MppError", "SlideOpenError", "SlideReadError", "open_slide",
    "TileGrid", "coords_path", "geojson_path", "qc_path", "read_coords", "write_coords",
    "tile_slide", "tile_cohort", "make_cohort", "make_slide",
]


def __getattr__(name: str):
    # tiling / synthetic pull in skimage, shapely, tifffile: import them only when used
    if name in ("tile_slide", "tile_cohort"):
        from zoomfeat.slides import tiling

        return getattr(tiling, name)
    if name in ("make_cohort", "make_slide"):
        from zoomfeat.slides import synthetic

        return getattr(synthetic, name)
    raise AttributeError(name)
