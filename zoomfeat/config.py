"""YAML configs as plain data: load with defaults and dotted overrides, and copy each run's config to its output."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

#: The repository's configs/ folder (configs are shipped with the source tree).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (CONFIG_DIR / path).exists():
        path = CONFIG_DIR / path
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
    from zoomfeat.io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(cfg, sort_keys=False))
