"""`zoomfeat build-dataset` and `zoomfeat train`: build a multi-scale ZoomLDM training set, then train on it."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoomfeat.cli.common import WEIGHTS_REGISTRY_HELP, add_model_args
from zoomfeat.cli.options import add_config_args, add_fields, options_from_args, require
from zoomfeat.train.config import BuildDatasetConfig


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
    add_config_args(p)
    add_fields(p, BuildDatasetConfig, weights_registry={"help": WEIGHTS_REGISTRY_HELP})
    p.add_argument("--official", default=None, metavar="CKPT", help=argparse.SUPPRESS)  # old spelling of --model CKPT
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
    t.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                   help="config override, e.g. --set train.lr=1e-4 (repeatable)")
    add_model_args(t, required=False, help="start from this ZoomLDM instead of the config's model section: a folder "
                                           "(model.init: pretrained) or an official weights.ckpt (model.init: official)")
    t.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None,
                   help="mixed precision (overrides train.mixed_precision; auto: bf16/fp16 on GPU, fp32 on CPU; "
                        "bf16 also autocasts on CPU; the VQ is frozen and not part of a step)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=train_cmd)


def _build_model(cfg: BuildDatasetConfig, official: str | None):
    """The ZoomLDM of ``build-dataset``: ``--model`` (or its old spelling ``--official``), else ``--ldm-config``
    (random init seeded by ``--seed``), made by :func:`zoomfeat.train.loop.make_model` like ``train``'s."""
    from zoomfeat.train.loop import make_model

    sources = [flag for flag, v in (("--model", cfg.model), ("--official", official),
                                    ("--ldm-config", cfg.ldm_config)) if v]
    if len(sources) != 1:
        raise ValueError("give exactly one model: --model PATH (a ZoomLDM folder or official weights.ckpt) or "
                         f"--ldm-config YAML (got {', '.join(sources) or 'none'})")
    if cfg.ldm_config:
        return make_model({"seed": cfg.seed, "model": {"init": "config", "config": cfg.ldm_config}})
    return make_model({"model": _model_section(cfg.model or official, cfg.official_config, cfg.ema)})


def build_dataset_cmd(args: argparse.Namespace) -> int:
    from zoomfeat.encoders import create_encoder
    from zoomfeat.precision import resolve_device
    from zoomfeat.train.shards import build_dataset

    cfg = options_from_args(BuildDatasetConfig, args)
    require(cfg, "out", "ssl_encoder")
    device = resolve_device(cfg.device)
    ldm = _build_model(cfg, args.official).to(device).eval()
    kw = {}
    if cfg.ssl_encoder == "tiny-vit":
        kw = {"dim": cfg.ssl_dim or ldm.ssl_dim, "seed": cfg.seed}
    encoder = create_encoder(cfg.ssl_encoder, weights=cfg.ssl_weights, registry=cfg.weights_registry,
                             **kw).to(device)
    if encoder.dim != ldm.ssl_dim:
        raise ValueError(f"SSL encoder {encoder.name} gives {encoder.dim}-d embeddings but the model's Summarizer "
                         f"expects {ldm.ssl_dim}")
    report = build_dataset(args.slides, cfg.out, encoder, ldm.vq, cfg.shard_config(ldm.image_size),
                           progress=cfg.progress)
    report.print()
    print(f"dataset: {Path(cfg.out) / 'index.csv'}")
    return report.exit_code


def _model_section(model: str, official_config: str | None = None, ema: bool = True) -> dict:
    """``--model`` (+ ``--official-config``, ``--online``) as the config's ``model`` section."""
    path = Path(model).absolute()  # the saved config.yaml must work from any folder
    if path.is_dir():
        return {"init": "pretrained", "path": str(path)}
    config = str(Path(official_config).absolute()) if official_config else None
    return {"init": "official", "ckpt": str(path), "official_config": config, "ema": ema}


def train_cmd(args: argparse.Namespace) -> int:
    from zoomfeat.train.config import load_train_config
    from zoomfeat.train.loop import train

    overrides = list(args.overrides or [])
    if getattr(args, "precision", None):
        overrides.append(f"train.mixed_precision={args.precision}")
    cfg = load_train_config(args.config, overrides)
    if args.model:
        cfg["model"].update(_model_section(args.model, args.official_config, not args.online))
    summary = train(cfg, args.out, max_steps=args.max_steps, resume=args.resume, progress=not args.no_progress)
    if "last_loss" in summary:
        print(f"trained to step {summary['steps']} (loss {summary['last_loss']:.4f}); model: {summary['model']}")
    return 0
