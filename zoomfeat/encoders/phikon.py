"""Phikon's former import path: the encoder is :mod:`zoomfeat.encoders.baselines.phikon`."""

from __future__ import annotations

from zoomfeat.encoders.baselines.phikon import (PHIKON_DIM, build_phikon_model, create_phikon,  # noqa: F401
                                                phikon_config)

__all__ = ["PHIKON_DIM", "build_phikon_model", "create_phikon", "phikon_config"]
