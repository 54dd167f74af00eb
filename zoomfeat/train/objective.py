"""The training objective of ZoomLDM (spec §3): Summarizer context (+ CFG dropout), noised latents, ε-MSE per sample,
and the per-micro-batch random draws (t, ε, dropout), each a pure function of (seed, step, micro-batch, rank)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from zoomfeat.ldm.summarizer import pool_and_normalize
from zoomfeat.train.dataset import step_seed


class DiffusionObjective(nn.Module):
    """One training forward: context from SSL grids (+CFG dropout), noise the latents, ε-MSE per sample.

    Wraps the UNet and the Summarizer so DDP sees (and synchronises) both; the VQ is not part of it.
    """

    def __init__(self, ldm, p_uncond: float = 0.1):
        super().__init__()
        self.unet = ldm.unet
        self.summarizer = ldm.summarizer
        self.noise_scheduler = ldm.noise_scheduler
        self.target = int(ldm.config.get("feat_target_size", 8))
        self.p_uncond = float(p_uncond)

    def context(self, ssl: list[torch.Tensor], mags: torch.Tensor) -> torch.Tensor:
        """Summarizer context for a batch whose SSL grids may differ in side (grouped by side, order kept)."""
        sides = torch.tensor([g.shape[-1] for g in ssl])
        out = None
        for side in sides.unique().tolist():
            idx = torch.nonzero(sides == side).flatten()
            grid = torch.stack([ssl[i] for i in idx.tolist()]).float()
            ctx = self.summarizer(pool_and_normalize(grid, self.target), mags[idx.to(mags.device)])
            if out is None:
                out = ctx.new_zeros((len(ssl),) + tuple(ctx.shape[1:]))
            out[idx.to(ctx.device)] = ctx
        # A batch of only 8x8 grids never touches pad_token; DDP (find_unused_parameters=False) would then wait for
        # its gradient forever. A zero-weighted use keeps every parameter in the graph at no numerical cost.
        return out + 0.0 * self.summarizer.pad_token.sum().to(out.dtype)

    def forward(self, latents, ssl, mags, t, noise, generator=None):
        ctx = self.context(ssl, mags)
        ctx = self.summarizer.drop_condition(ctx, self.p_uncond, generator) if self.training else ctx
        n_uncond = (ctx.detach().flatten(1).abs().amax(1) == 0).sum()
        x_t = self.noise_scheduler.add_noise(latents, noise, t)
        eps = self.unet(x_t, t, encoder_hidden_states=ctx.to(x_t.dtype)).sample
        loss = (eps.float() - noise.float()).pow(2).flatten(1).mean(1)
        return loss, n_uncond


def draw_step_noise(seed: int, step: int, micro: int, rank: int, shape, num_timesteps: int):
    """t, ε and the CFG-dropout generator of one micro-batch: a pure function of (seed, step, micro, rank)."""
    s = np.random.SeedSequence(step_seed(seed, step, micro, rank, 1)).generate_state(2, np.uint64)
    g = torch.Generator().manual_seed(int(s[0]) & ((1 << 63) - 1))
    t = torch.randint(0, num_timesteps, (shape[0],), generator=g)
    noise = torch.randn(tuple(shape), generator=g)
    g_drop = torch.Generator().manual_seed(int(s[1]) & ((1 << 63) - 1))
    return t, noise, g_drop

