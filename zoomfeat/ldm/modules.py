"""The three networks of ZoomLDM built from our YAML config: diffusers UNet + VQModel and the Summarizer.

The bottom of ``zoomfeat.ldm``: :mod:`zoomfeat.ldm.official` (checkpoint mapping) and
:mod:`zoomfeat.ldm.pipeline` (the model) both build their modules here, so neither imports the other's callers.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel, VQModel

from zoomfeat.ldm.summarizer import Summarizer


def build_modules(cfg: dict) -> tuple[UNet2DConditionModel, VQModel, Summarizer]:
    """Random-init UNet / VQModel / Summarizer from our YAML config (``unet``/``vq``/``summarizer`` sections)."""
    ucfg = dict(cfg["unet"])
    for k in ("down_block_types", "up_block_types", "block_out_channels"):
        ucfg[k] = tuple(ucfg[k])
    vcfg = dict(cfg["vq"])
    for k in ("down_block_types", "up_block_types", "block_out_channels"):
        vcfg[k] = tuple(vcfg[k])
    vcfg.setdefault("scaling_factor", 1.0)
    if float(vcfg["scaling_factor"]) != 1.0:
        raise ValueError("ZoomLDM latents are unscaled: vq.scaling_factor must be 1.0")
    return UNet2DConditionModel(**ucfg), VQModel(**vcfg), Summarizer(**cfg["summarizer"])


def build_empty_modules(cfg: dict, device: str | torch.device = "meta"):
    """Instantiate UNet / VQ / Summarizer for ``cfg`` without allocating weights (for key/shape checks)."""
    if str(device) == "meta":
        from accelerate import init_empty_weights

        with init_empty_weights():
            return build_modules(cfg)
    return build_modules(cfg)
