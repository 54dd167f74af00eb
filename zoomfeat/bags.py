"""Feature bags on disk: write zoomfeat's HDF5 layout, read it back, and read bags made by CLAM, TRIDENT, STAMP and slideflow.

The layout (peer_toolkits §2.6) is readable as-is by CLAM (``features``/``coords`` at the root), TRIDENT (same, with
the TRIDENT coordinate attributes copied onto ``coords``) and torchmil, and adds what the peers lack:

    {out}/features_{encoder}/{slide_id}.h5
      features        float32 (N, D), row-chunked          attrs: name, encoder, savetodir (TRIDENT)
      coords          int64 (N, 2), level-0 top-left        attrs: the tiling file's TRIDENT + CLAM attributes
      parent_index    int64 (N,)  row of 5x/coords holding each 20x tile (only with 5x features)
      5x/features     float32 (M, D5)
      5x/coords       int64 (M, 2), level-0 top-left of the 5x parent regions
      file attrs      encoder, encoder_config (JSON), encoder_weights_sha256, block, t, conditioning, mpp_level0,
                      patch_size, patch_size_level0, toolkit_version, created_utc, ...

Everything is written to a temp file and renamed, so a file that exists is complete.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from zoomfeat.io import atomic_h5, write_bytes_atomic
from zoomfeat.names import output_path

#: Rows per HDF5 chunk: row-sized chunks (TRIDENT's (1, D)) make whole-bag reads slow; CLAM uses 32.
CHUNK_ROWS = 1024

MAG_CHOICES = ("20x", "5x", "20x+5x")


@dataclass
class Bag:
    """One slide's features as numpy arrays plus its metadata (whatever layout it was read from)."""

    features: np.ndarray  # (N, D) float32
    coords: np.ndarray | None = None  # (N, 2); level-0 px top-left unless coords_unit/coords_ref say otherwise
    features_5x: np.ndarray | None = None  # (M, D5) float32
    coords_5x: np.ndarray | None = None  # (M, 2)
    parent_index: np.ndarray | None = None  # (N,) int64 rows into features_5x
    attrs: dict = field(default_factory=dict)
    coords_attrs: dict = field(default_factory=dict)
    layout: str = "zoomfeat"  # zoomfeat | clam_h5 | clam_pt | trident | trident_pt | stamp | slideflow
    coords_unit: str = "px"  # "px" (level 0) or "um" (STAMP)
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def get(self, mag: str = "20x") -> np.ndarray:
        """Features for one magnification choice (see :func:`read_bag`)."""
        mag = _check_mag(mag)
        if mag == "20x":
            return self.features
        if self.features_5x is None:
            raise ValueError(f"{self.path}: bag has no 5x features (extract with --mags 20x,5x)")
        if mag == "5x":
            return self.features_5x
        if self.parent_index is None:
            raise ValueError(f"{self.path}: bag has 5x features but no parent_index, cannot fuse 20x+5x")
        return np.concatenate([self.features, self.features_5x[self.parent_index]], axis=1)


# ----------------------------------------------------------------------------------------------------------------
# writing


def bag_path(out_dir: str | os.PathLike, encoder: str, slide_id: str) -> Path:
    """Where ``zoomfeat extract`` writes a slide's bag: ``{out_dir}/features_{encoder}/{slide_id}.h5`` (TRIDENT naming)."""
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", encoder)
    return output_path(Path(out_dir) / f"features_{safe}", slide_id, ".h5")


def _attr_value(v: Any) -> Any:
    """HDF5-storable attribute: dicts/lists of non-numbers as JSON strings, None as 'None' (TRIDENT's convention)."""
    if v is None:
        return "None"
    if isinstance(v, (dict,)):
        return json.dumps(v, sort_keys=True, default=str)
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        if len(v) and all(isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) for x in v):
            return np.asarray(v)
        return json.dumps(list(v), default=str)
    if isinstance(v, np.ndarray) and v.dtype.kind in "OU":
        return json.dumps(v.tolist(), default=str)
    return v


def _set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any] | None) -> None:
    for k, v in (attrs or {}).items():
        obj.attrs[str(k)] = _attr_value(v)


def _decode_attr(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, str):
        s = v.strip()
        if s == "None":
            return None
        if s[:1] in "[{":
            try:
                return json.loads(s)
            except ValueError:
                return v
    return v


def attrs_dict(obj: h5py.HLObject) -> dict:
    """An HDF5 object's attributes decoded (JSON strings, 'None', numpy scalars and arrays → Python)."""
    return {k: _decode_attr(v) for k, v in obj.attrs.items()}


def _features_dataset(h5: h5py.Group, name: str, features: np.ndarray) -> h5py.Dataset:
    n, d = features.shape
    chunks = (max(1, min(n, CHUNK_ROWS)), max(1, d)) if n and d else None
    return h5.create_dataset(name, data=features, chunks=chunks, maxshape=(None, d))


def _as_features(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D (N, D), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or Inf")
    return a.astype(np.float32, copy=False)


def _as_coords(x: Any, n: int, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.int64)
    if a.shape != (n, 2):
        raise ValueError(f"{what} must have shape ({n}, 2), got {a.shape}")
    return a


def write_bag(
    path: str | os.PathLike,
    features: Any,
    coords: Any,
    attrs: Mapping[str, Any] | None = None,
    features_5x: Any = None,
    coords_5x: Any = None,
    parent_index: Any = None,
    coords_attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write one slide's bag atomically (temp file + rename); see the module docstring for the layout.

    ``attrs`` become file attributes (dicts as JSON); ``coords_attrs`` are copied onto both ``coords`` datasets'
    attributes (the TRIDENT/CLAM attributes of the tiling file, so those readers find patch size and magnification).
    """
    path = Path(path)
    feats = _as_features(features, "features")
    n = feats.shape[0]
    xy = _as_coords(coords, n, "coords")
    attrs = dict(attrs or {})
    slide = str(attrs.get("slide", attrs.get("name", path.stem)))
    has_5x = features_5x is not None
    if has_5x:
        f5 = _as_features(features_5x, "features_5x")
        if coords_5x is None or parent_index is None:
            raise ValueError("features_5x needs coords_5x and parent_index")
        xy5 = _as_coords(coords_5x, f5.shape[0], "coords_5x")
        pidx = np.asarray(parent_index, dtype=np.int64).reshape(-1)
        if pidx.shape[0] != n:
            raise ValueError(f"parent_index has {pidx.shape[0]} rows, features has {n}")
        if n and (pidx.min() < 0 or pidx.max() >= f5.shape[0]):
            raise ValueError("parent_index points outside 5x/features")
    attrs.setdefault("created_utc", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    attrs.setdefault("dtype", "float32")
    attrs.setdefault("layout", "zoomfeat-bag-v1")
    with atomic_h5(path) as h5:  # built in memory: a full disk is a plain OSError, never an HDF5 crash
        _set_attrs(h5, attrs)
        ds = _features_dataset(h5, "features", feats)
        _set_attrs(ds, {"name": slide, "encoder": attrs.get("encoder", ""), "savetodir": str(path.parent)})
        c = h5.create_dataset("coords", data=xy, chunks=(max(1, min(n, CHUNK_ROWS)), 2) if n else None,
                              maxshape=(None, 2))
        _set_attrs(c, coords_attrs)
        if has_5x:
            g = h5.create_group("5x")
            _set_attrs(g, {k: v for k, v in attrs.items() if k.endswith("_5x")})
            _features_dataset(g, "features", f5)
            c5 = g.create_dataset("coords", data=xy5)
            ca5 = dict(coords_attrs or {})
            for k in ("patch_size_level0", "target_magnification"):
                if f"{k}_5x" in attrs:
                    ca5[k] = attrs[f"{k}_5x"]
            _set_attrs(c5, ca5)
            h5.create_dataset("parent_index", data=pidx)
    return path


def write_clam_pt(path: str | os.PathLike, features: Any) -> Path:
    """CLAM's ``pt_files/{slide}.pt``: ``torch.save`` of a float32 (N, D) tensor (what CLAM trains on by default)."""
    import torch

    import io

    feats = torch.from_numpy(np.ascontiguousarray(_as_features(features, "features")))
    buf = io.BytesIO()  # serialised in memory: a full disk fails the plain write with OSError(ENOSPC)
    torch.save(feats, buf)
    write_bytes_atomic(path, buf.getbuffer())
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------
# reading


def _check_mag(mag: str) -> str:
    m = str(mag).lower().replace(" ", "")
    if m in ("20", "20x", "0"):
        return "20x"
    if m in ("5", "5x", "2"):
        return "5x"
    if m in ("20x+5x", "20+5", "multiscale", "fused"):
        return "20x+5x"
    raise ValueError(f"mag must be one of {MAG_CHOICES}, got {mag!r}")


class UnreadableBagError(ValueError):
    """A bag file that cannot be read safely (pickled code, empty, truncated, corrupt); MIL skips its slide."""


def _load_pt(path: Path) -> np.ndarray:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # TRIDENT's saveas='pt' pickles a numpy array: allow exactly the numpy reconstruction globals
        ma = getattr(np, "_core", None) or np.core  # numpy 2 moved core to _core
        ma = ma.multiarray
        allowed = [ma._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.float32)), type(np.dtype(np.float16))]
        try:
            with torch.serialization.safe_globals(allowed):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 — unpickling / EOF / corrupt zip: one line, never a traceback
            detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            if "weights_only" in detail or "Weights only load failed" in detail:
                detail = "pickles non-tensor Python objects"
            raise UnreadableBagError(f"unreadable bag {path} (not a tensor-only file: {type(exc).__name__}"
                                     f"{': ' + detail if detail else ''})") from None
    if isinstance(obj, dict):
        for k in ("features", "feats", "patch_embeddings"):
            if k in obj:
                obj = obj[k]
                break
    arr = obj.float().numpy() if hasattr(obj, "numpy") and hasattr(obj, "float") else np.asarray(obj)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    return arr


def _clam_sibling_coords(pt: Path) -> tuple[np.ndarray | None, dict]:
    """A CLAM ``pt_files/x.pt`` has its coords in ``../h5_files/x.h5`` (zoomfeat's ``--clam-pt``: ``../x.h5``);
    TRIDENT's ``saveas='pt'`` writes ``x.pt`` beside its ``x.h5`` in the same ``features_*`` folder."""
    for h5p in (pt.parent.parent / "h5_files" / f"{pt.stem}.h5", pt.parent.parent / f"{pt.stem}.h5",
                pt.with_suffix(".h5")):
        if not h5p.exists():
            continue
        with h5py.File(h5p, "r") as h5:
            if "coords" in h5:
                return np.asarray(h5["coords"][:], dtype=np.int64), attrs_dict(h5["coords"])
    return None, {}


def load_bag(path: str | os.PathLike) -> Bag:
    """Read a bag in any supported layout: zoomfeat, CLAM (``h5_files/*.h5``, ``pt_files/*.pt``), TRIDENT
    (``features_*/x.h5`` or ``.pt``), STAMP (``feats`` + µm coords) or slideflow (``x.pt`` + ``x.index.npz``).

    Features always come back as float32; STAMP coordinates stay in µm (``coords_unit='um'``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    if path.suffix == ".pt":
        feats = _load_pt(path)
        idx = path.with_name(f"{path.stem}.index.npz")
        if idx.exists():  # slideflow: tile centres in level-0 px
            with np.load(idx) as z:
                centres = np.asarray(z[z.files[0]], dtype=np.int64)
            return Bag(feats, centres, layout="slideflow", path=path, coords_attrs={"coords_ref": "center"})
        coords, cattrs = _clam_sibling_coords(path)
        layout = "clam_pt" if path.parent.name == "pt_files" else "trident_pt"
        return Bag(feats, coords, layout=layout, path=path, coords_attrs=cattrs)
    with h5py.File(path, "r") as h5:
        file_attrs = attrs_dict(h5)
        key = next((k for k in ("features", "feats", "patch_embeddings") if k in h5), None)
        if key is None:
            raise ValueError(f"{path}: no features dataset (looked for features, feats, patch_embeddings); "
                             f"found {list(h5.keys())}")
        feats = np.asarray(h5[key][:], dtype=np.float32)
        if feats.ndim == 1:
            feats = feats[None, :]
        coords = np.asarray(h5["coords"][:]) if "coords" in h5 else None
        cattrs = attrs_dict(h5["coords"]) if "coords" in h5 else {}
        fattrs = attrs_dict(h5[key])
        f5 = c5 = pidx = None
        if "5x" in h5 and isinstance(h5["5x"], h5py.Group) and "features" in h5["5x"]:
            f5 = np.asarray(h5["5x/features"][:], dtype=np.float32)
            c5 = np.asarray(h5["5x/coords"][:], dtype=np.int64) if "coords" in h5["5x"] else None
        if "parent_index" in h5:
            pidx = np.asarray(h5["parent_index"][:], dtype=np.int64)
    unit = "px"
    if str(file_attrs.get("layout", "")).startswith("zoomfeat"):
        layout = "zoomfeat"
    elif key != "features" or "stamp_version" in file_attrs or file_attrs.get("unit") == "um":
        layout, unit = "stamp", str(file_attrs.get("unit", "um"))
    elif "encoder" in fattrs or "patch_size_level0" in cattrs or "target_magnification" in cattrs:
        layout = "trident"
    else:
        layout = "clam_h5"
    if coords is not None:
        coords = coords.astype(np.float32) if unit == "um" else coords.astype(np.int64)
    attrs = {**fattrs, **file_attrs}
    return Bag(feats, coords, f5, c5, pidx, attrs=attrs, coords_attrs=cattrs, layout=layout, coords_unit=unit,
               path=path)


def read_bag(path: str | os.PathLike, mag: str = "20x") -> np.ndarray:
    """Features of one bag as float32: ``20x`` (root), ``5x`` (group 5x) or ``20x+5x`` (each 20x row concatenated
    with its parent 5x row through ``parent_index``, the fused multi-scale feature of ZoomLDM's Table 4)."""
    mag = _check_mag(mag)
    if mag == "20x":
        path = Path(path)
        if path.suffix == ".h5":  # fast path: no need to read 5x
            with h5py.File(path, "r") as h5:
                key = next((k for k in ("features", "feats", "patch_embeddings") if k in h5), None)
                if key is not None:
                    a = np.asarray(h5[key][:], dtype=np.float32)
                    return a[None, :] if a.ndim == 1 else a
        return load_bag(path).features
    return load_bag(path).get(mag)


def read_bag_attrs(path: str | os.PathLike) -> dict:
    """File attributes of an HDF5 bag (JSON strings decoded), without reading the features."""
    with h5py.File(path, "r") as h5:
        return attrs_dict(h5)


def list_bags(root: str | os.PathLike, encoder: str | None = None) -> dict[str, Path]:
    """Map slide id → bag file under ``root``, for any layout.

    ``root`` may be a folder of bags, zoomfeat's/TRIDENT's ``features_{encoder}`` parent (then ``encoder`` picks
    the sub-folder; required when several exist), or a CLAM feature dir (``h5_files/`` preferred over
    ``pt_files/``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"bag folder not found: {root}")
    if encoder is not None and (root / bag_path("", encoder, "x").parent).is_dir():
        root = root / bag_path("", encoder, "x").parent
    else:
        subs = sorted(p for p in root.glob("features_*") if p.is_dir())
        if len(subs) == 1:
            root = subs[0]
        elif len(subs) > 1:
            raise ValueError(f"{root} holds several encoders ({', '.join(p.name for p in subs)}): pass encoder=")
    has_own = any(p.suffix in (".h5", ".hdf5") for p in root.iterdir() if p.is_file())
    if not has_own and (root / "h5_files").is_dir():
        root = root / "h5_files"
    elif not has_own and (root / "pt_files").is_dir():
        root = root / "pt_files"
    out: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix in (".h5", ".hdf5") or (p.suffix == ".pt" and not p.name.endswith(".index.pt")):
            out.setdefault(p.stem, p)
    return out


def bag_is_complete(path: str | os.PathLike, weights_sha256: str | None = None, config: Mapping | None = None) -> bool:
    """True when ``path`` is a readable zoomfeat bag made with the same weights (and config, if given).

    A rerun of ``zoomfeat extract`` skips such slides; a bag from other weights/settings is recomputed.
    """
    path = Path(path)
    if not path.exists():
        return False
    try:
        attrs = read_bag_attrs(path)
    except (OSError, ValueError):
        return False
    if weights_sha256 is not None and attrs.get("encoder_weights_sha256") != weights_sha256:
        return False
    if config is not None:
        stored = attrs.get("encoder_config")
        if json.loads(json.dumps(dict(config), sort_keys=True, default=str)) != stored:
            return False
    return True
