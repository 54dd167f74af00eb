"""MIL heads by name: the registry (:data:`MODELS`), the constructor keywords a head accepts, and its defaults that
depend on the bags (the two-branch head's ``split_dim``)."""

from __future__ import annotations

import inspect

from torch import nn

from mil.models.abmil import ABMIL
from mil.models.fusion import TwoBranchMIL
from mil.models.transmil import TransMIL

MODELS: dict[str, type[nn.Module]] = {"abmil": ABMIL, "transmil": TransMIL, "twobranch": TwoBranchMIL}


def model_kwargs(name: str, hparams: dict) -> dict:
    """The subset of ``hparams`` that the named model's constructor accepts (others belong to the trainer)."""
    cls = MODELS[name]
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "in_dim", "n_out"}
    return {k: v for k, v in hparams.items() if k in params}


def build_model(name: str, in_dim: int, n_out: int, **hparams) -> nn.Module:
    """Build a head by name; unknown names raise a ValueError that lists the known ones."""
    key = str(name).lower()
    if key not in MODELS:
        raise ValueError(f"unknown MIL model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[key](in_dim=in_dim, n_out=n_out, **model_kwargs(key, hparams))


def with_split_dim(name: str, hparams: dict, in_dim: int, mag: str) -> dict:
    """``hparams`` with the two-branch head's default ``split_dim`` (the 20x | 5x halves of a ``20x+5x`` bag)
    filled in; other heads get them unchanged. Without an explicit ``split_dim`` the two-branch head needs
    ``mag='20x+5x'``."""
    if str(name).lower() == "twobranch" and "split_dim" not in hparams:
        if mag != "20x+5x":
            raise ValueError("model 'twobranch' needs mag '20x+5x' (or an explicit split_dim)")
        hparams = {**hparams, "split_dim": in_dim // 2}
    return hparams
