"""`zoomfeat demo`: the whole pipeline on an embedded synthetic cohort."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="end-to-end demo on a synthetic cohort (what `make demo` runs)",
                              description="synth-cohort → tile → train → probe (recipe sweep) → extract → compare → generate, "
                                          "printing each equivalent command.")
    p.add_argument("--out", default="demo_out", help="output folder (reruns reuse finished steps)")
    p.add_argument("--n-slides", type=int, default=60)
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--jobs", type=int, default=0,
                   help="processes for the one-core steps that can run side by side (the extractions, the external "
                        "validation beside generation); 0 = the usable cores, 1 = one step at a time. Outputs do not "
                        "depend on it")
    p.add_argument("--skip-train", action="store_true", help="skip ZoomLDM training and use the vendored micro fixture (random weights: features carry nothing)")
    p.set_defaults(func=handler)


def handler(args) -> int:
    from zoomfeat.cli import main
    from zoomfeat.demo import run_demo

    # the demo runs each step as the CLI verb a user would type: the CLI layer hands it the executor
    run_demo(main, args.out, n_slides=args.n_slides, train_steps=args.train_steps, folds=args.folds,
             skip_train=args.skip_train, jobs=args.jobs)
    return 0
