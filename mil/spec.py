"""Feature spec: what a bag's features were made with (encoder, weights hash, recipe, tile size, µm/px).

A trained head is only meaningful on features made exactly the same way, so a model records the spec of its
training bags and every bag it scores is checked against it; a difference is refused with a message naming it,
never scored. The spec is read from the attributes ``zoomfeat extract`` writes on each bag (``zoomfeat.bags``).

Compared: encoder name, weights sha256, feature width, the recipe (the encoder's recorded config: blocks, t,
conditioning, SSL encoder + its hash, noise seed, input size, normalisation, …; the 5x conditioning fill when 5x
features are used), tile size (px) and target µm/px. Recorded but not compared: autocast precision (fp16 on a GPU
vs fp32 on a CPU is numerical noise, and the same bag recipe runs on both), weights path, extracted mags (a bag
only needs the level the head reads).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping
from zoomfeat.bags import read_bag_attrs

#: encoder_config keys that are not part of the recipe (compared elsewhere or not at all)
_NOT_RECIPE = ("name", "dim", "precision")
#: recipe keys that only matter when the head reads 5x features
_ONLY_5X = ("missing_children_5x",)


class SpecMismatchError(ValueError):
    """Bags made with another feature spec than the model's (the CLI turns it into exit code 2)."""


def _num(v: Any) -> Any:
    """Numbers from HDF5 come back as numpy scalars or lists; make them plain and comparable (1 == 1.0)."""
    if isinstance(v, (bool, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_num(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _num(x) for k, x in v.items()}
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() else f


def spec_from_attrs(attrs: Mapping[str, Any]) -> dict:
    """The feature spec of one bag from its file attributes; raises ValueError when the bag records none."""
    if not attrs or not attrs.get("encoder"):
        raise ValueError("bag records no feature spec (no 'encoder' attribute: not written by zoomfeat extract); "
                         "re-extract it with `zoomfeat extract` so the model can check it")
    cfg = attrs.get("encoder_config")
    recipe = {k: v for k, v in (cfg if isinstance(cfg, dict) else {}).items() if k not in _NOT_RECIPE}
    if attrs.get("missing_children_5x") is not None:
        recipe["missing_children_5x"] = attrs["missing_children_5x"]
    mags = attrs.get("mags")
    return _num({
        "encoder": str(attrs["encoder"]),
        "weights_sha256": attrs.get("encoder_weights_sha256"),
        "dim": attrs.get("dim"),
        "recipe": recipe,
        "tile_px": attrs.get("patch_size"),
        "target_mpp": attrs.get("target_mpp"),
        "mags": list(mags) if isinstance(mags, (list, tuple)) else ([mags] if mags else None),
        "precision": attrs.get("precision"),
        "weights_path": attrs.get("encoder_weights_path"),
    })


def read_spec(path: str | os.PathLike) -> dict:
    """Feature spec of the bag file at ``path``."""
    try:
        attrs = read_bag_attrs(path)
    except OSError as exc:
        raise ValueError(f"{path}: unreadable bag ({exc})") from exc
    try:
        return spec_from_attrs(attrs)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def needs_5x(mag: str) -> bool:
    return str(mag) in ("5x", "20x+5x")


def _flat(spec: Mapping, mag: str) -> dict:
    out = {"encoder": spec.get("encoder"), "weights sha256": spec.get("weights_sha256"), "feature dim": spec.get("dim"),
           "tile size (px)": spec.get("tile_px"), "target mpp": spec.get("target_mpp")}
    for k, v in sorted((spec.get("recipe") or {}).items()):
        if k in _ONLY_5X and not needs_5x(mag):
            continue
        out[f"recipe.{k}"] = v
    return out


def _show(v: Any) -> str:
    s = str(v)
    return s[:12] + "…" if isinstance(v, str) and len(v) == 64 else s  # sha256: enough to tell them apart


def differences(model_spec: Mapping, bag_spec: Mapping, mag: str = "20x", other: str = "bags",
                this: str = "model") -> list[str]:
    """Human-readable differences ``"<what>: model X, bags Y"``; empty when the bag may be scored."""
    a, b = _flat(model_spec, mag), _flat(bag_spec, mag)
    diffs = [f"{k}: {this} {_show(a.get(k))}, {other} {_show(b.get(k))}" for k in list(a) + [k for k in b if k not in a]
             if _num(a.get(k)) != _num(b.get(k))]
    if a.get("encoder") != b.get("encoder"):  # another encoder: its recipe differs in every key, say so once
        diffs = [d for d in diffs if not d.startswith("recipe.")] + ["recipe: another encoder's"]
    mags = bag_spec.get("mags")
    if needs_5x(mag) and mags is not None and "5x" not in mags:
        diffs.append(f"magnification: the model reads {mag} features, the {other} have only {', '.join(mags)} "
                     "(extract with --mags 20x,5x)")
    return diffs


def check_specs(model_spec: Mapping, bag_files: Mapping[str, Any], mag: str = "20x") -> None:
    """Refuse (SpecMismatchError) when any bag's spec differs from the model's, naming the first difference(s).

    Every bag is checked before anything is scored: a folder mixing encoders is a user error, not a partial
    success.
    """
    bad: list[tuple[str, list[str]]] = []
    for slide, path in bag_files.items():
        try:
            diffs = differences(model_spec, read_spec(path), mag)
        except ValueError as exc:
            diffs = [str(exc)]
        if diffs:
            bad.append((slide, diffs))
    if bad:
        slide, diffs = bad[0]
        raise SpecMismatchError(
            f"feature spec mismatch: {len(bad)} of {len(bag_files)} bag(s) were not made like the model's training "
            f"bags, refusing to score them — {'; '.join(diffs)} (first: {slide})")


def cohort_spec(bag_files: Iterable[Any], mag: str = "20x", what: str = "training bags") -> dict:
    """The one spec shared by every bag in ``bag_files`` (ValueError naming the first difference otherwise)."""
    spec, first = None, None
    for path in bag_files:
        s = read_spec(path)
        if spec is None:
            spec, first = s, path
            continue
        diffs = differences(spec, s, mag)
        if diffs:
            raise ValueError(f"{what} mix feature specs ({first} vs {path}): {'; '.join(diffs)}")
    if spec is None:
        raise ValueError(f"no {what}")
    return spec


def check_cohort_specs(bag_files: Mapping[str, Any], mag: str = "20x", what: str = "bags") -> dict | None:
    """Check every bag's feature spec against the cohort's — the spec most bags share, never the first bag's — and
    refuse (:class:`SpecMismatchError`, one line) naming each odd bag and how it differs; also when no spec has a
    majority. Returns the cohort's spec, or None when no bag records one (peer CLAM / TRIDENT bags: only their
    width can be checked). Bags that cannot be read are left to the cohort builder (skipped and listed there); a
    readable bag without a spec among bags with one is odd."""
    import json

    specs: dict[str, dict | None] = {}
    for slide, path in bag_files.items():
        if not isinstance(path, (str, os.PathLike)):
            continue  # in-memory features carry no spec
        try:
            attrs = read_bag_attrs(path)
        except (OSError, ValueError):
            continue
        try:
            specs[slide] = spec_from_attrs(attrs)
        except ValueError:
            specs[slide] = None
    if not any(v is not None for v in specs.values()):
        return None
    groups: dict[str, list[str]] = {}
    for slide, spec in specs.items():
        key = "none" if spec is None else json.dumps(_flat(spec, mag), sort_keys=True, default=str)
        groups.setdefault(key, []).append(slide)
    ranked = sorted(groups.values(), key=len, reverse=True)
    if len(ranked) == 1:
        return specs[ranked[0][0]]
    if len(ranked[0]) == len(ranked[1]) or specs[ranked[0][0]] is None:
        sizes = ", ".join(f"{len(g)} like {g[0]}" for g in ranked)
        raise SpecMismatchError(f"{what} mix feature specs with no majority ({sizes}); "
                                "extract every slide with one encoder and recipe")
    ref = specs[ranked[0][0]]
    odd = sorted(s for g in ranked[1:] for s in g)
    shown = []
    for slide in odd[:5]:
        d = ["records no feature spec"] if specs[slide] is None else \
            differences(ref, specs[slide], mag, other="bag", this="cohort")
        shown.append(f"{slide} ({'; '.join(d)})")
    raise SpecMismatchError(
        f"feature spec mismatch: {len(odd)} of {len(specs)} {what} were not made like the other {len(ranked[0])}: "
        f"{', '.join(shown)}{' …' if len(odd) > 5 else ''}; re-extract or remove the odd bag(s)")


def describe(spec: Mapping, mag: str | None = None) -> list[tuple[str, str]]:
    """(field, value) rows for the model card."""
    rows = [("encoder", str(spec.get("encoder"))), ("weights sha256", str(spec.get("weights_sha256"))),
            ("feature dim", str(spec.get("dim"))), ("tile size", f"{spec.get('tile_px')} px"),
            ("target resolution", f"{spec.get('target_mpp')} µm/px")]
    if mag:
        rows.append(("magnification / fusion", str(mag)))
    rows += [(f"recipe: {k}", str(v)) for k, v in sorted((spec.get("recipe") or {}).items())]
    rows.append(("precision (not compared)", str(spec.get("precision"))))
    return rows
