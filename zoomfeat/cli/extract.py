"""`zoomfeat extract`: slides (+ tile coordinates) → one HDF5 feature bag per slide per encoder.

Every option's default lives in a dataclass (:class:`zoomfeat.extract.ExtractConfig` for the cohort, each
registered encoder's options table for the encoder); argparse defaults are ``None`` = "not given", so ``--config``
YAML overrides the dataclass and the command line overrides the YAML. The encoder flags and ``--encoder`` choices
come from the encoder registry (``@register_encoder``).
"""

from __future__ import annotations

import argparse
import dataclasses

from zoomfeat.cli.options import add_config_args, add_fields, add_option_fields, given


def add_encoder_args(p) -> None:
    """--encoder (choices: the registry), the generic encoder flags, then each encoder's own options group."""
    from zoomfeat.encoders import EncoderOptions, encoder_entries
    from zoomfeat.encoders.options import GENERIC

    entries = encoder_entries()
    added: dict = {}
    add_option_fields(p.add_argument_group("encoder"), EncoderOptions, "", added, GENERIC,
                      name={"choices": list(entries)})
    for name, entry in entries.items():
        own = tuple(f.name for f in dataclasses.fields(entry.options) if f.name not in GENERIC)
        if own:
            add_option_fields(p.add_argument_group(f"{name} options"), entry.options, name, added, own)


def register(subparsers, options: bool = True) -> None:
    """The ``extract`` verb. ``options=False`` (another verb runs, or the top-level ``--help``): the verb's name and
    help only — its options come from the encoder registry, whose import loads torch (1.4 s), so other verbs skip it."""
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
    p.set_defaults(func=handler)
    if not options:
        return
    p.add_argument("slides", metavar="SLIDES", help="slide file, folder of slides, or CSV with a 'slide' column")
    add_config_args(p, "configs/extract/zoomldm_brca.yaml (docs/extraction.md: cohort options at the top level, "
                       "the encoder's name and options under 'encoder:')")
    from zoomfeat.extract import ExtractConfig

    add_fields(p, ExtractConfig, skip=("encoder",))  # the encoder: --encoder and its options group below
    add_encoder_args(p)


def config_from_args(args):
    """ExtractConfig: dataclass defaults ← --config YAML ← options given on the command line."""
    from zoomfeat.config import apply_overrides, load_yaml
    from zoomfeat.encoders import encoder_entries
    from zoomfeat.extract import ExtractConfig, load_extract_config

    cohort = {k: v for k, v in given(args, ExtractConfig).items() if k != "encoder"}
    enc_over: dict = {}
    for entry in encoder_entries().values():  # a field named like a cohort flag has no flag of its own
        enc_over.update({k: v for k, v in given(args, entry.options).items() if k not in cohort})
    source = args.config
    if getattr(args, "overrides", None):  # --set key=value (encoder.key=value for the encoder's options)
        source = apply_overrides(load_yaml(args.config) if args.config else {}, args.overrides)
    return load_extract_config(source, cohort, enc_over)


def handler(args) -> int:
    from pathlib import Path

    from zoomfeat.cli.threads import apply_threads
    from zoomfeat.cohort import resolve_slides
    from zoomfeat.encoders import build_from_options
    from zoomfeat.extract import extract_cohort

    cfg = config_from_args(args)
    if not cfg.out:
        raise ValueError("--out is required (on the command line or in --config)")
    slides = resolve_slides(args.slides)
    if not slides:
        raise FileNotFoundError(f"no slides found in {args.slides}")
    if cfg.tiles is not None and not Path(cfg.tiles).is_dir():
        raise FileNotFoundError(f"--tiles folder not found: {cfg.tiles}")
    if cfg.mpp_csv is not None and not Path(cfg.mpp_csv).is_file():
        raise FileNotFoundError(f"--mpp-csv file not found: {cfg.mpp_csv}")
    # --threads / workers may come from --config: the one rule (threads × workers ≤ cores) applied to them
    apply_threads(argparse.Namespace(threads=cfg.threads, workers=cfg.workers))
    encoder = build_from_options(cfg.encoder)  # a missing weights file fails here, before any slide is touched
    if cfg.compile or cfg.channels_last:
        from zoomfeat.encoders.optimize import optimize_encoder

        mode = None if cfg.compile_mode in (None, "default") else cfg.compile_mode
        optimize_encoder(encoder, compile=cfg.compile_backend if cfg.compile else False,
                         channels_last=cfg.channels_last, mode=mode)
    report = extract_cohort(slides, encoder, cfg.out, tiles_dir=cfg.tiles, opts=cfg)
    report.print()
    return report.exit_code
