"""Multiple-instance learning on feature bags: ABMIL / TransMIL heads, patient-level CV, encoder comparison.

``mil.cross_validate(bags, labels, groups=None, model="abmil"|"transmil", task="binary"|"multiclass"|"survival",
n_folds=5, seed=0, **hparams)`` is the one-call API; ``mil.cv.run_cv`` and ``mil.compare.compare`` are what the
``zoomfeat mil cv`` and ``zoomfeat compare`` commands run.
"""

from __future__ import annotations

from mil.cv import CVResult, cross_validate, run_cv, run_folds
from mil.survival import cox_loss
from mil.models import ABMIL, TransMIL, TwoBranchMIL, build_model


def compare(cfg: dict, out_dir):
    """See :func:`mil.compare.compare`."""
    from mil.compare import compare as _compare

    return _compare(cfg, out_dir)


__all__ = ["cross_validate", "run_cv", "run_folds", "compare", "cox_loss", "CVResult", "ABMIL", "TransMIL", "TwoBranchMIL",
           "build_model"]
