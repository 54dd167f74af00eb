"""UNI (MahmoodLab, v1): timm ViT-L/16 with LayerScale, class token, 1024-d, from a local ``pytorch_model.bin``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from zoomfeat.encoders.base import Encoder, TileTransform
from zoomfeat.weights import load_into_meta_built, load_state_dict_file, state_dict_sha256
from zoomfeat.encoders.options import RandomInitOptions
from zoomfeat.encoders.registry import register_encoder
from zoomfeat.io import sha256_file

UNI_DIM = 1024


def build_uni_model() -> torch.nn.Module:
    """The exact UNI architecture (peer_toolkits §7.1): ``init_values=1e-5`` creates the ``ls*.gamma`` LayerScale
    parameters the checkpoint holds, so ``strict=True`` loading fails loudly on any other ViT-L."""
    import timm

    return timm.create_model("vit_large_patch16_224", pretrained=False, img_size=224, patch_size=16,
                             init_values=1e-5, num_classes=0, dynamic_img_size=True)


def _weights_file(weights: str | os.PathLike) -> Path:
    p = Path(weights)
    if p.is_dir():
        for name in ("pytorch_model.bin", "model.safetensors", "pytorch_model.safetensors"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"UNI weights folder {p} has no pytorch_model.bin or model.safetensors")
    if not p.is_file():
        raise FileNotFoundError(f"UNI weights not found: {p}")
    return p


@register_encoder("uni", needs_weights=True, options=RandomInitOptions)
def create_uni(weights: str | os.PathLike | None = None, precision: str = "fp16", random_init: bool = False,
               input_size: int = 224) -> Encoder:
    """UNI (ViT-L/16, 1024-d). ``weights``: ``pytorch_model.bin`` (or its folder), loaded with ``strict=True``.

    ``random_init=True`` builds the architecture without weights (tests, benchmarks). Tiles are resized to 224 and
    ImageNet-normalised (CLAM/TRIDENT/UNI README); on GPU the forward runs under fp16 autocast (TRIDENT's choice).
    """
    if weights is not None:
        wf = _weights_file(weights)
        model = load_into_meta_built(build_uni_model, load_state_dict_file(wf))
        sha, wpath = sha256_file(wf), str(wf)
    elif random_init:
        model = build_uni_model()
        sha, wpath = state_dict_sha256(model), None
    else:
        raise FileNotFoundError("UNI needs local weights (pytorch_model.bin): pass --weights/--ssl-weights or set "
                                "'uni' in configs/encoders/weights.yaml")
    return Encoder(name="uni", model=model, transforms=TileTransform(size=input_size), dim=UNI_DIM,
                   precision=precision, weights_sha256=sha, weights_path=wpath,
                   config={"arch": "vit_large_patch16_224", "init_values": 1e-5, "feature_token": "cls",
                           "random_init": weights is None})
