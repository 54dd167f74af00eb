"""`zoomfeat mil train` (fit the final head on every labelled slide → model folder) and `zoomfeat mil predict`
(apply a model folder, or the fold models of a CV run, to a bag folder; external validation with labels)."""

from __future__ import annotations

import argparse

from zoomfeat.cli.common import add_jobs_option


def register_deploy(sub) -> None:
    t = sub.add_parser("train", help="fit one head on every labelled slide → self-describing model folder",
                       description="Writes MODEL/model.safetensors, model.json (head, task, classes, feature spec, "
                                   "training cohort, CV estimate), config.yaml, history.csv, training_slides.csv and "
                                   "README.md (model card). Config: a `mil cv` config plus final.strategy "
                                   "(val | epochs) and final.epochs.")
    t.add_argument("--config", required=True, help="YAML config (e.g. configs/mil/abmil_subtype.yaml)")
    t.add_argument("--out", required=True, metavar="MODEL", help="model folder to write")
    t.add_argument("--cv", action="store_true", help="cross-validate first (into MODEL/cv); the estimate goes in the "
                                                     "card, and final.strategy=epochs takes its epoch count from it")
    t.add_argument("--cv-from", default=None, metavar="CVDIR", help="reuse a finished `mil cv` folder instead")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. labels=… bags=… final.strategy=epochs")
    add_jobs_option(t)
    t.set_defaults(func=_train)

    p = sub.add_parser("predict", help="apply a model folder (or a CV run's fold models) to feature bags",
                       description="Writes predictions.csv, attention/{slide}.csv, heatmaps/{slide}.png, skipped.csv; "
                                   "with --labels also metrics.csv/.md (patient-grouped bootstrap 95%% CIs) and "
                                   "roc.png or km.png. Bags of another feature spec are refused (exit 2).")
    p.add_argument("model", nargs="?", default=None, metavar="MODEL", help="model folder from `zoomfeat mil train`")
    p.add_argument("--ensemble", default=None, metavar="CVDIR",
                   help="use the fold models of a `zoomfeat mil cv` folder instead (mean of their outputs)")
    p.add_argument("--bags", required=True, help="bag folder (features_{encoder}/ or its parent)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--labels", default=None, help="labels CSV (slide, patient, target column): external validation")
    p.add_argument("--target", default=None, help="label column (default: the model's target)")
    p.add_argument("--slides", default=None, help="folder of the WSIs: heatmaps over thumbnails")
    p.add_argument("--heatmaps", type=int, default=None, help="heatmap PNGs to draw (default: every slide)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap draws for the CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_predict)


def cv_thumbnails(cfg):
    """The heatmaps' thumbnail provider of a mil config: its ``slides`` folder, else the labels CSV's ``path``."""
    from zoomfeat.names import label_slide_paths
    from zoomfeat.slides.thumbnails import SlideThumbnails

    return SlideThumbnails(cfg.slides, label_slide_paths(cfg.labels))


def _train(args: argparse.Namespace) -> int:
    from mil.final import FinalConfig, train_final
    from zoomfeat.config import load_config

    cfg = load_config(FinalConfig, args.config, args.overrides)
    meta = train_final(cfg, args.out, run_cv=args.cv, cv_from=args.cv_from, thumbnails=cv_thumbnails(cfg),
                       jobs=args.jobs)
    tr = meta["training"]
    print(f"trained {meta['model']['name']} ({meta['task']['name']}, {meta['mag']}) on {tr['n_train']} slides "
          f"({tr['n_val']} for early stopping), best epoch {tr['best_epoch']}; {tr['strategy']}")
    for r in (meta.get("cv") or {}).get("summary", []):
        print(f"  CV {r['metric']}: {r['mean']:.3f} ± {r['std']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
    print(f"wrote {args.out} (model card: {args.out}/README.md)")
    return 0


def print_metrics(metrics) -> None:
    for r in metrics.itertuples():
        print(f"  {r.metric}: {r.value:.3f} (95% CI {r.ci_low:.3f}–{r.ci_high:.3f}; {r.n_slides} slides, "
              f"{r.n_patients} patients)")


def _predict(args: argparse.Namespace) -> int:
    from mil.deploy import load_ensemble
    from mil.predict import run_predict
    from zoomfeat.names import label_slide_paths
    from zoomfeat.slides.thumbnails import SlideThumbnails

    if bool(args.model) == bool(args.ensemble):
        raise ValueError("give either MODEL (a `mil train` folder) or --ensemble CVDIR (a `mil cv` folder)")
    model = load_ensemble(args.ensemble) if args.ensemble else args.model
    thumbs = SlideThumbnails(label_slide_paths(args.labels), args.slides)  # the labels' `path` column first
    res = run_predict(model, args.bags, args.out, labels=args.labels, thumbnails=thumbs, heatmaps=args.heatmaps,
                      device=args.device, n_boot=args.n_boot, seed=args.seed, target=args.target)
    print(f"predicted {len(res.predictions)} slides ({len(res.skipped)} skipped) → {args.out}/predictions.csv")
    if res.metrics is not None:
        print_metrics(res.metrics)
    return 0
