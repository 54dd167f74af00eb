"""UNI2-h (MahmoodLab): timm ViT-giant/14 (1536 wide, 24 blocks, SwiGLU, 8 registers), class token, 1536-d."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from zoomfeat.encoders.base import ModelEncoder
from zoomfeat.encoders.baselines.common import (BaselineOptions, BaselineSpec, TridentTransform, build_baseline,
                                                registry_info, timm_model)
from zoomfeat.encoders.registry import register_encoder


def build_uni_v2_model(depth: int | None = None, folder: Path | None = None) -> nn.Module:
    """TRIDENT's UNI2-h kwargs (the timm name only picks the class): no_embed_class, 8 register tokens."""
    import timm

    return timm_model("vit_giant_patch14_224", depth if depth is not None else 24, img_size=224, patch_size=14,
                      num_heads=24, init_values=1e-5, embed_dim=1536, mlp_ratio=5.33334, num_classes=0,
                      no_embed_class=True, mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU,
                      reg_tokens=8, dynamic_img_size=True)


SPEC = BaselineSpec(
    name="uni_v2", dim=1536, build=build_uni_v2_model,
    transform=TridentTransform(resize=224, crop=224, interpolation="bilinear"), precision="bf16",
    arch="timm vit_giant_patch14_224 (1536 wide, 24 blocks, SwiGLUPacked, 8 registers, no_embed_class)",
    output_rule="timm forward: class token",
    info={"scale": "20x (0.5 um/px), 256-px tiles", "license": "CC-BY-NC-ND-4.0, gated (accept terms on HF)",
          "source": "HF MahmoodLab/UNI2-h: pytorch_model.bin"})


@register_encoder("uni_v2", needs_weights=True, options=BaselineOptions, info=registry_info(SPEC))
def create_uni_v2(weights: str | os.PathLike | None = None, precision: str | None = None, random_init: bool = False,
                  depth: int | None = None) -> ModelEncoder:
    """UNI2-h (ViT-g/14, 1536-d, TRIDENT parity): ``pytorch_model.bin`` (or its folder), strict; bf16 autocast."""
    return build_baseline(SPEC, weights, precision, random_init, depth)
