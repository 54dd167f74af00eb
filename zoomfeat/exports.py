"""Lazy package faces (PEP 562): a package lists ``public name → module`` and imports a module on first use of one
of its names, so that importing one light module (a config, the grid geometry) does not import its heavy siblings."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``exports[name]`` is the submodule that defines ``name``."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
