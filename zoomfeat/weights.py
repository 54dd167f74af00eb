"""Loading weights safely, shared by every model family (encoders, ZoomLDM, MIL heads): tensor-only files
(``torch.load(weights_only=True)`` or safetensors), one-line refusals for anything else, and a weights hash."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn


def state_dict_sha256(model: nn.Module) -> str:
    """Hash of a module's parameters and buffers (for random-init encoders that have no weight file)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class UnsafeCheckpointError(ValueError):
    """A weights file that is not a plain tensor checkpoint (pickled code, empty, truncated, corrupt)."""


def refuse_checkpoint(path: str | os.PathLike, exc: BaseException) -> UnsafeCheckpointError:
    """The one-line error every weights loader raises for a file it will not load (never torch's advice to set
    ``weights_only=False``, which would run whatever code the pickle holds)."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "weights_only" in detail or "Weights only load failed" in detail:
        detail = "the file pickles non-tensor Python objects, which could run code"
    return UnsafeCheckpointError(f"refusing to load {path} (not a tensor-only checkpoint): {type(exc).__name__}: "
                                 f"{detail[:200]}; re-save it as a plain state dict of tensors or safetensors")


def torch_load_tensors(path: str | os.PathLike, mmap: bool = False):
    """``torch.load(weights_only=True)`` whose every failure (unpickling, EOF, corrupt zip) is one
    :class:`UnsafeCheckpointError` line."""
    import pickle

    try:
        if mmap:
            try:  # mmap: a 1.2 GB UNI checkpoint is paged in as needed instead of copied
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) torch files cannot be memory-mapped
                pass
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, AttributeError, ImportError,
            TypeError, KeyError, IndexError, UnicodeDecodeError) as exc:
        raise refuse_checkpoint(path, exc) from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain tensor state dict from ``.safetensors`` or a torch file (``weights_only=True``: no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 — SafetensorError and friends: one line
            raise refuse_checkpoint(path, exc) from None
    sd = torch_load_tensors(path, mmap=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict (mapping of tensors), got {type(sd).__name__}")
    return sd


def load_into_meta_built(build: Callable[[], nn.Module], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Build ``build()`` on the meta device and load ``state_dict`` into it with ``strict=True, assign=True``.

    Skips the random initialisation of large models (UNI's takes ~40 s on 2 CPU cores), since every tensor is
    replaced anyway; a state dict that does not cover the model fails loudly, exactly like strict loading.
    """
    with torch.device("meta"):
        model = build()
    model.load_state_dict(state_dict, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:  # non-persistent buffers are not in a state dict: rebuild normally instead
        model = build()
        model.load_state_dict(state_dict, strict=True)
    return model


class WeightsMismatchError(ValueError, RuntimeError):
    """A checkpoint whose keys or shapes do not match the model (one line; a ``RuntimeError`` too, like torch's)."""


def _first(items: list, n: int = 4) -> str:
    shown = ", ".join(items[:n])
    return shown + (", …" if len(items) > n else "")


def check_state_dict(expected: dict[str, tuple], state_dict: dict, what: str = "checkpoint",
                     optional: Callable[[str], bool] | None = None) -> None:
    """Strict key + shape match of ``state_dict`` against ``expected`` (key → shape) before any loading, as ONE
    line naming the first missing / unexpected / mis-shaped keys and their counts (not torch's wall of text).
    ``optional(key)``: keys that may be absent from the file (derived buffers such as Swin's ``attn_mask``)."""
    optional = optional or (lambda k: False)
    missing = [k for k in expected if k not in state_dict and not optional(k)]
    unexpected = [k for k in state_dict if k not in expected]
    shaped = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k])}" for k in expected
              if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or shaped):
        return
    parts = [f"{len(v)} {label} ({_first(v)})" for label, v in
             (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)) if v]
    raise WeightsMismatchError(f"{what} does not match the model ({len(expected)} keys expected): "
                               + "; ".join(parts))
