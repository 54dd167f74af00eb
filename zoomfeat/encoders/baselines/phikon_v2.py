"""Phikon-v2 (Owkin): transformers ``Dinov2Model`` ViT-L/16, class token after the final LayerNorm, 1024-d."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from zoomfeat.encoders.base import ModelEncoder
from zoomfeat.encoders.baselines.common import (BaselineOptions, BaselineSpec, TridentTransform, build_baseline,
                                                KeyRenames, hf_cls, registry_info, transformers_major)
from zoomfeat.encoders.registry import register_encoder


def phikon_v2_config(depth: int | None = None, folder: Path | None = None):
    """ViT-L/16 DINOv2 config (1024 wide, 24 layers, 16 heads, patch 16, image 224, LayerNorm eps 1e-6), or the
    ``config.json`` of a weights folder; ``depth`` overrides the number of layers."""
    from transformers import Dinov2Config

    if folder is not None and (Path(folder) / "config.json").is_file():
        cfg = Dinov2Config.from_pretrained(str(folder), local_files_only=True)
    else:
        cfg = Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=16,
                           image_size=224, layer_norm_eps=1e-6)
    if depth is not None:
        cfg.num_hidden_layers = depth
    return cfg


def build_phikon_v2_model(depth: int | None = None, folder: Path | None = None) -> nn.Module:
    from transformers import Dinov2Model

    return Dinov2Model(phikon_v2_config(depth, folder))


#: transformers 4 checkpoint names (owkin/phikon-v2, TRIDENT) → transformers ≥ 5 Dinov2Model names.
HF5_RENAMES = KeyRenames([
    ("encoder.layer.{i}.attention.attention.query.", "encoder.layer.{i}.attention.q_proj."),
    ("encoder.layer.{i}.attention.attention.key.", "encoder.layer.{i}.attention.k_proj."),
    ("encoder.layer.{i}.attention.attention.value.", "encoder.layer.{i}.attention.v_proj."),
    ("encoder.layer.{i}.attention.output.dense.", "encoder.layer.{i}.attention.o_proj."),
], active=lambda: transformers_major() >= 5)

SPEC = BaselineSpec(
    name="phikon_v2", dim=1024, build=build_phikon_v2_model, forward=hf_cls,
    transform=TridentTransform(resize=224, crop=224, interpolation="bilinear"), precision="fp32",
    arch="transformers Dinov2Model ViT-L/16 (24 layers)", output_rule="last_hidden_state[:, 0]",
    to_checkpoint=HF5_RENAMES.to_checkpoint, to_model=HF5_RENAMES.to_model,
    strip_prefixes=("module.", "model.", "dinov2."),
    info={"scale": "20x (0.5 um/px), 224-px tiles", "license": "Owkin non-commercial licence",
          "source": "HF owkin/phikon-v2: folder (config.json + model.safetensors)"})


@register_encoder("phikon_v2", needs_weights=True, options=BaselineOptions, info=registry_info(SPEC))
def create_phikon_v2(weights: str | os.PathLike | None = None, precision: str | None = None,
                     random_init: bool = False, depth: int | None = None) -> ModelEncoder:
    """Phikon-v2 (DINOv2 ViT-L/16, 1024-d, TRIDENT parity): a Hugging Face folder or a state dict file; fp32."""
    return build_baseline(SPEC, weights, precision, random_init, depth)
