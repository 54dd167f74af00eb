"""`zoomfeat reproduce table4`: the ZoomLDM paper's Table 4 in one command (logic in zoomfeat.reproduce)."""

from __future__ import annotations

import argparse

from zoomfeat.cli.common import add_weights_registry_arg


def register(subparsers) -> None:
    p = subparsers.add_parser("reproduce", help="reproduce a published result end to end (table4)",
                              description="Reproduce a table of the ZoomLDM paper from raw slides.")
    sub = p.add_subparsers(dest="reproduce_verb", metavar="TABLE")
    sub.required = True
    t = sub.add_parser(
        "table4", help="ZoomLDM Table 4: ABMIL on BRCA subtyping + HRD, six encoder rows, paper values beside ours",
        description=(
            "Tile the labelled slides (20x + 5x), choose the ZoomLDM recipe on held-out tuning patients (or take "
            "--recipe), extract every row's encoder, train ABMIL on identical repeated patient-level splits for "
            "every row and task, and print / write the table in the paper's layout with the published values, "
            "paired Δ vs UNI 20x, corrected CIs and Holm p (OUT/table4.md, OUT/table4.csv). Rows, encoders, "
            "options and published values are data: the preset configs/reproduce/table4.yaml (--preset, "
            "key=value overrides). Finished work is reused on a rerun. Exit codes: 0 done, 3 some slides "
            "failed, 2 bad input or no slide got through a stage."),
    )
    t.add_argument("--slides", required=True, help="slide folder, slide file or CSV with a 'slide' column")
    t.add_argument("--labels", required=True, help="CSV: slide, patient and the preset's task columns "
                                                   "(default: subtype = IDC/ILC, hrd = 0/1; empty = not used)")
    add_weights_registry_arg(t)
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--preset", default=None, help="preset YAML (default: configs/reproduce/table4.yaml)")
    t.add_argument("--recipe", default=None,
                   help="ZoomLDM recipe YAML (e.g. a probe's best_recipe.yaml): skip the tuning sweep and use "
                        "every labelled slide")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("overrides", nargs="*", help="key=value preset overrides, e.g. extract.device=cuda "
                                                "compare.n_repeats=5 sweep.tune_fraction=0.2")
    t.set_defaults(func=_table4)


def _table4(args: argparse.Namespace) -> int:
    from zoomfeat.reproduce import reproduce_table4

    res = reproduce_table4(args.slides, args.labels, args.out, registry=args.weights_registry, preset=args.preset,
                           overrides=args.overrides, recipe=args.recipe, progress=not args.no_progress)
    return res.exit_code
