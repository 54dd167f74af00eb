"""`zoomfeat convert` (official checkpoint → safetensors folder) and `zoomfeat generate` (patch sampling)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoomfeat.cli.common import WEIGHTS_REGISTRY_HELP
from zoomfeat.cli.options import add_config_args, add_fields, options_from_args, require
from zoomfeat.generate.options import PatchSamplingConfig


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert an official ZoomLDM weights.ckpt + config.yaml into a safetensors model folder",
        description="Read a released ZoomLDM checkpoint safely (weights_only), map every tensor onto diffusers "
        "modules and write unet/, vq/, summarizer/ (safetensors) + zoomldm_config.yaml.",
    )
    p.add_argument("ckpt", help="official weights.ckpt (flat state dict or {'state_dict': ...})")
    p.add_argument("config", help="official config.yaml that goes with it")
    p.add_argument("out", help="output folder")
    p.add_argument("--online", action="store_true", help="take the online UNet instead of the EMA weights")
    p.set_defaults(func=_convert)

    g = subparsers.add_parser(
        "generate",
        help="sample patches from ZoomLDM for an SSL grid (or an image) at a magnification",
        description="Condition ZoomLDM on an SSL feature grid (.npy/.pt: [C,h,w], [C,n], [n,C] or [B,C,h,w]) "
        "or on a real image encoded with --encoder, and write PNG patches plus grid.png.",
    )
    add_config_args(g)
    add_fields(g, PatchSamplingConfig, weights_registry={"help": WEIGHTS_REGISTRY_HELP},
               out={"help": "output folder for sample_XXX.png and grid.png; required"})
    g.set_defaults(func=_generate)


def _convert(args: argparse.Namespace) -> int:
    from zoomfeat.ldm import ZoomLDM

    out = ZoomLDM.load(args.ckpt, args.config, ema=not args.online).save_pretrained(args.out)
    print(f"wrote {out}")
    return 0


def _mag_arg(value: str):
    return int(value) if value.strip().isdigit() else value


def _generate(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from zoomfeat.generate.patches import (
        generate_patches,
        grid_nrow,
        load_ssl_grid,
        save_image_grid,
        ssl_grid_from_image,
        write_patches,
    )
    from zoomfeat.io import write_json_atomic
    from zoomfeat.precision import resolve_device

    from zoomfeat.ldm import ZoomLDM

    cfg = options_from_args(PatchSamplingConfig, args)
    require(cfg, "model", "out")
    if (cfg.ssl is None) == (cfg.image is None):
        raise ValueError("give exactly one of --ssl (an SSL grid file) or --image (an image to encode)")
    model = ZoomLDM.load(cfg.model, cfg.official_config, ema=cfg.ema).to(resolve_device(cfg.device))
    mag = _mag_arg(str(cfg.mag))
    k = int(model.mag_index(mag, 1)[0])
    if cfg.ssl:
        grid = load_ssl_grid(cfg.ssl, model.ssl_dim)
    else:
        from PIL import Image

        from zoomfeat.encoders import create_encoder

        enc = create_encoder(cfg.encoder, weights=cfg.encoder_weights, registry=cfg.weights_registry)
        if enc.dim != model.ssl_dim:
            raise ValueError(f"encoder {cfg.encoder} gives {enc.dim}-d tokens; the model expects {model.ssl_dim}")
        image = np.asarray(Image.open(cfg.image).convert("RGB"))
        grid = ssl_grid_from_image(image, enc, side=2**k)
    t0 = time.time()
    images = generate_patches(
        model, grid, mag, n=cfg.n, steps=cfg.steps, scheduler=cfg.scheduler, guidance_scale=cfg.guidance,
        seed=cfg.seed, batch_size=cfg.batch_size, progress=cfg.progress, precision=cfg.precision,
    )
    out = Path(cfg.out)
    paths = write_patches(images, out)
    save_image_grid(images, out / "grid.png", nrow=grid_nrow(len(images)))
    write_json_atomic(
        out / "generation.json",
        {"model": str(cfg.model), "ssl": cfg.ssl, "image": cfg.image, "mag": model.mag_labels[k], "mag_index": k,
         "n": cfg.n, "steps": cfg.steps, "scheduler": cfg.scheduler, "guidance": cfg.guidance, "seed": cfg.seed,
         "precision": cfg.precision, "seconds": round(time.time() - t0, 2), "files": [p.name for p in paths]},
    )
    print(f"wrote {len(paths)} patches and grid.png to {out}")
    return 0
