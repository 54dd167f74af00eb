"""Encoder options as dataclasses: one declarative table per encoder serves the CLI flags, the ``encoder:`` mapping
of an extract YAML config and the keywords of the encoder's builder.

A field's ``metadata`` (made by :func:`option`) carries its ``--help`` text and argparse hints (``flag``,
``type``, ``choices``); the CLI turns every field into a flag whose default is ``None`` ("not given"), so the
dataclass default is the only default. ``builder_kwargs`` maps the options to ``create_encoder`` keywords;
``recipe_kwargs`` rebuilds them from the recipe a trained model records (``zoomfeat predict``).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Options every encoder has (the rest of a dataclass's fields are the encoder's own).
GENERIC = ("name", "weights", "weights_registry", "precision")


def option(default: Any = None, help: str = "", **argparse_kw: Any) -> Any:
    """A dataclass field with its CLI help and argparse hints (``flag``, ``type``, ``choices``, ``metavar``)."""
    meta = {"help": help, **argparse_kw}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


class OptionValueError(argparse.ArgumentTypeError, ValueError):
    """A bad option value: argparse prints its message, and from a YAML config it is a one-line ValueError."""


def int_list(text: Any) -> list[int]:
    """``"0,3"`` / ``3`` / ``[0, 3]`` → ``[0, 3]`` (argparse type and YAML normaliser)."""
    if isinstance(text, (list, tuple)):
        return [int(v) for v in text]
    try:
        return [int(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError as exc:
        raise OptionValueError(f"expected comma-separated integers, got {text!r}") from exc


@dataclass
class EncoderOptions:
    """The options of an encoder without options of its own (and the base of every options table)."""

    name: str | None = option(None, "encoder (required here or in --config)", flag="--encoder")
    weights: str | None = option(None, "encoder weights (file or folder); default: from the registry")
    weights_registry: str | None = option(
        None, "your YAML encoder → local weights path registry, relative paths resolved beside it (default: "
              "$ZOOMFEAT_WEIGHTS_REGISTRY; the packaged configs/encoders/weights.yaml is an empty example to copy)")
    precision: str | None = option(
        None, "autocast dtype (default per encoder: `zoomfeat encoders` lists it); bf16 also autocasts on CPU, "
              "fp16 runs as fp32 there; auto: bf16 where the device has native bf16 (CPU: AVX512-BF16/AMX), "
              "else fp32 (GPU: fp16); the ZoomLDM VQ always runs in fp32 (docs/gpu.md, docs/performance.md)",
        choices=("fp32", "fp16", "bf16", "auto"))

    def own_fields(self) -> list[str]:
        """The encoder's own option names (not the generic ones)."""
        return [f.name for f in dataclasses.fields(self) if f.name not in GENERIC]

    def builder_kwargs(self) -> dict:
        """``create_encoder`` keywords (besides name, weights and registry) for these options."""
        kw = {k: getattr(self, k) for k in self.own_fields()}
        if self.precision:
            kw["precision"] = self.precision
        return kw

    @classmethod
    def recipe_kwargs(cls, spec: dict, weights: Any = None, ssl_weights: Any = None,
                      official_config: Any = None) -> dict:
        """``create_encoder`` keywords that rebuild the recipe a model's feature spec records (``official_config``:
        the config file that goes with an official checkpoint, for encoders that load one)."""
        return {"precision": spec["precision"]} if spec.get("precision") else {}


@dataclass
class RandomInitOptions(EncoderOptions):
    """Options of a pretrained encoder that can also run without weights (tests and timing)."""

    random_init: bool = option(False, "run without weights: random features (tests and timing only)")

    def builder_kwargs(self) -> dict:
        return {**super().builder_kwargs(), "random_init": bool(self.random_init and self.weights is None)}

    @classmethod
    def recipe_kwargs(cls, spec: dict, weights: Any = None, ssl_weights: Any = None,
                      official_config: Any = None) -> dict:
        kw = super().recipe_kwargs(spec)
        if weights is None and (spec.get("recipe") or {}).get("random_init"):
            kw["random_init"] = True  # a model trained on random-init features (tests only)
        return kw


__all__ = ["EncoderOptions", "RandomInitOptions", "option", "int_list", "GENERIC"]
