"""H-optimus-0 (Bioptimus): timm ``vit_giant_patch14_reg4_dinov2`` (40 blocks), class token, 1536-d."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from zoomfeat.encoders.base import ModelEncoder
from zoomfeat.encoders.baselines.common import (BaselineOptions, BaselineSpec, TridentTransform, build_baseline,
                                                registry_info, timm_model)
from zoomfeat.encoders.registry import register_encoder

#: H-optimus' own normalisation (model card; TRIDENT uses it for both H-optimus models).
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
HOPTIMUS_TRANSFORM = TridentTransform(resize=224, crop=None, interpolation="bilinear", mean=HOPTIMUS_MEAN,
                                      std=HOPTIMUS_STD)


def build_hoptimus_model(depth: int | None = None, folder: Path | None = None) -> nn.Module:
    """timm's registered defaults for the name (SwiGLU, LayerScale 1e-5, 4 registers) + TRIDENT's kwargs."""
    return timm_model("vit_giant_patch14_reg4_dinov2", depth, num_classes=0, img_size=224, global_pool="token",
                      init_values=1e-5, dynamic_img_size=True)


SPEC = BaselineSpec(
    name="hoptimus0", dim=1536, build=build_hoptimus_model, transform=HOPTIMUS_TRANSFORM, precision="fp16",
    arch="timm vit_giant_patch14_reg4_dinov2 (40 blocks)", output_rule="timm forward: class token",
    info={"scale": "20x (0.5 um/px), 224-px tiles (model card)", "license": "Apache-2.0",
          "source": "HF bioptimus/H-optimus-0: pytorch_model.bin"})


@register_encoder("hoptimus0", needs_weights=True, options=BaselineOptions, info=registry_info(SPEC))
def create_hoptimus0(weights: str | os.PathLike | None = None, precision: str | None = None,
                     random_init: bool = False, depth: int | None = None) -> ModelEncoder:
    """H-optimus-0 (ViT-g/14 reg4, 1536-d, TRIDENT parity); fp16 autocast."""
    return build_baseline(SPEC, weights, precision, random_init, depth)
