"""Synthetic H&E-like cohort: real pyramidal JPEG-tiled TIFFs (Aperio-style, OpenSlide-readable) with learnable labels.

Why: the demo and the tests need whole slides whose labels a MIL model can learn from 256-px tile features,
without shipping patient data. Each slide is rendered at 20x (0.5 µm/px) and written as an Aperio-style
TIFF (``ImageDescription`` "Aperio Image Library …|AppMag = 20|MPP = 0.5"), so OpenSlide reports
``openslide.mpp-x`` and ``openslide.objective-power``; 40x slides (0.25 µm/px) are the same render
upsampled 2x, so a 20x and a 40x slide of one seed show the same physical tissue.

What carries the labels (all visible in a 20x tile and in a 5x region):

- **subtype** (3 classes): nucleus morphology in all tissue — 0 "round": scattered round nuclei; 1 "spindle":
  elongated nuclei aligned with a smooth local orientation; 2 "glandular": nuclei on rings around pale lumens;
  plus a slight stain shift of the stroma per class.
- **latent risk** z ~ N(0, 1): the fraction of tissue covered by a dark purple "tumour" texture (the same
  subtype morphology, but twice as crowded, 1.45x larger and hyperchromatic nuclei) grows with z.
- **hrd** (binary): dense clusters of small, very dark lymphocyte-like dots (tumour-infiltrating lymphocytes),
  about 60 clusters/mm² of tissue for HRD-positive vs 3 for negative.
- **survival**: T ~ Exponential(λ₀·exp(z − 0.5·hrd)), censoring C ~ U(6, 60) months; time = min(T, C),
  event = T ≤ C.

A label that only 5x can see (the multi-scale positive control):

- **architecture** (binary; 0 "dispersed", 1 "coherent"): every tissue 256-px 20x tile of the tiling lattice
  (anchored at level-0 (0, 0), as ``zoomfeat tile`` uses) gets one of two stromal textures — A (the usual
  background) or B (a darker, brown stroma, :data:`ARCH_FACTOR`). Exactly half of the tissue tiles are B in
  both classes, and every tile is pure A or pure B, so the distribution of 20x tile contents is the same for
  both classes (no tile straddles a texture boundary: no boundary-tile leakage). Only the arrangement differs:
  "dispersed" puts the B tiles on a checkerboard (a mosaic with a texture edge on every tile side inside every
  5x region), "coherent" takes
  the B tiles from the top half of smooth noise with a correlation length of ~6 tiles (large patches; a 5x
  region is mostly one texture). A 5x region therefore shows the arrangement; a 20x tile cannot.

Patients: about a quarter of the patients contribute two slides (same labels, different tissue).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from zoomfeat.io import atomic_path

SUBTYPE_NAMES = ["round", "spindle", "glandular"]
BACKGROUND = np.array([240, 238, 242], np.float32)
STROMA = np.array([236, 168, 200], np.float32)
TUMOUR_BG = np.array([196, 128, 196], np.float32)
HEMATOXYLIN = np.array([72, 42, 122], np.float32)
#: lymphocytes are darker than any other nucleus (max channel < 75 before JPEG), so their share is measurable
LYMPHOCYTE = np.array([22, 16, 46], np.float32)
#: lymphocyte clusters per mm² of tissue for hrd = 0 / 1
LYMPH_CLUSTERS_PER_MM2 = (3.0, 60.0)
#: small per-subtype stain shift added to stroma (RGB)
SUBTYPE_TINT = np.array([[0, 0, 0], [6, -8, -4], [-6, 4, 6]], np.float32)
#: texture B of the architecture label: per-channel factor on the tissue background of B tiles (a darker, brown
#: stroma: its edges against A outweigh the tissue/background edges in a 5x region)
ARCH_FACTOR = np.array([0.70, 0.80, 0.55], np.float32)
ARCH_NAMES = ["dispersed", "coherent"]
#: side of one architecture cell in 20x px (= one 20x tile of the tiling lattice)
ARCH_CELL = 256


@dataclass
class SlideSpec:
    slide: str
    patient: str
    subtype: int
    hrd: int
    latent_risk: float
    mpp: float
    width_20x: int
    height_20x: int
    seed: int
    tumour_fraction: float = 0.0
    architecture: int | None = None  # None: no A/B texture mosaic (single slides); 0 dispersed, 1 coherent


# ----------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1] at (h, w): random values on a coarse lattice upsampled bicubically."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    g = rng.random((gh, gw)).astype(np.float32)
    img = Image.fromarray(g, mode="F").resize((gw * cell, gh * cell), Image.Resampling.BICUBIC)
    arr = np.asarray(img)[:h, :w]
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / max(hi - lo, 1e-6)


class _Canvas:
    """A PIL drawing surface over the base colours (nuclei are drawn as filled polygons in C, not numpy)."""

    def __init__(self, base: np.ndarray):
        from PIL import ImageDraw

        self.base = base
        self.image = Image.fromarray(base)
        self.draw = ImageDraw.Draw(self.image)

    def array(self) -> np.ndarray:
        return np.asarray(self.image)


_CIRCLE = np.linspace(0, 2 * np.pi, 14, endpoint=False)


def _stamp_ellipses(
    canvas: _Canvas,
    cy: np.ndarray,
    cx: np.ndarray,
    ry: np.ndarray,
    rx: np.ndarray,
    angle: np.ndarray,
    color: np.ndarray,
    alpha: np.ndarray,
) -> None:
    """Draw filled ellipses (nuclei) whose colour is ``alpha``-blended with the base colour under their centre."""
    n = len(cy)
    if n == 0:
        return
    h, w = canvas.base.shape[:2]
    cos_t, sin_t = np.cos(_CIRCLE)[None], np.sin(_CIRCLE)[None]
    ca, sa = np.cos(angle)[:, None], np.sin(angle)[:, None]
    ex, ey = rx[:, None] * cos_t, ry[:, None] * sin_t
    px = cx[:, None] + ex * ca - ey * sa
    py = cy[:, None] + ex * sa + ey * ca
    under = canvas.base[np.clip(cy.astype(int), 0, h - 1), np.clip(cx.astype(int), 0, w - 1)].astype(np.float32)
    fill = np.clip(alpha[:, None] * color + (1 - alpha[:, None]) * under + 0.5, 0, 255).astype(np.uint8)
    pts = np.stack([px, py], axis=-1).reshape(n, -1)
    draw = canvas.draw
    for i in range(n):
        draw.polygon(pts[i].tolist(), fill=tuple(fill[i].tolist()))


def _sample_points(rng: np.random.Generator, mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random points distributed uniformly over the True pixels of ``mask``."""
    idx = np.flatnonzero(mask)
    if n <= 0 or idx.size == 0:
        return np.zeros(0), np.zeros(0)
    pick = idx[rng.integers(0, idx.size, n)]
    y, x = np.divmod(pick, mask.shape[1])
    return y + rng.random(n), x + rng.random(n)


def architecture_cells(rng: np.random.Generator, tissue: np.ndarray, architecture: int,
                       cell: int = ARCH_CELL) -> np.ndarray:
    """Boolean (H, W) mask of texture-B pixels: whole lattice cells, exactly half of the tissue cells.

    ``architecture`` 0 lays the B cells out as a checkerboard, 1 thresholds smooth noise (correlation ≈ 6 cells, more
    than a 5x region), so both classes have the same share of pure A and pure B tiles and differ only in arrangement.
    """
    h, w = tissue.shape
    gh, gw = -(-h // cell), -(-w // cell)
    pad = np.zeros((gh * cell, gw * cell), bool)
    pad[:h, :w] = tissue
    share = pad.reshape(gh, cell, gw, cell).mean(axis=(1, 3))
    if int(architecture) == 1:
        score = _smooth_noise(rng, gh, gw, 6)
    else:  # checkerboard (ties broken at random): every 5x region is a mosaic with a texture edge on each cell side
        iy, ix = np.indices((gh, gw))
        score = ((iy + ix) % 2).astype(np.float32) + 0.01 * rng.random((gh, gw)).astype(np.float32)
    tiss = share > 0
    b = np.zeros((gh, gw), bool)
    if tiss.any():
        order = np.argsort(-score[tiss], kind="stable")
        pick = np.zeros(int(tiss.sum()), bool)
        pick[order[: int(tiss.sum()) // 2]] = True
        b[tiss] = pick
    return np.repeat(np.repeat(b, cell, 0), cell, 1)[:h, :w]


def _apply_architecture(base: np.ndarray, tissue: np.ndarray, spec: SlideSpec) -> np.ndarray:
    """Texture B on the architecture cells (own RNG stream: the other labels' rendering does not depend on it)."""
    if spec.architecture is None:
        return base
    arch_b = architecture_cells(np.random.default_rng([spec.seed, 11]), tissue, spec.architecture)
    return np.where((arch_b & tissue)[..., None], base * ARCH_FACTOR, base)


def render_tissue(spec: SlideSpec) -> tuple[np.ndarray, dict]:
    """Render a slide at 20x (0.5 µm/px) as RGB uint8 (H, W, 3). Returns ``(image, stats)``.

    One RNG stream, consumed in a fixed order: outline and tumour, base colours, nuclei, lymphocytes."""
    rng = np.random.default_rng(spec.seed)
    h, w = spec.height_20x, spec.width_20x
    tissue, tumour = _tissue_and_tumour(rng, spec, h, w)
    stroma_mask = tissue & ~tumour
    img = _base_canvas(rng, spec, tissue, tumour, stroma_mask)
    area_px = float(tissue.sum())
    area_mm2 = area_px * 0.25e-6  # 0.5 µm/px → 0.25 µm² per px
    stats = {"tissue_fraction": area_px / (h * w), "tumour_fraction": float(tumour.sum()) / max(area_px, 1.0)}
    _stamp_nuclei(rng, img, spec, stroma_mask, tumour, area_mm2, stats["tumour_fraction"])
    stats["lymph_clusters"] = _stamp_lymphocytes(rng, img, tissue, area_mm2, spec.hrd)
    return img.array(), stats


def _tissue_and_tumour(rng: np.random.Generator, spec: SlideSpec, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Tissue outline (thresholded smooth noise with a vignette that keeps tissue off the edges) and the tumour
    part of it, whose share grows with the latent risk."""
    vy = ((np.arange(h, dtype=np.float32) / h - 0.5) * 2) ** 2
    vx = ((np.arange(w, dtype=np.float32) / w - 0.5) * 2) ** 2
    vign = 1.0 - (vy[:, None] + vx[None, :]) * 0.55
    field = 0.6 * _smooth_noise(rng, h, w, 384) + 0.4 * _smooth_noise(rng, h, w, 128)
    tissue = (field * vign) > 0.42
    del vign, field
    tumour_target = float(np.clip(0.05 + 0.6 / (1.0 + math.exp(-1.6 * spec.latent_risk)) + rng.normal(0, 0.03), 0.02, 0.8))
    tn = _smooth_noise(rng, h, w, 160)
    tvals = tn[tissue]
    thr = float(np.quantile(tvals, 1.0 - tumour_target)) if tvals.size else 1.0
    return tissue, tissue & (tn >= thr)


def _base_canvas(rng: np.random.Generator, spec: SlideSpec, tissue: np.ndarray, tumour: np.ndarray,
                 stroma_mask: np.ndarray) -> "_Canvas":
    """Base colours with fibrous texture (stroma tinted by subtype, tumour background), architecture, grain."""
    h, w = tissue.shape
    fib = _smooth_noise(rng, h, w, 24)[..., None]
    stroma_col = STROMA + SUBTYPE_TINT[spec.subtype]
    base = np.where(stroma_mask[..., None], stroma_col * (0.92 + 0.12 * fib), BACKGROUND)
    base = np.where(tumour[..., None], TUMOUR_BG * (0.9 + 0.15 * fib), base)
    del fib
    base = _apply_architecture(base, tissue, spec)
    base += 2.0 * rng.standard_normal((h, w, 1), dtype=np.float32)
    return _Canvas(np.clip(base + 0.5, 0, 255).astype(np.uint8))


def _stamp_nuclei(rng: np.random.Generator, img: "_Canvas", spec: SlideSpec, stroma_mask: np.ndarray,
                  tumour: np.ndarray, area_mm2: float, frac_t: float) -> None:
    """Nuclei: the subtype sets their morphology everywhere; tumour areas are crowded, larger, darker."""
    h, w = tumour.shape
    ang_field = _smooth_noise(rng, max(2, h // 8), max(2, w // 8), 64) * np.pi  # local orientation (spindle)
    for region, is_tumour in ((stroma_mask, False), (tumour, True)):
        share = frac_t if is_tumour else 1.0 - frac_t
        grow = 1.45 if is_tumour else 1.0  # nucleus size
        dens = 2.0 if is_tumour else 1.0
        col = HEMATOXYLIN * (0.8 if is_tumour else 1.0)
        if spec.subtype == 0:  # round nuclei, randomly scattered
            n = int(area_mm2 * share * 4500 * dens)
            cy, cx = _sample_points(rng, region, n)
            r = rng.uniform(3.0, 4.2, n) * grow
            _stamp_ellipses(img, cy, cx, r, r * rng.uniform(0.85, 1.1, n), rng.uniform(0, np.pi, n),
                            np.repeat(col[None], n, 0) * rng.uniform(0.9, 1.2, (n, 1)), rng.uniform(0.75, 0.92, n))
        elif spec.subtype == 1:  # elongated spindle nuclei aligned with the local orientation
            n = int(area_mm2 * share * 6000 * dens)
            cy, cx = _sample_points(rng, region, n)
            ang = ang_field[np.clip((cy / 8).astype(int), 0, ang_field.shape[0] - 1),
                            np.clip((cx / 8).astype(int), 0, ang_field.shape[1] - 1)]
            _stamp_ellipses(img, cy, cx, rng.uniform(1.8, 2.6, n) * grow, rng.uniform(7.0, 10.0, n) * grow,
                            ang + rng.normal(0, 0.15, n),
                            np.repeat(col[None], n, 0) * rng.uniform(0.85, 1.1, (n, 1)), rng.uniform(0.78, 0.92, n))
        else:
            _stamp_glands(rng, img, region, int(area_mm2 * share * 380 * dens), is_tumour, grow, col)


def _stamp_glands(rng: np.random.Generator, img: "_Canvas", region: np.ndarray, n_glands: int, is_tumour: bool,
                  grow: float, col: np.ndarray) -> None:
    """Glands: pale lumens ringed by nuclei."""
    gy, gx = _sample_points(rng, region, n_glands)
    lum_r = rng.uniform(14, 30, n_glands) * (1.2 if is_tumour else 1.0)
    lum_col = np.repeat(np.array([[246, 232, 240]], np.float32), n_glands, 0)
    _stamp_ellipses(img, gy, gx, lum_r, lum_r * rng.uniform(0.7, 1.0, n_glands),
                    rng.uniform(0, np.pi, n_glands), lum_col, np.full(n_glands, 0.95))
    cys, cxs = [], []
    for y0, x0, rr in zip(gy, gx, lum_r):
        ring = rr + 5 * grow
        k = max(8, int(2 * np.pi * ring / (9 * grow)))
        t = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 1)
        cys.append(y0 + ring * np.sin(t))
        cxs.append(x0 + ring * np.cos(t))
    if cys:
        cy, cx = np.concatenate(cys), np.concatenate(cxs)
        n = len(cy)
        r = rng.uniform(3.8, 5.0, n) * grow
        _stamp_ellipses(img, cy, cx, r, r * rng.uniform(0.8, 1.0, n), rng.uniform(0, np.pi, n),
                        np.repeat(col[None], n, 0) * rng.uniform(0.85, 1.05, (n, 1)), rng.uniform(0.78, 0.92, n))


def _stamp_lymphocytes(rng: np.random.Generator, img: "_Canvas", tissue: np.ndarray, area_mm2: float,
                       hrd: int) -> int:
    """HRD: lymphocyte clusters (small, very dark, round) in tissue; returns the number of clusters."""
    n_clusters = int(rng.poisson(area_mm2 * (LYMPH_CLUSTERS_PER_MM2[1] if hrd else LYMPH_CLUSTERS_PER_MM2[0])))
    ky, kx = _sample_points(rng, tissue, n_clusters)
    ly, lx = [], []
    for y0, x0 in zip(ky, kx):
        m = int(rng.integers(40, 90))
        rad = rng.uniform(15, 40)
        ly.append(y0 + rng.normal(0, rad / 2, m))
        lx.append(x0 + rng.normal(0, rad / 2, m))
    if ly:
        cy, cx = np.concatenate(ly), np.concatenate(lx)
        n = len(cy)
        r = rng.uniform(2.0, 2.7, n)
        _stamp_ellipses(img, cy, cx, r, r, np.zeros(n), np.repeat(LYMPHOCYTE[None], n, 0), np.full(n, 0.95))
    return n_clusters


# ----------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------
def write_pyramid_tiff(
    path: str | os.PathLike,
    image: np.ndarray,
    mpp: float | None,
    app_mag: float | None = None,
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 256,
    quality: int = 90,
) -> Path:
    """Write ``image`` as a tiled JPEG pyramid TIFF, atomically.

    With ``mpp``: Aperio-style descriptions (OpenSlide vendor ``aperio``, reports ``openslide.mpp-x`` and
    ``openslide.objective-power``). With ``mpp=None``: a generic TIFF without any resolution metadata
    (for testing the ``--mpp-csv`` path).
    """
    import tifffile

    path = Path(path)
    h, w = image.shape[:2]
    levels = []
    for ds in downsamples:
        lw, lh = int(round(w / ds)), int(round(h / ds))
        if ds != 1 and min(lw, lh) < 64:
            break
        levels.append((ds, lw, lh))
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=False) as tw:
            for i, (ds, lw, lh) in enumerate(levels):
                arr = image if ds == 1 else np.asarray(Image.fromarray(image).resize((lw, lh), Image.Resampling.BOX))
                if mpp is not None:
                    head = "Aperio Image Library v12.0.15 \r\n"
                    if i == 0:
                        mag = app_mag if app_mag is not None else 10.0 / mpp
                        desc = (f"{head}{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q={quality}"
                                f"|AppMag = {mag:g}|MPP = {mpp:g}|Filename = {path.stem}|zoomfeat synthetic")
                    else:
                        desc = f"{head}{w}x{h} -> {lw}x{lh} - ({tile}x{tile}) JPEG/RGB Q={quality}"
                else:
                    desc = "zoomfeat synthetic slide without resolution metadata"
                tw.write(
                    arr, tile=(tile, tile), compression="jpeg", compressionargs={"level": quality},
                    photometric="rgb", description=desc, metadata=None, subfiletype=1 if i else 0,
                )
    return path


def make_slide(
    path: str | os.PathLike,
    subtype: int = 0,
    latent_risk: float = 0.0,
    hrd: int = 0,
    mpp: float | None = 0.5,
    size_20x: tuple[int, int] = (2560, 2560),
    seed: int = 0,
    downsamples: Sequence[int] = (1, 4, 16),
    patient: str | None = None,
    quality: int = 90,
    architecture: int | None = None,
) -> SlideSpec:
    """Render one synthetic slide and write it to ``path``; returns its :class:`SlideSpec`.

    ``mpp`` 0.5 → 20x, 0.25 → 40x (the 20x render upsampled 2x, so tissue is physically identical for a
    given seed); ``mpp=None`` writes no resolution metadata at all (tiles only with ``--mpp``/``--mpp-csv``).
    ``size_20x`` is (width, height) in 20x px.
    """
    path = Path(path)
    spec = SlideSpec(
        slide=path.stem, patient=patient or path.stem, subtype=int(subtype), hrd=int(hrd),
        latent_risk=float(latent_risk), mpp=float(mpp) if mpp is not None else float("nan"),
        width_20x=int(size_20x[0]), height_20x=int(size_20x[1]), seed=int(seed),
        architecture=None if architecture is None else int(architecture),
    )
    img, stats = render_tissue(spec)
    spec.tumour_fraction = round(stats["tumour_fraction"], 4)
    eff_mpp = 0.5 if mpp is None else float(mpp)
    factor = 0.5 / eff_mpp
    if abs(factor - 1) > 1e-6:
        img = np.asarray(Image.fromarray(img).resize(
            (int(round(img.shape[1] * factor)), int(round(img.shape[0] * factor))), Image.Resampling.LANCZOS))
    write_pyramid_tiff(path, img, mpp, app_mag=None if mpp is None else 10.0 / eff_mpp,
                       downsamples=downsamples, quality=quality)
    return spec


def cohort_specs(n_slides: int = 24, seed: int = 0, frac_40x: float = 0.2, frac_two_slides: float = 0.25,
                 sizes_20x: Sequence[int] = (2048, 2304, 2560, 2816, 3072)) -> list[SlideSpec]:
    """Plan a cohort: balanced subtypes, latent risk, HRD, some patients with two slides, some 40x slides."""
    rng = np.random.default_rng(seed)
    n_two = int(round(n_slides * frac_two_slides / (1 + frac_two_slides)))
    n_pat = n_slides - n_two
    subtypes = rng.permutation(np.arange(n_pat) % 3)
    risks = rng.normal(0, 1, n_pat)
    hrds = (rng.random(n_pat) < 0.5).astype(int)
    arch = np.random.default_rng([seed, 3]).permutation(np.arange(n_pat) % 2)  # balanced, own stream
    two = set(rng.choice(n_pat, size=n_two, replace=False).tolist()) if n_two else set()
    size_rng = np.random.default_rng([seed, 1])  # separate streams: labels do not depend on the size list
    mpp_rng = np.random.default_rng([seed, 2])
    specs: list[SlideSpec] = []
    for p in range(n_pat):
        for j in range(2 if p in two else 1):
            i = len(specs)
            specs.append(SlideSpec(
                slide=f"syn{i:03d}", patient=f"pat{p:03d}", subtype=int(subtypes[p]), hrd=int(hrds[p]),
                latent_risk=float(risks[p]), mpp=0.5,
                width_20x=int(size_rng.choice(sizes_20x)), height_20x=int(size_rng.choice(sizes_20x)),
                seed=int(seed * 100003 + i * 7919 + 13), architecture=int(arch[p]),
            ))
    n40 = int(round(n_slides * frac_40x)) if n_slides >= 3 else 0
    for i in mpp_rng.choice(len(specs), size=max(n40, 1 if n_slides >= 3 else 0), replace=False):
        specs[int(i)].mpp = 0.25
    return specs


def survival_labels(specs: list[SlideSpec], seed: int = 0, base_hazard: float = 1 / 30.0) -> dict[str, tuple[float, int]]:
    """Per-patient (time, event): exponential model of the latent risk (and HRD), uniform censoring."""
    rng = np.random.default_rng(seed + 7)
    out: dict[str, tuple[float, int]] = {}
    for s in specs:
        if s.patient in out:
            continue
        lam = base_hazard * math.exp(1.0 * s.latent_risk - 0.5 * s.hrd)
        t = rng.exponential(1.0 / lam)
        c = rng.uniform(6.0, 60.0)
        out[s.patient] = (round(float(min(t, c)), 2), int(t <= c))
    return out


def _write_one(args: tuple[str, dict]) -> dict:
    path, d = args
    spec = make_slide(
        path, subtype=d["subtype"], latent_risk=d["latent_risk"], hrd=d["hrd"], mpp=d["mpp"],
        size_20x=(d["width_20x"], d["height_20x"]), seed=d["seed"], patient=d["patient"],
        architecture=d.get("architecture"),
    )
    return asdict(spec)


def make_cohort(out_dir: str | os.PathLike, n_slides: int = 24, seed: int = 0, workers: int = 1,
                progress: bool = True, **kwargs) -> Path:
    """Write ``out_dir/slides/*.tiff`` and ``out_dir/labels.csv`` (slide, patient, subtype, hrd, time, event,
    plus path, mpp, subtype_name, latent_risk, architecture, architecture_name). Existing slides are kept (resume).
    Returns the labels CSV path."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    sdir = out_dir / "slides"
    sdir.mkdir(parents=True, exist_ok=True)
    specs = cohort_specs(n_slides, seed, **kwargs)
    surv = survival_labels(specs, seed)
    todo = [(str(sdir / f"{s.slide}.tiff"), asdict(s)) for s in specs]
    tf: dict[str, float] = {}
    pending = [t for t in todo if not Path(t[0]).exists()]
    if workers > 1 and len(pending) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            for d in tqdm(ex.map(_write_one, pending), total=len(pending), desc="synth", disable=not progress):
                tf[d["slide"]] = d["tumour_fraction"]
    else:
        for t in tqdm(pending, desc="synth", unit="slide", disable=not progress):
            d = _write_one(t)
            tf[d["slide"]] = d["tumour_fraction"]
    labels = out_dir / "labels.csv"
    with atomic_path(labels) as tmp:
        with open(tmp, "w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(["slide", "patient", "subtype", "hrd", "time", "event", "path", "mpp", "subtype_name",
                         "latent_risk", "architecture", "architecture_name"])
            for s in specs:
                t, e = surv[s.patient]
                wr.writerow([s.slide, s.patient, s.subtype, s.hrd, t, e, f"slides/{s.slide}.tiff", s.mpp,
                             SUBTYPE_NAMES[s.subtype], round(s.latent_risk, 4), s.architecture,
                             ARCH_NAMES[s.architecture]])
    return labels
