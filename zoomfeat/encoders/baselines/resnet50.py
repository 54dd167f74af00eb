"""CLAM's truncated ResNet-50 (ImageNet): timm ``resnet50`` up to layer3, global average pool, 1024-d."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from zoomfeat.encoders.base import ModelEncoder
from zoomfeat.encoders.baselines.common import (BaselineOptions, BaselineSpec, TridentTransform, build_baseline,
                                                registry_info)
from zoomfeat.encoders.registry import register_encoder

FULL_LAYERS = (3, 4, 6, 3)


def build_resnet50_model(depth: int | None = None, folder: Path | None = None) -> nn.Module:
    """timm ``resnet50(features_only=True, out_indices=[3])``: conv1 … layer3 (layer4 / fc are not built);
    ``depth`` = number of bottleneck blocks in layer3 (6 at full size)."""
    import timm

    layers = FULL_LAYERS if depth is None else (3, 4, depth, 3)
    return timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=[3], num_classes=0,
                             layers=layers)


def layer3_avgpool(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The single layer3 map (stride 16, 1024 channels) → AdaptiveAvgPool2d(1) → [B, 1024]."""
    return torch.nn.functional.adaptive_avg_pool2d(model(x)[0], 1).flatten(1)


SPEC = BaselineSpec(
    name="resnet50", dim=1024, build=build_resnet50_model, forward=layer3_avgpool,
    transform=TridentTransform(resize=224, crop=224, interpolation="bilinear"), precision="fp32",
    arch="timm resnet50 features_only out_indices=[3] (CLAM truncation)", output_rule="layer3 → global avg pool",
    drop_prefixes=("layer4.", "fc."),
    info={"scale": "any (ImageNet); CLAM: 20x, 256-px tiles", "license": "BSD-3-Clause (torchvision weights)",
          "source": "HF timm/resnet50.tv_in1k: model.safetensors"})


@register_encoder("resnet50", needs_weights=True, options=BaselineOptions, info=registry_info(SPEC))
def create_resnet50(weights: str | os.PathLike | None = None, precision: str | None = None,
                    random_init: bool = False, depth: int | None = None) -> ModelEncoder:
    """CLAM's ResNet-50 truncated after layer3 (1024-d, TRIDENT parity); fp32. Extra keys (layer4, fc) of a full
    ImageNet checkpoint are dropped."""
    return build_baseline(SPEC, weights, precision, random_init, depth)
