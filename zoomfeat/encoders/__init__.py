"""Tile encoders behind one registry: ``create_encoder(name, weights=None, **kw)``, with weights from a local registry.

Names: ``uni``, ``phikon``, ``zoomldm``, ``custom``, ``tiny-vit``. Weights are local files only (never a hub
download); ``configs/encoders/weights.yaml`` maps encoder name → path and is overridable per call / on the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from zoomfeat.config import CONFIG_DIR
from zoomfeat.encoders.base import Encoder, TileTransform, autocast_context, to_float_images  # noqa: F401

#: The default weights registry (encoder name → local path); ZOOMFEAT_WEIGHTS_REGISTRY points elsewhere.
DEFAULT_REGISTRY = CONFIG_DIR / "encoders" / "weights.yaml"

#: Encoders that cannot run without a weights file (unless built with random_init=True for tests/benchmarks).
NEEDS_WEIGHTS = {"uni", "phikon", "zoomldm"}


def _builders() -> dict[str, Callable[..., Any]]:
    from zoomfeat.encoders.custom import create_custom
    from zoomfeat.encoders.phikon import create_phikon
    from zoomfeat.encoders.tiny import create_tiny_vit
    from zoomfeat.encoders.uni import create_uni
    from zoomfeat.encoders.zoomldm import create_zoomldm

    return {"uni": create_uni, "phikon": create_phikon, "zoomldm": create_zoomldm, "custom": create_custom,
            "tiny-vit": create_tiny_vit}


ENCODER_NAMES = ("uni", "phikon", "zoomldm", "custom", "tiny-vit")


def load_weights_registry(path: str | os.PathLike | None = None) -> dict[str, Path]:
    """Read the registry YAML (or JSON) ``{encoder: path}``; relative paths are relative to the registry file.

    Empty entries are dropped. A registry that was named explicitly but does not exist is an error.
    """
    import yaml

    explicit = path is not None or "ZOOMFEAT_WEIGHTS_REGISTRY" in os.environ
    p = Path(path or os.environ.get("ZOOMFEAT_WEIGHTS_REGISTRY", DEFAULT_REGISTRY))
    if not p.exists():
        if explicit:
            raise FileNotFoundError(f"weights registry not found: {p}")
        return {}
    data = yaml.safe_load(p.read_text()) or {}  # JSON is valid YAML
    if not isinstance(data, dict):
        raise ValueError(f"{p}: the weights registry must map encoder names to paths")
    out = {}
    for k, v in data.items():
        if v in (None, ""):
            continue
        q = Path(os.path.expandvars(os.path.expanduser(str(v))))
        out[str(k)] = q if q.is_absolute() else (p.parent / q)
    return out


def resolve_weights(name: str, weights: str | os.PathLike | None = None,
                    registry: str | os.PathLike | dict | None = None, required: bool = True) -> Path | None:
    """The weights path for ``name``: the explicit one, else the registry's; checked to exist *before* any work."""
    if weights is None:
        reg = registry if isinstance(registry, dict) else load_weights_registry(registry)
        weights = reg.get(name)
        if weights is None:
            if required:
                raise FileNotFoundError(
                    f"no weights for encoder {name!r}: pass --weights PATH (or --ssl-weights for conditioning) or "
                    f"add '{name}: /path' to the weights registry ({registry or DEFAULT_REGISTRY})")
            return None
    w = Path(weights)
    if not w.exists():
        raise FileNotFoundError(f"weights for encoder {name!r} not found: {w}")
    return w


def create_encoder(name: str, weights: str | os.PathLike | None = None, registry: str | os.PathLike | None = None,
                   **kw: Any):
    """Build an encoder by name. ``weights=None`` looks ``name`` up in the weights registry; ``uni``/``phikon``
    also accept ``random_init=True`` (tests, benchmarks); ``tiny-vit``/``custom`` need no weights."""
    builders = _builders()
    if name not in builders:
        raise ValueError(f"unknown encoder {name!r}; choose from {', '.join(ENCODER_NAMES)}")
    if name in NEEDS_WEIGHTS and not kw.get("random_init") and kw.get("ldm") is None:
        weights = resolve_weights(name, weights, registry, required=True)
    elif weights is not None:
        weights = resolve_weights(name, weights)
    if name == "zoomldm" and kw.get("conditioning", "uni") == "uni":
        ssl = kw.get("ssl_encoder") or "uni"
        if isinstance(ssl, str) and ssl in NEEDS_WEIGHTS and not (kw.get("ssl_kwargs") or {}).get("random_init"):
            kw["ssl_weights"] = resolve_weights(ssl, kw.get("ssl_weights"), registry, required=True)
        kw["ssl_encoder"] = ssl
    return builders[name](weights=weights, **kw)
