"""The one interface every tile encoder shares: model + transforms + precision + dim + name + weights hash + config.

Transforms run on tensors (uint8 batches are moved to the device first, then resized and normalised there), so the
DataLoader workers only read and decode pixels: peer_toolkits §4 shows per-patch PIL work is a main CPU cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoomfeat.precision import autocast

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)



def to_float_images(images: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """Tiles in any common form → float [B, 3, H, W] in [0, 1] on ``device``.

    Accepts uint8 [B, H, W, 3] / [B, 3, H, W] (numpy or torch; the channel axis is found by its size 3) or float
    tensors already in [0, 1]. uint8 is moved before the cast so host→device copies stay 4× smaller.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, 3] or [B, 3, H, W], got shape {tuple(images.shape)}")
    if device is not None:
        images = images.to(device, non_blocking=True)
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    elif images.shape[1] != 3:
        raise ValueError(f"images need 3 channels (RGB), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


@dataclass
class TileTransform:
    """Resize (antialiased) + normalise on tensors; ``config()`` is what a bag records as its transform."""

    size: int = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __call__(self, images: Any, device: torch.device | str | None = None) -> torch.Tensor:
        x = to_float_images(images, device)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode=self.interpolation, antialias=True,
                              align_corners=False)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def config(self) -> dict:
        return {"input_size": self.size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "antialias": True}


@dataclass
class TileContext:
    """Where a batch of tiles comes from: what context-aware encoders (ZoomLDM) need besides the pixels.

    ``mag``: ``"20x"`` or ``"5x"``; ``coords``: level-0 top-left (n, 2) and ``slide``: the id that seeds per-tile
    noise; ``ssl_grid``: [n, C, s, s] embeddings of the tile's SSL grid (s = 1 at 20x, 4 at 5x), filled by the
    extractor when the encoder has an ``ssl_encoder``; ``seeds``: explicit per-tile seeds (tests, benchmarks) that
    replace the ones derived from ``slide`` + ``coords``. Plain encoders ignore all of it.
    """

    mag: str = "20x"
    coords: np.ndarray | None = None
    slide: str | None = None
    ssl_grid: torch.Tensor | None = None
    seeds: Sequence[int] | np.ndarray | None = None


class TileEncoder:
    """THE encoder protocol of zoomfeat: subclass it (or match it) and register it with ``@register_encoder``.

    Required: ``dim`` and ``encode(images, ctx) -> [B, dim]`` float32 (images: uint8 [B,H,W,3] or float [B,3,H,W]
    in [0,1]; ``ctx``: the batch's :class:`TileContext`, ``None`` outside extraction). The rest has defaults:
    ``name`` (set by the registry), ``precision``, ``weights_sha256``/``weights_path``/``config`` (recorded in
    every bag), ``device``/``to`` (through ``model`` when there is one). Capabilities the extractor asks for:
    ``ssl_encoder`` (not None: the extractor embeds every 20x tile and every 5x region's 4×4 children with it
    and passes the grids in ``ctx.ssl_grid``), ``bag_attrs(opts)`` (extra bag attributes), ``compile_units()`` and
    ``conv_modules()`` (what ``--compile`` / ``--channels-last`` act on).
    """

    name: str  # set by @register_encoder
    dim: int
    precision: str = "fp32"
    weights_sha256: str | None = None
    weights_path: str | None = None
    ssl_encoder: "TileEncoder | None" = None

    @property
    def device(self) -> torch.device:
        model = getattr(self, "model", None)
        try:
            return next(model.parameters()).device if model is not None else torch.device("cpu")
        except StopIteration:
            return torch.device("cpu")

    def to(self, device: torch.device | str) -> "TileEncoder":
        model = getattr(self, "model", None)
        if model is not None:
            model.to(device)
        return self

    def full_config(self) -> dict:
        """What a bag stores as ``encoder_config`` (and what the extract signature hashes): name, width, precision,
        the transform's settings (if it records them) and the encoder's own ``config``."""
        transforms = getattr(self, "transforms", None)
        tcfg = transforms.config() if hasattr(transforms, "config") else {}
        return {"name": self.name, "dim": self.dim, "precision": self.precision, **tcfg, **getattr(self, "config", {})}

    def encode(self, images: Any, ctx: TileContext | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement encode(images, ctx)")

    def bag_attrs(self, opts: Any) -> dict:
        """Extra file attributes of a bag extracted with ``opts`` (ExtractOptions); none by default."""
        return {}

    def compile_units(self) -> list[nn.Module]:
        """Modules a forward calls, each compiled as one unit by ``--compile``."""
        model = getattr(self, "model", None)
        return [model] if isinstance(model, nn.Module) else []

    def conv_modules(self) -> list[nn.Module]:
        """Modules whose weights ``--channels-last`` converts."""
        return self.compile_units()


@dataclass
class ModelEncoder(TileEncoder):
    """A model-wrapping tile encoder: ``encode(images) -> [B, dim]`` float32 (the context is not used).

    ``model`` maps transformed images to features through ``forward_fn`` (default: ``model(x)``); ``precision``
    is the autocast dtype used on GPU; ``config`` is recorded in every bag so features can be traced to settings.
    """

    name: str
    model: nn.Module
    transforms: Callable[..., torch.Tensor]
    dim: int
    precision: str = "fp32"
    weights_sha256: str | None = None
    config: dict = field(default_factory=dict)
    forward_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    weights_path: str | None = None

    def __post_init__(self) -> None:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.inference_mode()
    def encode(self, images: Any, ctx: TileContext | None = None) -> torch.Tensor:
        """Tiles (uint8 [B,H,W,3] or float [B,3,H,W] in [0,1]) → features [B, dim] float32 on the model's device."""
        device = self.device
        x = self.transforms(images, device)
        with autocast(device, self.precision):
            out = self.forward_fn(self.model, x) if self.forward_fn is not None else self.model(x)
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise RuntimeError(f"encoder {self.name} returned shape {tuple(out.shape)}, expected (B, {self.dim})")
        return out.float()


def infer_dim(model: nn.Module, transforms: Callable, forward_fn=None, size: int = 64) -> int:
    """Output width of a model, found by one forward on a dummy tile (for ``custom`` encoders given no dim)."""
    dummy = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    with torch.inference_mode():
        x = transforms(dummy, next(model.parameters()).device if any(True for _ in model.parameters()) else None)
        out = forward_fn(model, x) if forward_fn is not None else model(x)
    if out.ndim != 2:
        raise ValueError(f"custom model must return [B, D] features, got shape {tuple(out.shape)}")
    return int(out.shape[1])
