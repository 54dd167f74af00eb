"""Coordinate HDF5 files: write ours (TRIDENT + CLAM attributes + mpp + 20x→5x links), read ours, CLAM's and TRIDENT's.

Layout of ``{out}/coords/{slide_id}.h5`` (all coordinates level-0 px, top-left, int64, row-major):

- ``coords`` (N, 2): the 20x tiles. Attributes: TRIDENT's ``patch_size`` (px at the target resolution),
  ``patch_size_level0``, ``level0_magnification``, ``target_magnification``, ``overlap``, ``name``,
  ``savetodir``, ``level0_width``, ``level0_height``; CLAM's ``patch_level``, ``downsample``, ``level_dim``,
  ``downsampled_level_dim`` (only when ``patch_size`` px at ``patch_level`` is exactly the tile, so
  ``read_region(coords[i], patch_level, (patch_size,)*2)`` reads it natively); plus ``mpp_level0``,
  ``mpp_source``, ``target_mpp``, ``effective_mpp``, ``scale_index``.
- ``parent_index`` (N,): row of ``5x/coords`` holding each 20x tile (when 5x was tiled).
- ``tissue_fraction`` (N,) float32: tissue fraction of each 20x tile.
- one group per other scale, named by its magnification (``10x``, ``5x``, ``2.5x`` …) holding ``coords``
  (M, 2) with the same attribute set for that scale (``patch_size`` 256, ``patch_size_level0`` = 2^k × the
  20x one).
- file attributes: ``zoomfeat_version``, ``created_utc``, ``slide_path``, ``scales``, ``min_tissue``,
  ``reader``, ``reader_version``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoomfeat import __version__
from zoomfeat.io import atomic_h5
from zoomfeat.mags import BASE_MPP, MAG_LABELS
from zoomfeat.names import check_slide_id, output_path

COORDS_DIR = "coords"
QC_DIR = "qc"
GEOJSON_DIR = "geojson"


def coords_path(tile_dir: str | os.PathLike, slide_id: str) -> Path:
    """Where ``zoomfeat tile --out tile_dir`` writes a slide's coordinate HDF5."""
    return output_path(Path(tile_dir) / COORDS_DIR, slide_id, ".h5")


def find_coords(tile_dir: str | os.PathLike, slide_id: str) -> Path:
    """A slide's coordinate file in a zoomfeat ``tile`` folder, a CLAM ``--save_dir``, a TRIDENT job folder (or
    one of its ``{mag}x_{px}px_{overlap}px_overlap`` folders), or a folder holding the files themselves.

    Lets CLAM and TRIDENT users reuse their patching. Raises FileNotFoundError naming every place looked at, and
    ValueError when a TRIDENT job folder holds several patchings of the slide (point at the one you want)."""
    root = Path(tile_dir)
    names = (f"{slide_id}.h5", f"{slide_id}_patches.h5")
    places = [root / COORDS_DIR / names[0]]  # zoomfeat
    places += [root / "patches" / n for n in names]  # CLAM save_dir, TRIDENT coords folder
    places += [root / n for n in names]  # the patches folder itself
    found = [p for p in places if p.is_file()]
    if not found:  # TRIDENT job root: <job>/<mag>x_<px>px_<overlap>px_overlap/patches/<id>_patches.h5
        found = sorted(root.glob(f"*/patches/{names[1]}"))
        if len(found) > 1:
            raise ValueError(f"{slide_id}: {len(found)} TRIDENT patchings under {root} "
                             f"({', '.join(p.parent.parent.name for p in found)}); pass that folder as --tiles")
        places.append(root / "*" / "patches" / names[1])
    if not found:
        raise FileNotFoundError(f"{slide_id}: no coordinate file in {root} (looked for "
                                + ", ".join(str(p.relative_to(root)) for p in places) + ")")
    return found[0]


def qc_path(tile_dir: str | os.PathLike, slide_id: str) -> Path:
    return output_path(Path(tile_dir) / QC_DIR, slide_id, ".png")


def geojson_path(tile_dir: str | os.PathLike, slide_id: str) -> Path:
    return output_path(Path(tile_dir) / GEOJSON_DIR, slide_id, ".geojson")


@dataclass
class TileGrid:
    """A slide's linked tiles. ``coords`` are the 20x tiles; ``scales[k] = (coords_k, size_level0_k)``."""

    slide: str
    coords: np.ndarray
    patch_size: int
    patch_size_level0: int
    target_mpp: float | None
    mpp_level0: float | None
    mpp_source: str
    coords_5x: np.ndarray | None = None
    patch_size_level0_5x: int | None = None
    parent_index: np.ndarray | None = None
    scales: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    tissue_fraction: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def patch_level(self) -> int | None:
        """The pyramid level holding the 20x tile natively (CLAM ``patch_level``), if any."""
        v = self.attrs.get("patch_level")
        return None if v is None else int(v)

    def region(self, k: int) -> tuple[np.ndarray, int]:
        """Coordinates and level-0 size of scale-k regions (k = 0 → the 20x tiles)."""
        if k == 0:
            return self.coords, self.patch_size_level0
        if k in self.scales:
            return self.scales[k]
        if k == 2 and self.coords_5x is not None:
            return self.coords_5x, int(self.patch_size_level0_5x)
        raise KeyError(f"scale {k} ({MAG_LABELS[k]}) was not tiled for {self.slide}; tile with --scales all")


def _json_safe(v: Any) -> Any:
    if v is None:
        return "None"
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return v


def _mag_value(x: float) -> float | int:
    return int(round(x)) if abs(x - round(x)) < 1e-9 else float(x)


def coord_attrs(
    slide: str,
    patch_px: int,
    size_l0: int,
    mpp: float,
    mpp_source: str,
    target_mpp: float,
    width: int,
    height: int,
    savetodir: str,
    k: int,
    base_mpp: float = BASE_MPP,
    clam: dict | None = None,
) -> dict[str, Any]:
    """Attribute set for one scale's ``coords`` dataset (TRIDENT + optional CLAM + ours)."""
    target_mag = 20.0 * base_mpp / target_mpp
    attrs: dict[str, Any] = {
        # TRIDENT
        "patch_size": int(patch_px),
        "patch_size_level0": int(size_l0),
        # chosen so TRIDENT's patch_size * level0_mag / target_mag == patch_size_level0 exactly
        "level0_magnification": _mag_value(target_mag * size_l0 / patch_px),
        "target_magnification": _mag_value(target_mag),
        "overlap": 0,
        "name": slide,
        "savetodir": savetodir,
        "level0_width": int(width),
        "level0_height": int(height),
        # ours
        "mpp_level0": float(mpp),
        "mpp_source": str(mpp_source),
        "target_mpp": float(target_mpp),
        "effective_mpp": float(size_l0 * mpp / patch_px),
        "scale_index": int(k),
        "magnification_label": MAG_LABELS[k],
        "coords_origin": "level-0 px, top-left",
    }
    if clam:
        attrs.update({
            "patch_level": int(clam["patch_level"]),
            "downsample": np.asarray([clam["downsample"]] * 2, np.float64),
            "level_dim": np.asarray(clam["level_dim"], np.int64),
            "downsampled_level_dim": np.asarray(clam["level_dim"], np.int64),
            "save_path": savetodir,
        })
    return attrs


def write_coords(
    path: str | os.PathLike,
    grid: TileGrid,
    scale_attrs: dict[int, dict] | None = None,
    file_attrs: dict | None = None,
) -> Path:
    """Write ``grid`` to ``path`` atomically (temp file + rename); ``scale_attrs[k]`` = attributes of the
    scale-k ``coords`` dataset (see :func:`coord_attrs`)."""
    path = Path(path)

    def _dataset(g, name: str, data: np.ndarray, attrs: dict | None = None):
        data = np.ascontiguousarray(data)
        chunks = (max(1, min(len(data), 4096)),) + data.shape[1:] if len(data) else None
        maxshape = (None,) + data.shape[1:]
        ds = g.create_dataset(name, data=data, chunks=chunks, maxshape=maxshape if chunks else None)
        for k, v in (attrs or {}).items():
            ds.attrs[k] = _json_safe(v)
        return ds

    with atomic_h5(path) as f:  # built in memory: a full disk is a plain OSError, never an HDF5 crash
        _dataset(f, "coords", np.asarray(grid.coords, np.int64).reshape(-1, 2), (scale_attrs or {}).get(0))
        if grid.parent_index is not None:
            _dataset(f, "parent_index", np.asarray(grid.parent_index, np.int64))
        if grid.tissue_fraction is not None:
            _dataset(f, "tissue_fraction", np.asarray(grid.tissue_fraction, np.float32))
        for k, (c, _size) in sorted(grid.scales.items()):
            if k == 0:
                continue
            g = f.create_group(MAG_LABELS[k])
            _dataset(g, "coords", np.asarray(c, np.int64).reshape(-1, 2), (scale_attrs or {}).get(k))
        fa = {
            "zoomfeat_version": __version__,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "scales": np.asarray(sorted(grid.scales), np.int64),
        }
        fa.update(file_attrs or {})
        for k, v in fa.items():
            f.attrs[k] = _json_safe(v)
    return path


def _attr(a, key: str, default: Any = None) -> Any:
    if key not in a:
        return default
    v = a[key]
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, str) and v == "None":
        return None
    return v


def read_coords(path: str | os.PathLike, mpp: float | None = None, base_mpp: float = BASE_MPP) -> TileGrid:
    """Read a coordinate HDF5 written by zoomfeat, CLAM (``patches/{id}.h5``) or TRIDENT (``*_patches.h5``).

    For CLAM files (no resolution recorded) pass the slide's ``mpp`` to fill ``mpp_level0``/``target_mpp``.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"coordinate file not found: {path}")
    with h5py.File(path, "r") as f:
        if "coords" not in f:
            raise ValueError(f"{path}: no 'coords' dataset; not a CLAM/TRIDENT/zoomfeat coordinate file")
        ds = f["coords"]
        coords = np.asarray(ds[:]).astype(np.int64).reshape(-1, 2)
        a = {k: _attr(ds.attrs, k) for k in ds.attrs}
        fa = {k: _attr(f.attrs, k) for k in f.attrs}
        name = a.get("name") or path.stem.removesuffix("_patches")

        check_slide_id(str(name), f"{path}: its 'name' attribute")  # file attributes never pick output paths
        attrs = {**fa, **a}
        if "zoomfeat_version" in fa:
            scales: dict[int, tuple[np.ndarray, int]] = {0: (coords, int(a["patch_size_level0"]))}
            for k, label in enumerate(MAG_LABELS):
                if k and label in f:
                    g = f[label]["coords"]
                    scales[k] = (np.asarray(g[:], np.int64).reshape(-1, 2), int(_attr(g.attrs, "patch_size_level0")))
            c5 = scales.get(2)
            return TileGrid(
                slide=str(name),
                coords=coords,
                patch_size=int(a["patch_size"]),
                patch_size_level0=int(a["patch_size_level0"]),
                target_mpp=float(a["target_mpp"]),
                mpp_level0=float(a["mpp_level0"]),
                mpp_source=str(a["mpp_source"]),
                coords_5x=None if c5 is None else c5[0],
                patch_size_level0_5x=None if c5 is None else c5[1],
                parent_index=np.asarray(f["parent_index"][:], np.int64) if "parent_index" in f else None,
                scales=scales,
                attrs={**attrs, "format": "zoomfeat"},
                tissue_fraction=np.asarray(f["tissue_fraction"][:], np.float32) if "tissue_fraction" in f else None,
            )
        if "patch_size_level0" in a or ("level0_magnification" in a and "target_magnification" in a):
            ps = int(a["patch_size"])
            l0mag, tmag = a.get("level0_magnification"), a.get("target_magnification")
            if a.get("patch_size_level0") is not None:
                ps0 = int(a["patch_size_level0"])
            else:
                ps0 = int(round(ps * float(l0mag) / float(tmag)))
            mpp0 = mpp if mpp is not None else (10.0 / float(l0mag) if l0mag else None)
            target = (mpp0 * ps0 / ps) if mpp0 else (10.0 / float(tmag) if tmag else None)
            return TileGrid(
                slide=str(name), coords=coords, patch_size=ps, patch_size_level0=ps0,
                target_mpp=target, mpp_level0=mpp0,
                mpp_source="given" if mpp is not None else "TRIDENT level0_magnification (assumed 10/mag)",
                scales={0: (coords, ps0)}, attrs={**attrs, "format": "trident"},
            )
        if "patch_level" in a and "patch_size" in a:
            ps = int(a["patch_size"])
            ds_attr = a.get("downsample")
            ds = float(np.asarray(ds_attr, np.float64).ravel()[0]) if ds_attr is not None else 1.0
            cd = int(a.get("custom_downsample") or 1)
            ps0 = int(round(ps * ds * cd))
            return TileGrid(
                slide=str(name), coords=coords, patch_size=ps, patch_size_level0=ps0,
                target_mpp=(mpp * ps0 / ps) if mpp else None, mpp_level0=mpp,
                mpp_source="given" if mpp is not None else "unknown (CLAM file records no resolution)",
                scales={0: (coords, ps0)}, attrs={**attrs, "format": "clam"},
            )
        raise ValueError(
            f"{path}: 'coords' has neither TRIDENT (patch_size_level0) nor CLAM (patch_level, patch_size) attributes"
        )
