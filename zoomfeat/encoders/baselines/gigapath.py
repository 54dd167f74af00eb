"""Prov-GigaPath tile encoder (Microsoft / Providence): timm ViT-g with 16-px patches (40 blocks), 1536-d."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from zoomfeat.encoders.base import ModelEncoder
from zoomfeat.encoders.baselines.common import (BaselineOptions, BaselineSpec, TridentTransform, build_baseline,
                                                registry_info, timm_model)
from zoomfeat.encoders.registry import register_encoder


def build_gigapath_model(depth: int | None = None, folder: Path | None = None) -> nn.Module:
    """``vit_giant_patch14_dinov2`` with patch 16 (SwiGLU, SiLU, LayerScale 1e-5 from timm's defaults)."""
    return timm_model("vit_giant_patch14_dinov2", depth if depth is not None else 40, img_size=224, in_chans=3,
                      patch_size=16, embed_dim=1536, num_heads=24, mlp_ratio=5.33334, num_classes=0,
                      dynamic_img_size=True)


SPEC = BaselineSpec(
    name="gigapath", dim=1536, build=build_gigapath_model,
    transform=TridentTransform(resize=256, crop=224, interpolation="bicubic"), precision="fp16",
    arch="timm vit_giant_patch14_dinov2 (patch 16, 1536 wide, 40 blocks)", output_rule="timm forward: class token",
    info={"scale": "20x (0.5 um/px), 256-px tiles", "license": "Apache-2.0, gated (accept terms on HF)",
          "source": "HF prov-gigapath/prov-gigapath: pytorch_model.bin"})


@register_encoder("gigapath", needs_weights=True, options=BaselineOptions, info=registry_info(SPEC))
def create_gigapath(weights: str | os.PathLike | None = None, precision: str | None = None,
                    random_init: bool = False, depth: int | None = None) -> ModelEncoder:
    """Prov-GigaPath tile encoder (ViT-g/16, 1536-d, TRIDENT parity); fp16 autocast."""
    return build_baseline(SPEC, weights, precision, random_init, depth)
