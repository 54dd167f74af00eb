"""The model folder format of ``zoomfeat mil train`` (written by :mod:`mil.final`, read by :mod:`mil.deploy`): its
file names, the ``model.json`` card's checks, the writer, and a CV folder's ``feature_spec.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.torch import save_file

from mil.card import model_card
from mil.data import save_standardizer
from zoomfeat.config import save_yaml
from zoomfeat.io import atomic_path, write_json_atomic, write_text_atomic

MODEL_FORMAT = "zoomfeat-mil-model-v1"
WEIGHTS = "model.safetensors"
META = "model.json"
STANDARDIZE = "standardize.npz"  #: per-feature (mean, std) of the training slides, when the head standardises
FEATURE_SPEC = "feature_spec.json"  #: a CV folder's feature spec and head input width (``mil train --cv``)


def jsonable(v: Any) -> Any:
    """``v`` with numpy scalars turned into Python ones (recursively through dicts, lists and tuples): JSON-ready."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def read_model_card(card: Path) -> dict:
    """A model folder's ``model.json``, checked for what :func:`load_model` reads: anything else (broken JSON, a
    list, a missing key) is one ValueError naming the file, not a ``TypeError`` traceback or a bare ``'model'``."""
    try:
        meta = json.loads(card.read_text())
        head, task = meta["model"], meta["task"]
        int(head["in_dim"]), int(head["n_out"]), str(head["name"]), str(task["name"]), meta["mag"]
        if not isinstance(head.get("kwargs", {}), dict) or not isinstance(meta["feature_spec"], dict):
            raise TypeError("'kwargs' and 'feature_spec' must be objects")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{card}: not a zoomfeat model card ({type(exc).__name__}: {exc}); re-run `zoomfeat mil "
                         "train`") from exc
    return meta


def save_model(out: Path, net, meta: dict, cfg: dict, extra_csv: dict[str, pd.DataFrame],
               norm: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Weights (safetensors), tables, config, card; ``model.json`` last (its presence = a complete folder)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # a rerun invalidates the old folder until the new one is complete
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": MODEL_FORMAT})
    (out / STANDARDIZE).unlink(missing_ok=True)
    if norm is not None:  # the head reads standardised features: applying it needs the training mean / std
        save_standardizer(norm, out / STANDARDIZE)
    save_yaml(cfg, out / "config.yaml")
    for name, df in extra_csv.items():
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False)
    write_text_atomic(out / "README.md", model_card(meta))
    write_json_atomic(out / META, jsonable(meta))
    return out


def write_cv_spec(cv_dir: str | os.PathLike, spec: dict, in_dim: int) -> None:
    """Make a CV folder self-describing for ``--ensemble`` (its bags may be moved later)."""
    write_json_atomic(Path(cv_dir) / FEATURE_SPEC, {"feature_spec": spec, "in_dim": int(in_dim)})
