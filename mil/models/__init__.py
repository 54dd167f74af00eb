"""MIL heads: gated ABMIL, TransMIL and the two-branch 20x+5x fusion, each registered by name with its options
dataclass (:mod:`mil.models.registry`, :func:`register_head`)."""

from __future__ import annotations

from mil.models.abmil import ABMIL, ABMILOptions, GatedAttention
from mil.models.fusion import TwoBranchMIL, TwoBranchOptions
from mil.models.registry import (HeadEntry, build_model, get_head, head_names, head_options, model_kwargs,
                                 register_head, unregister_head)
from mil.models.transmil import TransMIL, TransMILOptions

__all__ = ["ABMIL", "ABMILOptions", "GatedAttention", "TransMIL", "TransMILOptions", "TwoBranchMIL",
           "TwoBranchOptions", "HeadEntry", "build_model", "get_head", "head_names", "head_options", "model_kwargs",
           "register_head", "unregister_head"]
