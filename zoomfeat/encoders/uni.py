"""UNI's former import path: the encoder is :mod:`zoomfeat.encoders.baselines.uni_v1` (``uni`` = alias of
``uni_v1``, same builder)."""

from __future__ import annotations

from zoomfeat.encoders.baselines.uni_v1 import UNI_DIM, build_uni_model, create_uni, create_uni_v1  # noqa: F401

__all__ = ["UNI_DIM", "build_uni_model", "create_uni", "create_uni_v1"]
