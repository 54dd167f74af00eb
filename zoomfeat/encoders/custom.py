"""``custom``: any ``nn.Module`` (or an importable ``"package.module:factory"``) plus transforms as a ModelEncoder."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from zoomfeat.encoders.base import ModelEncoder, TileTransform, infer_dim
from zoomfeat.weights import load_state_dict_file, state_dict_sha256
from zoomfeat.encoders.options import EncoderOptions, option
from zoomfeat.encoders.registry import register_encoder
from zoomfeat.io import sha256_file


def _resolve_model(model: nn.Module | str | Callable[[], nn.Module]) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, str):
        if ":" not in model:
            raise ValueError(f"custom model {model!r} must look like 'package.module:factory'")
        mod, attr = model.split(":", 1)
        model = getattr(importlib.import_module(mod), attr)
    if callable(model):
        out = model()
        if not isinstance(out, nn.Module):
            raise ValueError(f"custom model factory returned {type(out).__name__}, not an nn.Module")
        return out
    raise TypeError(f"custom model must be an nn.Module, a factory or 'module:factory', got {type(model).__name__}")


@dataclass
class CustomOptions(EncoderOptions):
    custom_model: str | None = option(None, "'package.module:factory' returning the nn.Module")

    def builder_kwargs(self) -> dict:
        if not self.custom_model:
            raise ValueError("--encoder custom needs --custom-model package.module:factory")
        kw = super().builder_kwargs()
        kw["model"] = kw.pop("custom_model")
        return kw

    @classmethod
    def recipe_kwargs(cls, spec: dict, weights: Any = None, ssl_weights: Any = None,
                      official_config: Any = None) -> dict:
        return {"model": (spec.get("recipe") or {}).get("arch")}  # its precision is the model's own


@register_encoder("custom", options=CustomOptions, info={
    "dim": "inferred (or --dim)", "input": "yours (default 224 px resize, ImageNet norm)", "scale": "yours",
    "precision": "fp32", "license": "yours", "source": "your module / factory"})
def create_custom(model: nn.Module | str | Callable[[], nn.Module] | None = None, weights: str | os.PathLike | None = None,
                  transforms: Callable[..., torch.Tensor] | None = None, dim: int | None = None,
                  encoder_name: str = "custom", precision: str = "fp32", input_size: int = 224,
                  forward_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> ModelEncoder:
    """Any nn.Module (or 'package.module:factory') as an encoder.

    ``transforms(images, device) -> [B,3,H,W]`` defaults to resize + ImageNet normalisation;
    ``dim`` is inferred by one dummy forward when omitted; ``weights`` is an optional state dict (strict)."""
    if model is None:
        raise ValueError("the custom encoder needs model= (an nn.Module or 'package.module:factory')")
    m = _resolve_model(model)
    if weights is not None:
        m.load_state_dict(load_state_dict_file(weights), strict=True)
    m.eval()
    tf = transforms or TileTransform(size=input_size)
    if dim is None:
        dim = infer_dim(m, tf, forward_fn, size=input_size if isinstance(tf, TileTransform) else 64)
    sha = sha256_file(weights) if weights is not None else state_dict_sha256(m)
    return ModelEncoder(name=encoder_name, model=m, transforms=tf, dim=int(dim), precision=precision,
                        weights_sha256=sha, forward_fn=forward_fn, weights_path=str(weights) if weights else None,
                        config={"arch": model if isinstance(model, str) else type(m).__name__})
