"""Open any slide OpenSlide can read, resolve its µm/px, and read regions at any target resolution.

Magnification is defined by resolution (20x = ``base_mpp`` = 0.5 µm/px), never by a pyramid level
index. A region is read from the best pyramid level (the coarsest level whose *measured* float
downsample does not exceed the needed one) plus one resize, so a 40x slide without a 2x level and a
20x slide give the same physical field of view.

mpp lookup chain (first hit wins; ``WSI.mpp_source`` records which):

1. an explicit override (``mpp=`` / ``--mpp``), then a per-slide CSV (``--mpp-csv``, columns ``slide,mpp``;
   ``slide`` matches the slide id or its file name);
2. ``openslide.mpp-x`` / ``openslide.mpp-y`` (mean of both);
3. vendor keys: ``aperio.MPP``, ``openslide.mirax.MPP``, ``hamamatsu.XResolution`` (nm/px),
   ``MPP = …`` / ``<PixelSizeMicrons>`` in ``openslide.comment``;
4. ``tiff.XResolution`` + ``tiff.ResolutionUnit`` (centimeter / inch; ``none`` is ignored);
5. last resort ``openslide.objective-power`` as ``10 / mag`` — flagged as
   ``mpp_source = "objective-power (assumed 10/mag)"``.

Values outside ``MPP_RANGE`` (0.1–2 µm/px) from metadata are skipped to the next key; if no plausible value
is left an :class:`MppError` names ``--mpp-csv``.
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoomfeat.mags import BASE_MPP
from zoomfeat.names import slide_id

#: Plausible level-0 resolutions (µm/px). Outside this a value is treated as wrong metadata.
MPP_RANGE = (0.1, 2.0)
#: A pyramid level may be up to this much (relative) coarser than needed and still be chosen; the
#: small upsample it implies (e.g. a level reported as 4.016 for a needed 4.0) is invisible.
LEVEL_TOLERANCE = 0.01

_OVERRIDE_HINT = (
    "pass the slide's resolution with --mpp-csv FILE (CSV columns 'slide,mpp', slide = id or file name) "
    "or --mpp X for all slides"
)


class SlideOpenError(Exception):
    """OpenSlide cannot open the file (unsupported format, corrupt header, missing file)."""


class SlideReadError(Exception):
    """The slide opened but reading pixels failed (corrupt tiles, truncated file)."""


class MppError(ValueError):
    """No plausible µm/px for a slide; the message tells the user how to override it."""


def _openslide():
    try:
        import openslide
    except ImportError as exc:  # pragma: no cover - dependency is declared
        raise SlideOpenError(
            "openslide-python is not importable; install openslide-python and openslide-bin"
        ) from exc
    return openslide


def _float(value: Any) -> float | None:
    try:
        f = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def plausible_mpp(mpp: float | None) -> bool:
    return mpp is not None and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def metadata_mpp_candidates(props: dict[str, str]) -> list[tuple[float, str]]:
    """All µm/px values the slide's metadata offers, in lookup-chain order, as ``(mpp, source)``."""
    out: list[tuple[float, str]] = []
    mx, my = _float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y"))
    if mx and my:
        out.append(((mx + my) / 2, "openslide.mpp-x/y"))
    elif mx or my:
        out.append((mx or my, "openslide.mpp-x" if mx else "openslide.mpp-y"))
    for key in ("aperio.MPP", "openslide.mirax.MPP"):
        v = _float(props.get(key))
        if v:
            out.append((v, key))
    v = _float(props.get("hamamatsu.XResolution"))
    if v:  # NDPI stores nm/px here
        out.append((v / 1000.0, "hamamatsu.XResolution"))
    comment = props.get("openslide.comment") or ""
    m = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", comment) or re.search(
        r"<PixelSizeMicrons>\s*([0-9.eE+-]+)", comment
    )
    if m and _float(m.group(1)):
        out.append((_float(m.group(1)), "openslide.comment"))
    xr = _float(props.get("tiff.XResolution"))
    unit = (props.get("tiff.ResolutionUnit") or "").lower()
    if xr and unit in ("centimeter", "cm", "3"):
        out.append((1e4 / xr, "tiff.XResolution (centimeter)"))
    elif xr and unit in ("inch", "2"):
        out.append((25400.0 / xr, "tiff.XResolution (inch)"))
    return out


class MppTable(dict):
    """``{slide id or file name: mpp}`` parsed from an ``--mpp-csv`` file; ``source`` names the file."""

    source: str = "--mpp-csv"


def read_mpp_csv(path: str | os.PathLike) -> MppTable:
    """Parse an override CSV (``slide,mpp``) into ``{key: mpp}``; keys are ids and file names as given."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--mpp-csv file not found: {path}")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "slide" not in cols or "mpp" not in cols:
            raise ValueError(f"{path}: an mpp CSV needs columns 'slide,mpp' (found {reader.fieldnames})")
        table = MppTable()
        table.source = f"--mpp-csv {path.name}"
        for row in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("slide"):
                continue
            v = _float(row.get("mpp"))
            if v is None:
                raise MppError(f"{path}: mpp {row.get('mpp')!r} for slide {row['slide']!r} is not a positive number")
            table[row["slide"]] = v
    return table


def lookup_mpp_csv(table: dict[str, float], path: str | os.PathLike) -> float | None:
    """Find a slide in an override table by id (stem), file name, or full path."""
    p = Path(path)
    for key in (p.stem, p.name, str(p)):
        if key in table:
            return table[key]
    # keys written as paths: compare by file name / stem
    for key, v in table.items():
        kp = Path(key)
        if kp.name == p.name or (kp.suffix == "" and kp.name == p.stem):
            return v
    return None


def resolve_mpp(
    props: dict[str, str],
    path: str | os.PathLike,
    mpp: float | None = None,
    mpp_csv: str | os.PathLike | dict[str, float] | None = None,
) -> tuple[float, str]:
    """Run the lookup chain (module docstring) and return ``(mpp, source)`` or raise :class:`MppError`."""
    name = Path(path).name
    if mpp_csv is not None:
        table = mpp_csv if isinstance(mpp_csv, dict) else read_mpp_csv(mpp_csv)
        v = lookup_mpp_csv(table, path)
        if v is not None:
            if not plausible_mpp(v):
                raise MppError(
                    f"{name}: mpp {v} from --mpp-csv is outside the plausible range "
                    f"{MPP_RANGE[0]}–{MPP_RANGE[1]} µm/px; fix the value in the --mpp-csv file"
                )
            return float(v), getattr(table, "source", "--mpp-csv")
    if mpp is not None:
        if not plausible_mpp(float(mpp)):
            raise MppError(
                f"{name}: --mpp {mpp} is outside the plausible range {MPP_RANGE[0]}–{MPP_RANGE[1]} µm/px; "
                "use a per-slide --mpp-csv file with the right value"
            )
        return float(mpp), "--mpp"
    cands = metadata_mpp_candidates(props)
    for v, src in cands:
        if plausible_mpp(v):
            return round(float(v), 6), src
    power = _float(props.get("openslide.objective-power"))
    if power and plausible_mpp(10.0 / power):
        return 10.0 / power, "objective-power (assumed 10/mag)"
    if cands:
        seen = ", ".join(f"{src}={v:.6g}" for v, src in cands)
        raise MppError(
            f"{name}: implausible resolution in the slide metadata ({seen}; expected "
            f"{MPP_RANGE[0]}–{MPP_RANGE[1]} µm/px); {_OVERRIDE_HINT}"
        )
    raise MppError(f"{name}: no resolution (µm/px) in the slide metadata; {_OVERRIDE_HINT}")


def best_level(downsamples: tuple[float, ...] | list[float], needed: float, tol: float = LEVEL_TOLERANCE) -> int:
    """Coarsest level whose measured downsample is ≤ ``needed`` (within ``tol``); 0 when upsampling."""
    best = 0
    for i, ds in enumerate(downsamples):
        if ds <= needed * (1.0 + tol) and ds >= downsamples[best]:
            best = i
    return best


class WSI:
    """One slide: OpenSlide handle + resolved resolution. Picklable: workers reopen it lazily.

    Attributes: ``path``, ``name`` (slide id), ``dimensions`` (level-0 w, h), ``mpp`` (µm/px at level 0),
    ``mpp_source``, ``level_count``, ``level_dimensions``, ``level_downsamples`` (measured floats),
    ``objective_power`` (float | None), ``properties``, ``base_mpp`` (µm/px that defines 20x).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        mpp: float | None = None,
        mpp_csv: str | os.PathLike | dict[str, float] | None = None,
        base_mpp: float = BASE_MPP,
        require_mpp: bool = True,
    ):
        self.path = Path(path)

        self.name = slide_id(self.path)
        self.base_mpp = float(base_mpp)
        self._slide = None
        slide = self._handle()
        self.dimensions: tuple[int, int] = tuple(int(v) for v in slide.dimensions)
        self.level_count: int = int(slide.level_count)
        self.level_dimensions = [tuple(int(v) for v in d) for d in slide.level_dimensions]
        w0, h0 = self.dimensions
        # measured per-level ratio (mean of x and y), not OpenSlide's rounded value and never int()
        self.level_downsamples: tuple[float, ...] = tuple(
            float((w0 / max(w, 1) + h0 / max(h, 1)) / 2) if i else 1.0
            for i, (w, h) in enumerate(self.level_dimensions)
        )
        self.properties: dict[str, str] = dict(slide.properties)
        self.vendor = self.properties.get("openslide.vendor")
        # slides with a non-scanned area (MIRAX, VMS, sparse DICOM …) announce it with openslide.bounds-*;
        # elsewhere a region inside the level is opaque and the alpha check can be skipped
        self._opaque = "openslide.bounds-x" not in self.properties
        self.objective_power = _float(self.properties.get("openslide.objective-power"))
        try:
            self.mpp, self.mpp_source = resolve_mpp(self.properties, self.path, mpp, mpp_csv)
        except MppError:
            if require_mpp:
                self.close()
                raise
            self.mpp, self.mpp_source = float("nan"), "missing"

    # -- handle management ------------------------------------------------------------------------------
    def _handle(self):
        if self._slide is None:
            openslide = _openslide()
            if not self.path.exists():
                raise SlideOpenError(f"{self.path}: file not found")
            try:
                self._slide = openslide.OpenSlide(str(self.path))
            except openslide.OpenSlideUnsupportedFormatError as exc:
                raise SlideOpenError(f"{self.path.name}: not a format OpenSlide can open ({exc})") from exc
            except openslide.OpenSlideError as exc:
                raise SlideOpenError(f"{self.path.name}: OpenSlide cannot open it ({exc})") from exc
        return self._slide

    def reopen(self) -> "WSI":
        """Drop the handle so the next read opens a fresh one (call in each DataLoader worker)."""
        self.close()
        return self

    def close(self) -> None:
        if self._slide is not None:
            try:
                self._slide.close()
            finally:
                self._slide = None

    def __enter__(self) -> "WSI":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_slide"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"WSI({self.name!r}, {self.dimensions[0]}x{self.dimensions[1]}, mpp={self.mpp:.4g} "
            f"[{self.mpp_source}], levels={self.level_count})"
        )

    # -- reading ----------------------------------------------------------------------------------------
    @property
    def magnification(self) -> float:
        """Level-0 magnification implied by the resolution (20x at ``base_mpp``)."""
        return 20.0 * self.base_mpp / self.mpp

    def best_level(self, downsample: float) -> int:
        return best_level(self.level_downsamples, downsample)

    def _read_pil(self, x: int, y: int, level: int, w: int, h: int) -> Image.Image:
        """``read_region`` → RGB PIL image; transparent pixels (outside the scan) composited onto white."""
        try:
            img = self._handle().read_region((int(x), int(y)), int(level), (int(w), int(h)))
        except SlideOpenError:
            raise
        except Exception as exc:  # openslide.OpenSlideError and libtiff/jpeg failures
            raise SlideReadError(
                f"{self.path.name}: reading pixels failed at ({x}, {y}) level {level}: {exc}"
            ) from exc
        if self._opaque and x >= 0 and y >= 0:
            lw, lh = self.level_dimensions[level]
            ds = self.level_downsamples[level]
            if x / ds + w <= lw + 0.5 and y / ds + h <= lh + 0.5:  # inside a fully scanned slide: opaque
                return img.convert("RGB")
        alpha = img.getchannel("A")
        if alpha.getextrema()[0] == 255:
            return img.convert("RGB")
        out = Image.new("RGB", img.size, (255, 255, 255))
        out.paste(img.convert("RGB"), mask=alpha)  # OpenSlide's RGBA is un-premultiplied
        return out

    def read_level(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """Raw ``read_region`` at ``level`` (origin in level-0 px) → RGB uint8, transparency → white."""
        return np.asarray(self._read_pil(x, y, level, w, h)).copy()

    def read_region_l0(self, x: int, y: int, size_l0: float, out_px: int) -> np.ndarray:
        """Read the level-0 square ``[x, x+size_l0)²`` as an ``out_px``² RGB uint8 array.

        Uses the coarsest level whose downsample ≤ ``size_l0 / out_px`` and one resize (none when the
        level already gives ``out_px`` px).
        """
        return self.read_rect_l0(x, y, size_l0, size_l0, out_px, out_px)

    def read_rect_l0(self, x: int, y: int, w_l0: float, h_l0: float, out_w: int, out_h: int) -> np.ndarray:
        """Rectangular version of :meth:`read_region_l0`."""
        needed = min(w_l0 / out_w, h_l0 / out_h)
        level = self.best_level(needed)
        ds = self.level_downsamples[level]
        rw = max(1, int(round(w_l0 / ds)))
        rh = max(1, int(round(h_l0 / ds)))
        img = self._read_pil(x, y, level, rw, rh)
        if (rw, rh) != (out_w, out_h):  # the one resize, done in PIL without a numpy round trip
            shrink = rw >= out_w and rh >= out_h
            img = img.resize((out_w, out_h), Image.Resampling.BOX if shrink else Image.Resampling.LANCZOS)
        return np.asarray(img).copy()  # writable; np.array(PIL image) is several times slower

    def read_at_mpp(self, x: int, y: int, out_px: int, target_mpp: float) -> np.ndarray:
        """Read ``out_px``² px at ``target_mpp`` µm/px with top-left ``(x, y)`` in level-0 px."""
        size_l0 = out_px * float(target_mpp) / self.mpp
        return self.read_region_l0(x, y, size_l0, out_px)

    def thumbnail_at_mpp(self, target_mpp: float, max_side: int = 4096) -> tuple[np.ndarray, float]:
        """Whole-slide image at about ``target_mpp`` (coarser if it would exceed ``max_side``).

        Returns ``(rgb, scale)`` where ``scale`` = level-0 px per thumbnail px (same on both axes).
        """
        w0, h0 = self.dimensions
        scale = max(float(target_mpp) / self.mpp, max(w0, h0) / max_side, 1e-9)
        tw, th = max(1, int(round(w0 / scale))), max(1, int(round(h0 / scale)))
        return self._read_chunked(scale, tw, th), scale

    def _read_chunked(self, scale: float, tw: int, th: int, piece: int = 1024) -> np.ndarray:
        """Whole slide at ``scale`` level-0 px per output px, read in pieces of ``piece`` output px so a
        slide without a coarse pyramid level never needs its full level in memory."""
        out = np.empty((th, tw, 3), np.uint8)
        for y in range(0, th, piece):
            for x in range(0, tw, piece):
                pw, ph = min(piece, tw - x), min(piece, th - y)
                out[y:y + ph, x:x + pw] = self.read_rect_l0(
                    int(round(x * scale)), int(round(y * scale)), pw * scale, ph * scale, pw, ph
                )
        return out

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """Whole-slide RGB uint8 image whose longer side is ``max_side`` px (aspect kept)."""
        w0, h0 = self.dimensions
        scale = max(w0, h0) / max_side
        tw, th = max(1, int(round(w0 / scale))), max(1, int(round(h0 / scale)))
        return self._read_chunked(scale, tw, th)

    def check_readable(self) -> None:
        """Decode a few pixels from the lowest-resolution level so corrupt files fail early and clearly."""
        lvl = self.level_count - 1
        w, h = self.level_dimensions[lvl]
        self.read_level(0, 0, lvl, min(w, 64), min(h, 64))


def open_slide(
    path: str | os.PathLike,
    mpp: float | None = None,
    mpp_csv: str | os.PathLike | dict[str, float] | None = None,
    base_mpp: float = BASE_MPP,
    require_mpp: bool = True,
) -> WSI:
    """Open ``path`` with OpenSlide and resolve its µm/px (see the module docstring for the chain).

    Raises :class:`SlideOpenError` if OpenSlide cannot open it and :class:`MppError` (naming ``--mpp-csv``)
    if no plausible resolution is found (unless ``require_mpp=False``).
    """
    return WSI(path, mpp=mpp, mpp_csv=mpp_csv, base_mpp=base_mpp, require_mpp=require_mpp)
