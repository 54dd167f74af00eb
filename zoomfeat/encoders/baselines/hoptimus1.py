"""H-optimus-1 (Bioptimus): H-optimus-0's architecture, transform and output with other weights, 1536-d."""

from __future__ import annotations

import os
from dataclasses import replace

from zoomfeat.encoders.base import ModelEncoder
from zoomfeat.encoders.baselines import hoptimus0
from zoomfeat.encoders.baselines.common import BaselineOptions, build_baseline, registry_info
from zoomfeat.encoders.registry import register_encoder

SPEC = replace(hoptimus0.SPEC, name="hoptimus1",
               info={"scale": "20x (0.5 um/px), 224-px tiles (model card)",
                     "license": "non-commercial (Bioptimus licence), gated (accept terms on HF)",
                     "source": "HF bioptimus/H-optimus-1: pytorch_model.bin"})


@register_encoder("hoptimus1", needs_weights=True, options=BaselineOptions, info=registry_info(SPEC))
def create_hoptimus1(weights: str | os.PathLike | None = None, precision: str | None = None,
                     random_init: bool = False, depth: int | None = None) -> ModelEncoder:
    """H-optimus-1 (ViT-g/14 reg4, 1536-d, TRIDENT parity); fp16 autocast."""
    return build_baseline(SPEC, weights, precision, random_init, depth)
