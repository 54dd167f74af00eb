"""The ZoomLDM Summarizer: SSL feature grid + magnification → 65-token cross-attention context.

A faithful, diffusers-style (``ModelMixin`` + ``ConfigMixin``) rewrite of the official ``EmbeddingViT2_5``
(spec §1.4). Parameter names are the official ones (``pad_token``, ``mag_embedding``, ``dim_reduce``,
``encoder.pos_embedding``, ``encoder.layers.encoder_layer_i.{ln_1,self_attention,ln_2,mlp.0,mlp.3}``,
``encoder.ln``, ``final_proj``, ``layer_norm``) so ``cond_stage_model.*`` loads after stripping the prefix.

Classifier-free-guidance dropout is *not* part of :meth:`Summarizer.forward` (the official code applied it even
at inference, spec §9.1); training calls :meth:`Summarizer.drop_condition` explicitly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

#: Grid sides the official padding scheme supports (1, 4, 16 or 64 tokens).
SUPPORTED_GRID_SIDES = (1, 2, 4, 8)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block with torchvision ``vision_transformer.EncoderBlock`` key names."""

    def __init__(self, hidden_dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, dropout=0.0, batch_first=True)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        # indices 0 and 3 as in torchvision's MLPBlock (Linear, GELU, Dropout, Linear, Dropout)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_dim, mlp_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_dim, hidden_dim), nn.Dropout(0.0)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        h, _ = self.self_attention(h, h, h, need_weights=False)
        x = x + h
        return x + self.mlp(self.ln_2(x))


class SummarizerEncoder(nn.Module):
    """torchvision ``vision_transformer.Encoder`` layout: learned positions, N pre-LN blocks, final LN (eps 1e-6)."""

    def __init__(self, seq_length: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.layers = nn.ModuleDict(
            {f"encoder_layer_{i}": EncoderBlock(hidden_dim, num_heads, mlp_dim) for i in range(num_layers)}
        )
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embedding
        for layer in self.layers.values():
            x = layer(x)
        return self.ln(x)


def rename_legacy_mlp_keys(state_dict: dict) -> dict:
    """Map old torchvision MLP names (``mlp.linear_1``/``mlp.linear_2``) to ``mlp.0``/``mlp.3``."""
    out = {}
    for k, v in state_dict.items():
        k = k.replace(".mlp.linear_1.", ".mlp.0.").replace(".mlp.linear_2.", ".mlp.3.")
        out[k] = v
    return out


class Summarizer(ModelMixin, ConfigMixin):
    """ZoomLDM conditioning network (official ``EmbeddingViT2_5``).

    Input: a *preprocessed* SSL grid ``[B, C, h, w]`` with h = w ∈ {1, 2, 4, 8} (pooled and z-scored, see
    ``ZoomLDM.preprocess_ssl``) and magnification indices ``[B]``. Output: ``[B, 1 + seq_length, output_channels]``.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        input_channels: int = 1024,
        hidden_channels: int = 512,
        vit_mlp_dim: int = 2048,
        output_channels: int = 512,
        seq_length: int = 64,
        mag_levels: int = 8,
        num_layers: int = 12,
        num_heads: int = 8,
        p_uncond: float = 0.1,
    ):
        super().__init__()
        if seq_length != 64:
            raise ValueError("the official pad-token placement assumes seq_length=64 (an 8x8 grid)")
        self.mag_embedding = nn.Embedding(mag_levels, hidden_channels)
        self.dim_reduce = nn.Linear(input_channels, hidden_channels)
        self.pad_token = nn.Parameter(torch.randn(1, 1, hidden_channels))
        self.encoder = SummarizerEncoder(seq_length + 1, num_layers, num_heads, hidden_channels, vit_mlp_dim)
        self.final_proj = nn.Linear(hidden_channels, output_channels)
        self.layer_norm = nn.LayerNorm(output_channels, eps=1e-5)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # accept checkpoints written with older torchvision MLP names
        for k in [k for k in state_dict if k.startswith(prefix)]:
            new = k.replace(".mlp.linear_1.", ".mlp.0.").replace(".mlp.linear_2.", ".mlp.3.")
            if new != k:
                state_dict[new] = state_dict.pop(k)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def check_grid(self, ssl: torch.Tensor) -> None:
        """Raise a clear ValueError unless ``ssl`` is ``[B, input_channels, s, s]`` with s ∈ {1, 2, 4, 8}."""
        c_in = self.config.input_channels
        if ssl.ndim != 4:
            raise ValueError(f"SSL grid must be [B, C, h, w]; got shape {tuple(ssl.shape)}")
        b, c, h, w = ssl.shape
        if c != c_in:
            raise ValueError(f"SSL grid has {c} channels but the Summarizer expects {c_in}")
        if h != w or h not in SUPPORTED_GRID_SIDES:
            raise ValueError(
                f"SSL grid {h}x{w} is not supported: the Summarizer takes square 1x1, 2x2, 4x4 or 8x8 grids "
                "(larger power-of-two grids are average-pooled to 8x8 by ZoomLDM.preprocess_ssl)"
            )

    def tokens(self, ssl: torch.Tensor) -> torch.Tensor:
        """Project the grid to ``hidden_channels`` and place it in the 64-slot sequence (official 1-D centring)."""
        self.check_grid(ssl)
        b, c, h, w = ssl.shape
        n = h * w
        x = self.dim_reduce(ssl.reshape(b, c, n).transpose(1, 2))  # row-major tokens [B, n, H]
        if n == 64:
            return x
        start = 32 if n == 1 else 32 - n // 2
        seq = self.pad_token.to(x.dtype).expand(b, 64, -1).clone()
        seq[:, start : start + n] = x
        return seq

    def forward(self, ssl: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
        mag = torch.as_tensor(mag, device=ssl.device).long().reshape(-1)
        if mag.numel() == 1 and ssl.shape[0] > 1:
            mag = mag.expand(ssl.shape[0])
        if mag.numel() != ssl.shape[0]:
            raise ValueError(f"got {mag.numel()} magnifications for a batch of {ssl.shape[0]} grids")
        if (mag < 0).any() or (mag >= self.config.mag_levels).any():
            raise ValueError(f"magnification index out of range 0..{self.config.mag_levels - 1}: {mag.tolist()}")
        x = self.tokens(ssl)
        x = torch.cat([self.mag_embedding(mag).unsqueeze(1).to(x.dtype), x], dim=1)
        x = self.encoder(x)
        return self.layer_norm(self.final_proj(x))

    def drop_condition(
        self, context: torch.Tensor, p_uncond: float | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training-time CFG dropout: replace whole contexts by zeros with probability ``p_uncond`` per sample."""
        p = self.config.p_uncond if p_uncond is None else p_uncond
        if p <= 0:
            return context
        keep = torch.rand(context.shape[0], generator=generator, device="cpu") >= p
        return context * keep.to(context.device, context.dtype)[:, None, None]


def pool_and_normalize(ssl: torch.Tensor, target: int = 8, eps: float = 1e-8) -> torch.Tensor:
    """Official SSL preprocessing: adaptive-avg-pool grids above ``target`` to target², then per-token z-score.

    The z-score is over channels with the unbiased std, ``(x - mean) / (std + eps)``; it is idempotent, so
    already-normalised grids pass through unchanged (up to rounding).
    """
    if ssl.shape[-1] > target or ssl.shape[-2] > target:
        ssl = F.adaptive_avg_pool2d(ssl, target)
    mean = ssl.mean(dim=1, keepdim=True)
    std = ssl.std(dim=1, keepdim=True, unbiased=True)
    return (ssl - mean) / (std + eps)
