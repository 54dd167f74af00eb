"""Phikon (Owkin): transformers ``ViTModel`` ViT-B/16 (iBOT teacher), class token after the final LayerNorm, 768-d."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from zoomfeat.encoders.base import Encoder, TileTransform
from zoomfeat.weights import load_into_meta_built, load_state_dict_file, state_dict_sha256
from zoomfeat.encoders.options import RandomInitOptions
from zoomfeat.encoders.registry import register_encoder
from zoomfeat.io import sha256_file

PHIKON_DIM = 768


def phikon_config():
    """Phikon's ViTConfig (peer_toolkits §7.2): iBOT/DINO ViT-B/16 uses qkv bias and LayerNorm eps 1e-6."""
    from transformers import ViTConfig

    return ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     image_size=224, patch_size=16, qkv_bias=True, layer_norm_eps=1e-6)


def build_phikon_model(weights: str | os.PathLike | None = None) -> torch.nn.Module:
    """A local folder (``config.json`` + weights) via ``from_pretrained(local_files_only=True)``, or a state dict
    file loaded into ``ViTModel(phikon_config())`` with ``strict=True``; ``None`` gives the random-init model."""
    from transformers import ViTModel

    if weights is None:
        return ViTModel(phikon_config(), add_pooling_layer=False)
    p = Path(weights)
    if p.is_dir() and (p / "config.json").is_file():
        return ViTModel.from_pretrained(str(p), add_pooling_layer=False, local_files_only=True)
    if p.is_dir():
        cands = [p / n for n in ("model.safetensors", "pytorch_model.bin") if (p / n).is_file()]
        if not cands:
            raise FileNotFoundError(f"Phikon weights folder {p} has neither config.json nor a weights file")
        p = cands[0]
    sd = load_state_dict_file(p)
    # A checkpoint saved from a ViTFor* head model carries a 'vit.' prefix; the (unused, untrained) pooler is dropped.
    sd = {(k[4:] if k.startswith("vit.") else k): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(("pooler.", "classifier."))}
    return load_into_meta_built(lambda: ViTModel(phikon_config(), add_pooling_layer=False), sd)


def _cls_token(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=x).last_hidden_state[:, 0, :]


@register_encoder("phikon", needs_weights=True, options=RandomInitOptions)
def create_phikon(weights: str | os.PathLike | None = None, precision: str = "fp32", random_init: bool = False,
                  input_size: int = 224) -> Encoder:
    """Phikon encoder: ImageNet normalisation, resize to 224, fp32 (TRIDENT's precision for Phikon)."""
    if weights is None and not random_init:
        raise FileNotFoundError("Phikon needs local weights (a folder with config.json + weights, or a state dict "
                                "file): pass --weights or set 'phikon' in configs/encoders/weights.yaml")
    model = build_phikon_model(weights)
    sha = sha256_file(weights) if weights is not None else state_dict_sha256(model)
    return Encoder(name="phikon", model=model, transforms=TileTransform(size=input_size), dim=PHIKON_DIM,
                   precision=precision, weights_sha256=sha, forward_fn=_cls_token,
                   weights_path=str(weights) if weights is not None else None,
                   config={"arch": "ViTModel-B/16", "feature_token": "cls (last_hidden_state[:, 0])",
                           "random_init": weights is None})
