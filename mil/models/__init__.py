"""MIL heads: gated ABMIL, TransMIL and the two-branch 20x+5x fusion, built by name from hyperparameters
(:mod:`mil.models.registry`)."""

from __future__ import annotations

from mil.models.abmil import ABMIL, GatedAttention
from mil.models.fusion import TwoBranchMIL
from mil.models.registry import MODELS, build_model, model_kwargs, with_split_dim
from mil.models.transmil import TransMIL

__all__ = ["ABMIL", "GatedAttention", "TransMIL", "TwoBranchMIL", "MODELS", "build_model", "model_kwargs",
           "with_split_dim"]
