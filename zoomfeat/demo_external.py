"""The demo's last step: train the final subtype model on the demo cohort and validate it on an external cohort.

`zoomfeat mil train` (with CV, so the model card carries an estimate) on the demo's tiny-vit bags, then a second
synthetic cohort drawn with another seed, and `zoomfeat predict` on its raw slides with its labels: the external
AUC with a patient-grouped bootstrap 95% CI is printed. Each step is the CLI verb a user would run (run by the
demo's :class:`zoomfeat.demo.Steps`).
"""

from __future__ import annotations

from pathlib import Path

from zoomfeat.demo import Steps
from zoomfeat.threads import available_cores


def cv_impossible(labels: str | Path, folds: int, val_fraction: float = 0.2) -> str | None:
    """Why ``mil train --cv`` cannot split the labelled cohort into ``folds`` patient-level folds with inner
    validation splits (``mil.splits.make_splits``' own message), or None when it can."""
    import pandas as pd

    from mil.splits import make_splits

    df = pd.read_csv(labels, dtype={"slide": str, "patient": str}).dropna(subset=["subtype"])
    try:
        make_splits(df["slide"], df["patient"], df["subtype"].astype(str), n_folds=folds, val_fraction=val_fraction)
    except ValueError as exc:
        return str(exc)
    return None


def external_validation(out: str | Path, labels: str | Path, bags: str | Path, run_step: Steps,
                        n_slides: int = 12, seed: int = 1, folds: int = 5) -> dict:
    """Train MODEL on (labels, bags), predict an external synthetic cohort (``seed``) from its slides; returns the
    external metrics as {metric: (value, ci_low, ci_high)}."""
    import pandas as pd

    out = Path(out)
    model = out / "subtype_model"
    train = ["mil", "train", "--config", "mil/demo_final.yaml", "--out", model, f"labels={labels}", f"bags={bags}",
             f"n_folds={folds}"]
    reason = cv_impossible(labels, folds)
    if reason:  # a cohort too small for k folds with inner splits (as `compare` skips such a task)
        print(f"  cross-validation impossible on this cohort ({reason}): training the final model without a CV "
              "estimate")
        run_step(train)
    else:  # any other failure of the CV run stops the demo with its own error
        run_step([*train, "--cv"])
    ext = out / "external"
    ext_labels = ext / "cohort" / "labels.csv"
    if not ext_labels.exists():
        run_step(["synth-cohort", "--out", ext / "cohort", "--n-slides", n_slides, "--seed", seed, "--workers",
                  available_cores()])
    pred = ext / "predictions"
    rc = run_step(["predict", ext / "cohort" / "slides", "--model", model, "--out", pred, "--labels", ext_labels,
                "--no-progress"], ok=(0, 3))
    m = pd.read_csv(pred / "metrics.csv").set_index("metric")
    res = {k: (float(r.value), float(r.ci_low), float(r.ci_high)) for k, r in m.iterrows()}
    auc = res["auc"]
    print(f"\nExternal validation (synthetic cohort, seed {seed}, {int(m.loc['auc', 'n_slides'])} slides / "
          f"{int(m.loc['auc', 'n_patients'])} patients{'; some slides failed' if rc == 3 else ''}): "
          f"subtype AUC {auc[0]:.3f} (95% CI {auc[1]:.3f}–{auc[2]:.3f}); model card {model / 'README.md'}, "
          f"predictions {pred / 'predictions.csv'}")
    return res
