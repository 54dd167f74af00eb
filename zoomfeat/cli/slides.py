"""`zoomfeat tile` and `zoomfeat synth-cohort`: the slides stage on the command line (logic in zoomfeat.slides)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tile",
        help="tissue detection + linked 20x/5x (or all 8 scales) tile grids → coordinate HDF5 per slide",
        description=(
            "Tile whole-slide images into 256-px 20x tiles linked to their 5x parents. Writes "
            "DIR/coords/{slide}.h5 (TRIDENT + CLAM attributes), DIR/qc/{slide}.png, DIR/geojson/{slide}.geojson "
            "and DIR/summary.csv|json. Slides already done are skipped. Exit codes: 0 all done/skipped, "
            "3 some slides failed, 2 every slide failed (or none found)."
        ),
    )
    p.add_argument("slides", help="a slide file, a folder of slides, or a CSV with a 'slide' column")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mpp-csv", default=None, help="per-slide resolution override: CSV with columns slide,mpp")
    p.add_argument("--mpp", type=float, default=None, help="level-0 µm/px for every slide (overrides metadata)")
    p.add_argument("--scales", default=None, help="'20x,5x' (default) or 'all' (the 8 ZoomLDM scales)")
    p.add_argument("--min-tissue", type=float, default=None, help="minimum tissue fraction per 20x tile")
    p.add_argument("--target-mpp", type=float, default=None, help="µm/px of the 20x tiles (default: base mpp)")
    p.add_argument("--base-mpp", type=float, default=None, help="µm/px that defines 20x (default 0.5)")
    p.add_argument("--workers", type=int, default=None, help="slide-level worker processes")
    p.add_argument("--config", default=None,
                   help="YAML overriding the defaults (keys: base_mpp, target_mpp, patch_px, scales, min_tissue, "
                        "thumb_mpp, qc, workers; e.g. configs/tiling.yaml); flags given here win")
    p.add_argument("--no-qc", action="store_true", help="skip the QC PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_tile)

    s = subparsers.add_parser(
        "synth-cohort",
        help="write a synthetic pyramidal-TIFF cohort with subtype / HRD / survival / architecture labels",
        description="Write DIR/slides/*.tiff (Aperio-style JPEG pyramids, 20x and some 40x) and DIR/labels.csv.",
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--n-slides", type=int, default=24)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--sizes", default=None,
                   help="comma-separated slide sides in 20x px to draw from (default 2048,2304,2560,2816,3072)")
    s.set_defaults(func=_synth)


def _tile(args: argparse.Namespace) -> int:
    from zoomfeat.config import from_dict, load_config
    from zoomfeat.slides.tiling import TilingConfig, tile_cohort

    cfg = load_config(TilingConfig, args.config)
    flags = {k: getattr(args, k) for k in ("workers", "min_tissue", "scales", "target_mpp", "base_mpp")}
    cfg = from_dict(TilingConfig, {k: v for k, v in flags.items() if v is not None}, "command line", base=cfg)
    kw = cfg.tile_kwargs()
    kw["qc"] = kw["qc"] and not args.no_qc
    report = tile_cohort(args.slides, args.out, workers=int(cfg.workers), progress=not args.no_progress,
                         mpp=args.mpp, mpp_csv=args.mpp_csv, **kw)
    report.print()
    print(f"summary: {args.out}/summary.csv")
    return report.exit_code


def _synth(args: argparse.Namespace) -> int:
    from zoomfeat.slides.synthetic import make_cohort

    kw = {"sizes_20x": tuple(int(v) for v in args.sizes.split(",") if v.strip())} if args.sizes else {}
    labels = make_cohort(args.out, n_slides=args.n_slides, seed=args.seed, workers=args.workers, **kw)
    print(f"labels: {labels}")
    return 0
