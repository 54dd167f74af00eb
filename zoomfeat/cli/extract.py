"""`zoomfeat extract`: slides (+ tile coordinates) → one HDF5 feature bag per slide per encoder.

Every option's default lives in a dataclass (:class:`zoomfeat.extract.ExtractConfig` for the cohort, each
registered encoder's options table for the encoder); argparse defaults are ``None`` = "not given", so ``--config``
YAML overrides the dataclass and the command line overrides the YAML. The encoder flags and ``--encoder`` choices
come from the encoder registry (``@register_encoder``).
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings


def _default(schema: type, name: str):
    f = {f.name: f for f in dataclasses.fields(schema)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _with_default(help: str, default) -> str:
    return help if default is None or default is False or default in ("", [], ()) else \
        f"{help} (default: {_show(default)})"


def _cohort(p, flag: str, help: str, dest: str | None = None, **kw) -> None:
    """A cohort option whose default (shown in --help) comes from ExtractConfig."""
    from zoomfeat.extract import ExtractConfig

    dest = dest or flag[2:].replace("-", "_")
    switch = kw.get("action") in ("store_true", "store_false")
    p.add_argument(flag, dest=dest, default=None, help=help if switch else _with_default(
        help, _default(ExtractConfig, dest)), **kw)


def add_option_fields(group, schema: type, owner: str, added: dict, names: tuple[str, ...], **extra) -> None:
    """One flag per field ``names`` of an options dataclass (metadata: help, flag, type, choices). ``added``: flag
    → (action, [(owner, help)]); a flag several encoders share (e.g. --seed) lists each one's help."""
    for f in dataclasses.fields(schema):
        if f.name not in names:
            continue
        meta = dict(f.metadata)
        flag, help = meta.pop("flag", "--" + f.name.replace("_", "-")), meta.pop("help", "")
        default = _default(schema, f.name)
        help = _with_default(help, default)
        if flag in added:
            action, helps = added[flag]
            same = [i for i, (_, h) in enumerate(helps) if h == help]
            if same:
                helps[same[0]] = (f"{helps[same[0]][0]}, {owner}", help)
            else:
                helps.append((owner, help))
            action.help = "; ".join(f"{o}: {h}" for o, h in helps)
            continue
        kw = {"action": "store_true"} if isinstance(default, bool) else {**meta, **extra.get(f.name, {})}
        try:
            added[flag] = (group.add_argument(flag, dest=f.name, default=None, help=help, **kw), [(owner, help)])
        except argparse.ArgumentError:  # a registered encoder must not break every verb's parser
            warnings.warn(f"encoder {owner!r}: option {flag} clashes with an extract option; it is settable in "
                          f"the config's encoder: mapping only (rename the field)", stacklevel=2)


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
    p.add_argument("--config", default=None,
                   help="YAML of options (docs/extraction.md: cohort options at the top level, the encoder's name and "
                        "options under 'encoder:'; e.g. configs/extract/zoomldm_brca.yaml); options given on the "
                        "command line win")
    _cohort(p, "--out", "output folder (bags go to OUT/features_{encoder}/); required")
    _cohort(p, "--tiles", "folder written by `zoomfeat tile` (default: tile on the fly into OUT/_tiles)")
    _cohort(p, "--mags", "'20x' or '20x,5x'")
    _cohort(p, "--missing-children", "5x SSL grids: embed background children too (training-faithful) or use the "
            "mean of the region's tissue children (no extra SSL forwards)", choices=("embed", "mean"))
    _cohort(p, "--batch-size", "tiles per forward", type=int)
    _cohort(p, "--workers", "DataLoader workers, each with its own slide handle", type=int)
    _cohort(p, "--shard", "process share K of N (0-based) of the slide list, the same round-robin split as torchrun "
            "ranks: one SLURM array task each, e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT",
            metavar="K/N")
    _cohort(p, "--device", "auto (this rank's GPU if any, else cpu), cpu, cuda, cuda:1 …")
    _cohort(p, "--compile", "torch.compile the encoder; features are unchanged, the first batches pay the compile "
            "time", action="store_true")
    _cohort(p, "--compile-backend", "torch.compile backend (aot_eager traces the same graphs without code "
            "generation, a quick check on CPUs)")
    _cohort(p, "--compile-mode", "torch.compile mode for inductor (default: default)",
            choices=("default", "reduce-overhead", "max-autotune"))
    _cohort(p, "--channels-last", "channels-last weights for the conv nets (ZoomLDM VQ + UNet); features are "
            "unchanged", action="store_true")
    _cohort(p, "--threads", "torch CPU threads (CPU runs on a busy machine are often faster with 1)", type=int)
    _cohort(p, "--mpp", "force the level-0 µm/px of every slide", type=float)
    _cohort(p, "--mpp-csv", "CSV slide,mpp overriding slide metadata")
    _cohort(p, "--tag", "name of the features_{tag} folder (default: encoder name)")
    _cohort(p, "--clam-pt", "also write CLAM pt_files/{slide}.pt", action="store_true")
    _cohort(p, "--no-progress", "no progress bars", dest="progress", action="store_false")
    add_encoder_args(p)


def _given(args, schema: type) -> dict:
    """The fields of ``schema`` given on the command line (argparse default None = not given)."""
    names = [f.name for f in dataclasses.fields(schema)]
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def config_from_args(args):
    """ExtractConfig: dataclass defaults ← --config YAML ← options given on the command line."""
    from zoomfeat.encoders import encoder_entries
    from zoomfeat.extract import ExtractConfig, load_extract_config

    cohort = {k: v for k, v in _given(args, ExtractConfig).items() if k != "encoder"}
    enc_over: dict = {}
    for entry in encoder_entries().values():  # a field named like a cohort flag has no flag of its own
        enc_over.update({k: v for k, v in _given(args, entry.options).items() if k not in cohort})
    return load_extract_config(args.config, cohort, enc_over)


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
