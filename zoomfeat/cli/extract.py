"""`zoomfeat extract`: slides (+ tile coordinates) → one HDF5 feature bag per slide per encoder."""

from __future__ import annotations

import argparse

ENCODERS = ("zoomldm", "uni", "phikon", "tiny-vit", "custom")


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _track_explicit(action: argparse.Action) -> None:
    """Record options given on the command line (in ``namespace._explicit``) so --config never overrides them."""
    base = type(action)

    class Tracked(base):  # type: ignore[misc, valid-type]
        def __call__(self, parser, namespace, values, option_string=None):
            explicit = set(getattr(namespace, "_explicit", set()))
            explicit.add(self.dest)
            namespace._explicit = explicit
            super().__call__(parser, namespace, values, option_string)

    action.__class__ = Tracked


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract",
        help="extract tile features (ZoomLDM, UNI, Phikon, …) into HDF5 bags",
        description=(
            "Extract 20x tile features and 5x parent-region features for every slide into "
            "OUT/features_{encoder}/{slide}.h5 (CLAM/TRIDENT-readable). Completed slides are skipped, a killed run "
            "resumes, failures are listed in OUT/features_{encoder}/summary.csv. Under torchrun, slides are split "
            "by rank (one GPU each) and the last rank to finish merges the per-rank summaries."
        ),
    )
    p.add_argument("slides", metavar="SLIDES", help="slide file, folder of slides, or CSV with a 'slide' column")
    p.add_argument("--config", default=None,
                   help="YAML of options (keys = long option names, e.g. configs/extract/zoomldm_brca.yaml); "
                        "options given on the command line win")
    p.add_argument("--encoder", default=None, choices=ENCODERS, help="required (here or in --config)")
    p.add_argument("--out", default=None, help="output folder (bags go to OUT/features_{encoder}/); required")
    p.add_argument("--tiles", default=None, help="folder written by `zoomfeat tile` (default: tile on the fly "
                                                  "into OUT/_tiles)")
    p.add_argument("--weights", default=None, help="encoder weights (file or folder); default: from the registry")
    p.add_argument("--weights-registry", default=None,
                   help="YAML/JSON encoder → path registry (default configs/encoders/weights.yaml or "
                        "$ZOOMFEAT_WEIGHTS_REGISTRY)")
    p.add_argument("--mags", default="20x,5x", help="'20x' or '20x,5x' (default: both)")
    g = p.add_argument_group("zoomldm options")
    g.add_argument("--conditioning", choices=("uni", "none"), default="uni",
                   help="uni (default): the tile's SSL embedding (20x: 1×1, 5x: 4×4 children grid); none: null context")
    g.add_argument("--ssl-encoder", default="uni", choices=("uni", "tiny-vit", "phikon"),
                   help="SSL encoder for conditioning (default uni; tiny-vit for the tiny test model)")
    g.add_argument("--ssl-weights", default=None, help="weights of the SSL encoder (default: from the registry)")
    g.add_argument("--blocks", type=_int_list, default=[0],
                   help="UNet blocks to pool (default 0): 0 = middle block, 1..12 = decoder blocks; several are concatenated")
    g.add_argument("--t", type=_int_list, default=[100], help="noise timestep(s) (default 100); several are concatenated")
    g.add_argument("--seed", type=int, default=0, help="base seed of the per-tile noise (default 0)")
    g.add_argument("--missing-children", choices=("embed", "mean"), default="embed",
                   help="5x conditioning: embed background children too (training-faithful) or use the mean of "
                        "the region's tissue children (no extra SSL forwards); default embed")
    p.add_argument("--batch-size", type=int, default=16, help="tiles per forward (default 16)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, each with its own slide handle (default 2)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="process share K of N (0-based) of the slide list, the same round-robin split as torchrun "
                        "ranks: one SLURM array task each, e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
    p.add_argument("--device", default="auto", help="auto (this rank's GPU if any, else cpu), cpu, cuda, cuda:1 …")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                   help="autocast dtype (default per encoder: zoomldm/uni fp16, phikon fp32); bf16 also autocasts "
                        "on CPU, fp16 runs as fp32 there; the ZoomLDM VQ always runs in fp32 (docs/gpu.md)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the encoder; features are unchanged, the first batches pay the compile time")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (default inductor; aot_eager traces the same graphs without code "
                        "generation, a quick check on CPUs)")
    p.add_argument("--compile-mode", default=None, choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode for inductor (default: default)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last weights for the conv nets (ZoomLDM VQ + UNet); features are unchanged")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (CPU runs on a busy machine are often faster with 1)")
    p.add_argument("--mpp", type=float, default=None, help="force the level-0 µm/px of every slide")
    p.add_argument("--mpp-csv", default=None, help="CSV slide,mpp overriding slide metadata")
    p.add_argument("--tag", default=None, help="name of the features_{tag} folder (default: encoder name)")
    p.add_argument("--custom-model", default=None, help="custom encoder: 'package.module:factory'")
    p.add_argument("--clam-pt", action="store_true", help="also write CLAM pt_files/{slide}.pt")
    p.add_argument("--random-init", action="store_true",
                   help="uni/phikon without weights (random features; for tests and timing only)")
    p.add_argument("--no-progress", action="store_true")
    for action in p._actions:
        if action.option_strings and action.dest != "help":
            _track_explicit(action)
    p.set_defaults(func=handler, _defaults={a.dest: a.default for a in p._actions if a.dest != "help"})


def build_encoder_from_args(args):
    """Build the encoder first, so a missing weights file fails before any slide is touched."""
    from zoomfeat.encoders import create_encoder

    kw: dict = {"registry": args.weights_registry}
    if args.precision:
        kw["precision"] = args.precision
        if args.encoder == "zoomldm":
            kw["ssl_kwargs"] = {"precision": args.precision}
    if args.encoder == "zoomldm":
        kw.update(blocks=args.blocks, t=args.t, conditioning=args.conditioning, base_seed=args.seed)
        if args.conditioning == "uni":
            kw.update(ssl_encoder=args.ssl_encoder, ssl_weights=args.ssl_weights)
            if args.random_init and args.ssl_encoder in ("uni", "phikon"):
                kw["ssl_kwargs"] = {**kw.get("ssl_kwargs", {}), "random_init": True}
    elif args.encoder in ("uni", "phikon"):
        kw["random_init"] = bool(args.random_init and args.weights is None)
    elif args.encoder == "custom":
        if not args.custom_model:
            raise ValueError("--encoder custom needs --custom-model package.module:factory")
        kw["model"] = args.custom_model
    elif args.encoder == "tiny-vit":
        kw["seed"] = args.seed
    return create_encoder(args.encoder, weights=args.weights, **kw)


def apply_config(args) -> None:
    """Fill options left at their defaults from ``--config`` (YAML keys = long option names)."""
    if not args.config:
        return
    from zoomfeat.config import load_yaml

    defaults = args._defaults
    for key, value in load_yaml(args.config).items():
        dest = str(key).replace("-", "_")
        if dest in ("slides", "config", "func", "_defaults") or dest not in defaults:
            raise ValueError(f"{args.config}: unknown extract option {key!r}")
        if dest not in getattr(args, "_explicit", set()):
            if dest in ("blocks", "t") and not isinstance(value, list):
                value = _int_list(str(value))
            setattr(args, dest, value)


def handler(args) -> int:
    from zoomfeat.cohort import resolve_slides
    from zoomfeat.extract import ExtractOptions, extract_cohort

    apply_config(args)
    if not args.encoder or not args.out:
        raise ValueError("--encoder and --out are required (on the command line or in --config)")
    if args.encoder not in ENCODERS:
        raise ValueError(f"--encoder must be one of {', '.join(ENCODERS)}, got {args.encoder!r}")
    opts = ExtractOptions(mags=args.mags, batch_size=args.batch_size, workers=args.workers, device=args.device,
                          tag=args.tag, mpp=args.mpp, mpp_csv=args.mpp_csv, clam_pt=args.clam_pt,
                          missing_children=args.missing_children, shard=args.shard,
                          progress=not args.no_progress)
    from pathlib import Path

    slides = resolve_slides(args.slides)
    if not slides:
        raise FileNotFoundError(f"no slides found in {args.slides}")
    if args.tiles is not None and not Path(args.tiles).is_dir():
        raise FileNotFoundError(f"--tiles folder not found: {args.tiles}")
    if args.mpp_csv is not None and not Path(args.mpp_csv).is_file():
        raise FileNotFoundError(f"--mpp-csv file not found: {args.mpp_csv}")
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    encoder = build_encoder_from_args(args)
    if args.compile or args.channels_last:
        from zoomfeat.encoders.optimize import optimize_encoder

        mode = None if args.compile_mode in (None, "default") else args.compile_mode
        backend = args.compile_backend if args.compile else False
        optimize_encoder(encoder, compile=backend, channels_last=args.channels_last, mode=mode)
    report = extract_cohort(slides, encoder, args.out, tiles_dir=args.tiles, opts=opts)
    report.print()
    return report.exit_code
