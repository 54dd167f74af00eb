"""`zoomfeat <verb>`: a thin command layer over the Python API.

Each verb lives in its own module under ``zoomfeat/cli/`` exposing ``register(subparsers)``; modules import
heavy libraries (torch, openslide) inside their handlers so that ``zoomfeat --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys

from zoomfeat import __version__

__all__ = ["VERB_MODULES", "build_parser", "main", "one_line", "is_plugin_error", "user_errors"]

#: Verb modules in the order they appear in --help (pipeline order).
VERB_MODULES = ["slides", "ldm", "extract", "encoders", "probe", "mil", "reproduce", "predict", "train", "large", "view",
                "demo"]


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The ``zoomfeat`` parser. ``verb``: the verb about to run — verbs whose options need heavy imports (``extract``
    reads the encoder registry, ``tile`` its numpy-importing TilingConfig) get them only when they run; ``None``
    (the Python API) builds every option."""
    parser = argparse.ArgumentParser(
        prog="zoomfeat",
        description="ZoomLDM features, generation and MIL for computational pathology.",
    )
    parser.add_argument("--version", action="version", version=f"zoomfeat {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name in VERB_MODULES:
        try:
            mod = importlib.import_module(f"zoomfeat.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"zoomfeat.cli.{name}":
                continue
            raise
        verbs = getattr(mod, "VERBS", (name,))  # the verbs a module registers, when not just its own name
        if verb is not None and verb not in verbs and "options" in inspect.signature(mod.register).parameters:
            mod.register(sub, options=False)
        else:
            mod.register(sub)
    from zoomfeat.cli.threads import add_threads_option

    add_threads_option(parser)  # every verb (and sub-verb) gets --threads
    return parser


def one_line(exc: BaseException) -> str:
    """An error's message on one line (a multi-line message, e.g. torch's state-dict mismatch, is joined)."""
    return " ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip()) or type(exc).__name__


def is_plugin_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``$ZOOMFEAT_PLUGINS`` module that does not import (reported in one line, exit 2, unless
    ``ZOOMFEAT_DEBUG`` asks for the traceback)."""
    registry = sys.modules.get("zoomfeat.encoders.registry")  # imported if it raised the error
    return (not os.environ.get("ZOOMFEAT_DEBUG") and registry is not None
            and isinstance(exc, registry.PluginImportError))


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input or environment (one line, exit 2), not bugs. OSError: read-only / full /
    missing paths. A YAML syntax error in a config (``--config``, a run's config.yaml, a ``key=[`` override) is
    included once yaml is imported, which it is whenever one was raised (``--help`` must not import it)."""
    yaml = sys.modules.get("yaml")
    return (OSError, ValueError, KeyError, RuntimeError) + ((yaml.YAMLError,) if yaml is not None else ())


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("WANDB_MODE", "offline")
    argv_given = argv
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = next((a for a in argv if not a.startswith("-")), "")  # the top-level parser has only --help/--version
    try:
        parser = build_parser(verb)
    except ImportError as exc:  # a module named in $ZOOMFEAT_PLUGINS that does not import
        if not is_plugin_error(exc):
            raise
        print(f"zoomfeat: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    from zoomfeat.cli.threads import apply_threads

    apply_threads(args)
    try:
        rc = args.func(args)
        if argv_given is None:  # a program run (not a library call): its pool has nothing left to do
            from zoomfeat.jobs import release_workers

            release_workers()
    except ImportError as exc:  # plugins load on the first registry lookup, which may come in the handler
        if not is_plugin_error(exc):
            raise
        print(f"zoomfeat {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 — re-raised below unless it is a user error
        if os.environ.get("ZOOMFEAT_DEBUG") or not isinstance(exc, user_errors()):
            raise
        print(f"zoomfeat {args.verb}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
