"""`zoomfeat predict SLIDES --model MODEL --out DIR`: raw slides → tiles → features (the model's recorded spec) →
predictions, attention heatmaps and, with --labels, external-validation metrics with CIs."""

from __future__ import annotations

import argparse

from zoomfeat.cli.common import WEIGHTS_REGISTRY_HELP
from zoomfeat.cli.options import add_config_args, add_fields, options_from_args
from zoomfeat.predict_options import PredictConfig


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="apply a trained model to raw slides in one command (tile → extract → predict)",
        description="Tiles SLIDES at the model's recorded µm/px, extracts features with exactly the encoder and "
                    "recipe the model records (weights from --weights or the registry, checked against the "
                    "recorded sha256), predicts, and writes OUT/predictions.csv, attention/, heatmaps/, "
                    "summary.csv (+ metrics.csv/.md and roc.png or km.png with --labels). Finished slides are "
                    "skipped on a rerun. Exit codes: 0 all predicted, 3 some slides failed, 2 none predicted or "
                    "bad arguments (a model whose encoder cannot be rebuilt exactly is refused).")
    p.add_argument("slides", metavar="SLIDES", help="slide file, folder of slides, or CSV with a 'slide' column")
    add_config_args(p)
    add_fields(p, PredictConfig, weights_registry={"help": WEIGHTS_REGISTRY_HELP})
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from zoomfeat.cli.mil_deploy import print_metrics
    from zoomfeat.predict import predict_slides

    cfg = options_from_args(PredictConfig, args)
    rep = predict_slides(args.slides, cfg)
    rep.report.print()
    if rep.result is not None:
        print(f"predictions: {cfg.out}/predictions.csv")
        if rep.result.metrics is not None:
            print_metrics(rep.result.metrics)
    return rep.exit_code
