"""Joint multi-scale sampling of large images with ZoomLDM (spec §5).

An N×N grid of 20x patches is sampled together with one low-magnification "guide" image of the same
region (mag index log2 N: 5x for N=4 / 1024², 1.25x for N=16 / 4096² at full size). At every timestep the
guide's x̂0 is decoded and cut into N×N tiles, and each 20x patch chain is nudged so that its downsampled
decoded x̂0 matches its tile. The nudge is the backprop-free update of Graikos et al. ("Fast constrained
sampling in pre-trained diffusion models"): finite differences through the VQ encoder and the denoiser stand
in for the vector-Jacobian products, so no activation graph is kept (``guidance="fd"``). The gradient
variant (``guidance="autograd"``) backpropagates ½‖tile − down(D(x̂0(x_t)))‖² through the decoder (straight-
through quantiser) and the denoiser, for comparison (``benchmarks/guidance.py``).

Differences from the official code, all deliberate (spec §9): one model instance (no per-call EMA
re-entry); the standard CFG convention ``ε_u + s(ε_c − ε_u)`` (official ``(1+w)ε_c − wε_u`` is s = 1 + w,
so the official w=2 is ``guidance_scale=3``); the consistent ancestral term √(1−ᾱ_prev−β̃) (not the Colab
√(1−ᾱ_prev)); the UNet sees the same timestep index as ᾱ and the last step lands on x̂0 (ᾱ_prev = 1) unless
``official_timesteps=True`` (t+1 to the UNet, ᾱ_prev(last) = ᾱ_0, bit-matching only); the guide grid is
pooled and re-normalised by ``ZoomLDM.condition`` like training; the refinement pass honours ``batch_size``.
All sizes (tile, window, stride) derive from the model's ``image_size``/``latent_size``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from zoomfeat.generate.options import GUIDANCE_MODES, LargeImageConfig  # noqa: F401 — the API's names
from zoomfeat.generate.patches import load_ssl_grid, to_uint8
from zoomfeat.generate.resize import Resizer
from zoomfeat.precision import autocast

__all__ = [
    "LargeImageConfig",
    "LargeImage",
    "Schedule",
    "make_schedule",
    "constrained_sample",
    "guided_update",
    "decode_tiled",
    "refine_latent",
    "sample_large_image",
    "stitch",
    "unstitch",
    "split_tiles",
    "constraint_error",
]

@dataclass
class LargeImage:
    """Result of :func:`sample_large_image`."""

    image: np.ndarray  #: uint8 (N·S, N·S, 3), the blended 20x image (refined if requested)
    guide: np.ndarray  #: uint8 (S, S, 3), the jointly sampled low-magnification image
    latent: torch.Tensor  #: [1, c, N·L, N·L] stitched 20x latent (after refinement if any)
    guide_latent: torch.Tensor  #: [1, c, L, L]
    mag_index: int  #: magnification index of the guide (log2 N)
    constraint_error: float  #: RMSE between down(patch) and its guide tile, in [-1, 1] units
    unrefined: np.ndarray | None = None  #: the image before refinement, when refine=True
    seconds: float = 0.0
    config: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# schedule and predictor
# --------------------------------------------------------------------------------------------------
@dataclass
class Schedule:
    """One sampling pass: per step the UNet timestep, ᾱ, ᾱ_prev and the single-step β."""

    model_t: list[float]
    alpha: list[float]
    alpha_prev: list[float]
    beta: list[float]

    def __len__(self) -> int:
        return len(self.model_t)


def make_schedule(alphas_cumprod: torch.Tensor, t0: int, stride: int, official: bool = False) -> Schedule:
    """Timesteps t0, t0−stride, … > 0 (1-based as in the official loop); ᾱ uses index t−1.

    ``official=False``: the UNet also gets t−1 (the index it was trained with) and the last step's
    ᾱ_prev is 1, so the final update returns x̂0. ``official=True``: UNet gets t and ᾱ_prev(last) = ᾱ_0.
    """
    ac = alphas_cumprod.detach().double().cpu()
    mt, a, ap, b = [], [], [], []
    for t in range(int(t0), 0, -int(stride)):
        i = t - 1
        j = i - stride
        a_t = float(ac[i])
        if official:
            a_prev = float(ac[max(j, 0)])
        else:
            a_prev = float(ac[j]) if j >= 0 else 1.0
        beta = float(1.0 - ac[i] / ac[i - 1]) if i > 0 else float(1.0 - ac[0])
        mt.append(float(t) if official else float(i))
        a.append(a_t)
        ap.append(a_prev)
        b.append(beta)
    return Schedule(mt, a, ap, b)


def _x0(x: torch.Tensor, eps: torch.Tensor, a: float) -> torch.Tensor:
    return (x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)


def _ancestral(x0: torch.Tensor, eps: torch.Tensor, a: float, a_prev: float, beta: float,
               noise: torch.Tensor) -> torch.Tensor:
    """x_prev = √ᾱ_prev x̂0 + √(1−ᾱ_prev−β̃) ε + √β̃ z with β̃ = β (1−ᾱ_prev)/(1−ᾱ) (official postprocess.py).

    β̃ uses the single-step β, so σ is ~0.14× DDIM-η=1 at stride 50: no diffusers scheduler has this σ.
    """
    beta_t = beta * (1.0 - a_prev) / (1.0 - a)
    c_eps = math.sqrt(max(1.0 - a_prev - beta_t, 0.0))
    return math.sqrt(a_prev) * x0 + c_eps * eps + math.sqrt(beta_t) * noise


def _pnorm(v: torch.Tensor) -> torch.Tensor:
    """Divide each sample by its max |value| (the official per-sample normalisation)."""
    m = v.abs().flatten(1).amax(dim=1).clamp_min(1e-12)
    return v / m.view(-1, *([1] * (v.dim() - 1)))


# --------------------------------------------------------------------------------------------------
# tiling helpers
# --------------------------------------------------------------------------------------------------
def split_tiles(img: torch.Tensor, n: int) -> torch.Tensor:
    """[B, C, n·s, n·s] -> [B·n², C, s, s], row-major tiles."""
    b, c, h, w = img.shape
    if h % n or w % n:
        raise ValueError(f"image {h}x{w} is not divisible into {n}x{n} tiles")
    s1, s2 = h // n, w // n
    return img.reshape(b, c, n, s1, n, s2).permute(0, 2, 4, 1, 3, 5).reshape(b * n * n, c, s1, s2)


def stitch(patches: torch.Tensor, n: int) -> torch.Tensor:
    """[B·n², C, s, s] (row-major) -> [B, C, n·s, n·s]."""
    p, c, h, w = patches.shape
    b = p // (n * n)
    return patches.reshape(b, n, n, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, n * h, n * w)


def unstitch(big: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`stitch`."""
    return split_tiles(big, n)


def _randn(gen: torch.Generator, shape: Sequence[int], like: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Noise drawn on the CPU generator (device-independent streams), then moved."""
    z = torch.randn(tuple(shape), generator=gen, dtype=torch.float32)
    return z.to(device if device is not None else (like.device if like is not None else "cpu"))


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, bs: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + bs]) for i in range(0, x.shape[0], bs)])


def _model_geometry(model) -> tuple[int, int, int]:
    s, l = int(model.image_size), int(model.latent_size)
    if s % l:
        raise ValueError(f"image_size {s} is not a multiple of latent_size {l}")
    return s, l, s // l


# --------------------------------------------------------------------------------------------------
# constrained sampling core (shared with super-resolution)
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def _fd_guidance(model, x, eps, x0, ctx, t, a, tiles, down, up, cfg: LargeImageConfig, scale):
    """Backprop-free update (spec §5.b): encoder and denoiser JVPs by finite differences."""
    b = x.shape[0]
    dtype = getattr(model, "dtype", torch.float32)
    for _ in range(cfg.n_steps):
        img = model.decode(x0.to(dtype)).float()
        e_img = _pnorm(up(tiles - down(img)))
        z_both = model.encode(torch.cat([img, img + cfg.h * e_img]).to(dtype)).float()
        e_lat = _pnorm(z_both[b:] - z_both[:b])
        x_h = x + cfg.h * e_lat
        x0_h = _x0(x_h, model.guided_eps(x_h, t, ctx, scale), a)
        g = _pnorm((x0_h - x0) / cfg.h)
        x = x + cfg.lr * g
        eps = model.guided_eps(x, t, ctx, scale)
        x0 = _x0(x, eps, a)
    return x, eps, x0


def _autograd_guidance(model, x, eps, x0, ctx, t, a, tiles, down, up, cfg: LargeImageConfig, scale):
    """Gradient variant: x_t ← x_t − lr·norm(∇ ½‖tile − down(D(x̂0(x_t)))‖²) through decoder and UNet."""
    dtype = getattr(model, "dtype", torch.float32)
    for _ in range(cfg.n_steps):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0g = _x0(xg, model.guided_eps(xg, t, ctx, scale), a)
            img = model.decode(x0g.to(dtype)).float()
            loss = 0.5 * (tiles - down(img)).pow(2).sum()
            (grad,) = torch.autograd.grad(loss, xg)
        x = (x - cfg.lr * _pnorm(grad)).detach()
    if cfg.n_steps:
        with torch.no_grad():
            eps = model.guided_eps(x, t, ctx, scale)
            x0 = _x0(x, eps, a)
    return x, eps, x0


def guided_update(model, x: torch.Tensor, contexts: torch.Tensor, t_index: int, tiles: torch.Tensor, n: int,
                  cfg: LargeImageConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One timestep's constraint updates on a patch batch (no ancestral step): returns (x_t, ε, x̂0).

    ``t_index`` indexes ᾱ (0..999); ``tiles`` [B, 3, S/n, S/n] are the guide tiles. Exposed for the
    backprop-free vs autograd benchmark.
    """
    s, _, _ = _model_geometry(model)
    down = Resizer(s, scale=1.0 / n).to(x.device)
    up = Resizer(s // n, scale=float(n)).to(x.device)
    a = float(model.alphas_cumprod[t_index])
    t = float(t_index + 1 if cfg.official_timesteps else t_index)
    with torch.no_grad():
        eps = model.guided_eps(x, t, contexts, cfg.guidance_scale)
        x0 = _x0(x, eps, a)
    update = {"fd": _fd_guidance, "autograd": _autograd_guidance}.get(cfg.guidance)
    if update is None or cfg.n_steps == 0:
        return x, eps, x0
    return update(model, x, eps, x0, contexts, t, a, tiles, down, up, cfg, cfg.guidance_scale)


def constrained_sample(
    model,
    contexts: torch.Tensor,
    n: int,
    cfg: LargeImageConfig,
    generator: torch.Generator,
    guide_context: torch.Tensor | None = None,
    guide_image: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample n² 20x latents constrained to a guide: a jointly sampled chain or a fixed image.

    ``contexts``: [n², T, D] 20x contexts (row-major). Exactly one of ``guide_context`` (joint sampling:
    the guide is sampled alongside as a plain CFG chain) and ``guide_image`` ([1, 3, S, S] in [-1, 1],
    super-resolution) must be given. Returns (patch latents [n², c, L, L], guide latent [1, c, L, L] or None).
    """
    if (guide_context is None) == (guide_image is None):
        raise ValueError("give exactly one of guide_context and guide_image")
    s, l, _ = _model_geometry(model)
    if s % n:
        raise ValueError(f"model image_size {s} is not divisible by the grid side {n}")
    device = contexts.device
    c = int(model.latent_channels)
    p = contexts.shape[0]
    if p != n * n:
        raise ValueError(f"expected {n * n} contexts for a {n}x{n} grid, got {p}")
    down = Resizer(s, scale=1.0 / n).to(device)
    up = Resizer(s // n, scale=float(n)).to(device)
    sched = make_schedule(model.alphas_cumprod, cfg.t0, cfg.stride, cfg.official_timesteps)
    g_scale = cfg.guidance_scale if cfg.guide_guidance_scale is None else cfg.guide_guidance_scale

    x = _randn(generator, (p, c, l, l), device=device)
    xg = _randn(generator, (1, c, l, l), device=device) if guide_context is not None else None
    fixed_tiles = split_tiles(guide_image.to(device).float(), n) if guide_image is not None else None
    update = {"fd": _fd_guidance, "autograd": _autograd_guidance}.get(cfg.guidance)
    dtype = getattr(model, "dtype", torch.float32)

    for k in tqdm(range(len(sched)), desc="joint sampling", disable=not cfg.progress, leave=False):
        t, a, a_prev, beta = sched.model_t[k], sched.alpha[k], sched.alpha_prev[k], sched.beta[k]
        with torch.no_grad():
            if xg is not None:
                eps_g = model.guided_eps(xg, t, guide_context, g_scale)
                x0_g = _x0(xg, eps_g, a)
                tiles_all = split_tiles(model.decode(x0_g.to(dtype)).float().clamp(-1, 1), n)
            else:
                tiles_all = fixed_tiles
        x_new = torch.empty_like(x)
        noise = _randn(generator, x.shape, device=device)
        for i in range(0, p, cfg.batch_size):
            sl = slice(i, min(i + cfg.batch_size, p))
            xb, ctx = x[sl], contexts[sl]
            with torch.no_grad():
                eps = model.guided_eps(xb, t, ctx, cfg.guidance_scale)
                x0 = _x0(xb, eps, a)
            if update is not None and cfg.n_steps > 0:
                xb, eps, x0 = update(model, xb, eps, x0, ctx, t, a, tiles_all[sl], down, up, cfg, cfg.guidance_scale)
            x_new[sl] = _ancestral(x0, eps, a, a_prev, beta, noise[sl])
        x = x_new
        if xg is not None:
            noise_g = _randn(generator, xg.shape, device=device)
            xg = _ancestral(x0_g, eps_g, a, a_prev, beta, noise_g)
    return x, xg


# --------------------------------------------------------------------------------------------------
# decoding and refinement
# --------------------------------------------------------------------------------------------------
def _starts(total: int, window: int, stride: int) -> list[int]:
    if total < window:
        raise ValueError(f"latent side {total} is smaller than the window {window}")
    st = list(range(0, total - window + 1, stride))
    if st[-1] != total - window:  # always cover the far edge
        st.append(total - window)
    return st


def _gaussian_weight(size: int, sigma: float) -> torch.Tensor:
    g = torch.linspace(-1, 1, size)
    d2 = g.view(-1, 1) ** 2 + g.view(1, -1) ** 2
    w = torch.exp(-d2 / sigma**2)
    return w / w.max()


@torch.no_grad()
def decode_tiled(model, latent: torch.Tensor, stride: int | None = None, sigma: float = 0.8,
                 batch_size: int = 16, progress: bool = False) -> torch.Tensor:
    """Decode a large latent [B, c, H, W] with overlapping model-size windows blended by a Gaussian.

    Windows are ``latent_size`` wide (what the VQ decoder saw in training), every ``stride`` latent px
    (default latent_size // 4, the official 16 for 64); each decoded window is weighted by
    exp(−d²/σ²) on a linspace(−1, 1) grid and the sum is normalised by the summed weights.
    Returns images in [-1, 1], [B, 3, f·H, f·W].
    """
    s, l, f = _model_geometry(model)
    b, c, hh, ww = latent.shape
    if hh == l and ww == l:
        return model.decode(latent.to(getattr(model, "dtype", torch.float32))).float()
    stride = stride or max(l // 4, 1)
    pos = [(i, j) for i in _starts(hh, l, stride) for j in _starts(ww, l, stride)]
    kernel = _gaussian_weight(s, sigma).to(latent.device)
    out = torch.zeros(b, 3, f * hh, f * ww, device=latent.device)
    wsum = torch.zeros(1, 1, f * hh, f * ww, device=latent.device)
    dtype = getattr(model, "dtype", torch.float32)
    per = max(1, batch_size // b)
    for k in tqdm(range(0, len(pos), per), desc="decoding", disable=not progress, leave=False):
        chunk = pos[k:k + per]
        lat = torch.cat([latent[:, :, i:i + l, j:j + l] for i, j in chunk])
        dec = model.decode(lat.to(dtype)).float()
        for m, (i, j) in enumerate(chunk):
            out[:, :, f * i:f * i + s, f * j:f * j + s] += dec[m * b:(m + 1) * b] * kernel
            wsum[:, :, f * i:f * i + s, f * j:f * j + s] += kernel
    return out / wsum


def _slerp(t: torch.Tensor, v0: torch.Tensor, v1: torch.Tensor, threshold: float = 0.9995) -> torch.Tensor:
    """Row-wise spherical interpolation (linear when nearly parallel), as the official refinement."""
    dot = (v0 * v1).sum(-1) / (v0.norm(dim=-1) * v1.norm(dim=-1)).clamp_min(1e-12)
    dot = dot.clamp(-1, 1)
    theta = torch.arccos(dot)
    sin = torch.sin(theta).clamp_min(1e-12)
    s0 = torch.sin(theta - theta * t) / sin
    s1 = torch.sin(theta * t) / sin
    lin = dot.abs() > threshold
    s0 = torch.where(lin, 1 - t, s0)
    s1 = torch.where(lin, t, s1)
    return s0.unsqueeze(-1) * v0 + s1.unsqueeze(-1) * v1


def window_tokens(grid: torch.Tensor, positions: Sequence[tuple[int, int]], window: int) -> torch.Tensor:
    """SSL token for each latent window at (i, j): slerp of the 4 neighbouring grid tokens at (i/L, j/L).

    ``grid`` [C, n, n] raw tokens, replicate-padded on the bottom/right; returns [len(positions), C].
    """
    cdim, n, _ = grid.shape
    g = torch.nn.functional.pad(grid[None].float(), (0, 1, 0, 1), mode="replicate")[0]  # [C, n+1, n+1]
    pos = torch.tensor(positions, dtype=torch.float64)
    pi, pj = pos[:, 0] / window, pos[:, 1] / window
    i1, j1 = pi.floor().long().clamp(max=n - 1), pj.floor().long().clamp(max=n - 1)
    ti, tj = (pi - i1).float().to(g.device), (pj - j1).float().to(g.device)
    e = lambda a, b: g[:, a, b].T  # noqa: E731
    top = _slerp(tj, e(i1, j1), e(i1, j1 + 1))
    bot = _slerp(tj, e(i1 + 1, j1), e(i1 + 1, j1 + 1))
    return _slerp(ti, top, bot)


@torch.no_grad()
def refine_latent(model, latent: torch.Tensor, ssl_grid: torch.Tensor, cfg: LargeImageConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """Sliding-window refinement (spec §5.7): re-noise to ``refine_t0`` and denoise overlapping windows.

    Each window's context comes from the slerp-interpolated SSL token at its position (re-normalised by
    ``condition``, mag 0); x̂0 is averaged over overlaps, ε recomputed from the average, then the same
    ancestral step as sampling. Windows are processed ``batch_size`` at a time (the official ignores it).
    """
    s, l, _ = _model_geometry(model)
    device = latent.device
    stride = cfg.refine_window_stride or max(l // 4, 1)
    _, c, hh, ww = latent.shape
    pos = [(i, j) for i in _starts(hh, l, stride) for j in _starts(ww, l, stride)]
    tokens = window_tokens(ssl_grid.to(device), pos, l)
    ctx = torch.cat([model.condition(tokens[k:k + cfg.batch_size, :, None, None], 0)
                     for k in range(0, len(pos), cfg.batch_size)])
    sched = make_schedule(model.alphas_cumprod, cfg.refine_t0, cfg.refine_stride, cfg.official_timesteps)
    a0 = sched.alpha[0]
    x = math.sqrt(a0) * latent.float() + math.sqrt(1 - a0) * _randn(generator, latent.shape, device=device)
    count = torch.zeros(1, 1, hh, ww, device=device)
    for i, j in pos:
        count[:, :, i:i + l, j:j + l] += 1
    for k in tqdm(range(len(sched)), desc="refining", disable=not cfg.progress, leave=False):
        t, a, a_prev, beta = sched.model_t[k], sched.alpha[k], sched.alpha_prev[k], sched.beta[k]
        x0_map = torch.zeros_like(x)
        for q in range(0, len(pos), cfg.batch_size):
            chunk = pos[q:q + cfg.batch_size]
            xw = torch.cat([x[:, :, i:i + l, j:j + l] for i, j in chunk])
            x0w = _x0(xw, model.guided_eps(xw, t, ctx[q:q + len(chunk)], cfg.refine_guidance_scale), a)
            for m, (i, j) in enumerate(chunk):
                x0_map[:, :, i:i + l, j:j + l] += x0w[m:m + 1]
        x0 = x0_map / count
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        x = _ancestral(x0, eps, a, a_prev, beta, _randn(generator, x.shape, device=device))
    return x


# --------------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------------
def grid_mag_index(n: int, mag_levels: int) -> int:
    """Magnification index of an n×n grid of 20x tiles (log2 n); n must be a power of two the model knows."""
    k = int(round(math.log2(n))) if n >= 1 else -1
    if n < 2 or 2**k != n:
        raise ValueError(f"grid side must be a power of two >= 2, got {n}")
    if k >= mag_levels:
        raise ValueError(f"a {n}x{n} grid needs magnification index {k}, the model has {mag_levels} levels")
    return k


@torch.no_grad()
def constraint_error(model, patch_latents: torch.Tensor, guide: torch.Tensor, n: int,
                     batch_size: int = 16) -> float:
    """RMSE between down(decode(patch)) and its guide tile ([1, 3, S, S] in [-1, 1])."""
    s, _, _ = _model_geometry(model)
    dtype = getattr(model, "dtype", torch.float32)
    down = Resizer(s, scale=1.0 / n).to(patch_latents.device)
    dec = _batched(lambda z: down(model.decode(z.to(dtype)).float()), patch_latents, batch_size)
    return float((dec - split_tiles(guide.float().to(dec.device), n)).pow(2).mean().sqrt())


def sample_large_image(model, ssl_grid: np.ndarray | torch.Tensor, config: LargeImageConfig | None = None,
                       seed: int = 0) -> LargeImage:
    """Generate an (n·S)² 20x image and its (S)² low-magnification guide from an n×n SSL grid.

    ``ssl_grid``: raw (un-normalised) SSL tokens of the region, one per 20x tile (see :func:`load_ssl_grid`);
    ``condition`` pools/normalises exactly as in training. Deterministic for a given seed and device.
    Runs under autocast at ``config.precision`` (the VQ encode/decode inside stays fp32).
    """
    cfg = config or LargeImageConfig()
    with autocast(model.device, cfg.precision):
        return _sample_large_image(model, ssl_grid, cfg, seed)


def _sample_large_image(model, ssl_grid, cfg: LargeImageConfig, seed: int) -> LargeImage:
    t_start = time.perf_counter()
    grid = load_ssl_grid(ssl_grid, int(model.ssl_dim))
    if grid.shape[0] != 1:
        raise ValueError(f"expected one region's SSL grid, got a batch of {grid.shape[0]}")
    grid = grid[0].to(model.device)
    n = grid.shape[-1]
    k = grid_mag_index(n, int(model.mag_levels))
    s, l, _ = _model_geometry(model)
    if s % n:
        raise ValueError(f"grid side {n} does not divide the model image size {s}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad():
        tokens = grid.flatten(1).T[:, :, None, None]  # [n², C, 1, 1] row-major
        ctx = torch.cat([model.condition(tokens[i:i + cfg.batch_size], 0)
                         for i in range(0, n * n, cfg.batch_size)])
        ctx_guide = model.condition(grid[None], k)
    patches, guide_lat = constrained_sample(model, ctx, n, cfg, gen, guide_context=ctx_guide)
    with torch.no_grad():
        guide_img = model.decode(guide_lat.to(getattr(model, "dtype", torch.float32))).float().clamp(-1, 1)
        err = constraint_error(model, patches, guide_img, n, cfg.batch_size)
        big = stitch(patches, n)
    unrefined = None
    if cfg.refine:
        unrefined = to_uint8(decode_tiled(model, big, cfg.decode_stride, cfg.blend_sigma, cfg.batch_size))[0]
        big = refine_latent(model, big, grid, cfg, gen)
    image = to_uint8(decode_tiled(model, big, cfg.decode_stride, cfg.blend_sigma, cfg.batch_size, cfg.progress))[0]
    return LargeImage(image=image, guide=to_uint8(guide_img)[0], latent=big.cpu(), guide_latent=guide_lat.cpu(),
                      mag_index=k, constraint_error=err, unrefined=unrefined,
                      seconds=time.perf_counter() - t_start, config=asdict(cfg))
