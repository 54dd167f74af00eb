"""`zoomfeat probe`: sweep ZoomLDM feature recipes (block × t × conditioning × mag) with a linear probe."""

from __future__ import annotations

import argparse

from zoomfeat.cli.common import add_jobs_option, add_model_args


def _ints(text: str) -> list[int]:  # not encoders.options.int_list: importing zoomfeat.encoders loads torch
    try:
        return [int(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _strs(text: str) -> list[str]:
    return [v.strip() for v in str(text).split(",") if v.strip()]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe",
        help="choose the ZoomLDM feature recipe by measurement (linear probe over blocks × t × conditioning)",
        description=(
            "For every slide, read up to --tiles-per-slide 20x tiles and 5x regions, run one UNet pass per "
            "conditioning for all --t (early exit at the deepest block), mean-pool every block (cached per slide: "
            "a killed sweep resumes), then score each (block, t, conditioning, mag) and each baseline encoder "
            "with a linear probe (standardised logistic regression / ridge Cox) over repeated patient-level "
            "stratified group k-fold. Writes OUT/probe.csv, OUT/heatmap_{task}_{mag}.png and "
            "OUT/best_recipe.yaml (usable as `zoomfeat extract --config`). With --tune-fraction the recipe is "
            "chosen on held-out tuning patients and reported on the others (rows with subset=report)."
        ),
    )
    p.add_argument("slides", metavar="SLIDES", help="slide folder, slide file or CSV with a 'slide' column")
    p.add_argument("--tiles", required=True, help="folder written by `zoomfeat tile` (20x + 5x coordinates)")
    p.add_argument("--labels", required=True, help="CSV with slide, patient and one column per task "
                                                   "(survival: time, event)")
    # no encoder import here: building the parser stays torch-free (`zoomfeat --help` in 0.05 s); checked in handler
    p.add_argument("--encoder", default=None, help="the model whose recipe is swept (only ZoomLDM: zoomldm)")
    add_model_args(p, flag="--weights", help="ZoomLDM folder (convert / train) or official weights.ckpt")
    p.add_argument("--blocks", type=_ints, default=list(range(13)), help="UNet blocks (default 0..12)")
    p.add_argument("--t", type=_ints, default=[0, 25, 50, 100, 200, 400], help="timesteps (default 0,25,50,100,200,400)")
    p.add_argument("--conditioning", type=_strs, default=["none", "uni"], help="none,uni (default both)")
    p.add_argument("--mags", type=_strs, default=["20x", "5x", "20x+5x"], help="20x,5x,20x+5x (default all)")
    p.add_argument("--tasks", type=_strs, default=["subtype"], help="label columns, 'survival' for time/event")
    p.add_argument("--select", default=None, help="task that chooses the recipe (default: the first task)")
    p.add_argument("--baselines", type=_strs, default=[], help="reference encoders, comma-separated (any registered "
                   "encoder but ZoomLDM; `zoomfeat extract --help` lists them)")
    p.add_argument("--custom-model", default=None, help="'package.module:factory' for the custom baseline")
    p.add_argument("--ssl-encoder", default="uni", help="SSL encoder of uni conditioning (tiny-vit for tiny models)")
    p.add_argument("--ssl-weights", default=None, help="weights of the SSL encoder (default: registry)")
    p.add_argument("--weights-registry", default=None, help="encoder → weights registry YAML")
    p.add_argument("--tiles-per-slide", type=int, default=64, help="20x tiles (and 5x regions) per slide (default 64)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tune-fraction", type=float, default=0.0,
                   help="share of patients held out to choose the recipe (1/k of a stratified group k-fold, "
                        "k = round(1/F)); the rest only report it (default 0: choose and report on all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (this rank's GPU if any; default cpu)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")
    add_jobs_option(p)
    p.set_defaults(func=handler)


def handler(args) -> int:
    from zoomfeat.encoders.zoomldm import ZOOMLDM
    from zoomfeat.probe import SweepSpec, sweep

    if args.encoder not in (None, ZOOMLDM):
        raise ValueError(f"--encoder: the probe sweeps ZoomLDM recipes only ({ZOOMLDM!r}), got {args.encoder!r}")
    if args.threads:
        from threadpoolctl import threadpool_limits

        from zoomfeat.cli.threads import apply_threads

        # the global --threads (clamped to the cores by apply_threads) also caps sklearn / numpy BLAS of the fits
        threadpool_limits(apply_threads(args))
    spec = SweepSpec(blocks=args.blocks, t=args.t, conditioning=args.conditioning, mags=args.mags, tasks=args.tasks,
                     baselines=args.baselines, tiles_per_slide=args.tiles_per_slide, n_folds=args.folds,
                     n_repeats=args.repeats, tune_fraction=args.tune_fraction, select_task=args.select,
                     ssl_encoder=args.ssl_encoder, seed=args.seed, batch_size=args.batch_size)
    res = sweep(args.slides, args.tiles, args.labels, args.weights, args.out, spec, ssl_weights=args.ssl_weights,
                registry=args.weights_registry, custom_model=args.custom_model, progress=not args.no_progress,
                official_config=args.official_config, ema=not args.online, device=args.device, jobs=args.jobs)
    print_summary(res)
    return 3 if res["failed"] else 0


def print_summary(res: dict) -> None:
    b = res["best"]
    print(f"best recipe ({b['subset']} patients, {b['task']}, {b['mag']}): block {b['block']}, t = {b['t']} "
          f"(ᾱ = {b['alpha_bar']:.3f}, {b['noise_pct']:.1f}% noise), conditioning {b['conditioning']}: "
          f"{b['metric']} {b['mean']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}]")
    if b["subset"] != "tune":
        print("  optimistic: this cell was chosen and scored on the same patients (the best of the grid); "
              "--tune-fraction F reports the chosen recipe on patients the choice never saw")
    r = res.get("report")
    if r:
        print(f"  on {r['n_slides']} held-out report slides: {r['metric']} {r['mean']:.3f} "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
    if res["failed"]:
        print(f"  {len(res['failed'])} slide(s) failed: " + ", ".join(f["slide"] for f in res["failed"]))
    print(f"probe table: {res['probe_csv']}\nrecipe: {res['best_recipe']} (zoomfeat extract --config ...)")
