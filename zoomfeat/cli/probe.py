"""`zoomfeat probe`: sweep ZoomLDM feature recipes (block × t × conditioning × mag) with a linear probe."""

from __future__ import annotations

from zoomfeat.cli.common import WEIGHTS_REGISTRY_HELP, add_jobs_option
from zoomfeat.cli.options import add_config_args, add_fields, options_from_args
from zoomfeat.probe_spec import ProbeConfig


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
    add_config_args(p)
    # no encoder import here: building the parser stays torch-free (`zoomfeat --help` in 0.05 s); checked in handler
    add_fields(p, ProbeConfig, weights_registry={"help": WEIGHTS_REGISTRY_HELP})
    add_jobs_option(p)
    p.set_defaults(func=handler)


def handler(args) -> int:
    from zoomfeat.probe import run_probe

    cfg = options_from_args(ProbeConfig, args)
    if args.threads:
        from threadpoolctl import threadpool_limits

        from zoomfeat.cli.threads import apply_threads

        # the global --threads (clamped to the cores by apply_threads) also caps sklearn / numpy BLAS of the fits
        threadpool_limits(apply_threads(args))
    res = run_probe(args.slides, cfg, jobs=args.jobs)
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
