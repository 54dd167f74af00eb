"""`zoomfeat mil cv` (cross-validate one head on one bag folder), `mil train` / `mil predict` (final model, apply it;
see zoomfeat/cli/mil_deploy.py) and `zoomfeat compare` (encoders × tasks)."""

from __future__ import annotations

import argparse

from zoomfeat.cli.common import add_jobs_option
from zoomfeat.cli.mil_deploy import cv_thumbnails, register_deploy


def register(subparsers) -> None:
    p = subparsers.add_parser("mil", help="MIL heads on feature bags (cv, train, predict)",
                              description="Train and evaluate ABMIL / TransMIL heads on feature bags.")
    sub = p.add_subparsers(dest="mil_verb", metavar="SUBVERB")
    sub.required = True
    cv = sub.add_parser("cv", help="patient-level k-fold CV of one head on one bag folder",
                        description="Writes splits.csv, fold_metrics.csv, predictions.csv, summary.{csv,md}, "
                                    "roc.png or km.png, attention/{slide}.csv and heatmaps/{slide}.png.")
    cv.add_argument("--config", required=True, help="YAML config (e.g. configs/mil/abmil_subtype.yaml)")
    cv.add_argument("--out", default=None, help="output folder (default: config 'out' or runs/mil/<config name>)")
    cv.add_argument("overrides", nargs="*", help="key=value overrides, e.g. bags=out/features_zoomldm hparams.lr=1e-4")
    add_jobs_option(cv)
    cv.set_defaults(func=_cv)
    register_deploy(sub)

    sp = sub.add_parser("splits", help="convert split tables to / from Patho-Bench's TSV layout",
                        description="--to-pathobench: our splits CSV (e.g. a compare run's splits_subtype.csv) → "
                                    "Patho-Bench TSV (case_id, slide_id, labels, fold_0…). --from-pathobench: the "
                                    "reverse (use the CSV as `splits` of mil cv, or `splits: {task: file.tsv}` in "
                                    "compare).")
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--to-pathobench", metavar="SPLITS_CSV", default=None)
    g.add_argument("--from-pathobench", metavar="TSV", default=None)
    sp.add_argument("--out", required=True, help="output TSV (to) or CSV (from)")
    sp.add_argument("--labels", default=None, help="labels CSV supplying the label columns (to-pathobench)")
    sp.add_argument("--label-columns", default="", help="comma-separated label columns to include, e.g. subtype")
    sp.add_argument("--keep-val", action="store_true", help="write validation slides as 'val' (default: 'train')")
    sp.set_defaults(func=_splits)

    c = subparsers.add_parser("compare", help="same splits over several bag folders × tasks → table + plot",
                              description="Cross-validate every encoder entry × framework on every task with "
                                          "shared repeated patient-level splits (n_repeats × n_folds); paired "
                                          "statistics against a reference row; writes compare.md, compare.csv, "
                                          "compare_folds.csv, compare.png, compare_forest.png.")
    c.add_argument("--config", required=True, help="YAML config (e.g. configs/mil/compare.yaml)")
    c.add_argument("--out", default=None, help="output folder")
    c.add_argument("--labels", default=None, help="labels CSV (slide, patient, subtype, hrd, time, event)")
    c.add_argument("--bags", action="append", default=None, metavar="[NAME=]FOLDER[:MAG]",
                   help="an encoder entry (repeatable; replaces the config's list), e.g. "
                        "zoomldm-20x+5x=out/features_zoomldm:20x+5x")
    c.add_argument("--tasks", default=None, help="comma-separated task names (subtype,hrd,survival)")
    c.add_argument("--frameworks", default=None,
                   help="comma-separated registered heads: linear (mean-pooled linear probe), abmil, transmil, twobranch, "
                        "or your own @register_head (default: config "
                        "'frameworks', else 'model')")
    c.add_argument("--reference", default=None, metavar="NAME[/FRAMEWORK]",
                   help="row the others are compared with (paired Δ, CI, Holm p); default: the first encoder entry")
    c.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model=transmil n_folds=3")
    add_jobs_option(c)
    c.set_defaults(func=_compare)


def load_mil_config(args: argparse.Namespace, schema: type):
    """``--config`` ← ``key=value`` overrides on ``schema``'s defaults, and the output folder (``--out``, the
    config's ``out``, or runs/mil/<config name>)."""
    from pathlib import Path

    from zoomfeat.config import load_config

    cfg = load_config(schema, args.config, args.overrides)
    out = args.out or cfg.out or str(Path("runs") / "mil" / Path(args.config).stem)
    return cfg, out


def _cv(args: argparse.Namespace) -> int:
    from mil.cv import CVConfig, run_cv

    cfg, out = load_mil_config(args, CVConfig)
    res = run_cv(cfg, out, thumbnails=cv_thumbnails(cfg), jobs=args.jobs)
    print(res.summary.to_string(index=False))
    print(f"wrote {out} ({len(res.predictions)} slides, {len(res.skipped)} skipped)")
    return 0


def _splits(args: argparse.Namespace) -> int:
    import pandas as pd

    from mil.pathobench import read_pathobench, write_pathobench
    from mil.splits import load_splits, save_splits

    if args.from_pathobench:
        df = read_pathobench(args.from_pathobench)
        save_splits(df, args.out)
    else:
        df = load_splits(args.to_pathobench)
        labels = pd.read_csv(args.labels, dtype={"slide": str}) if args.labels else None
        cols = [c.strip() for c in args.label_columns.split(",") if c.strip()]
        write_pathobench(df, args.out, labels, cols, keep_val=args.keep_val)
    print(f"wrote {args.out} ({df['slide'].nunique()} slides, {df['fold'].nunique()} folds, "
          f"{df['repeat'].nunique()} repeat(s))")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from zoomfeat.jobs import warm_workers

    warm_workers(["mil.compare"], args.jobs)  # the pool's workers import torch & co. while this process does
    from mil.compare import CompareConfig, compare

    cfg, out = load_mil_config(args, CompareConfig)
    if args.labels:
        cfg.labels = args.labels
    if args.bags:
        cfg.encoders = list(args.bags)
    if args.tasks:
        cfg.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.frameworks:
        cfg.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if args.reference:
        cfg.reference = args.reference
    table = compare(cfg, out, jobs=args.jobs)
    from mil.compare import PRIMARY, verdict

    prim = table[table["metric"].isin(PRIMARY)]
    print(prim[["encoder", "framework", "task", "metric", "mean", "ci_low", "ci_high", "delta", "p_adj",
                "outcome"]].to_string(index=False))
    print(verdict(table))
    print(f"wrote {out}/compare.md, compare.csv, compare_folds.csv, compare.png, compare_forest.png")
    return 0
