"""Do generated patches look like the cohort's tissue? Real vs generated side by side, with numbers.

For each magnification: ``n`` real patches (20x tiles / 5x regions of the cohort, read as the model sees them)
and ``n`` patches generated from the same patches' SSL conditioning (20x: the tile's own embedding; 5x: the 4×4
grid of its children). Reported: per-channel mean / std in 0–255 of both sets, and the Fréchet distance between
the tiny-vit feature distributions of generated patches (first half) and real patches (second half), next to
the same distance between the two halves of the real patches (its sampling floor at this n) — a generator whose patches look like tissue
sits near the floor, colour noise far above it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from zoomfeat.encoders import create_encoder
from zoomfeat.generate.patches import generate_patches, save_image_grid
from zoomfeat.ldm import ZoomLDM
from zoomfeat.mags import mag_to_index
from zoomfeat.slides.coords import coords_path, read_coords
from zoomfeat.slides.grid import child_grid, parents_5x
from zoomfeat.slides.reader import open_slide


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` (rows = samples), as in FID."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def channel_stats(imgs: np.ndarray) -> dict:
    """Per-channel mean and std (0–255) of uint8 images (N, H, W, 3)."""
    x = imgs.reshape(-1, 3).astype(np.float64)
    return {"mean": [round(float(v), 1) for v in x.mean(0)], "std": [round(float(v), 1) for v in x.std(0)]}


def sample_real(slides: Sequence[Path], tiles_dir: Path, n: int, mag: str, px: int, seed: int = 0):
    """``n`` random real patches of ``mag`` (uint8, px×px) and their SSL inputs' source tiles (16 children at 5x)."""
    rng = np.random.default_rng(seed)
    picks = [slides[i] for i in rng.choice(len(slides), n, replace=len(slides) < n)]
    imgs, ssl_tiles = [], []
    for slide in picks:
        grid = read_coords(coords_path(tiles_dir, Path(slide).stem))
        s = int(grid.patch_size_level0)
        with open_slide(slide, require_mpp=False) as wsi:
            if mag == "20x":
                x, y = grid.coords[rng.integers(len(grid.coords))]
                tile = np.asarray(wsi.read_region_l0(int(x), int(y), s, 256))
                imgs.append(tile)
                ssl_tiles.append([tile])
            else:
                c5, _, s5 = parents_5x(grid)
                x, y = c5[rng.integers(len(c5))]
                imgs.append(wsi.read_region_l0(int(x), int(y), s5, px))
                kids = child_grid(np.array([[x, y]]), s).reshape(-1, 2)
                ssl_tiles.append([wsi.read_region_l0(int(a), int(b), s, 256) for a, b in kids])
    return np.stack([_resize(i, px) for i in imgs]), ssl_tiles


def _resize(img: np.ndarray, px: int) -> np.ndarray:
    from PIL import Image

    img = np.asarray(img)
    return img if img.shape[0] == px else np.asarray(Image.fromarray(img).resize((px, px), Image.Resampling.BOX))


@torch.no_grad()
def generate_like(ldm, ssl_encoder, ssl_tiles: list, mag: str, steps: int = 20, guidance: float = 2.0,
                  seed: int = 0) -> np.ndarray:
    """Generated uint8 patches conditioned on the SSL embeddings of ``ssl_tiles`` (one list per patch), sampled
    by :func:`zoomfeat.generate.patches.generate_patches` in one batch."""
    grids = []
    for tiles in ssl_tiles:
        emb = ssl_encoder.encode(torch.from_numpy(np.stack(tiles))).float()  # (k, C)
        side = int(round(len(tiles) ** 0.5))
        grids.append(emb.T.reshape(-1, side, side))
    n = len(grids)
    return generate_patches(ldm, torch.stack(grids), mag_to_index(mag), n=n, steps=steps, guidance_scale=guidance,
                            seed=seed, batch_size=n)


def realism_report(model_dir: str | os.PathLike, slides: Sequence[Path], tiles_dir: str | os.PathLike,
                   out_dir: str | os.PathLike, n: int = 32, mags: Sequence[str] = ("20x", "5x"), steps: int = 20,
                   seed: int = 0) -> dict:
    """Write ``real_vs_generated_{mag}.png`` (top rows real, bottom rows generated) and return the statistics."""
    ldm = ZoomLDM.load(model_dir).eval()
    ssl = create_encoder("tiny-vit", dim=int(ldm.ssl_dim))  # the conditioning encoder of the tiny recipe
    judge = create_encoder("tiny-vit")  # the demo's baseline encoder, as the feature space of the distance
    out_dir = Path(out_dir)
    res = {}
    for i, mag in enumerate(mags):
        real, ssl_tiles = sample_real(list(slides), Path(tiles_dir), n, mag, ldm.image_size, seed + i)
        fake = generate_like(ldm, ssl, ssl_tiles, mag, steps=steps, seed=seed + i)
        with torch.no_grad():
            fr = judge.encode(torch.from_numpy(real)).float().numpy()
            ff = judge.encode(torch.from_numpy(fake)).float().numpy()
        h = n // 2
        k = min(8, n)
        save_image_grid(np.concatenate([real[:k], fake[:k]]), out_dir / f"real_vs_generated_{mag}.png", nrow=k)
        res[mag] = {"real": channel_stats(real), "generated": channel_stats(fake),
                    "frechet_generated_vs_real": round(frechet_distance(ff[:h], fr[h:]), 3),
                    "frechet_real_vs_real_floor": round(frechet_distance(fr[:h], fr[h:]), 3), "n": n,
                    "png": str(out_dir / f"real_vs_generated_{mag}.png")}
    return res


def format_report(res: dict) -> str:
    lines = ["Real vs generated patches (per-channel RGB mean / std, 0-255; Fréchet distance of tiny-vit features):"]
    for mag, r in res.items():
        lines.append(f"  {mag}: real mean {r['real']['mean']} std {r['real']['std']} | generated mean "
                     f"{r['generated']['mean']} std {r['generated']['std']} | FD gen-vs-real "
                     f"{r['frechet_generated_vs_real']:.2f} (real-vs-real floor {r['frechet_real_vs_real_floor']:.2f}, "
                     f"n = {r['n']}) -> {r['png']}")
    return "\n".join(lines)
