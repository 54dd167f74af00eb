"""MIL heads by name: one registry, filled by :func:`register_head` (as encoders are by
:func:`zoomfeat.encoders.registry.register_encoder`). A head declares its options dataclass (the keys of ``hparams``
it reads; unknown keys are errors in :func:`mil.trainer.head_settings`) and, optionally:

* ``resolve_options(options, in_dim, mag)``: a classmethod filling defaults that depend on the bags (the two-branch
  head's ``split_dim``);
* ``fold_jobs(cohort, indices, folds, mag, seed, options)``: a classmethod for a head that is not an ``nn.Module``
  trained by :mod:`mil.trainer` (the linear probe): the fold jobs it runs itself.

Third-party heads: a module that applies ``@register_head`` imported before running, an installed package's
``zoomfeat.heads`` entry point, or a module named in ``$ZOOMFEAT_PLUGINS`` (both loaded on the first lookup).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

from zoomfeat.plugins import import_plugins

#: entry-point group that installed packages use to add heads (``[project.entry-points."zoomfeat.heads"]``)
PLUGIN_GROUP = "zoomfeat.heads"


@dataclass(frozen=True)
class HeadEntry:
    """A registered head: its class and the dataclass of its options."""

    name: str
    cls: type
    options: type

    @property
    def trained(self) -> bool:
        """True for an ``nn.Module`` head trained by :mod:`mil.trainer`; False for one with its own fold jobs."""
        return not hasattr(self.cls, "fold_jobs")


@dataclass
class NoOptions:
    """A head that reads no option from ``hparams``."""


_HEADS: dict[str, HeadEntry] = {}
_PLUGINS = {"loaded": False}


def register_head(name: str, options: type = NoOptions):
    """Class decorator: register a MIL head under ``name`` with its options dataclass (fields = the keyword
    arguments its constructor takes besides ``in_dim`` and ``n_out``)."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"register_head({name!r}): options must be a dataclass, got {options!r}")

    def wrap(cls):
        key = str(name).lower()
        _HEADS[key] = HeadEntry(key, cls, options)
        cls.head_name = key
        return cls

    return wrap


def unregister_head(name: str) -> None:
    _HEADS.pop(str(name).lower(), None)


def _ensure_plugins() -> None:
    """Load third-party heads once, on the first lookup: entry points of :data:`PLUGIN_GROUP` and the modules of
    ``$ZOOMFEAT_PLUGINS``."""
    if _PLUGINS["loaded"]:
        return
    _PLUGINS["loaded"] = True
    import_plugins(PLUGIN_GROUP, "head")


def head_names() -> list[str]:
    """Every registered head, sorted."""
    _ensure_plugins()
    return sorted(_HEADS)


def get_head(name: str) -> HeadEntry:
    """The registered head ``name``; an unknown name raises a ValueError naming the nearest one."""
    _ensure_plugins()
    key = str(name).lower()
    if key not in _HEADS:
        near = difflib.get_close_matches(key, list(_HEADS), n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"unknown MIL model {name!r}{hint}; choose one of {sorted(_HEADS)}")
    return _HEADS[key]


def option_names(name: str) -> list[str]:
    """The ``hparams`` keys the head ``name`` reads."""
    return [f.name for f in dataclasses.fields(get_head(name).options)]


def model_kwargs(name: str, hparams: dict) -> dict:
    """The subset of ``hparams`` (already checked: :func:`mil.trainer.check_hparams`) that are the head's options."""
    names = set(option_names(name))
    return {k: v for k, v in hparams.items() if k in names}


def head_options(name: str, hparams: dict | Any = None, in_dim: int | None = None, mag: str | None = None):
    """The head's options dataclass from its keys of ``hparams`` (or an options instance as is), with the defaults
    that depend on the bags filled by the head's ``resolve_options`` hook when ``in_dim`` is given."""
    entry = get_head(name)
    if isinstance(hparams, entry.options):
        opts = hparams
    else:
        try:
            opts = entry.options(**(hparams or {}))
        except TypeError as exc:
            raise ValueError(f"MIL model {name!r}: {exc}") from None
    hook = getattr(entry.cls, "resolve_options", None)
    if hook is not None and in_dim is not None:
        opts = hook(opts, int(in_dim), mag)
    return opts


def build_model(name: str, in_dim: int, n_out: int, options: Any = None, **kwargs):
    """Build a trained head by name from its options (an instance, or keywords); unknown names raise a ValueError
    that lists the known ones, unknown keywords one naming them."""
    entry = get_head(name)
    if not entry.trained:
        raise ValueError(f"MIL model {name!r} is not a trainable head (it runs its own fold jobs)")
    opts = head_options(name, options if options is not None else kwargs)
    return entry.cls(in_dim=in_dim, n_out=n_out, **dataclasses.asdict(opts))
