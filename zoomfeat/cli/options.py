"""One options object per verb, from the command line to the API: the flags are generated from the verb's options
dataclass (its fields' metadata: ``help``, ``flag``, ``type``, ``choices``, ``metavar``), ``--config YAML`` and
``--set key=value`` come with them, and :func:`options_from_args` loads the object with the config loader's steps
(:mod:`zoomfeat.config`: ``load_yaml``, ``apply_overrides``, ``from_dict``, as ``load_config``): dataclass defaults ←
YAML ← ``--set`` ← flags given, validated once on the merged values; an unknown key names the nearest valid one.

argparse defaults are ``None`` ("not given"), so no default is restated here: ``--help`` shows the dataclass's.
The dataclasses live in torch-free modules, so building a verb's parser does not import torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
import warnings

from zoomfeat.config import apply_overrides, field_types, from_dict, load_yaml, merge, nested_schema

#: Field metadata keys that are argparse keywords of the generated flag (``flag`` and ``help`` are handled apart).
_ARGPARSE_KEYS = ("type", "choices", "metavar")


def field_default(schema: type, name: str):
    """The default of field ``name`` of dataclass ``schema`` (its factory's value; None when it has none)."""
    f = {f.name: f for f in dataclasses.fields(schema)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def with_default(help: str, default) -> str:
    """``help`` with ``(default: X)`` appended, unless the default is empty / None / False."""
    return help if default is None or default is False or default in ("", [], ()) else \
        f"{help} (default: {_show(default)})"


def comma_list(item: type):
    """An argparse ``type``: ``'a,b'`` → ``[item('a'), item('b')]`` (an ``ArgumentTypeError`` names the value)."""
    def parse(text: str) -> list:
        try:
            return [item(v.strip()) for v in str(text).split(",") if v.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__} values, got {text!r}") from exc

    parse.__name__ = f"{item.__name__}_list"
    return parse


def _plain(tp):
    """``X | None`` → ``X``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def infer_type(tp):
    """The argparse ``type`` of a field annotated ``tp``: int / float, a comma list for ``list[X]`` /
    ``tuple[X, ...]``, None (a string) otherwise."""
    tp = _plain(tp)
    if tp in (int, float):
        return tp
    if typing.get_origin(tp) in (list, tuple):
        item = next((a for a in typing.get_args(tp) if a is not Ellipsis), str)
        return comma_list(item if item in (int, float) else str)
    return None


def add_fields(p, schema: type, names: typing.Iterable[str] | None = None, skip: typing.Iterable[str] = (),
               under: str = "", base=None, **extra: dict) -> None:
    """One flag per field of dataclass ``schema`` (``names``, default all, minus ``skip``) on parser/group ``p``.

    Metadata of a field: ``help``; ``flag`` (default ``--field-name``; a tuple gives extra spellings); ``type``,
    ``choices``, ``metavar`` as in argparse; ``cli: False`` leaves the field to ``--config`` / ``--set``. A bool field
    is a switch: ``store_true``, or ``store_false`` when its default is True (its ``flag`` then says ``--no-…``).
    ``extra[field]``: more argparse keywords. The flag's default is None: the dataclass's shows in ``--help``.
    A nested dataclass field gets its own fields' flags (dest ``field.sub``, YAML ``field: {sub: …}``), their
    defaults read from ``base`` (an instance of ``schema``, default ``schema()``); ``under``: the dest prefix."""
    hints = field_types(schema)
    wanted = set(names) if names is not None else None
    for f in dataclasses.fields(schema):
        if (wanted is not None and f.name not in wanted) or f.name in skip or f.metadata.get("cli", True) is False:
            continue
        default = getattr(base, f.name) if base is not None else field_default(schema, f.name)
        sub = nested_schema(hints[f.name])
        if sub is not None:
            add_fields(p, sub, under=f"{under}{f.name}.", base=default if default is not None else sub(), **extra)
            continue
        meta = dict(f.metadata)
        flags = meta.pop("flag", "--" + f.name.replace("_", "-"))
        flags = (flags,) if isinstance(flags, str) else tuple(flags)
        kw = {k: meta[k] for k in _ARGPARSE_KEYS if k in meta}
        if isinstance(default, bool) or _plain(hints[f.name]) is bool:
            kw = {"action": "store_false" if default else "store_true"}
            help = meta.get("help", "")
        else:
            kw.setdefault("type", infer_type(hints[f.name]))
            if kw["type"] is None:
                del kw["type"]
            help = with_default(meta.get("help", ""), default)
            if "choices" not in kw:
                kw.setdefault("metavar", f.name.upper())
        kw.update(extra.get(f.name, {}))
        help = kw.pop("help", help)
        p.add_argument(*flags, dest=under + f.name, default=None, help=help, **kw)


def add_option_fields(group, schema: type, owner: str, added: dict, names: tuple[str, ...], **extra) -> None:
    """Like :func:`add_fields` for options several owners share (the encoders' tables): ``added``: flag →
    (action, [(owner, help)]); a flag several encoders share (e.g. --seed) lists each one's help."""
    for f in dataclasses.fields(schema):
        if f.name not in names:
            continue
        meta = dict(f.metadata)
        flag, help = meta.pop("flag", "--" + f.name.replace("_", "-")), meta.pop("help", "")
        default = field_default(schema, f.name)
        help = with_default(help, default)
        if flag in added:
            action, helps = added[flag]
            same = [i for i, (_, h) in enumerate(helps) if h == help]
            if same:
                helps[same[0]] = (f"{helps[same[0]][0]}, {owner}", help)
            else:
                helps.append((owner, help))
            action.help = "; ".join(f"{o}: {h}" for o, h in helps)
            continue
        kw = {"action": "store_true"} if isinstance(default, bool) else {**meta, **extra.get(f.name, {})}
        try:
            added[flag] = (group.add_argument(flag, dest=f.name, default=None, help=help, **kw), [(owner, help)])
        except argparse.ArgumentError:  # a registered encoder must not break every verb's parser
            warnings.warn(f"encoder {owner!r}: option {flag} clashes with an extract option; it is settable in "
                          f"the config's encoder: mapping only (rename the field)", stacklevel=2)


def add_config_args(p, example: str | None = None, overrides: bool = True) -> None:
    """``--config YAML`` and (``overrides``) ``--set KEY=VALUE`` (repeatable, dest ``overrides``) on parser ``p``."""
    p.add_argument("--config", default=None, metavar="YAML",
                   help="YAML of this verb's options (the flags' names with '_' for '-')"
                        + (f", e.g. {example}" if example else "") + "; options given on the command line win")
    if overrides:
        p.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                       help="option override, e.g. --set batch_size=8 (repeatable; values are YAML)")


def given(args: argparse.Namespace, schema: type, under: str = "") -> dict:
    """The fields of ``schema`` given on the command line (argparse default None = not given); a nested dataclass
    field as the mapping of its given fields."""
    out = {}
    for name, tp in field_types(schema).items():
        sub = nested_schema(tp)
        value = given(args, sub, f"{under}{name}.") if sub is not None else getattr(args, under + name, None)
        if value is not None and value != {}:
            out[name] = value
    return out


def options_from_args(schema: type, args: argparse.Namespace, **fixed):
    """``schema``: dataclass defaults ← ``--config`` YAML ← ``--set`` overrides ← the flags given ← ``fixed``.
    Unknown keys (a misspelt YAML key or ``--set`` key) raise ValueError naming the nearest valid key."""
    path = getattr(args, "config", None)
    data, where = (load_yaml(path), str(path)) if path is not None else ({}, "config")
    sets = getattr(args, "overrides", None)
    if sets:
        data = apply_overrides(data, sets)
        where = f"{where} + --set" if path is not None else "--set"
    return from_dict(schema, merge(merge(data, given(args, schema)), fixed), where)


def require(cfg, *names: str) -> None:
    """ValueError naming the first of ``names`` (fields of ``cfg``) that no flag, YAML or ``--set`` gave."""
    for name in names:
        if getattr(cfg, name) in (None, ""):
            raise ValueError(f"--{name.replace('_', '-')} is required (on the command line, in --config or as "
                             f"--set {name}=...)")
