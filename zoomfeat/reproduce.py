"""``zoomfeat reproduce table4``: the ZoomLDM paper's Table 4 (ABMIL on TCGA-BRCA subtyping and HRD) in one command.

What runs is data, not code: a preset YAML (default ``configs/reproduce/table4.yaml``) names the tasks (label
columns), the extractions (encoder + options, one bag folder each), the table's rows (an extraction read at 20x,
5x or 20x+5x), the reference row, and the options of every stage. The stages are the cohort verbs themselves:

1. **tile** the labelled slides at 20x with their 5x parents (:func:`zoomfeat.slides.tiling.tile_cohort`);
2. **recipe**: the ZoomLDM block / t / conditioning, chosen by the recipe sweep (:func:`zoomfeat.probe.sweep`) on
   held-out tuning patients — the table is then computed on the other patients only — or read from ``--recipe``;
3. **extract** every extraction (:func:`zoomfeat.extract.extract_cohort`; 5x features too when a row reads 5x);
4. **compare**: one ABMIL head per row and task on identical repeated patient-level splits, paired Δ against the
   reference row with corrected CIs and Holm p (:func:`mil.compare.compare`);
5. **table**: the paper's layout (rows × task columns) with the published values beside ours
   (``table4.csv``, ``table4.md``, printed).

Resumable like every cohort verb: tiling and extraction skip finished slides, the sweep reuses its per-slide cache,
and the sweep and the comparison are skipped when their inputs (settings, labels, bag files) are unchanged
(a signature file beside their outputs). Weights come from the weights registry (``--weights-registry``) under
the encoder's name, or an extraction's ``weights_key``; every one is checked before any slide is touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from mil.compare import PRIMARY, compare
from zoomfeat.bags import bag_path
from zoomfeat.config import from_dict, load_config, load_yaml, save_yaml, to_dict
from zoomfeat.encoders import build_from_options, get_encoder, load_weights_registry, resolve_weights
from zoomfeat.encoders.optimize import optimize_encoder
from zoomfeat.extract import extract_cohort, load_extract_config
from zoomfeat.io import atomic_path, sha256_file, write_text_atomic
from zoomfeat.names import resolve_slides, slide_id
from zoomfeat.probe import SweepSpec, sweep
from zoomfeat.slides.tiling import TilingConfig, tile_cohort

#: The packaged preset (``zoomfeat/configs/reproduce/table4.yaml``).
PRESET = "reproduce/table4.yaml"
ROW_MAGS = ("20x", "5x", "20x+5x")
#: The keys of a recipe (``best_recipe.yaml`` / ``--recipe``) that replace the preset's encoder options.
RECIPE_KEYS = ("blocks", "t", "conditioning")
N_STAGES = 5
SIGNATURE = ".reproduce_signature"


@dataclass
class Table4Config:
    """A Table 4 preset (``configs/reproduce/table4.yaml`` documents every key)."""

    title: str = "Table 4"
    published: Any = None  # YAML path (packaged or file) or mapping {source, metric, values, notes}
    tasks: list = field(default_factory=list)  # [{name, label, task, target}]
    extractions: dict = field(default_factory=dict)  # key → {encoder: {name, …}, recipe: bool, weights_key: str}
    rows: list = field(default_factory=list)  # [{key, label, extraction, mag}]
    reference: str | None = None  # a row key (default: the first row)
    tiling: dict = field(default_factory=dict)  # TilingConfig keys
    extract: dict = field(default_factory=dict)  # ExtractConfig cohort keys shared by every extraction
    sweep: dict = field(default_factory=dict)  # SweepSpec keys (zoomfeat probe)
    compare: dict = field(default_factory=dict)  # CompareConfig keys (zoomfeat compare)


@dataclass
class Table4Result:
    """What :func:`reproduce_table4` produced: the table (one row per preset row), its Markdown, the exit code
    (0 all done, 3 some slides failed in a stage) and one record per stage."""

    table: Any
    markdown: str
    out: Path
    exit_code: int
    stages: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ config
def load_table4_config(preset: str | os.PathLike | dict | None = None, overrides: list[str] | None = None
                       ) -> Table4Config:
    """Preset (default :data:`PRESET`) ← ``key.sub=value`` overrides, checked (one-line ``ValueError``)."""
    cfg = load_config(Table4Config, PRESET if preset is None else preset, overrides)
    check_config(cfg)
    return cfg


def check_config(cfg: Table4Config) -> None:
    """Every task, extraction and row well formed; row keys and labels unique; the reference a row key."""
    names = [t.get("name") for t in cfg.tasks if isinstance(t, dict)]
    if not cfg.tasks or len(names) != len(cfg.tasks) or len(set(names)) != len(names) or None in names:
        raise ValueError("preset: tasks must be a list of {name, label, task, target} with unique names")
    for t in cfg.tasks:
        if t.get("task") not in ("binary", "multiclass") or not t.get("target"):
            raise ValueError(f"preset: task {t['name']!r} needs task: binary|multiclass and a target column")
    for key, ex in cfg.extractions.items():
        if not isinstance(ex, dict) or not ex.get("encoder"):
            raise ValueError(f"preset: extraction {key!r} needs an encoder (a name or a mapping with a name)")
        bad = sorted(set(ex) - {"encoder", "recipe", "weights_key"})
        if bad:
            raise ValueError(f"preset: extraction {key!r}: unknown key(s) {bad}; known: encoder, recipe, weights_key")
    if sum(bool(ex.get("recipe")) for ex in cfg.extractions.values()) > 1:
        raise ValueError("preset: at most one extraction takes the swept recipe (recipe: true)")
    keys = [r.get("key") for r in cfg.rows]
    labels = [r.get("label") or r.get("key") for r in cfg.rows]
    if not cfg.rows or None in keys or len(set(keys)) != len(keys) or len(set(labels)) != len(labels):
        raise ValueError("preset: rows must be a list of {key, label, extraction, mag} with unique keys and labels")
    for r in cfg.rows:
        if r.get("extraction") not in cfg.extractions:
            raise ValueError(f"preset: row {r['key']!r}: extraction {r.get('extraction')!r} is not in extractions "
                             f"({', '.join(cfg.extractions)})")
        if r.get("mag", "20x") not in ROW_MAGS:
            raise ValueError(f"preset: row {r['key']!r}: mag must be one of {ROW_MAGS}, got {r.get('mag')!r}")
    if cfg.reference is not None and cfg.reference not in keys:
        raise ValueError(f"preset: reference {cfg.reference!r} is not a row key ({', '.join(keys)})")


def load_published(spec: Any) -> dict:
    """The published values: ``{source, metric, values: {row label: {task: value | null}}, notes}``."""
    data = dict(spec) if isinstance(spec, dict) else (load_yaml(spec) if spec else {})
    values = data.get("values") or {}
    if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
        raise ValueError("published values: 'values' must map row labels to {task: value or null}")
    return {**data, "values": values}


def row_label(row: dict) -> str:
    return str(row.get("label") or row["key"])


# ------------------------------------------------------------------------------------------------ weights
def extraction_mags(cfg: Table4Config, key: str) -> str:
    """``20x,5x`` when a row reads this extraction's 5x features, else ``20x`` (20x is every bag's root)."""
    return "20x,5x" if any(r.get("mag", "20x") != "20x" for r in cfg.rows if r["extraction"] == key) else "20x"


def encoder_mapping(key: str, ex: dict, registry: str | os.PathLike | None, recipe: dict | None = None) -> dict:
    """The extraction's ``encoder:`` mapping with the weights registry, its ``weights_key`` entry resolved and,
    for ``recipe: true``, the recipe's blocks / t / conditioning."""
    enc = dict(ex["encoder"]) if isinstance(ex["encoder"], dict) else {"name": str(ex["encoder"])}
    if registry is not None:
        enc.setdefault("weights_registry", str(registry))
    wkey = ex.get("weights_key")
    if wkey and not enc.get("weights"):
        reg = load_weights_registry(enc.get("weights_registry"))
        if wkey not in reg:
            raise FileNotFoundError(f"extraction {key!r}: no {wkey!r} entry in the weights registry "
                                    f"({enc.get('weights_registry') or 'default'})")
        enc["weights"] = str(reg[wkey])
    if ex.get("recipe") and recipe:
        enc.update({k: recipe[k] for k in RECIPE_KEYS if k in recipe})
    return enc


def encoder_options(key: str, ex: dict, registry, recipe: dict | None = None):
    """The extraction's encoder options dataclass (unknown options are errors naming the extraction)."""
    try:
        return load_extract_config({"encoder": encoder_mapping(key, ex, registry, recipe)}).encoder
    except ValueError as exc:
        raise ValueError(f"extraction {key!r}: {exc}") from None


def check_weights(cfg: Table4Config, registry) -> dict[str, Any]:
    """Every extraction's weights (and its SSL encoder's) resolved before any slide is touched; returns the
    options per extraction. A missing file is a one-line ``FileNotFoundError``."""
    out = {}
    for key, ex in cfg.extractions.items():
        opts = encoder_options(key, ex, registry)
        kw = opts.builder_kwargs()
        try:
            if get_encoder(opts.name).needs_weights and not kw.get("random_init"):
                resolve_weights(opts.name, opts.weights, opts.weights_registry)
            ssl = kw.get("ssl_encoder")
            if isinstance(ssl, str) and get_encoder(ssl).needs_weights and not kw.get("ssl_kwargs"):
                resolve_weights(ssl, kw.get("ssl_weights"), opts.weights_registry)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"extraction {key!r}: {exc} (here: --weights-registry YAML, or the override "
                                    f"extractions.{key}.encoder.weights=PATH)") from None
        out[key] = opts
    return out


# ------------------------------------------------------------------------------------------------ helpers
def signature(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def files_state(paths) -> list:
    """(name, size, mtime_ns) of existing files: what a stage's inputs looked like."""
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in map(Path, paths) if p.is_file())


def is_current(folder: Path, sig: str, *needed: str) -> bool:
    f = folder / SIGNATURE
    return f.is_file() and f.read_text().strip() == sig and all((folder / n).exists() for n in needed)


def mark_current(folder: Path, sig: str) -> None:
    write_text_atomic(folder / SIGNATURE, sig + "\n")


def labelled_slides(slides, labels: str | os.PathLike, columns: tuple[str, ...] = ()) -> list[Path]:
    """The slides (folder, file or CSV) that the labels table names; an error when it names none of them or lacks
    one of ``columns`` (the tasks' targets)."""
    import pandas as pd

    if not Path(labels).is_file():
        raise FileNotFoundError(f"labels CSV not found: {labels}")
    df = pd.read_csv(labels, dtype={"slide": str})
    missing = [c for c in ("slide", *columns) if c not in df.columns]
    if missing:
        raise ValueError(f"labels CSV {labels} has no column(s) {missing} (it has {list(df.columns)}); the preset's "
                         "tasks read " + ", ".join(columns))
    found = resolve_slides(slides)
    if not found:
        raise FileNotFoundError(f"no slides found in {slides}")
    wanted = set(df["slide"].astype(str))
    mine = [s for s in found if slide_id(s) in wanted]
    if not mine:
        raise ValueError(f"the labels table {labels} names none of the {len(found)} slides in {slides}")
    return mine


# ------------------------------------------------------------------------------------------------ stages
def stage_tile(slides: list[Path], out: Path, cfg: Table4Config, progress: bool) -> dict:
    tcfg = from_dict(TilingConfig, cfg.tiling, "preset: tiling")
    report = tile_cohort([str(s) for s in slides], out / "tiles", workers=int(tcfg.workers), progress=progress,
                         mpp=cfg.extract.get("mpp"), mpp_csv=cfg.extract.get("mpp_csv"), **tcfg.tile_kwargs())
    ok = {r.slide for r in report.results if r.status in ("done", "skipped")}
    return {"stage": "tile", "exit_code": stage_code(report), "counts": report.counts(), "report": report,
            "slides": [s for s in slides if s.stem in ok]}


def stage_code(report) -> int:
    """A cohort stage's exit code for the run: 2 when no slide has its output (done now or before), 3 when some
    slides failed or stayed locked, else 0. (Unlike a single verb's code, a rerun in which only the slides that
    failed before fail again is partial, not a total failure: the others were skipped because they are done.)"""
    if not any(r.status in ("done", "skipped") for r in report.results):
        return 2
    return 3 if report.failed or report.locked else 0


def sweep_spec(cfg: Table4Config, ssl_encoder: str | None):
    """The preset's SweepSpec: the tasks' label columns, the recipe chosen on the first (or ``select_task``)."""
    targets = list(dict.fromkeys(t["target"] for t in cfg.tasks))
    base = {"tasks": targets, "select_task": targets[0], **({"ssl_encoder": ssl_encoder} if ssl_encoder else {})}
    return from_dict(SweepSpec, {**base, **cfg.sweep}, "preset: sweep")


def stage_recipe(slides: list[Path], labels: Path, out: Path, cfg: Table4Config, opts: dict, recipe,
                 progress: bool) -> dict:
    """The recipe (given, swept on tuning patients, or none) and the labels the comparison uses."""
    key = next((k for k, ex in cfg.extractions.items() if ex.get("recipe")), None)
    if key is None:
        return {"stage": "recipe", "exit_code": 0, "recipe": {}, "labels": labels, "note": "no recipe extraction"}
    if recipe is not None:
        data = load_yaml(recipe)
        enc = data.get("encoder") if isinstance(data.get("encoder"), dict) else data
        got = {k: enc[k] for k in RECIPE_KEYS if k in enc}
        if not got:
            raise ValueError(f"--recipe {recipe}: no {', '.join(RECIPE_KEYS)} (under encoder: or at the top level)")
        return {"stage": "recipe", "exit_code": 0, "recipe": got, "labels": labels, "note": f"given ({recipe})"}
    return sweep_recipe(slides, labels, out, cfg, opts[key], progress)


def sweep_recipe(slides: list[Path], labels: Path, out: Path, cfg: Table4Config, opts, progress: bool) -> dict:
    """Run (or reuse) the recipe sweep; the comparison's labels leave out the tuning patients."""
    kw = opts.builder_kwargs()
    spec = sweep_spec(cfg, kw.get("ssl_encoder"))
    weights = resolve_weights(opts.name, opts.weights, opts.weights_registry)
    probe = out / "probe"
    sig = signature({"spec": dataclasses.asdict(spec), "weights": str(weights), "labels": sha256_file(labels),
                     "tiles": files_state((out / "tiles" / "coords").glob("*.h5")), "ssl": kw.get("ssl_weights")})
    failed: list = []
    reused = is_current(probe, sig, "best_recipe.yaml", "split_patients.csv")
    if not reused:
        res = sweep([Path(s) for s in slides], out / "tiles", labels, weights, probe, spec,
                    ssl_weights=kw.get("ssl_weights"), registry=opts.weights_registry, progress=progress,
                    official_config=kw.get("config"), ema=kw.get("ema", True),
                    device=cfg.extract.get("device") or "auto")
        failed = res["failed"]
        mark_current(probe, sig)
    enc = load_yaml(probe / "best_recipe.yaml")["encoder"]
    report_labels = report_patients_labels(labels, probe / "split_patients.csv", out / "labels_report.csv")
    return {"stage": "recipe", "exit_code": 3 if failed else 0, "recipe": {k: enc[k] for k in RECIPE_KEYS},
            "labels": report_labels, "failed": failed,
            "note": f"{'sweep up to date' if reused else 'swept'}: {probe / 'best_recipe.yaml'}"}


def report_patients_labels(labels: Path, split_csv: Path, dest: Path) -> Path:
    """``labels`` without the sweep's tuning patients (they chose the recipe: they never score it)."""
    import pandas as pd

    split = pd.read_csv(split_csv, dtype={"slide": str, "patient": str})
    tune = set(split.loc[split["subset"] == "tune", "patient"].astype(str))
    if not tune:
        return labels
    df = pd.read_csv(labels, dtype={"slide": str, "patient": str})
    pat = df["patient"].astype(str) if "patient" in df.columns else df["slide"].astype(str)
    with atomic_path(dest) as tmp:
        df[~pat.isin(tune)].to_csv(tmp, index=False)
    return dest


def stage_extract(slides: list[Path], out: Path, cfg: Table4Config, registry, recipe: dict, progress: bool,
                  echo: Callable[[str], None]) -> dict:
    """Every extraction into ``OUT/features/features_{key}`` (finished slides are skipped)."""
    import gc
    import weakref

    codes, counts = [], {}
    for key, ex in cfg.extractions.items():
        enc = encoder_mapping(key, ex, registry, recipe)
        ecfg = load_extract_config({**cfg.extract, "encoder": enc, "mags": extraction_mags(cfg, key), "tag": key,
                                    "out": str(out / "features"), "tiles": str(out / "tiles"), "progress": progress})
        encoder = build_from_options(ecfg.encoder)
        if ecfg.compile or ecfg.channels_last:
            optimize_encoder(encoder, compile=ecfg.compile_backend if ecfg.compile else False,
                             channels_last=ecfg.channels_last,
                             mode=None if ecfg.compile_mode in (None, "default") else ecfg.compile_mode)
        report = extract_cohort([str(s) for s in slides], encoder, ecfg.out, tiles_dir=ecfg.tiles, opts=ecfg)
        alive = weakref.ref(encoder)
        del encoder
        if alive() is not None:  # kept by a reference cycle: free its weights before the next model loads (a
            gc.collect()        # full collection costs 0.3-1 s in a process holding torch, so only then)
        codes.append(stage_code(report))
        counts[key] = report.counts()
        echo(f"      extract {key} ({ecfg.encoder.name}, {','.join(ecfg.mags)}): " + _counts(report.counts())
             + "".join(f"\n        FAILED {r.slide}: {r.error}" for r in report.failed))
    code = 2 if 2 in codes else (3 if 3 in codes else 0)
    return {"stage": "extract", "exit_code": code, "counts": counts}


def compare_config(cfg: Table4Config, labels: Path, out: Path, progress: bool = True) -> dict:
    """The ``zoomfeat compare`` config of the table: one entry per row, the preset's tasks and reference
    (``progress=False`` also silences the heads' epoch bars)."""
    entries = [{"name": r["key"], "bags": str(bag_path(out / "features", r["extraction"], "x").parent),
                "mag": r.get("mag", "20x")} for r in cfg.rows]
    tasks = [{"name": t["name"], "task": t["task"], "target": t["target"]} for t in cfg.tasks]
    hparams = {**(cfg.compare.get("hparams") or {}), **({} if progress else {"progress": False})}
    return {**cfg.compare, "labels": str(labels), "encoders": entries, "tasks": tasks, "hparams": hparams,
            "reference": cfg.reference or cfg.rows[0]["key"]}


def stage_compare(cfg: Table4Config, labels: Path, out: Path, progress: bool = True) -> dict:
    """ABMIL on identical repeated splits for every row (skipped when settings, labels and bags are unchanged)."""
    import pandas as pd

    ccfg = compare_config(cfg, labels, out, progress)
    folder = out / "compare"
    bags = [p for e in ccfg["encoders"] for p in Path(e["bags"]).glob("*.h5")]
    quiet = {**ccfg, "hparams": {k: v for k, v in ccfg["hparams"].items() if k != "progress"}}  # bars: not results
    sig = signature({"config": quiet, "labels": sha256_file(labels), "bags": files_state(bags)})
    if is_current(folder, sig, "compare.csv"):
        return {"stage": "compare", "exit_code": 0, "table": pd.read_csv(folder / "compare.csv"), "note": "up to date"}
    table = compare(ccfg, folder)
    mark_current(folder, sig)
    return {"stage": "compare", "exit_code": 0, "table": table, "note": f"{folder}/compare.md"}


# ------------------------------------------------------------------------------------------------ the table
def build_table(compare_table, cfg: Table4Config, published: dict):
    """One row per preset row: per task our AUC × 100 with its CI, the published value, Δ vs the reference
    (× 100) with its CI and the Holm-adjusted p."""
    import numpy as np
    import pandas as pd

    prim = compare_table[compare_table["metric"].isin(PRIMARY)]
    recs = []
    for r in cfg.rows:
        rec: dict[str, Any] = {"row": row_label(r), "key": r["key"]}
        pub = published["values"].get(row_label(r)) or {}
        for t in cfg.tasks:
            g = prim[(prim["encoder"].astype(str) == r["key"]) & (prim["task"].astype(str) == t["name"])]
            get = (lambda c: float(g.iloc[0][c]) if len(g) and pd.notna(g.iloc[0][c]) else np.nan)  # noqa: E731
            n = t["name"]
            rec.update({f"{n}_auc": 100 * get("mean"), f"{n}_ci_low": 100 * get("ci_low"),
                        f"{n}_ci_high": 100 * get("ci_high"),
                        f"{n}_published": np.nan if pub.get(n) is None else float(pub[n]),
                        f"{n}_delta": 100 * get("delta"), f"{n}_delta_ci_low": 100 * get("delta_ci_low"),
                        f"{n}_delta_ci_high": 100 * get("delta_ci_high"), f"{n}_p_adj": get("p_adj"),
                        f"{n}_n_slides": get("n_slides")})
        recs.append(rec)
    return pd.DataFrame(recs)


def _num(x: float, signed: bool = False) -> str:
    import math

    return "—" if x is None or not math.isfinite(x) else (f"{x:+.2f}" if signed else f"{x:.2f}")


def _p(x: float) -> str:
    import math

    return "—" if not math.isfinite(x) else (f"{x:.2g}" if x >= 0.001 else "<0.001")


def to_markdown(table, cfg: Table4Config, published: dict, recipe_note: str = "") -> str:
    """The table in the paper's layout (rows × task columns), ours beside the paper's, then the notes."""
    ref = next(row_label(r) for r in cfg.rows if r["key"] == (cfg.reference or cfg.rows[0]["key"]))
    c = {"model": "abmil", "n_repeats": 1, "n_folds": 5, **cfg.compare}
    n = {t["name"]: table[f"{t['name']}_n_slides"].max() for t in cfg.tasks}
    head = "| Row | " + " | ".join(f"{t.get('label') or t['name']} (ours) | paper | Δ vs {ref} | p_adj"
                                   for t in cfg.tasks) + " |"
    lines = [f"# {cfg.title}", "",
             f"Ours: {c['model']}, {c['n_repeats']} × {c['n_folds']}-fold patient-level CV, the same splits for every "
             "row (" + ", ".join(f"{t['name']}: {_num(n[t['name']]).split('.')[0]} slides" for t in cfg.tasks)
             + "). AUC × 100, mean over the fold models [95% CI, corrected resampled t]; Δ: paired per-split "
             f"difference to {ref} [95% CI]; p_adj: Holm over the table. Paper: "
             f"{' '.join(str(published.get('source', 'not given')).split())} n/r = not retrieved.", "",
             head, "|---|" + "---|---|---|---|" * len(cfg.tasks)]
    for r in table.itertuples(index=False):
        d = r._asdict()
        cells = []
        for t in cfg.tasks:
            k = t["name"]
            ours = f"{_num(d[f'{k}_auc'])} [{_num(d[f'{k}_ci_low'])}, {_num(d[f'{k}_ci_high'])}]"
            pub = "n/r" if d[f"{k}_published"] != d[f"{k}_published"] else _num(d[f"{k}_published"])
            delta = ("ref" if d["row"] == ref else f"{_num(d[f'{k}_delta'], True)} "
                     f"[{_num(d[f'{k}_delta_ci_low'], True)}, {_num(d[f'{k}_delta_ci_high'], True)}]")
            cells += [ours, pub, delta, "—" if d["row"] == ref else _p(d[f"{k}_p_adj"])]
        lines.append(f"| {d['row']} | " + " | ".join(cells) + " |")
    notes = published.get("notes") or {}
    lines += ["", *(f"- {k}: {' '.join(str(v).split())}" for k, v in notes.items())]
    lines += [f"- {t['name']}: not run (too few patients per class for the splits? see compare/compare.md)"
              for t in cfg.tasks if table[f"{t['name']}_auc"].isna().all()]
    if recipe_note:
        lines.append(f"- ZoomLDM recipe: {recipe_note}")
    return "\n".join(lines) + "\n"


def write_table(table, markdown: str, out: Path) -> None:
    with atomic_path(out / "table4.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    write_text_atomic(out / "table4.md", markdown)


# ------------------------------------------------------------------------------------------------ the run
def _counts(c: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(c.items())) or "nothing to do"


def reproduce_table4(slides, labels: str | os.PathLike, out: str | os.PathLike,
                     registry: str | os.PathLike | None = None, preset: str | os.PathLike | dict | None = None,
                     overrides: list[str] | None = None, recipe: str | os.PathLike | None = None,
                     progress: bool = True, echo: Callable[[str], None] = print) -> Table4Result:
    """Run every stage (module docstring) into ``out``; a rerun resumes. Bad input (preset, labels, missing
    weights) raises a one-line error before any slide is touched; a stage that no slide got through stops the
    run (exit code 2)."""
    cfg = load_table4_config(preset, overrides)
    published = load_published(cfg.published)
    labels, out = Path(labels), Path(out)
    if registry is not None and not Path(registry).is_file():
        raise FileNotFoundError(f"weights registry not found: {registry}")
    opts = check_weights(cfg, registry)
    todo = labelled_slides(slides, labels, tuple(dict.fromkeys(t["target"] for t in cfg.tasks)))
    out.mkdir(parents=True, exist_ok=True)
    save_yaml({**to_dict(cfg), "slides": str(slides), "labels": str(labels), "weights_registry": str(registry)},
              out / "config.yaml")
    stages = []
    clock = _Clock()
    st = stage_tile(todo, out, cfg, progress)
    stages.append(st)
    echo(f"[1/{N_STAGES}] tile: {len(todo)} labelled slides → {out / 'tiles'} ({_counts(st['counts'])}; {clock()})"
         + "".join(f"\n        FAILED {r.slide}: {r.error}" for r in st["report"].failed))
    if st["exit_code"] == 2:
        return _stopped(stages, out, "tile", echo)
    todo = st["slides"]  # a slide that failed tiling goes no further in this run (a rerun retries it)
    st = stage_recipe(todo, labels, out, cfg, opts, recipe, progress)
    stages.append(st)
    shown = ", ".join(f"{k} {v}" for k, v in st["recipe"].items()) or "—"
    echo(f"[2/{N_STAGES}] recipe: {shown} ({st['note']}; {clock()}); comparison labels: {st['labels']}")
    cmp_labels, rec = Path(st["labels"]), st["recipe"]
    ex_slides = labelled_slides(todo, cmp_labels) if cmp_labels != labels else todo
    echo(f"[3/{N_STAGES}] extract: {len(cfg.extractions)} extraction(s) × {len(ex_slides)} slides → "
         f"{out / 'features'}")
    st = stage_extract(ex_slides, out, cfg, registry, rec, progress, echo)
    stages.append(st)
    echo(f"      extract: {clock()}")
    if st["exit_code"] == 2:
        return _stopped(stages, out, "extract", echo)
    echo(f"[4/{N_STAGES}] compare: {len(cfg.rows)} rows × {len(cfg.tasks)} tasks on the same splits → "
         f"{out / 'compare'}")
    st = stage_compare(cfg, cmp_labels, out, progress)
    stages.append(st)
    echo(f"      compare: {st['note']} ({clock()})")
    table = build_table(st["table"], cfg, published)
    recipe_note = (", ".join(f"{k} {v}" for k, v in rec.items()) + f" ({stages[1]['note']})") if rec else ""
    md = to_markdown(table, cfg, published, recipe_note)
    write_table(table, md, out)
    echo(f"[5/{N_STAGES}] table: {out / 'table4.md'}, {out / 'table4.csv'}\n\n{md}")
    code = 3 if any(s["exit_code"] == 3 for s in stages) else 0
    return Table4Result(table, md, out, code, stages)


class _Clock:
    """Seconds since the last call, as text (the stage lines' timing)."""

    def __init__(self):
        import time

        self.time = time.perf_counter
        self.t0 = self.time()

    def __call__(self) -> str:
        t, self.t0 = self.t0, self.time()
        return f"{self.t0 - t:.1f} s"


def _stopped(stages: list, out: Path, stage: str, echo) -> Table4Result:
    echo(f"reproduce table4: every slide failed in stage {stage}; stopping (see its summary.csv)")
    return Table4Result(None, "", out, 2, stages)


__all__ = ["Table4Config", "Table4Result", "reproduce_table4", "load_table4_config", "check_config",
           "load_published", "build_table", "to_markdown", "compare_config", "check_weights", "sweep_spec",
           "PRESET"]
