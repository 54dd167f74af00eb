"""First stage of the tiny recipe: train the VQ-f4 autoencoder on the cohort's multi-scale patches, then freeze it.

Why: a random VQ maps tiles to latents that keep little of the image, so a UNet trained on them learns nothing
useful about tissue and its features cannot carry the labels (and its samples decode to colour noise). The
released ZoomLDM uses a trained, frozen VQ-f4; the tiny recipe trains one in about a minute of CPU before the
UNet: reconstruction loss (L1 + MSE through the quantiser, as the decoder sees it at sampling time) plus the
VQ codebook/commitment loss, and a small penalty that keeps the pre-quantisation latents at unit scale (the
diffusion schedule assumes latents of order 1; ``ZoomLDM.encode`` applies no scaling factor).
The trained weights are written to ``first_stage/vq.safetensors`` (atomic) and reused on resume.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from zoomfeat.io import atomic_path, write_json_atomic
from zoomfeat.mags import N_SCALES
from zoomfeat.slides.coords import read_coords
from zoomfeat.slides.reader import open_slide
from zoomfeat.slides.tiling import tile_slide
from zoomfeat.train.config import FirstStageConfig, TrainConfig, as_train_config
from zoomfeat.train.shards import images_to_unit_range

def collect_patches(slides: Sequence[str | os.PathLike], coords_dir: str | os.PathLike, patch_px: int = 64,
                    scales: Sequence[int] = range(N_SCALES), max_per_scale: int = FirstStageConfig.max_per_scale,
                    seed: int = FirstStageConfig.seed,
                    tile_kwargs: dict | None = None, progress: bool = True) -> np.ndarray:
    """uint8 (N, patch_px, patch_px, 3): up to ``max_per_scale`` random regions per slide and scale (256·2^k px at
    20x shown at ``patch_px``), read with the same tiling lattice the training set uses."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for slide in tqdm(list(slides), desc="first-stage patches", unit="slide", disable=not progress):
        try:
            grid = read_coords(tile_slide(slide, coords_dir, scales=range(N_SCALES), **dict(tile_kwargs or {})))
        except (OSError, ValueError) as exc:  # a bad slide is skipped, as in build_dataset
            print(f"warning: first stage skips {Path(slide).name}: {exc}")
            continue
        with open_slide(slide) as wsi:
            for k in scales:
                entry = (getattr(grid, "scales", None) or {}).get(int(k))
                if entry is None or len(entry[0]) == 0:
                    continue
                coords = np.asarray(entry[0], np.int64).reshape(-1, 2)
                pick = rng.choice(len(coords), min(max_per_scale, len(coords)), replace=False)
                out += [wsi.read_region_l0(int(x), int(y), int(entry[1]), patch_px) for x, y in coords[pick]]
    if not out:
        raise RuntimeError("first stage: no patches could be read from the cohort")
    return np.stack(out)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips and 90° rotations per batch (tissue has no orientation)."""
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(-1)
    return torch.rot90(x, int(torch.randint(0, 4, (), generator=g)), dims=(-2, -1))


def train_vq(vq, images: np.ndarray, steps: int = FirstStageConfig.steps, batch_size: int = FirstStageConfig.batch_size,
             lr: float = FirstStageConfig.lr, latent_std_weight: float = FirstStageConfig.latent_std_weight,
             seed: int = FirstStageConfig.seed, log_path: str | os.PathLike | None = None,
             progress: bool = True) -> dict:
    """Train ``vq`` (a diffusers VQModel) in place on uint8 images; returns final losses. Leaves it frozen (eval).
    Defaults: :class:`~zoomfeat.train.config.FirstStageConfig`."""
    from tqdm.auto import tqdm

    data = images_to_unit_range(images)
    g = torch.Generator().manual_seed(int(seed))
    device = next(vq.parameters()).device
    vq.train().requires_grad_(True)
    opt = torch.optim.AdamW(vq.parameters(), lr=float(lr), weight_decay=0.0, foreach=True)  # = per-tensor, faster
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(lr), total_steps=int(steps), pct_start=0.1)
    rows, t0 = [], time.perf_counter()
    for step in tqdm(range(int(steps)), desc="first stage (VQ)", unit="step", disable=not progress):
        x = _augment(data[torch.randint(0, len(data), (batch_size,), generator=g)], g).to(device)
        z = vq.encode(x).latents
        dec = vq.decode(z)
        rec = (dec.sample - x).abs().mean() + (dec.sample - x).pow(2).mean()
        commit = dec.commit_loss.mean() if dec.commit_loss is not None else torch.zeros((), device=device)
        scale = (z.std() - 1.0).pow(2)
        loss = rec + commit + float(latent_std_weight) * scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        rows.append({"step": step + 1, "loss": loss.item(), "recon": rec.item(), "commit": commit.item(),
                     "latent_std": float(z.detach().std()), "elapsed_s": round(time.perf_counter() - t0, 3)})
    vq.eval().requires_grad_(False)
    if log_path is not None:
        with atomic_path(log_path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    last = rows[-20:]
    return {k: float(np.mean([r[k] for r in last])) for k in ("loss", "recon", "commit", "latent_std")} | {
        "steps": int(steps), "n_patches": int(len(images)), "seconds": round(time.perf_counter() - t0, 1)}


@torch.no_grad()
def reconstruction_error(vq, images: np.ndarray, batch_size: int = 32) -> float:
    """Mean absolute error in [0, 255] of decode(quantise(encode(x))) — how much of the image the latents keep."""
    errs = []
    for i in range(0, len(images), batch_size):
        x = images_to_unit_range(images[i:i + batch_size])
        y = vq.decode(vq.encode(x.to(next(vq.parameters()).device)).latents).sample.cpu().clamp(-1, 1)
        errs.append(float((y - x).abs().mean()) * 127.5)
    return float(np.mean(errs))


def prepare_first_stage(cfg: TrainConfig | dict, ldm, out_dir: Path, slides_fn, progress: bool = True) -> dict | None:
    """Load ``out_dir/first_stage/vq.safetensors`` if present, else train the VQ when ``first_stage.train`` is set.

    ``slides_fn()`` returns the cohort's slide paths (built lazily: only needed when training).
    """
    from safetensors.torch import load_file

    cfg = as_train_config(cfg)
    fs = cfg.first_stage
    fdir = Path(out_dir) / "first_stage"
    wfile = fdir / "vq.safetensors"
    if wfile.exists():
        ldm.vq.load_state_dict(load_file(str(wfile)), strict=True)
        ldm.vq.eval().requires_grad_(False)
        return None
    if not fs.train:
        return None
    fdir.mkdir(parents=True, exist_ok=True)
    build = cfg.dataset.build
    imgs = collect_patches(slides_fn(), fdir / "coords",
                           patch_px=int((build.patch_px if build is not None else None) or ldm.image_size),
                           max_per_scale=int(fs.max_per_scale), seed=int(fs.seed),
                           tile_kwargs=build.tile_kwargs if build is not None else None, progress=progress)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(fs.seed))
        before = reconstruction_error(ldm.vq, imgs[:256])
        report = train_vq(ldm.vq, imgs, steps=int(fs.steps), batch_size=int(fs.batch_size), lr=float(fs.lr),
                          latent_std_weight=float(fs.latent_std_weight), seed=int(fs.seed),
                          log_path=fdir / "metrics.csv", progress=progress)
    report.update(mae_before=round(before, 2), mae_after=round(reconstruction_error(ldm.vq, imgs[:256]), 2))
    _save_first_stage(ldm.vq, fdir, report, progress)
    return report


def _save_first_stage(vq, fdir: Path, report: dict, progress: bool) -> None:
    """``vq.safetensors`` (atomic: a rerun reuses it) and ``summary.json``."""
    from safetensors.torch import save_file

    with atomic_path(fdir / "vq.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in vq.state_dict().items()}, str(tmp))
    write_json_atomic(fdir / "summary.json", report)
    if progress:
        print(f"first stage: {report['n_patches']} patches, {report['steps']} steps in {report['seconds']} s; "
              f"reconstruction MAE {report['mae_before']} → {report['mae_after']} (0–255), "
              f"latent std {report['latent_std']:.2f}")
