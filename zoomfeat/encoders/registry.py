"""The encoder registry: ``@register_encoder(name, needs_weights=…, options=…)`` on a class or factory is all it
takes to add an encoder — ``create_encoder``, the weights check, ``zoomfeat extract --encoder`` (choices, flags,
``--help``, the ``encoder:`` mapping of its YAML config) and ``zoomfeat predict`` read it from here.

Weights are local files only (never a hub download); the weights registry YAML maps encoder name → path and is
overridable per call / on the CLI.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from zoomfeat.config import CONFIG_DIR
from zoomfeat.encoders.options import EncoderOptions
from zoomfeat.plugins import PluginImportError, import_plugins  # noqa: F401  PluginImportError: the CLI reads it here

#: The packaged EXAMPLE weights registry (every entry empty; read when no user registry is named). Users keep their
#: own file, named by ``$ZOOMFEAT_WEIGHTS_REGISTRY`` or ``--weights-registry``; its relative paths resolve beside it.
DEFAULT_REGISTRY = CONFIG_DIR / "encoders" / "weights.yaml"

#: Keywords that hand a built model over, so no weights file is needed (and random_init, for tests).
PREBUILT = ("model", "ldm")


@dataclass(frozen=True)
class EncoderEntry:
    """One registered encoder: its builder (class or factory), whether it needs weights, its options table."""

    name: str
    build: Callable[..., Any]
    needs_weights: bool = False
    options: type = EncoderOptions
    #: What ``zoomfeat encoders`` lists without building the model: ``dim``, ``input``, ``scale``, ``precision``,
    #: ``license``, ``source`` (free text; absent keys show as "-"), ``alias_of`` for an alias.
    info: dict = field(default_factory=dict, compare=False)

    @property
    def summary(self) -> str:
        doc = (inspect.getdoc(self.build) or "").strip()
        return doc.splitlines()[0] if doc else ""


_REGISTRY: dict[str, EncoderEntry] = {}
_PLUGINS = {"loaded": False}  # third-party encoders are imported on the first lookup (see load_plugins)


def _ensure_plugins() -> None:
    """Load the plugins once, on the first registry lookup (a failing $ZOOMFEAT_PLUGINS module fails every lookup
    until it imports, so the CLI reports it however it got there)."""
    if _PLUGINS["loaded"]:
        return
    _PLUGINS["loaded"] = True  # set first: a plugin may look the registry up while it registers
    try:
        load_plugins()
    except BaseException:
        _PLUGINS["loaded"] = False
        raise


def register_encoder(name: str, needs_weights: bool = False, options: type = EncoderOptions,
                     info: dict | None = None):
    """Class/function decorator: register ``name`` → the decorated builder (called as ``build(weights=…, **kw)``,
    ``weights`` only when there is one). A class gets ``name`` as its ``name`` attribute. ``options``: an
    :class:`EncoderOptions` subclass whose fields become the encoder's CLI flags and YAML keys; ``info``: what
    ``zoomfeat encoders`` lists for it (see :attr:`EncoderEntry.info`)."""
    if not (isinstance(options, type) and issubclass(options, EncoderOptions)):
        raise TypeError(f"options of encoder {name!r} must subclass EncoderOptions")

    def wrap(obj):
        if isinstance(obj, type) and not getattr(obj, "name", None):
            obj.name = name
        _REGISTRY[name] = EncoderEntry(name, obj, bool(needs_weights), options, dict(info or {}))
        return obj

    return wrap


def unregister_encoder(name: str) -> None:
    """Remove ``name`` from the registry (tests, plugins replacing an entry)."""
    get_encoder(name)  # loads the plugins first, so a plugin's entry can be removed
    del _REGISTRY[name]


def encoder_entries() -> dict[str, EncoderEntry]:
    """Every registered encoder, in registration order (built-ins first, then plugins)."""
    _ensure_plugins()
    return dict(_REGISTRY)


def get_encoder(name: str) -> EncoderEntry:
    """The entry of ``name``; a one-line ``ValueError`` naming the choices otherwise."""
    _ensure_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


#: Entry-point group that installed packages use to add encoders (``[project.entry-points."zoomfeat.encoders"]``).
PLUGIN_GROUP = "zoomfeat.encoders"


def load_plugins() -> list[str]:
    """Import the modules that register third-party encoders, so the ``zoomfeat`` command lists them too: every
    entry point of :data:`PLUGIN_GROUP` and every module named in ``$ZOOMFEAT_PLUGINS`` (comma-separated, e.g.
    ``ZOOMFEAT_PLUGINS=my_lab.encoders``). A named module that fails to import is an error; a broken installed
    plugin only warns, so one bad package cannot take the CLI down. Returns the modules loaded. Called once, lazily,
    by the first registry lookup (:func:`get_encoder`, :func:`encoder_entries`, :func:`create_encoder`), not at
    import of :mod:`zoomfeat.encoders`."""
    return import_plugins(PLUGIN_GROUP, "encoder")


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
    with open(p) as fh:  # a stream, so a YAML syntax error names the file (JSON is valid YAML)
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: the weights registry must map encoder names to paths")
    out = {}
    for k, v in data.items():
        if v in (None, ""):
            continue
        q = Path(os.path.expandvars(os.path.expanduser(str(v))))
        out[str(k)] = q if q.is_absolute() else (p.parent / q)
    return out


def _registry_name(registry: str | os.PathLike | dict | None) -> str:
    """The weights registry a message should name: the user's, never the packaged example as a place to write."""
    if isinstance(registry, dict):
        return "the weights registry"
    if registry is not None or "ZOOMFEAT_WEIGHTS_REGISTRY" in os.environ:
        return f"your weights registry ({registry or os.environ['ZOOMFEAT_WEIGHTS_REGISTRY']})"
    return (f"your own weights registry (a copy of the example {DEFAULT_REGISTRY}) and point "
            f"$ZOOMFEAT_WEIGHTS_REGISTRY or --weights-registry at it")


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
                    f"add '{name}: /path' to {_registry_name(registry)}")
            return None
    w = Path(weights)
    if not w.exists():
        raise FileNotFoundError(f"weights for encoder {name!r} not found: {w}")
    return w


def create_encoder(name: str, weights: str | os.PathLike | None = None, registry: str | os.PathLike | None = None,
                   **kw: Any):
    """Build a registered encoder. ``weights=None`` looks ``name`` up in the weights registry when the encoder
    needs weights (unless ``random_init=True`` or a built ``model``/``ldm`` is handed over); a builder with a
    ``registry`` parameter gets the registry too (ZoomLDM resolves its SSL encoder's weights with it)."""
    entry = get_encoder(name)
    if entry.needs_weights and not kw.get("random_init") and all(kw.get(k) is None for k in PREBUILT):
        weights = resolve_weights(name, weights, registry, required=True)
    elif weights is not None:
        weights = resolve_weights(name, weights)
    try:
        params = inspect.signature(entry.build).parameters
    except (TypeError, ValueError):
        params = {}
    if "registry" in params:
        kw["registry"] = registry
    return entry.build(**({"weights": weights} if weights is not None else {}), **kw)


def build_from_options(opts: EncoderOptions):
    """The encoder an options table (CLI flags / YAML ``encoder:`` mapping) describes."""
    if not opts.name:
        raise ValueError("--encoder is required (on the command line or as encoder.name in --config)")
    return create_encoder(opts.name, weights=opts.weights, registry=opts.weights_registry, **opts.builder_kwargs())


__all__ = ["register_encoder", "unregister_encoder", "create_encoder", "get_encoder", "encoder_entries", "build_from_options",
           "load_weights_registry", "resolve_weights", "EncoderEntry", "DEFAULT_REGISTRY"]
