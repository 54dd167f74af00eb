"""Sample grids during training: data patches above EMA samples for the same SSL grids (what the saved model does)."""

from __future__ import annotations

from pathlib import Path

import torch

from zoomfeat.generate.patches import save_image_grid
from zoomfeat.train.config import SampleConfig
from zoomfeat.train.dataset import MultiScaleLatentDataset


@torch.no_grad()
def save_sample_grid(ldm, dataset: MultiScaleLatentDataset, path: Path, sample: SampleConfig | None = None,
                     seed: int = 0) -> Path:
    """Top row: dataset patches (decoded latents); bottom row: samples conditioned on their SSL grids
    (``sample``: how many, sampler steps, guidance scale, scheduler)."""
    sample = sample or SampleConfig()
    n = int(sample.n)
    picks = []
    scales = dataset.scales
    for j in range(n):
        idx = dataset.by_scale[scales[j % len(scales)]]
        picks.append(int(idx[(j // len(scales)) % len(idx)]))
    items = [dataset[i] for i in picks]
    ctx = torch.cat([ldm.condition(it["ssl"][None], it["mag"]) for it in items])
    lat = ldm.sample(ctx, steps=int(sample.steps), scheduler=sample.scheduler, guidance_scale=float(sample.guidance_scale),
                     generator=torch.Generator().manual_seed(seed))
    fake = ldm.decode(lat)
    real = ldm.decode(torch.stack([it["latents"] for it in items]).to(ldm.device))
    images = torch.cat([real, fake]).float().clamp(-1, 1).cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image_grid(images, path, nrow=n)  # atomic; takes [-1, 1] floats
    return path


def with_ema(ema, ldm, fn):
    """Run ``fn`` with the EMA weights temporarily in the UNet (samples show what the saved model will do)."""
    was_training = ldm.unet.training
    ema.store(ldm.unet.parameters())
    ema.copy_to(ldm.unet.parameters())
    ldm.unet.eval()
    try:
        return fn()
    finally:
        ema.restore(ldm.unet.parameters())
        ldm.unet.train(was_training)
