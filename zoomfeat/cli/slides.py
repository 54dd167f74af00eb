"""`zoomfeat tile` and `zoomfeat synth-cohort`: the slides stage on the command line (logic in zoomfeat.slides)."""

from __future__ import annotations

import argparse

from zoomfeat.cli.options import add_config_args, add_fields, options_from_args

#: The verbs registered here (``build_parser`` builds ``tile``'s options only when it runs).
VERBS = ("tile", "synth-cohort")


def register(subparsers, options: bool = True) -> None:
    """``tile`` and ``synth-cohort``. ``options=False`` (another verb runs): ``tile``'s name and help only — its
    flags come from TilingConfig, whose module imports numpy."""
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
    p.set_defaults(func=_tile)
    if options:
        _tile_options(p)

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


def _tile_options(p) -> None:
    from zoomfeat.slides.tiling import TilingConfig

    p.add_argument("slides", help="a slide file, a folder of slides, or a CSV with a 'slide' column")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mpp-csv", default=None, help="per-slide resolution override: CSV with columns slide,mpp")
    p.add_argument("--mpp", type=float, default=None, help="level-0 µm/px for every slide (overrides metadata)")
    add_config_args(p, "configs/tiling.yaml")
    add_fields(p, TilingConfig)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _tile(args: argparse.Namespace) -> int:
    from zoomfeat.slides.tiling import TilingConfig, tile_cohort

    cfg = options_from_args(TilingConfig, args)
    kw = cfg.tile_kwargs()
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
