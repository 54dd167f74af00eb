"""``tiny-vit``: a small random-init timm ViT, deterministic from its seed — the stand-in SSL/UNI encoder for the
tiny ZoomLDM, so tests, the demo and training need no weight file (its ``dim`` must equal the model's ssl dim)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from zoomfeat.encoders.base import ModelEncoder, TileTransform
from zoomfeat.weights import load_state_dict_file, state_dict_sha256
from zoomfeat.encoders.options import EncoderOptions, option
from zoomfeat.encoders.registry import register_encoder
from zoomfeat.io import sha256_file


def build_tiny_vit(dim: int = 48, seed: int = 0, depth: int = 2, img_size: int = 64, patch_size: int = 16):
    """timm VisionTransformer, class token out; weights drawn under a private RNG seeded with ``seed``."""
    from timm.models.vision_transformer import VisionTransformer

    heads = next(h for h in (4, 3, 2, 1) if dim % h == 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=dim, depth=depth,
                                  num_heads=heads, mlp_ratio=2.0, num_classes=0, dynamic_img_size=True)
    return model


@dataclass
class TinyViTOptions(EncoderOptions):
    seed: int = option(0, "weight-init seed", type=int)

    @classmethod
    def recipe_kwargs(cls, spec: dict, weights: Any = None, ssl_weights: Any = None,
                      official_config: Any = None) -> dict:
        rc = spec.get("recipe") or {}
        kw = {**super().recipe_kwargs(spec), **{k: int(rc[k]) for k in ("seed", "depth") if k in rc}}
        if spec.get("dim"):
            kw["dim"] = int(spec["dim"])
        if "input_size" in rc:
            kw["input_size"] = int(rc["input_size"])
        return kw


@register_encoder("tiny-vit", options=TinyViTOptions, info={
    "dim": "48 (--dim)", "input": "64 px (resize, torch)", "scale": "any (tests, demo)", "precision": "fp32",
    "license": "-", "source": "none: seeded random init (or a saved state dict)"})
def create_tiny_vit(weights: str | os.PathLike | None = None, dim: int = 48, seed: int = 0, depth: int = 2,
                    input_size: int = 64, precision: str = "fp32") -> ModelEncoder:
    """Small seeded random-init ViT (48-d; no weight file).

    Random init from ``seed`` or a saved state dict (``strict=True``); ImageNet normalisation at 64 px."""
    model = build_tiny_vit(dim=dim, seed=seed, depth=depth, img_size=input_size)
    if weights is not None:
        model.load_state_dict(load_state_dict_file(weights), strict=True)
        sha = sha256_file(weights)
    else:
        sha = state_dict_sha256(model)
    return ModelEncoder(name="tiny-vit", model=model, transforms=TileTransform(size=input_size), dim=dim,
                        precision=precision, weights_sha256=sha, weights_path=str(weights) if weights else None,
                        config={"arch": "timm VisionTransformer", "depth": depth, "seed": seed,
                                "feature_token": "cls", "random_init": weights is None})
