"""`zoomfeat convert` (official checkpoint → safetensors folder) and `zoomfeat generate` (patch sampling)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoomfeat.cli.common import add_model_args, add_weights_registry_arg, load_model_from_args


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
    add_model_args(g)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--ssl", help="SSL grid file (.npy or .pt)")
    src.add_argument("--image", help="an RGB image of the region to condition on (needs --encoder)")
    g.add_argument("--encoder", default="uni", help="encoder for --image (default: uni)")
    g.add_argument("--encoder-weights", default=None, help="weights for --encoder (default: weights registry)")
    add_weights_registry_arg(g)
    g.add_argument("--mag", default="20x", help="magnification: index 0..7 or label like 5x (default 20x)")
    g.add_argument("--n", type=int, default=8, help="number of patches (default 8)")
    g.add_argument("--out", required=True, help="output folder for sample_XXX.png and grid.png")
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--scheduler", choices=["ddim", "plms"], default="ddim")
    g.add_argument("--guidance", type=float, default=2.0, help="CFG scale s in eps_u + s (eps_c - eps_u)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast dtype of the UNet + Summarizer (default fp32; the official samples used fp16 "
                        "on GPU); bf16 also autocasts on CPU; the VQ decode stays fp32")
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

    if args.n < 1:
        raise ValueError("--n must be at least 1")
    model = load_model_from_args(args).to(resolve_device(args.device))
    mag = _mag_arg(args.mag)
    k = int(model.mag_index(mag, 1)[0])
    if args.ssl:
        grid = load_ssl_grid(args.ssl, model.ssl_dim)
    else:
        from PIL import Image

        from zoomfeat.encoders import create_encoder

        enc = create_encoder(args.encoder, weights=args.encoder_weights, registry=args.weights_registry)
        if enc.dim != model.ssl_dim:
            raise ValueError(f"encoder {args.encoder} gives {enc.dim}-d tokens; the model expects {model.ssl_dim}")
        image = np.asarray(Image.open(args.image).convert("RGB"))
        grid = ssl_grid_from_image(image, enc, side=2**k)
    t0 = time.time()
    images = generate_patches(
        model, grid, mag, n=args.n, steps=args.steps, scheduler=args.scheduler, guidance_scale=args.guidance,
        seed=args.seed, batch_size=args.batch_size, progress=True, precision=args.precision,
    )
    out = Path(args.out)
    paths = write_patches(images, out)
    save_image_grid(images, out / "grid.png", nrow=grid_nrow(len(images)))
    write_json_atomic(
        out / "generation.json",
        {"model": str(args.model), "ssl": args.ssl, "image": args.image, "mag": model.mag_labels[k], "mag_index": k,
         "n": args.n, "steps": args.steps, "scheduler": args.scheduler, "guidance": args.guidance,
         "seed": args.seed, "precision": args.precision, "seconds": round(time.time() - t0, 2), "files": [p.name for p in paths]},
    )
    print(f"wrote {len(paths)} patches and grid.png to {out}")
    return 0
