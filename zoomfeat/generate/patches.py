"""Patch generation with ZoomLDM: SSL grid (or an image through an encoder) + magnification → PNG patches + grid.

The condition is the one the model was trained with (spec §4): the region's SSL grid (2^k × 2^k tiles for
scale k), pooled to ≤ 8×8 and z-scored per token inside ``ZoomLDM.condition``; sampling is DDIM or PLMS with
standard CFG (scale 2 by default) and the latents are decoded through the quantized VQ decoder.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from zoomfeat.io import atomic_path
from zoomfeat.precision import autocast
from zoomfeat.slides.grid import child_grid


def load_ssl_grid(src, ssl_dim: int) -> torch.Tensor:
    """An SSL grid from a file (``.npy`` / ``.pt``), an array or a tensor → float32 CPU tensor ``[B, C, s, s]``.

    Accepted layouts: ``[B, C, h, w]``, ``[C, h, w]``, channels-last ``[h, w, C]``, official BRCA ``[C, n]``
    (n = s², row-major) or ``[C]`` (one 20x tile), and NAIP-style ``[n, C]``. The one reader of every generation
    verb: wrong channel count, non-square grids and NaN/inf are one-line errors naming the source.
    """
    where = ""
    if isinstance(src, (str, os.PathLike)):
        where = f"{src}: "
        src = _read_grid_file(Path(src))
    arr = np.asarray(src.detach().cpu() if isinstance(src, torch.Tensor) else src, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim == 2:
        if arr.shape[0] != ssl_dim and arr.shape[1] == ssl_dim:
            arr = arr.T  # [n, C] -> [C, n]
        c, n = arr.shape
        s = math.isqrt(n)
        if s * s != n:
            raise ValueError(f"{where}{n} SSL tokens do not form a square grid")
        arr = arr.reshape(c, s, s)
    if arr.ndim == 3:
        if arr.shape[0] != ssl_dim and arr.shape[-1] == ssl_dim:
            arr = arr.transpose(2, 0, 1)  # [h, w, C] -> [C, h, w]
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"{where}SSL grid must have 1-4 dimensions; got shape {arr.shape}")
    if arr.shape[1] != ssl_dim:
        raise ValueError(f"{where}SSL grid has {arr.shape[1]} channels, the model expects {ssl_dim} "
                         f"(shape {arr.shape}; expected [B, {ssl_dim}, s, s] or a layout above)")
    if arr.shape[2] != arr.shape[3]:
        raise ValueError(f"{where}SSL grid is {arr.shape[2]}x{arr.shape[3]}, not square")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}SSL grid contains NaN/inf")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _read_grid_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"SSL grid not found: {path}")
    if path.suffix == ".pt":
        arr = torch.load(path, map_location="cpu", weights_only=True)
        return arr.numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
    return np.load(path, allow_pickle=False)


def ssl_grid_from_image(image: np.ndarray, encoder, side: int) -> torch.Tensor:
    """Encode an RGB region (uint8 H×W×3) as a ``side × side`` grid of encoder tokens → ``[1, D, side, side]``.

    For ZoomLDM scale k the region spans 2^k × 2^k 20x tiles, so ``side = 2**k`` reproduces the training grid
    (one UNI embedding per 256-px 20x tile).
    """
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image H×W×3; got shape {image.shape}")
    tile_px = 256
    img = np.asarray(Image.fromarray(image).resize((side * tile_px, side * tile_px), Image.BICUBIC))
    tiles = [img[y : y + tile_px, x : x + tile_px] for x, y in child_grid([[0, 0]], tile_px, side)[0]]  # row-major
    with torch.no_grad():
        feats = encoder.encode(torch.from_numpy(np.stack(tiles)))  # [side², D], row-major
    feats = torch.as_tensor(feats, dtype=torch.float32).cpu()
    return feats.T.reshape(1, -1, side, side)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Decoded images in [-1, 1] ``[N, 3, H, W]`` → uint8 ``[N, H, W, 3]`` (clamp((x+1)/2, 0, 1), rounded).

    The one conversion of every generation output; a single image is ``to_uint8(x)[0]``."""
    x = ((images.detach().float().cpu() + 1.0) / 2.0).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def save_image_grid(images, path: str | os.PathLike, nrow: int = 8, padding: int = 2, pad_value: int = 255) -> Path:
    """Tile images into one PNG (atomic write). ``images``: uint8 ``[N, H, W, 3]`` / list of arrays, or a float
    tensor ``[N, 3, H, W]`` in [-1, 1]."""
    from PIL import Image

    if isinstance(images, torch.Tensor):
        images = to_uint8(images)
    arrs = [np.asarray(im) for im in images]
    if not arrs:
        raise ValueError("no images to tile")
    arrs = [a[..., None].repeat(3, -1) if a.ndim == 2 else a[..., :3] for a in arrs]
    h = max(a.shape[0] for a in arrs)
    w = max(a.shape[1] for a in arrs)
    ncol = max(1, min(nrow, len(arrs)))
    nr = math.ceil(len(arrs) / ncol)
    canvas = np.full((nr * h + (nr + 1) * padding, ncol * w + (ncol + 1) * padding, 3), pad_value, np.uint8)
    for i, a in enumerate(arrs):
        r, c = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        canvas[y : y + a.shape[0], x : x + a.shape[1]] = a.astype(np.uint8)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    return path


def write_patches(images: np.ndarray, out_dir: str | os.PathLike, prefix: str = "sample") -> list[Path]:
    """Write uint8 ``[N, H, W, 3]`` images as ``{prefix}_{i:03d}.png`` (atomic)."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        p = out_dir / f"{prefix}_{i:03d}.png"
        with atomic_path(p) as tmp:
            Image.fromarray(im).save(tmp, format="PNG")
        paths.append(p)
    return paths


def generate_patches(
    model,
    ssl_grid,
    mag,
    n: int = 8,
    steps: int = 50,
    scheduler: str = "ddim",
    guidance_scale: float = 2.0,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
    precision: str = "fp32",
) -> np.ndarray:
    """Sample ``n`` patches for one SSL grid (``[C,s,s]`` / ``[1,C,s,s]``) or for ``n`` grids ``[n,C,s,s]``
    (any layout :func:`load_ssl_grid` reads).

    Returns uint8 ``[n, H, W, 3]``. Reproducible for a given ``seed`` (noise drawn on CPU). ``precision``:
    autocast dtype of the Summarizer + UNet (the official samples ran under fp16 autocast); the VQ decode is fp32.
    """
    grid = load_ssl_grid(ssl_grid, int(model.ssl_dim))
    if grid.shape[0] not in (1, n):
        raise ValueError(f"got {grid.shape[0]} SSL grids for n={n} samples (give 1 grid or n grids)")
    gen = torch.Generator().manual_seed(int(seed))
    shape = (n, model.latent_channels, model.latent_size, model.latent_size)
    noise = torch.randn(shape, generator=gen)
    out = []
    it = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="generating", unit="batch")
    with torch.no_grad():
        for start in it:
            stop = min(n, start + batch_size)
            g = grid if grid.shape[0] == 1 else grid[start:stop]
            with autocast(model.device, precision):
                ctx = model.condition(g, mag)
                if ctx.shape[0] == 1:
                    ctx = ctx.expand(stop - start, -1, -1)
                lat = model.sample(
                    ctx, steps=steps, scheduler=scheduler, guidance_scale=guidance_scale, latents=noise[start:stop]
                )
            out.append(to_uint8(model.decode(lat.float())))
    return np.concatenate(out)


def grid_nrow(n: int) -> int:
    """A near-square column count for ``n`` images."""
    return max(1, math.ceil(math.sqrt(n)))
