"""Virchow2 (Paige): timm ViT-H/14 (SwiGLU, 4 registers); feature = [class token, mean of patch tokens], 2560-d."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from zoomfeat.encoders.base import ModelEncoder
from zoomfeat.encoders.baselines.common import (BaselineOptions, BaselineSpec, TridentTransform, build_baseline,
                                                registry_info, timm_model)
from zoomfeat.encoders.registry import register_encoder

N_PREFIX_TOKENS = 5  # 1 class + 4 register tokens


def build_virchow2_model(depth: int | None = None, folder: Path | None = None) -> nn.Module:
    """TRIDENT's Virchow2 kwargs: ``global_pool=''`` so the model returns every token after the final norm."""
    import timm

    return timm_model("vit_huge_patch14_224", depth, img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4,
                      mlp_ratio=5.3375, global_pool="", dynamic_img_size=True, mlp_layer=timm.layers.SwiGLUPacked,
                      act_layer=torch.nn.SiLU)


def virchow2_cls_mean(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """concat(class token, mean of the patch tokens) of the normed tokens → [B, 2 × 1280]."""
    tokens = model(x)
    return torch.cat([tokens[:, 0], tokens[:, N_PREFIX_TOKENS:].mean(1)], dim=-1)


SPEC = BaselineSpec(
    name="virchow2", dim=2560, build=build_virchow2_model, forward=virchow2_cls_mean,
    transform=TridentTransform(resize=224, crop=None, interpolation="bicubic"), precision="fp16",
    arch="timm vit_huge_patch14_224 (SwiGLUPacked, mlp_ratio 5.3375, 4 registers, 32 blocks)",
    output_rule="concat(class token, mean of patch tokens)",
    info={"scale": "trained on 5x-40x; TRIDENT default 20x, 256-px tiles",
          "license": "CC-BY-NC-ND-4.0, gated (accept terms on HF)",
          "source": "HF paige-ai/Virchow2: pytorch_model.bin"})


@register_encoder("virchow2", needs_weights=True, options=BaselineOptions, info=registry_info(SPEC))
def create_virchow2(weights: str | os.PathLike | None = None, precision: str | None = None,
                    random_init: bool = False, depth: int | None = None) -> ModelEncoder:
    """Virchow2 (ViT-H/14, 2560-d = class token + mean patch token, TRIDENT parity); fp16 autocast."""
    return build_baseline(SPEC, weights, precision, random_init, depth)
