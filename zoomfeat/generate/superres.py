"""4× (N×) super-resolution with ZoomLDM by condition inversion + constrained 20x sampling (spec §6).

1. **Condition inversion**: learn the unseen N×N grid of 20x SSL tokens F of a low-magnification image by
   minimising the model's own denoising loss on the LR latent (Adam, lr 0.1, one timestep per iteration on
   the descending schedule ``linspace(950, 50, iters)``), weighted √ᾱ(1−ᾱ), minus 0.05× the mean pairwise
   cosine similarity of the raw tokens (a smoothness prior: neighbouring tiles should look alike).
2. **Constrained sampling**: the N² 20x patches are conditioned on the learned tokens (mag 20x) and sampled
   with the §5.b backprop-free update, the fixed LR image's tiles acting as the guide
   (``e_img = up(LR_tile − down(I))``; the Colab copy's shape-inconsistent line is not ported, spec §9.18).
The UNet, Summarizer and VQ are the single loaded model (EMA UNet when loaded from an official checkpoint).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from zoomfeat.generate.large import (
    constrained_sample,
    constraint_error,
    decode_tiled,
    grid_mag_index,
    refine_latent,
    stitch,
)
from zoomfeat.generate.options import LargeImageConfig, SuperResConfig  # noqa: F401 — the API's names
from zoomfeat.generate.patches import to_uint8
from zoomfeat.generate.resize import Resizer
from zoomfeat.precision import autocast

__all__ = ["SuperResConfig", "SuperRes", "Inversion", "prepare_image", "invert_condition", "super_resolve",
           "sr_metrics", "side_by_side"]


@dataclass
class Inversion:
    """Learned tokens and the optimisation trace."""

    features: torch.Tensor  #: [C, N, N] raw learned tokens
    losses: np.ndarray  #: total loss per iteration (its t changes every iteration)
    denoise_losses: np.ndarray  #: weighted denoising term per iteration
    probe_before: float  #: full objective on fixed (t, ε) probes, initial tokens
    probe_after: float  #: same probes, learned tokens
    probe_denoise_before: float  #: denoising term alone on the probes, initial tokens
    probe_denoise_after: float  #: same, learned tokens


@dataclass
class SuperRes:
    """Result of :func:`super_resolve`."""

    sr: np.ndarray  #: uint8 (N·S, N·S, 3)
    lr: np.ndarray  #: uint8 (S, S, 3), the LR image as the model saw it
    inversion: Inversion
    constraint_error: float  #: RMSE between down(SR patch) and its LR tile, [-1, 1] units
    seconds: float = 0.0
    config: dict = field(default_factory=dict)


def prepare_image(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (H, W, 3) square image -> [1, 3, size, size] in [-1, 1] (MATLAB-style antialiased bicubic)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.shape[0] != arr.shape[1]:
        raise ValueError(f"expected a square image, got {arr.shape[1]}x{arr.shape[0]} px; crop it first")
    x = torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    if arr.shape[0] != size:
        x = Resizer(arr.shape[0], out_size=size)(x).clamp(-1, 1)
    return x


def _objective(model, z: torch.Tensor, feats: torch.Tensor, mag: int, idx: int, eps: torch.Tensor,
               official: bool) -> torch.Tensor:
    a = float(model.alphas_cumprod[idx])
    x_t = math.sqrt(a) * z + math.sqrt(1 - a) * eps
    ctx = model.condition(feats[None], mag)
    t_model = float(idx + 1 if official else idx)
    pred = model.predict_eps(x_t.to(model.dtype), torch.tensor([t_model], device=z.device), ctx).float()
    return (math.sqrt(a) * (1 - a) * (pred - eps).pow(2)).mean()


def invert_condition(model, lr: torch.Tensor, scale: int, cfg: SuperResConfig | None = None,
                     generator: torch.Generator | None = None, progress: bool = False) -> Inversion:
    """Learn the [C, N, N] 20x SSL tokens of ``lr`` ([1, 3, S, S] in [-1, 1]) by denoising-loss descent."""
    cfg = cfg or SuperResConfig(scale=scale)
    gen = generator or torch.Generator().manual_seed(0)
    device = model.device
    k = grid_mag_index(scale, int(model.mag_levels))
    official = cfg.sampling.official_timesteps
    with torch.no_grad():
        z = model.encode(lr.to(device, model.dtype)).float()
    feats = torch.randn(int(model.ssl_dim), scale, scale, generator=gen).to(device).requires_grad_(True)
    opt = torch.optim.Adam([feats], lr=cfg.inv_lr)
    ts = np.linspace(cfg.t_max, cfg.t_min, cfg.iters).astype(int)

    probe_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    probe_t = np.linspace(cfg.t_max, cfg.t_min, cfg.probe_points).astype(int)
    probe_eps = [torch.randn(z.shape, generator=probe_gen).to(device) for _ in probe_t]

    def prior(f: torch.Tensor) -> torch.Tensor:
        """Mean pairwise cosine similarity of the raw tokens (rewarded: a smoothness prior)."""
        tok = (f / f.norm(dim=0, keepdim=True).clamp_min(1e-12)).flatten(1)  # [C, N²]
        return (tok.T @ tok).mean()

    def probe(f: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            d = float(np.mean([_objective(model, z, f, k, int(t) - 1, e, official).item()
                               for t, e in zip(probe_t, probe_eps)]))
            return d - cfg.smooth_weight * float(prior(f)), d

    before, d_before = probe(feats.detach())
    losses, dlosses = [], []
    for t in tqdm(ts, desc="condition inversion", disable=not progress, leave=False):
        eps = torch.randn(z.shape, generator=gen).to(device)
        dl = _objective(model, z, feats, k, int(t) - 1, eps, official)
        loss = dl - cfg.smooth_weight * prior(feats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        dlosses.append(float(dl.detach()))
    feats = feats.detach()
    after, d_after = probe(feats)
    return Inversion(feats.cpu(), np.asarray(losses), np.asarray(dlosses), before, after, d_before, d_after)


def super_resolve(model, image: np.ndarray, config: SuperResConfig | None = None, seed: int = 0,
                  progress: bool = True) -> SuperRes:
    """Super-resolve a square low-magnification image by ``config.scale`` (default 4: 5x -> 20x).

    The image is resized to the model's ``image_size`` (the LR magnification's field of view); the result
    is (scale · image_size)² px at 20x. Deterministic for a given seed and device.
    """
    cfg = config or SuperResConfig()
    t_start = time.perf_counter()
    n = int(cfg.scale)
    s = int(model.image_size)
    if s % n:
        raise ValueError(f"scale {n} does not divide the model image size {s}")
    lr = prepare_image(image, s).to(model.device)
    gen = torch.Generator().manual_seed(int(seed))
    inv = invert_condition(model, lr, n, cfg, gen, progress=progress)
    scfg = cfg.sampling
    feats = inv.features.to(model.device)

    with autocast(model.device, scfg.precision):  # sampling at sampling.precision; the inversion above is fp32
        with torch.no_grad():
            tokens = feats.flatten(1).T[:, :, None, None]
            ctx = torch.cat([model.condition(tokens[i:i + scfg.batch_size], 0)
                             for i in range(0, n * n, scfg.batch_size)])
        patches, _ = constrained_sample(model, ctx, n, scfg, gen, guide_image=lr)
        err = constraint_error(model, patches, lr, n, scfg.batch_size)
        big = stitch(patches, n)
        if scfg.refine:
            big = refine_latent(model, big, feats, scfg, gen)
        sr = to_uint8(decode_tiled(model, big, scfg.decode_stride, scfg.blend_sigma, scfg.batch_size, progress))[0]
    return SuperRes(sr=sr, lr=to_uint8(lr)[0], inversion=inv, constraint_error=err,
                    seconds=time.perf_counter() - t_start, config=asdict(cfg))


def sr_metrics(sr: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of ``sr`` against a reference HR image (resized to the SR size if needed)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref = np.asarray(reference)[..., :3]
    if ref.shape[:2] != sr.shape[:2]:
        ref = to_uint8(prepare_image(ref, sr.shape[0]))[0]
    return {
        "psnr": float(peak_signal_noise_ratio(ref, sr, data_range=255)),
        "ssim": float(structural_similarity(ref, sr, channel_axis=-1, data_range=255)),
    }


def side_by_side(lr: np.ndarray, sr: np.ndarray, gap: int = 8) -> np.ndarray:
    """LR (bicubic-upsampled to the SR size) and SR next to each other, uint8 (H, 2W + gap, 3)."""
    up = to_uint8(prepare_image(lr, sr.shape[0]))[0]
    pad = np.full((sr.shape[0], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([up, pad, sr], axis=1)
