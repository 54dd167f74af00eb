"""Third-party plugins: the modules that register encoders (:mod:`zoomfeat.encoders.registry`) or MIL heads
(:mod:`mil.models.registry`), imported by each registry on its first lookup."""

from __future__ import annotations

import importlib
import os
import warnings
from importlib.metadata import entry_points


class PluginImportError(ImportError):
    """A module named in ``$ZOOMFEAT_PLUGINS`` that does not import (the CLI reports it in one line)."""


def import_plugins(group: str, what: str) -> list[str]:
    """Import every entry point of ``group`` and every module named in ``$ZOOMFEAT_PLUGINS`` (comma-separated,
    e.g. ``ZOOMFEAT_PLUGINS=my_lab.encoders``). A named module that fails to import is a
    :class:`PluginImportError`; a broken installed plugin only warns (``what``: the kind, in the warning), so one bad
    package cannot take the CLI down. Returns the modules loaded."""
    loaded = []
    for ep in entry_points(group=group):
        try:
            ep.load()
            loaded.append(ep.value)
        except Exception as exc:  # noqa: BLE001 — report and go on
            warnings.warn(f"{what} plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=3)
    for mod in filter(None, (m.strip() for m in os.environ.get("ZOOMFEAT_PLUGINS", "").split(","))):
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise PluginImportError(f"ZOOMFEAT_PLUGINS: cannot import {mod!r}: {exc}") from None
        loaded.append(mod)
    return loaded
