"""`zoomfeat build-dataset` and `zoomfeat train`: build a multi-scale ZoomLDM training set, then train on it."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoomfeat.cli.common import add_model_args, add_weights_registry_arg
from zoomfeat.train.config import BuildConfig


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "build-dataset",
        help="build a multi-scale ZoomLDM training set (SSL grids + VQ latents, sharded HDF5)",
        description=(
            "For every slide and scale k=0..7: regions of 256*2^k px at 20x resized to --patch-px, their SSL grid "
            "(2^k x 2^k embeddings of the 20x tiles, computed once per slide, pooled to 8x8 above that) and the "
            "VQ-f4 pre-quantisation latent. Resumable: slides whose shard exists are skipped."
        ),
    )
    p.add_argument("slides", metavar="SLIDES", help="slide folder, slide file or CSV with a 'slide' column")
    p.add_argument("--out", required=True, help="dataset folder (shards/, index.csv, meta.json)")
    p.add_argument("--ssl-encoder", required=True, help="SSL tile encoder name (uni, phikon, tiny-vit, custom, ...)")
    p.add_argument("--ssl-weights", default=None, help="weights file of the SSL encoder (default: weights registry)")
    add_weights_registry_arg(p)
    p.add_argument("--ssl-dim", type=int, default=None, help="output width (tiny-vit only; default: the model's ssl dim)")
    add_model_args(p, required=False, help="ZoomLDM whose VQ encodes the latents: a folder (zoomfeat convert / "
                                           "train) or an official weights.ckpt")
    p.add_argument("--official", default=None, metavar="CKPT", help=argparse.SUPPRESS)  # old spelling of --model CKPT
    p.add_argument("--ldm-config", default=None,
                   help="instead of --model: our ZoomLDM YAML, random-init VQ from --seed (tests, from-scratch)")
    p.add_argument("--patch-px", type=int, default=None, help="patch side after resizing (default: the model's image size, 256 full size)")
    p.add_argument("--ssl-px", type=int, default=BuildConfig.ssl_px, help="pixels at which each 20x tile is read for the SSL encoder")
    p.add_argument("--scales", default="all", help="scales to build: 'all' or e.g. '0,1,2' / '20x,5x'")
    p.add_argument("--pool-to", type=int, default=BuildConfig.pool_to, help="average-pool SSL grids wider than this (0: store full grids)")
    p.add_argument("--max-per-scale", type=int, default=None, help="cap patches per slide and scale (random, seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=BuildConfig.batch_size)
    p.add_argument("--mpp", type=float, default=None, help="override the slides' level-0 µm/px")
    p.add_argument("--mpp-csv", default=None, help="CSV slide,mpp for slides without resolution metadata")
    p.add_argument("--device", default="auto", help="auto (this rank's GPU if any, else CPU), cuda, cpu, ...")
    p.set_defaults(func=build_dataset_cmd)

    t = subparsers.add_parser(
        "train",
        help="train or fine-tune ZoomLDM (UNet + Summarizer, VQ frozen); resumable, multi-GPU via torchrun/accelerate",
        description=(
            "Train per a YAML config (configs/train/*.yaml). Writes DIR/metrics.csv, DIR/checkpoints/step_N, "
            "DIR/samples/ and the final EMA model DIR/model (loadable by extraction and generation). "
            "Multi-process: torchrun --nproc_per_node N -m zoomfeat train ..."
        ),
    )
    t.add_argument("--config", required=True, help="training YAML (e.g. configs/train/tiny.yaml)")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set train.lr=1e-4 (repeatable)")
    add_model_args(t, required=False, help="start from this ZoomLDM instead of the config's model section: a folder "
                                           "(model.init: pretrained) or an official weights.ckpt (model.init: official)")
    t.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None,
                   help="mixed precision (overrides train.mixed_precision; auto: bf16/fp16 on GPU, fp32 on CPU; "
                        "bf16 also autocasts on CPU; the VQ is frozen and not part of a step)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=train_cmd)


def _scales(spec: str) -> list[int]:
    from zoomfeat.mags import N_SCALES, mag_to_index

    if spec.strip().lower() == "all":
        return list(range(N_SCALES))
    return sorted({mag_to_index(int(s) if s.strip().isdigit() else s) for s in spec.split(",") if s.strip()})


def _build_model(args: argparse.Namespace):
    """The ZoomLDM of ``build-dataset``: ``--model`` (or its old spelling ``--official``), else ``--ldm-config``
    (random init seeded by ``--seed``), made by :func:`zoomfeat.train.loop.make_model` like ``train``'s."""
    from zoomfeat.train.loop import make_model

    sources = [flag for flag, v in (("--model", args.model), ("--official", args.official),
                                    ("--ldm-config", args.ldm_config)) if v]
    if len(sources) != 1:
        raise ValueError("give exactly one model: --model PATH (a ZoomLDM folder or official weights.ckpt) or "
                         f"--ldm-config YAML (got {', '.join(sources) or 'none'})")
    if args.ldm_config:
        return make_model({"seed": args.seed, "model": {"init": "config", "config": args.ldm_config}})
    args.model = args.model or args.official
    return make_model({"model": _model_section(args)})


def build_dataset_cmd(args: argparse.Namespace) -> int:
    from zoomfeat.encoders import create_encoder
    from zoomfeat.precision import resolve_device
    from zoomfeat.train.shards import build_dataset

    device = resolve_device(args.device)
    ldm = _build_model(args).to(device).eval()
    kw = {}
    if args.ssl_encoder == "tiny-vit":
        kw = {"dim": args.ssl_dim or ldm.ssl_dim, "seed": args.seed}
    encoder = create_encoder(args.ssl_encoder, weights=args.ssl_weights, registry=args.weights_registry,
                             **kw).to(device)
    if encoder.dim != ldm.ssl_dim:
        raise ValueError(f"SSL encoder {encoder.name} gives {encoder.dim}-d embeddings but the model's Summarizer "
                         f"expects {ldm.ssl_dim}")
    report = build_dataset(
        args.slides, args.out, encoder, ldm.vq, patch_px=args.patch_px or ldm.image_size, ssl_px=args.ssl_px,
        scales=_scales(args.scales), pool_to=args.pool_to, max_per_scale=args.max_per_scale, seed=args.seed,
        batch_size=args.batch_size, mpp=args.mpp, mpp_csv=args.mpp_csv,
    )
    report.print()
    print(f"dataset: {Path(args.out) / 'index.csv'}")
    return report.exit_code


def _model_section(args: argparse.Namespace) -> dict:
    """``--model`` (+ ``--official-config``, ``--online``) as the config's ``model`` section."""
    path = Path(args.model).absolute()  # the saved config.yaml must work from any folder
    if path.is_dir():
        return {"init": "pretrained", "path": str(path)}
    config = str(Path(args.official_config).absolute()) if args.official_config else None
    return {"init": "official", "ckpt": str(path), "official_config": config, "ema": not args.online}


def train_cmd(args: argparse.Namespace) -> int:
    from zoomfeat.train.config import load_train_config
    from zoomfeat.train.loop import train

    overrides = list(args.overrides)
    if getattr(args, "precision", None):
        overrides.append(f"train.mixed_precision={args.precision}")
    cfg = load_train_config(args.config, overrides)
    if args.model:
        cfg["model"].update(_model_section(args))
    summary = train(cfg, args.out, max_steps=args.max_steps, resume=args.resume, progress=not args.no_progress)
    if "last_loss" in summary:
        print(f"trained to step {summary['steps']} (loss {summary['last_loss']:.4f}); model: {summary['model']}")
    return 0
