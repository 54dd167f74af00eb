"""CONCH v1.5 vision tower (MahmoodLab): ViT-L/16 trunk at 448 px + attentional pooler + LayerNorm, 768-d.

Reimplemented on timm's ``VisionTransformer`` (the trunk's keys and blocks are timm's) with the trunk's DINO-style
position-embedding interpolation (14×14 grid → 28×28 by bicubic ``scale_factor=(28 + 0.1) / 14``) and CONCH's
attentional pooler (one learned query, 8 heads, ``to_q`` / ``to_kv`` / ``to_out`` without bias).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zoomfeat.encoders.base import ModelEncoder
from zoomfeat.encoders.baselines.common import (BaselineOptions, BaselineSpec, TridentTransform, build_baseline,
                                                registry_info)
from zoomfeat.encoders.registry import register_encoder

POS_OFFSET = 0.1  # DINO's offset against floating-point error in the interpolation scale factor
GRID = 14  # the trunk's position grid (img_size 224 / patch 16)


def dino_pos_embed(pos_embed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[1, 1 + n², C] position table (class entry first) for an ``h × w`` patch grid, DINO style."""
    n = pos_embed.shape[1] - 1
    if h * w == n and h == w:
        return pos_embed
    m, dim = int(math.sqrt(n)), pos_embed.shape[-1]
    grid = pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h + POS_OFFSET) / m, (w + POS_OFFSET) / m), mode="bicubic",
                         align_corners=False)
    if grid.shape[-2:] != (h, w):
        raise ValueError(f"position grid interpolated to {tuple(grid.shape[-2:])}, expected {(h, w)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :1], grid], dim=1)


def build_trunk(depth: int | None = None) -> nn.Module:
    """timm ViT-L/16 (1024 wide, 24 blocks, LayerScale init 1.0, LayerNorm eps 1e-6, img_size 224) whose position
    embedding is resampled DINO style for other input sizes."""
    from timm.models.vision_transformer import VisionTransformer

    class ConchTrunk(VisionTransformer):
        def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, H, W, C] (dynamic_img_size)
            b, h, w, c = x.shape
            x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)], dim=1)
            return self.pos_drop(x + dino_pos_embed(self.pos_embed, h, w))

    return ConchTrunk(img_size=224, patch_size=16, embed_dim=1024, depth=24 if depth is None else depth,
                      num_heads=16, mlp_ratio=4, qkv_bias=True, init_values=1.0, num_classes=0,
                      dynamic_img_size=True)


class AttentionalPooler(nn.Module):
    """CoCa-style attentional pooling: ``n_queries`` learned queries attend (``n_head`` heads) over the LayerNormed
    context tokens; returns [B, n_queries, d_model]."""

    def __init__(self, d_model: int = 768, context_dim: int = 1024, n_head: int = 8, n_queries: int = 1) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, d_model * 2, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h = x.shape[0], self.n_head
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
        attn = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, -1, h * v.shape[-1])
        return self.to_out(out)


class ConchVisionTower(nn.Module):
    """trunk.forward_features (all tokens after the final norm) → attentional pooler → ``ln_contrast``
    → [B, 768]."""

    def __init__(self, depth: int | None = None) -> None:
        super().__init__()
        self.trunk = build_trunk(depth)
        self.attn_pool_contrast = AttentionalPooler(d_model=768, context_dim=1024, n_head=8, n_queries=1)
        self.ln_contrast = nn.LayerNorm(768)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


def resample_checkpoint_pos_embed(sd: dict) -> dict:
    """A checkpoint whose ``trunk.pos_embed`` holds another grid than 14×14 is resampled to 14×14 at load time, as
    TRIDENT does (timm ``resample_abs_pos_embed``, bilinear, no antialias, class entry kept)."""
    pe = sd.get("trunk.pos_embed")
    if pe is None or pe.ndim != 3 or pe.shape[1] == 1 + GRID * GRID:
        return sd
    from timm.layers import resample_abs_pos_embed

    new = resample_abs_pos_embed(pe.float(), new_size=[GRID, GRID], num_prefix_tokens=1, interpolation="bilinear",
                                 antialias=False)
    return {**sd, "trunk.pos_embed": new.to(pe.dtype)}


def build_conch_v15_model(depth: int | None = None, folder: Path | None = None) -> nn.Module:
    return ConchVisionTower(depth)


SPEC = BaselineSpec(
    name="conch_v15", dim=768, build=build_conch_v15_model,
    transform=TridentTransform(resize=448, crop=448, interpolation="bilinear"), precision="fp16",
    arch="CONCH v1.5 vision tower: timm ViT-L/16 trunk (LayerScale 1.0, DINO pos-embed interpolation) + "
         "attentional pooler + LayerNorm", output_rule="attentional pooler (1 query) → ln_contrast",
    files=("pytorch_model_vision.bin",), adapt=resample_checkpoint_pos_embed,
    info={"scale": "20x (0.5 um/px), 512-px tiles resized to 448 (TRIDENT default)",
          "license": "CC-BY-NC-ND-4.0, gated (accept terms on HF)",
          "source": "HF MahmoodLab/conchv1_5: pytorch_model_vision.bin"})


@register_encoder("conch_v15", needs_weights=True, options=BaselineOptions, info=registry_info(SPEC))
def create_conch_v15(weights: str | os.PathLike | None = None, precision: str | None = None,
                     random_init: bool = False, depth: int | None = None) -> ModelEncoder:
    """CONCH v1.5 vision tower (ViT-L/16 at 448 px + attentional pooler, 768-d, TRIDENT parity); fp16 autocast."""
    return build_baseline(SPEC, weights, precision, random_init, depth)
