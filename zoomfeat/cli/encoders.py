"""`zoomfeat encoders [--format md|csv|table]`: the table of every registered encoder (built-ins and plugins)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "encoders", help="list every registered encoder: dim, input, scale, precision, licence, weights source",
        description="Prints one row per registered encoder (built-ins, TRIDENT-parity baselines and plugins): "
                    "name, feature width, model input (resize / crop), the tile scale it is meant for, default "
                    "precision, whether it needs a weights file, licence / access notes and where the weights "
                    "come from (a pointer only: zoomfeat never downloads weights). See docs/encoders.md.")
    p.add_argument("--format", choices=("md", "csv", "table"), default="table",
                   help="md (Markdown table), csv, or table (aligned text; default)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from zoomfeat.encoders.catalog import encoder_rows, format_rows

    print(format_rows(encoder_rows(), args.format), end="")
    return 0
