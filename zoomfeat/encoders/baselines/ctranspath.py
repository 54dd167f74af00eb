"""CTransPath (Wang et al. 2022): Swin-T/4 window 7 with a convolutional stem, mean of the final tokens, 768-d.

Built with timm 1.x's ``SwinTransformer`` (no dependency on the authors' ``timm-ctp`` fork): the checkpoint's
timm-0.5 layout (``layers.N.downsample`` at the END of stage N, derived ``relative_position_index`` /
``attn_mask`` buffers stored) is mapped to timm 1.x's (downsample at the START of stage N+1, buffers recomputed).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from zoomfeat.encoders.base import ModelEncoder
from zoomfeat.encoders.baselines.common import (BaselineOptions, BaselineSpec, TridentTransform, build_baseline,
                                                registry_info)
from zoomfeat.encoders.registry import register_encoder

FULL_DEPTHS = (2, 2, 6, 2)


class ConvStem(nn.Module):
    """CTransPath's patch embedding: conv3×3/s2 3→e/8 + BN + ReLU, conv3×3/s2 e/8→e/4 + BN + ReLU,
    conv1×1 e/4→e, then LayerNorm; NHWC output (timm 1.x Swin's layout). Keys ``proj.{0,1,3,4,6}`` and ``norm``
    as in the checkpoint."""

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96,
                 norm_layer: type | None = None, strict_img_size: bool = True, output_fmt: str = "NHWC",
                 **_: object) -> None:
        super().__init__()
        if patch_size != 4 or embed_dim % 8:
            raise ValueError("ConvStem needs patch_size 4 and an embed_dim divisible by 8")
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers: list[nn.Module] = []
        c_in, c_out = in_chans, embed_dim // 8
        for _i in range(2):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            c_in, c_out = c_out, c_out * 2
        layers.append(nn.Conv2d(c_in, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def build_ctranspath_model(depth: int | None = None, folder: Path | None = None) -> nn.Module:
    """timm ``swin_tiny_patch4_window7_224`` with the ConvStem, no head (``num_classes=0``: avg-pooled tokens);
    ``depth`` = number of blocks of the third stage (6 at full size)."""
    import timm

    depths = FULL_DEPTHS if depth is None else (2, 2, depth, 2)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, embed_layer=ConvStem, img_size=224,
                             num_classes=0, depths=depths)


def to_checkpoint(key: str) -> str:
    """timm 1.x name → checkpoint (timm 0.5) name: ``layers.{N+1}.downsample`` → ``layers.N.downsample``."""
    return re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)


def to_model(key: str) -> str:
    """Checkpoint (timm 0.5) name → timm 1.x name."""
    return re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)


SPEC = BaselineSpec(
    name="ctranspath", dim=768, build=build_ctranspath_model,
    transform=TridentTransform(resize=224, crop=None, interpolation="bilinear"), precision="fp32",
    arch="timm SwinTransformer swin_tiny_patch4_window7_224 + ConvStem (timm_ctp 0.5.4 key layout)",
    output_rule="final norm → mean over tokens", to_checkpoint=to_checkpoint, to_model=to_model,
    drop_prefixes=("head.",), files=("ctranspath.pth",),
    info={"scale": "20x (0.5 um/px; Table 4 uses it at 5x), 224-px tiles", "license": "GPL-3.0 (code and weights)",
          "source": "ctranspath.pth from the authors' GitHub (Xiyue-Wang/TransPath); no official HF repo"})


@register_encoder("ctranspath", needs_weights=True, options=BaselineOptions, info=registry_info(SPEC))
def create_ctranspath(weights: str | os.PathLike | None = None, precision: str | None = None,
                      random_init: bool = False, depth: int | None = None) -> ModelEncoder:
    """CTransPath (Swin-T + ConvStem, 768-d, TRIDENT parity): ``ctranspath.pth``, with or without ``attn_mask``;
    fp32."""
    return build_baseline(SPEC, weights, precision, random_init, depth)
