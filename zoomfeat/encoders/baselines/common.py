"""What every TRIDENT-parity baseline encoder shares: the spec of one encoder, TRIDENT's PIL eval transform, the
weights loader (file or folder, strict key + shape check in one line, checkpoint ↔ model key names), the output
rules and the builder behind each ``@register_encoder``.

Parity is measured against TRIDENT (mahmoodlab/TRIDENT a91fa84) by ``tests/test_encoder_parity.py``; see
``docs/encoders.md``. No code of TRIDENT is included (it is CC-BY-NC-ND-4.0): these are reimplementations of the
architectures it calls (timm / transformers), checked against its outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from zoomfeat.encoders.base import IMAGENET_MEAN, IMAGENET_STD, ModelEncoder, to_float_images
from zoomfeat.encoders.options import RandomInitOptions, option
from zoomfeat.io import sha256_file
from zoomfeat.precision import normalize_precision
from zoomfeat.weights import check_state_dict, load_into_meta_built, load_state_dict_file, state_dict_sha256

#: File names looked for, in this order, when ``weights`` is a folder (then the spec's own names, then the only
#: ``.safetensors`` / ``.bin`` / ``.pth`` / ``.pt`` file there is).
WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.safetensors")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
PRECISION_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def uint8_nhwc(images: Any) -> np.ndarray:
    """Tiles (uint8 [B,H,W,3] / [B,3,H,W] numpy or torch, or float [B,3,H,W] in [0, 1]) → uint8 [B,H,W,3] numpy on
    the CPU. Float tiles are rounded to uint8 first: the PIL transform works on 8-bit images, as TRIDENT's does."""
    t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    t = t[None] if t.ndim == 3 else t
    if t.ndim != 4 or 3 not in (t.shape[1], t.shape[-1]):
        raise ValueError(f"images must be [B, H, W, 3] or [B, 3, H, W], got shape {tuple(t.shape)}")
    if not (t.shape[-1] == 3 and t.shape[1] != 3):
        t = t.permute(0, 2, 3, 1)
    if t.dtype != torch.uint8:
        t = (t.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
    return t.cpu().contiguous().numpy()


@dataclass
class TridentTransform:
    """TRIDENT's eval transform, bit for bit: PIL ``Resize(shorter side → resize)`` (torchvision on a PIL image,
    antialiased), optional ``CenterCrop(crop)``, then ``ToTensor`` (/255) and ``Normalize`` on the device.

    PIL's resampling differs from ``torch.nn.functional.interpolate(antialias=True)`` by up to a few grey levels,
    which moves ViT features by ~1e-2 (README of the parity fixtures), so the resize runs in PIL on the CPU."""

    resize: int = 224
    crop: int | None = None
    interpolation: str = "bilinear"
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    @property
    def size(self) -> int:
        """The model's input side (after the crop; for square tiles without a crop, the resize)."""
        return int(self.crop or self.resize)

    def resize_crop(self, images: Any) -> np.ndarray:
        """The uint8 [B,H,W,3] image after resize + crop (what TRIDENT's ToTensor receives)."""
        import torchvision.transforms.functional as TF
        from PIL import Image
        from torchvision.transforms import InterpolationMode

        mode = InterpolationMode(self.interpolation)
        out = []
        for tile in uint8_nhwc(images):
            img = TF.resize(Image.fromarray(tile), self.resize, interpolation=mode, antialias=True)
            if self.crop:
                img = TF.center_crop(img, [self.crop, self.crop])
            out.append(np.asarray(img))
        return np.stack(out)

    def __call__(self, images: Any, device: torch.device | str | None = None) -> torch.Tensor:
        x = to_float_images(self.resize_crop(images), device)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def config(self) -> dict:
        return {"input_size": self.size, "resize": self.resize, "crop": self.crop,
                "interpolation": self.interpolation, "antialias": True, "resize_backend": "PIL",
                "mean": list(self.mean), "std": list(self.std)}


# ---------------------------------------------------------------------------------------------- output rules


def forward_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``: timm ViTs with ``num_classes=0, global_pool='token'`` (class token after ``norm``), timm Swin
    (mean of the tokens after ``norm``) and modules that return their feature themselves."""
    return model(x)


def hf_cls(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Hugging Face ``last_hidden_state[:, 0]``: the class token after the final ``layernorm``."""
    return model(pixel_values=x).last_hidden_state[:, 0, :]


# ---------------------------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class BaselineSpec:
    """One TRIDENT-parity encoder: how to build it (``build(depth, folder)``: ``depth=None`` = full size, ``folder``
    = the user's weights folder, for Hugging Face ``config.json``), its output rule, transform, default precision,
    checkpoint conventions (``adapt``: a state-dict fix-up TRIDENT applies at load time, e.g. resampling a position
    table) and what ``zoomfeat encoders`` lists about it (``info``)."""

    name: str
    dim: int
    build: Callable[[int | None, Path | None], nn.Module]
    transform: TridentTransform
    precision: str
    arch: str
    output_rule: str
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] = forward_model
    files: tuple[str, ...] = ()
    drop_prefixes: tuple[str, ...] = ()
    strip_prefixes: tuple[str, ...] = ("module.", "model.")
    to_checkpoint: Callable[[str], str] | None = None
    to_model: Callable[[str], str] | None = None
    adapt: Callable[[dict], dict] | None = None
    info: dict = field(default_factory=dict)

    def ckpt_name(self, key: str) -> str:
        return self.to_checkpoint(key) if self.to_checkpoint else key

    def model_name(self, key: str) -> str:
        return self.to_model(key) if self.to_model else key


def checkpoint_shapes(spec: BaselineSpec, model: nn.Module) -> tuple[dict[str, tuple], set[str]]:
    """``({checkpoint key: shape}, persistent keys)`` of a built model under the checkpoint's names: every
    persistent tensor of its state dict, plus the derived buffers (Swin ``relative_position_index`` /
    ``attn_mask``) that checkpoints may carry and that are recomputed, not loaded."""
    persistent = {spec.ckpt_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = dict(persistent)
    for k, b in model.named_buffers():
        shapes.setdefault(spec.ckpt_name(k), tuple(b.shape))
    return shapes, set(persistent)


def checkpoint_state_dict(spec: BaselineSpec, model: nn.Module) -> dict[str, torch.Tensor]:
    """A built model's state dict under the checkpoint's names (what the real weights files use): save it to get a
    weights file the encoder loads, e.g. of a small ``--depth`` random-init variant for tests."""
    return {spec.ckpt_name(k): v for k, v in model.state_dict().items()}


def full_size_listing(spec: BaselineSpec, depth: int | None = None) -> dict[str, tuple]:
    """The checkpoint keys and shapes the builder expects (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        model = spec.build(depth, None)
    return checkpoint_shapes(spec, model)[0]


def weights_file(spec: BaselineSpec, weights: str | os.PathLike) -> Path:
    """``weights`` itself, or the weights file inside a folder (usual names first, then the only candidate)."""
    p = Path(weights)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"{spec.name} weights not found: {p}")
    for name in WEIGHT_FILE_NAMES + spec.files:
        if (p / name).is_file():
            return p / name
    cands = sorted(q for q in p.iterdir() if q.is_file() and q.suffix in WEIGHT_SUFFIXES)
    if len(cands) == 1:
        return cands[0]
    raise FileNotFoundError(f"{spec.name} weights folder {p} has no {' / '.join(WEIGHT_FILE_NAMES + spec.files)} "
                            f"and {len(cands)} other weight files (pass the file itself)")


def normalized_state_dict(spec: BaselineSpec, sd: dict) -> dict:
    """Strip a wrapper prefix every key shares (``model.`` of TRIDENT's wrapper, ``module.`` of DDP, the spec's
    own) and drop the heads inference does not use (``spec.drop_prefixes``)."""
    if isinstance(sd.get("model"), dict):  # {"model": state_dict} (CTransPath's release)
        sd = sd["model"]
    drop = spec.drop_prefixes or ("\0",)
    for prefix in spec.strip_prefixes:
        kept = [k for k in sd if not k.startswith(drop)]
        if kept and all(k.startswith(prefix) for k in kept):
            sd = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if not k.startswith(drop)}


def load_checkpoint(spec: BaselineSpec, weights: str | os.PathLike, depth: int | None,
                    name: str | None = None) -> tuple[nn.Module, Path]:
    """Build ``spec`` at ``depth`` with the weights of a file or folder: strict key + shape match under the
    checkpoint's names first (one-line :class:`~zoomfeat.weights.WeightsMismatchError`), then a meta-device load.
    A state dict saved under the installed library's own names (e.g. by transformers 5) is accepted too."""
    wf = weights_file(spec, weights)
    folder = Path(weights) if Path(weights).is_dir() else None
    sd = normalized_state_dict(spec, load_state_dict_file(wf))
    sd = spec.adapt(sd) if spec.adapt else sd
    with torch.device("meta"):
        skeleton = spec.build(depth, folder)
    expected, persistent = checkpoint_shapes(spec, skeleton)
    native = {k for k, _ in skeleton.named_buffers()} | set(skeleton.state_dict())
    if spec.to_checkpoint and sd and set(sd) <= native and not set(sd) <= set(expected):
        sd = {spec.ckpt_name(k): v for k, v in sd.items()}  # saved under the installed library's own names
    check_state_dict(expected, sd, what=f"{name or spec.name} weights {wf}", optional=lambda k: k not in persistent)
    sd = {spec.model_name(k): v for k, v in sd.items() if k in persistent}
    return load_into_meta_built(lambda: spec.build(depth, folder), sd), wf


@dataclass
class BaselineOptions(RandomInitOptions):
    """Options of a TRIDENT-parity baseline: ``--depth`` builds a reduced variant (tests, small weight files)."""

    depth: int | None = option(None, "number of transformer blocks (default: the full model; a smaller number "
                                     "builds the reduced variant the parity tests use)", type=int)

    @classmethod
    def recipe_kwargs(cls, spec: dict, weights: Any = None, ssl_weights: Any = None,
                      official_config: Any = None) -> dict:
        kw = super().recipe_kwargs(spec, weights)
        depth = (spec.get("recipe") or {}).get("depth")
        if depth is not None:
            kw["depth"] = int(depth)
        return kw


def build_baseline(spec: BaselineSpec, weights: str | os.PathLike | None = None, precision: str | None = None,
                   random_init: bool = False, depth: int | None = None, name: str | None = None) -> ModelEncoder:
    """The :class:`ModelEncoder` of ``spec``: weights from a file or folder (strict), or ``random_init`` (tests)."""
    if depth is not None and int(depth) < 1:
        raise ValueError(f"{spec.name}: depth must be a positive number of blocks, got {depth}")
    depth = None if depth is None else int(depth)
    if weights is not None:
        model, wf = load_checkpoint(spec, weights, depth, name)
        sha, wpath = sha256_file(wf), str(wf)
    elif random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = spec.build(depth, None)
        sha, wpath = state_dict_sha256(model), None
    else:
        raise FileNotFoundError(f"{spec.name} needs local weights ({spec.info.get('source', 'a state dict file')}):"
                                f" pass --weights or set '{name or spec.name}' in your weights registry "
                                f"($ZOOMFEAT_WEIGHTS_REGISTRY / --weights-registry)")
    return ModelEncoder(name=name or spec.name, model=model, transforms=spec.transform, dim=spec.dim,
                        precision=normalize_precision(precision, spec.precision), weights_sha256=sha,
                        weights_path=wpath, forward_fn=spec.forward,
                        config={"arch": spec.arch, "output_rule": spec.output_rule, "feature_token": spec.output_rule,
                                "depth": depth,
                                "baseline": spec.name, "parity": "TRIDENT a91fa84", "random_init": weights is None})


def registry_info(spec: BaselineSpec, **extra: Any) -> dict:
    """What ``zoomfeat encoders`` lists for ``spec`` (``extra``: e.g. ``alias_of``)."""
    t = spec.transform
    resize = f"resize {t.resize} {t.interpolation}" + (f", crop {t.crop}" if t.crop else "")
    return {"dim": spec.dim, "input": f"{t.size} px ({resize}, PIL)", "precision": spec.precision, **spec.info,
            **extra}


class KeyRenames:
    """Checkpoint ↔ model key renames as ``(checkpoint prefix, model prefix)`` templates (``{i}`` = a block number),
    applied only when ``active()`` (e.g. transformers ≥ 5, which renamed ViT / DINOv2 submodules that checkpoints
    saved by transformers 4 still use)."""

    def __init__(self, pairs: Sequence[tuple[str, str]], active: Callable[[], bool] = lambda: True) -> None:
        self.active = active
        self.pairs = [(self.prefix_regex(a), a, self.prefix_regex(b), b) for a, b in pairs]

    @staticmethod
    def prefix_regex(template: str):
        import re

        return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(\d+)"))

    def rename(self, key: str, to_model: bool) -> str:
        if not self.active():
            return key
        for ck_rx, ck, mo_rx, mo in self.pairs:
            rx, template = (ck_rx, mo) if to_model else (mo_rx, ck)
            m = rx.match(key)
            if m:
                return template.format(i=m.group(1) if m.groups() else "") + key[m.end():]
        return key

    def to_model(self, key: str) -> str:
        return self.rename(key, True)

    def to_checkpoint(self, key: str) -> str:
        return self.rename(key, False)


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def timm_model(name: str, depth: int | None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)`` with ``depth`` blocks when given."""
    import timm

    if depth is not None:
        kwargs["depth"] = depth
    return timm.create_model(name, pretrained=False, **kwargs)


__all__ = ["BaselineSpec", "BaselineOptions", "TridentTransform", "build_baseline", "checkpoint_shapes",
           "checkpoint_state_dict",
           "full_size_listing", "load_checkpoint", "weights_file", "registry_info", "timm_model", "forward_model",
           "hf_cls", "uint8_nhwc", "PRECISION_NAMES"]
