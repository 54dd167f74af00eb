"""UNI v1 (MahmoodLab): timm ViT-L/16 with LayerScale, class token after the final norm, 1024-d; also ``uni``."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from zoomfeat.encoders.base import ModelEncoder
from zoomfeat.encoders.baselines.common import (BaselineOptions, BaselineSpec, TridentTransform, build_baseline,
                                                registry_info, timm_model)
from zoomfeat.encoders.registry import register_encoder

UNI_DIM = 1024


def build_uni_model(depth: int | None = None, folder: Path | None = None) -> nn.Module:
    """The exact UNI architecture as TRIDENT builds it: ``init_values=1e-5`` creates the ``ls*.gamma`` LayerScale
    parameters the checkpoint holds, so strict loading fails loudly on any other ViT-L."""
    return timm_model("vit_large_patch16_224", depth, img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
                      dynamic_img_size=True)


SPEC = BaselineSpec(
    name="uni_v1", dim=UNI_DIM, build=build_uni_model,
    transform=TridentTransform(resize=224, crop=224, interpolation="bilinear"), precision="fp16",
    arch="timm vit_large_patch16_224 (init_values=1e-5, 24 blocks)", output_rule="timm forward: class token",
    info={"scale": "20x (0.5 um/px), 256-px tiles", "license": "CC-BY-NC-ND-4.0, gated (accept terms on HF)",
          "source": "HF MahmoodLab/UNI: pytorch_model.bin"})


@register_encoder("uni_v1", needs_weights=True, options=BaselineOptions, info=registry_info(SPEC))
def create_uni_v1(weights: str | os.PathLike | None = None, precision: str | None = None, random_init: bool = False,
                  depth: int | None = None) -> ModelEncoder:
    """UNI v1 (ViT-L/16, 1024-d, TRIDENT parity): ``pytorch_model.bin`` (or its folder), strict; fp16 autocast."""
    return build_baseline(SPEC, weights, precision, random_init, depth)


@register_encoder("uni", needs_weights=True, options=BaselineOptions, info=registry_info(SPEC, alias_of="uni_v1"))
def create_uni(weights: str | os.PathLike | None = None, precision: str | None = None, random_init: bool = False,
               depth: int | None = None) -> ModelEncoder:
    """UNI v1 under its short name (alias of ``uni_v1``: same builder; bags record the name ``uni``)."""
    return build_baseline(SPEC, weights, precision, random_init, depth, name="uni")
