"""`zoomfeat predict SLIDES --model MODEL --out DIR`: raw slides → tiles → features (the model's recorded spec) →
predictions, attention heatmaps and, with --labels, external-validation metrics with CIs."""

from __future__ import annotations

import argparse

from zoomfeat.cli.common import add_weights_registry_arg


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
    p.add_argument("--model", required=True, help="model folder (`zoomfeat mil train`) or `mil cv` folder (ensemble)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--labels", default=None, help="labels CSV: external-validation metrics with bootstrap CIs")
    p.add_argument("--weights", default=None, help="encoder weights (default: from the registry); hash-checked")
    p.add_argument("--official-config", default=None,
                   help="zoomldm given as an official .ckpt: its config.yaml (default: the config.yaml beside it)")
    p.add_argument("--ssl-weights", default=None, help="zoomldm: weights of the conditioning SSL encoder")
    add_weights_registry_arg(p)
    p.add_argument("--tiles", default=None, help="reuse a `zoomfeat tile` folder (default: tile into OUT/tiles)")
    p.add_argument("--mpp", type=float, default=None, help="force the level-0 µm/px of every slide")
    p.add_argument("--mpp-csv", default=None, help="CSV slide,mpp overriding slide metadata")
    p.add_argument("--min-tissue", type=float, default=None, help="minimum tissue fraction per 20x tile")
    p.add_argument("--heatmaps", type=int, default=None, help="heatmap PNGs to draw (default: every slide)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap draws for the CIs (default 1000)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for extraction (default 0)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from zoomfeat.cli.mil_deploy import print_metrics
    from zoomfeat.predict import predict_slides

    rep = predict_slides(args.slides, args.model, args.out, weights=args.weights, ssl_weights=args.ssl_weights,
                         registry=args.weights_registry, labels=args.labels, tiles=args.tiles, workers=args.workers,
                         batch_size=args.batch_size, device=args.device, mpp=args.mpp, mpp_csv=args.mpp_csv,
                         min_tissue=args.min_tissue, heatmaps=args.heatmaps, n_boot=args.n_boot,
                         progress=not args.no_progress, official_config=args.official_config)
    rep.report.print()
    if rep.result is not None:
        print(f"predictions: {args.out}/predictions.csv")
        if rep.result.metrics is not None:
            print_metrics(rep.result.metrics)
    return rep.exit_code
