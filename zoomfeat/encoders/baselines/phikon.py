"""Phikon (Owkin): transformers ``ViTModel`` ViT-B/16 (iBOT teacher), class token after the final LayerNorm, 768-d."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from zoomfeat.encoders.base import ModelEncoder
from zoomfeat.encoders.baselines.common import (BaselineOptions, BaselineSpec, TridentTransform, build_baseline,
                                                KeyRenames, hf_cls, registry_info, transformers_major)
from zoomfeat.encoders.registry import register_encoder

PHIKON_DIM = 768


def phikon_config(depth: int | None = None, folder: Path | None = None):
    """owkin/phikon's ViTConfig (ViT-B/16, qkv bias, LayerNorm eps 1e-6), or the ``config.json`` of a weights
    folder (what TRIDENT's ``from_pretrained(folder)`` reads); ``depth`` overrides the number of layers."""
    from transformers import ViTConfig

    if folder is not None and (Path(folder) / "config.json").is_file():
        cfg = ViTConfig.from_pretrained(str(folder), local_files_only=True)
    else:
        cfg = ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        image_size=224, patch_size=16, qkv_bias=True, layer_norm_eps=1e-6)
    if depth is not None:
        cfg.num_hidden_layers = depth
    return cfg


def build_phikon_model(depth: int | None = None, folder: Path | None = None) -> nn.Module:
    from transformers import ViTModel

    return ViTModel(phikon_config(depth, folder), add_pooling_layer=False)


#: transformers 4 checkpoint names (owkin/phikon, TRIDENT) → transformers ≥ 5 ViTModel names.
HF5_RENAMES = KeyRenames([
    ("encoder.layer.{i}.attention.attention.query.", "layers.{i}.attention.q_proj."),
    ("encoder.layer.{i}.attention.attention.key.", "layers.{i}.attention.k_proj."),
    ("encoder.layer.{i}.attention.attention.value.", "layers.{i}.attention.v_proj."),
    ("encoder.layer.{i}.attention.output.dense.", "layers.{i}.attention.o_proj."),
    ("encoder.layer.{i}.intermediate.dense.", "layers.{i}.mlp.fc1."),
    ("encoder.layer.{i}.output.dense.", "layers.{i}.mlp.fc2."),
    ("encoder.layer.{i}.", "layers.{i}."),
], active=lambda: transformers_major() >= 5)

SPEC = BaselineSpec(
    name="phikon", dim=PHIKON_DIM, build=build_phikon_model, forward=hf_cls,
    transform=TridentTransform(resize=224, crop=None, interpolation="bilinear"), precision="fp32",
    arch="transformers ViTModel ViT-B/16 (12 layers, add_pooling_layer=False)",
    output_rule="last_hidden_state[:, 0]", to_checkpoint=HF5_RENAMES.to_checkpoint,
    to_model=HF5_RENAMES.to_model, strip_prefixes=("module.", "model.", "vit."),
    drop_prefixes=("pooler.", "classifier."), files=("model.safetensors",),
    info={"scale": "20x (0.5 um/px), 224-px tiles", "license": "Owkin non-commercial licence",
          "source": "HF owkin/phikon: folder (config.json + model.safetensors)"})


@register_encoder("phikon", needs_weights=True, options=BaselineOptions, info=registry_info(SPEC))
def create_phikon(weights: str | os.PathLike | None = None, precision: str | None = None, random_init: bool = False,
                  depth: int | None = None) -> ModelEncoder:
    """Phikon (ViT-B/16, 768-d, TRIDENT parity): a Hugging Face folder or a state dict file (``vit.`` prefix and
    pooler tolerated), strict; fp32."""
    return build_baseline(SPEC, weights, precision, random_init, depth)
