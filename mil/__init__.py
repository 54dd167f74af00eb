"""Multiple-instance learning on feature bags: ABMIL / TransMIL heads, patient-level CV, encoder comparison.

``mil.cross_validate(bags, labels, groups=None, model="abmil"|"transmil", task="binary"|"multiclass"|"survival",
n_folds=5, seed=0, **hparams)`` is the one-call API; ``mil.cv.run_cv`` and ``mil.compare`` (a callable module:
``mil.compare(cfg, out_dir)``; ``mil.compare.verdict(table)`` sums a table up in one sentence) are what the
``zoomfeat mil cv`` and ``zoomfeat compare`` commands run. ``mil.register_head(name, options=...)`` adds a head
(:mod:`mil.models.registry`). ``mil.cox_loss`` is the tie-exact Cox loss.
"""

from __future__ import annotations

from mil.cv import cross_validate, run_cv
from mil.folds import run_folds
from mil.models import ABMIL, TransMIL, TwoBranchMIL, build_model, head_names, register_head
from mil.results import CVResult
from mil.survival import cox_loss

from mil import compare  # noqa: E402  (a callable module: mil.compare(cfg, out_dir), mil.compare.verdict(table))

__all__ = ["cross_validate", "run_cv", "run_folds", "compare", "cox_loss", "CVResult", "ABMIL", "TransMIL",
           "TwoBranchMIL", "build_model", "head_names", "register_head"]
