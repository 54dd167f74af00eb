"""One configuration style for every verb: a dataclass holds the defaults, YAML files and ``a.b=value`` overrides
only change them, and :func:`load_config` is the one loader (unknown keys are errors that name the key and file).

Each run copies its resolved config to its output folder (:func:`save_yaml`), so a result can be traced to it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.resources
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from zoomfeat.io import write_text_atomic

#: The packaged configs (``zoomfeat/configs``, shipped as package data, so a non-editable install finds every
#: default); the repository's top-level ``configs/`` is a link to this folder: the same files.
CONFIG_DIR = Path(str(importlib.resources.files("zoomfeat").joinpath("configs")))


def packaged(path: str | os.PathLike) -> Path | None:
    """A relative config path resolved in the packaged configs (``ldm/x.yaml`` or ``configs/ldm/x.yaml``)."""
    p = Path(path)
    if p.is_absolute():
        return None
    parts = p.parts[1:] if p.parts and p.parts[0] == "configs" else p.parts
    cand = CONFIG_DIR.joinpath(*parts) if parts else None
    return cand if cand is not None and cand.exists() else None


def load_yaml(path: str | os.PathLike) -> dict:
    """A YAML mapping from ``path``, or, when that relative path does not exist here, from the packaged configs."""
    path = Path(path)
    if not path.exists():
        path = packaged(path) or path
    if not path.exists():
        raise FileNotFoundError(f"config not found: {path}")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping at the top level")
    return data


def merge(base: dict, override: dict) -> dict:
    """Deep-merge ``override`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(cfg: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a copy of ``cfg``."""
    cfg = copy.deepcopy(cfg)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        node: dict[str, Any] = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return cfg


def save_yaml(cfg: dict, path: str | os.PathLike) -> None:
    write_text_atomic(path, yaml.safe_dump(cfg, sort_keys=False))


T = TypeVar("T")


def field_types(schema: type) -> dict[str, Any]:
    """Field name → resolved type hint of dataclass ``schema`` (string annotations evaluated)."""
    hints = typing.get_type_hints(schema)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(schema)}


def nested_schema(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (``X``, ``X | None``, ``Optional[X]``), if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _number(tp: Any, value: Any, where: str, name: str) -> Any:
    """A str given to an ``int``/``float`` field as a number: YAML reads ``1e-4`` (no dot) as a string."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    kinds = {tp, *(typing.get_args(tp) if union else ())}  # not list[int]'s int: a scale spec "0,5x" is a string
    if not isinstance(value, str) or not kinds & {int, float} or str in kinds:
        return value
    try:
        return float(value) if float in kinds else int(float(value))
    except ValueError:
        raise ValueError(f"{where}: {name} must be a number, got {value!r}") from None


def unknown_message(unknown: list[str], known) -> str:
    """``unknown option 'bach_size' (did you mean 'batch_size'?)``: each unknown key with its nearest known one
    (difflib), or the list of known keys when none is near."""
    parts, lost = [], False
    for key in unknown:
        near = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
        parts.append(f"{key!r} (did you mean {near[0]!r}?)" if near else repr(key))
        lost = lost or not near
    msg = f"unknown option(s) {', '.join(parts)}"
    return msg + (f"; known: {', '.join(sorted(map(str, known)))}" if lost else "")


def from_dict(schema: type[T], data: dict | None, where: str = "config", base: T | None = None) -> T:
    """``schema`` (a dataclass) with the keys of ``data`` replacing its defaults (or ``base``'s values); nested
    dataclass fields take nested mappings. Unknown keys raise ``ValueError`` naming them and ``where``."""
    data = dict(data or {})
    types = field_types(schema)
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise ValueError(f"{where}: {unknown_message(unknown, types)}")
    current = base if base is not None else schema()
    kw = {}
    for name, value in data.items():
        sub = nested_schema(types[name])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, f"{where}: {name}", getattr(current, name, None) or None)
        kw[name] = _number(types[name], value, where, name)
    return dataclasses.replace(current, **kw)


def load_config(schema: type[T], path: str | os.PathLike | dict | None = None, overrides: list[str] | None = None,
                base: T | None = None) -> T:
    """The one config loader: ``schema()`` defaults (or ``base``) ← YAML file (or mapping) ← ``key.sub=value``
    overrides. A relative path that does not exist is looked up in the packaged configs."""
    data: dict = {}
    where = "config"
    if isinstance(path, dict):
        data = copy.deepcopy(path)
    elif path is not None:
        data, where = load_yaml(path), str(path)
    data = apply_overrides(data, overrides)
    return from_dict(schema, data, where, base)


def to_dict(cfg: Any) -> dict:
    """A config dataclass as plain YAML-able data (what runs save beside their outputs)."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else copy.deepcopy(dict(cfg))
