"""``zoomfeat compare``: the same patient-level splits over bag folders × frameworks × tasks → paired statistics.

Every encoder entry (a bag folder + a magnification choice) and every framework (``linear`` probe, ``abmil``,
``transmil``) is trained on the SAME ``n_repeats`` × ``n_folds`` splits: the slides used are those with a usable
bag in every entry (slides missing or bad in any entry are dropped for all and listed in ``skipped_{task}.csv``),
and each task's split table is made once (``splits_{task}.csv``, reused; or given as ours / Patho-Bench's).

Statistics (:mod:`mil.stats`): each row's CI comes from its per-split scores (corrected resampled t-test); each
row is compared with a reference row on the same splits: per-split Δ, mean Δ with its corrected CI and p, and
Holm-adjusted p over ONE family: every comparison of the primary metric in the table, all rows × tasks with AUC
and c-index together (the count the verdict names; each secondary metric is its own family). ``compare.md`` marks
rows win / tie / loss (Holm p < 0.05) and ends with the verdict and a power line (:func:`power_statement`),
``compare_forest.png`` plots Δ with its unadjusted CI coloured by the Holm outcome, :func:`verdict` turns the table
into one sentence.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mil.cv import CVConfig, cv_config, splits_for
from mil.data import Cohort, build_cohort, load_labels
from mil.folds import finish_folds, plan_folds
from mil.models import get_head
from mil.pathobench import read_pathobench
from mil.plots import compare_plot, forest_plot
from mil.results import CVResult, write_result
from mil.spec import SpecMismatchError, check_cohort_specs
from mil.splits import load_splits, save_splits
from mil.stats import corrected_ttest, detectable_delta, holm, outcome, se_from_ci, split_ratio
from mil.tasks import TASKS
from mil.trainer import check_hparams, hparams_for
from zoomfeat.bags import list_bags
from zoomfeat.config import from_dict, save_yaml, to_dict
from zoomfeat.io import atomic_path, write_text_atomic
from zoomfeat.jobs import iter_jobs, run_jobs, warm_workers



@dataclass
class CompareConfig(CVConfig):
    """``zoomfeat compare``: a ``mil cv`` config plus the encoder entries, tasks, frameworks and reference row."""

    encoders: list = field(default_factory=list)  # [{name, bags, mag}] or "[name=]folder[:mag]" strings
    tasks: list = field(default_factory=lambda: ["hrd"])  # names in TASK_DEFAULTS or {name, task, target}
    n_repeats: int = 3
    frameworks: list | None = None  # registered heads: linear | abmil | transmil | twobranch | ... (default: [model])
    reference: str | None = None  # NAME or NAME/FRAMEWORK (default: the first entry)
    reference_note: str | None = None  # what the reference is (e.g. "random-init tiny-vit"): in compare.md / verdict


TASK_DEFAULTS = {
    "subtype": {"task": "multiclass", "target": "subtype"},
    "hrd": {"task": "binary", "target": "hrd"},
    "survival": {"task": "survival"},
}


def parse_entry(spec: Any) -> dict:
    """An encoder entry from a dict {name, bags, mag[, encoder]} or a string ``[name=]folder[:mag]``."""
    if isinstance(spec, dict):
        e = dict(spec)
    else:
        s = str(spec)
        name = None
        if "=" in s:
            name, s = s.split("=", 1)
        mag = "20x"
        if ":" in s and s.rsplit(":", 1)[1].lower() in ("20x", "5x", "20x+5x"):
            s, mag = s.rsplit(":", 1)
        e = {"name": name, "bags": s, "mag": mag}
    if not e.get("bags"):
        raise ValueError(f"encoder entry {spec!r} has no bag folder")
    e.setdefault("mag", "20x")
    e["name"] = e.get("name") or f"{Path(e['bags']).name}-{e['mag']}"
    return e


def parse_task(spec: Any) -> dict:
    """A task from a dict {name, task, target} or a name in TASK_DEFAULTS (subtype, hrd, survival)."""
    t = dict(spec) if isinstance(spec, dict) else {"name": str(spec), **TASK_DEFAULTS.get(str(spec), {})}
    if t.get("task") not in TASKS:
        raise ValueError(f"task {spec!r}: 'task' must be one of {TASKS}")
    t.setdefault("name", t.get("target") or t["task"])
    return t


def compare(cfg: dict | CompareConfig, out_dir: str | os.PathLike, jobs: int | None = None) -> pd.DataFrame:
    """Run every (encoder entry × framework × task) on shared splits; write compare.csv/.md/.png and
    compare_forest.png; return the long table (one row per encoder × framework × task × metric). ``jobs``: worker
    processes for the folds (default: the usable cores); the outputs do not depend on it."""
    warm_workers(["mil.compare"], jobs)  # the workers start while this process reads the bags and plans the folds
    cfg = cv_config(cfg, CompareConfig)
    cfg = dataclasses.replace(cfg, frameworks=_frameworks(cfg))
    entries = [parse_entry(e) for e in cfg.encoders]
    if not entries:
        raise ValueError("compare needs at least one encoder entry (encoders: [{name, bags, mag}] or --bags)")
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"encoder entry names must be unique: {names}")
    reference = resolve_reference(cfg.reference, names, cfg.frameworks)
    tasks = [parse_task(t) for t in cfg.tasks]
    # before any task runs (a task's ValueError only skips it); each framework × task then reads its own keys
    check_hparams(cfg.frameworks, list(dict.fromkeys(t["task"] for t in tasks)), cfg.hparams or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml({**to_dict(cfg), "encoders": entries, "tasks": tasks}, out / "config.yaml")
    files = {e["name"]: list_bags(e["bags"], encoder=e.get("encoder")) for e in entries}
    long_rows: list[dict] = []
    failed: list[tuple[str, str]] = []
    planned: list[TaskPlan] = []
    for t in tasks:  # every task is planned first, so that one pool runs the folds of all of them without a pause
        try:
            planned.append(_plan_task(cfg, t, entries, files, out))
        except SpecMismatchError:
            raise  # foreign features in an entry: the user's error for every task, not one task's skip
        except ValueError as exc:  # e.g. too few patients in a class for this task: the other tasks still run
            warnings.warn(f"compare: task {t['name']} skipped: {exc}", stacklevel=2)
            failed.append((t["name"], str(exc)))
    results = iter_jobs([(_value_error_as_result, c, {}) for tp in planned for p in tp.plans for c in p.calls], jobs)
    plot_jobs: list = []
    for tp in planned:
        try:
            long_rows += _finish_task(tp, results, plot_jobs)
        except SpecMismatchError:
            raise
        except ValueError as exc:  # a fold of this task could not be fitted: its other cells are not written
            warnings.warn(f"compare: task {tp.task['name']} skipped: {exc}", stacklevel=2)
            failed.append((tp.task["name"], str(exc)))
    for _ in results:  # none is left: ends the pool call (else it is closed half-way when garbage-collected)
        pass
    run_jobs(plot_jobs, jobs)  # each cell's ROC / KM plot, on the pool now that the folds are done
    if not long_rows:
        raise ValueError("compare: every task failed: " + "; ".join(f"{n}: {r}" for n, r in failed))
    table = paired_statistics(pd.DataFrame(long_rows), reference)
    fold_table = table.attrs.pop("folds")
    with atomic_path(out / "compare.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out / "compare_folds.csv") as tmp:
        fold_table.to_csv(tmp, index=False)
    primary = table[table["metric"].isin(PRIMARY)]
    design = f"{cfg.n_repeats}×{cfg.n_folds}-fold"
    if cfg.plots:
        compare_plot(primary.assign(encoder=_row_names(primary)), out / "compare.png",
                     title=f"{'/'.join(cfg.frameworks)}: encoder comparison ({design})")
        forest_plot(primary.assign(encoder=_row_names(primary)), out / "compare_forest.png",
                    title=f"Δ vs reference, unadjusted 95% CI (corrected resampled t, {design}); colour: Holm outcome")
    md = to_markdown(table, to_dict(cfg))
    if failed:
        md += "\nTasks not run:\n\n" + "".join(f"- {n}: {r}\n" for n, r in failed)
    write_text_atomic(out / "compare.md", md)
    return table


PRIMARY = ("auc", "c_index")


def _frameworks(cfg: CompareConfig) -> list[str]:
    """The config's frameworks (a list or a comma-separated string; default: its ``model``), each a registered
    head (:func:`mil.models.head_names`)."""
    fw = cfg.frameworks or [cfg.model or "abmil"]
    fw = [f.strip().lower() for f in (fw.split(",") if isinstance(fw, str) else fw) if str(f).strip()]
    for f in fw:
        get_head(f)  # an unknown framework: ValueError naming the nearest registered head
    return list(dict.fromkeys(fw))


def resolve_reference(ref: str | None, names: list[str], frameworks: list[str]) -> dict:
    """``NAME`` (an encoder entry: the reference within each framework) or ``NAME/FRAMEWORK`` (one row for all);
    default: the first encoder entry."""
    if not ref:
        return {"encoder": names[0], "framework": None}
    enc, _, fw = str(ref).partition("/")
    if enc not in names:
        raise ValueError(f"reference {ref!r} is not an encoder entry; entries: {names}")
    if fw and fw not in frameworks:
        raise ValueError(f"reference {ref!r}: framework {fw!r} is not run; frameworks: {frameworks}")
    return {"encoder": enc, "framework": fw or None}


def _row_names(table: pd.DataFrame) -> pd.Series:
    """Display name of a row: the encoder, plus the framework when the table has several."""
    if table["framework"].nunique() <= 1:
        return table["encoder"].astype(str)
    return table["encoder"].astype(str) + " (" + table["framework"].astype(str) + ")"


@dataclass
class TaskPlan:
    """One task's shared split table applied to every encoder entry × framework: the fold jobs of each cell."""

    task: dict
    tcfg: CompareConfig
    n_slides: int
    cells: list  # (framework, entry, output folder) per cell, in the order of ``plans``
    plans: list


def _plan_task(cfg: CompareConfig, t: dict, entries: list[dict], files: dict, out: Path) -> TaskPlan:
    """One task's cohorts (the slides usable in every entry), its split table and the fold jobs of every encoder
    entry × framework (folds already finished by a killed run are reused, :func:`mil.folds.plan_folds`)."""
    tcfg = task_config(cfg, t)
    cohorts, order = _task_cohorts(cfg, t, tcfg, entries, files, out)
    ref = _restrict(cohorts[entries[0]["name"]], order)
    splits = _task_splits(ref, cfg, tcfg, t["name"], out)
    single = len(cfg.frameworks) == 1
    cells = [(fw, e, out / e["name"] / t["name"] if single else out / e["name"] / fw / t["name"])
             for fw in cfg.frameworks for e in entries]
    plans = [plan_folds(_restrict(cohorts[e["name"]], order), splits, model=fw, mag=e["mag"], seed=int(cfg.seed),
                        out_dir=sub if get_head(fw).trained else None, attention=False,
                        **hparams_for(fw, tcfg.task, cfg.hparams or {}))
             for fw, e, sub in cells]
    return TaskPlan(t, tcfg, len(order), cells, plans)


def _value_error_as_result(fn, args: tuple, kwargs: dict):
    """A fold job whose ValueError (e.g. one class in a training split) comes back as its result: the jobs of
    every task share one pool, so one task's failure must not stop the others'."""
    try:
        return fn(*args, **kwargs)
    except ValueError as exc:
        return exc


def _finish_task(tp: TaskPlan, results, plot_jobs: list) -> list[dict]:
    """Take the task's fold results from ``results`` (the shared pool's, in plan order), write each cell's outputs
    while the workers go on with the next jobs, and return the summary rows, each carrying its per-split scores
    (``_folds``) for the paired statistics; each cell's plot goes to ``plot_jobs``. On a ValueError (a fold's, or
    this task's outputs') the rest of the task's results are taken before it is raised, so the next task reads
    its own."""
    long_rows, t = [], tp.task
    left = sum(len(p.calls) for p in tp.plans)
    try:
        for (fw, e, sub), plan in zip(tp.cells, tp.plans):
            got = [next(results) for _ in plan.calls]
            left -= len(got)
            error = next((r for r in got if isinstance(r, ValueError)), None)
            if error is not None:
                raise error
            res: CVResult = finish_folds(plan, got)
            write_result(res, sub, dataclasses.replace(tp.tcfg, model=fw, bags=e["bags"], mag=e["mag"]),
                         plot_jobs=plot_jobs)
            for r in res.summary.itertuples():
                long_rows.append({"encoder": e["name"], "framework": fw, "task": t["name"], "metric": r.metric,
                                  "mean": r.mean, "std": r.std, "ci_low": r.ci_low, "ci_high": r.ci_high,
                                  "n_folds": r.n_folds, "n_slides": tp.n_slides,
                                  "_folds": res.metrics[["fold", "repeat", "n_train", "n_val", "n_test",
                                                         r.metric]].rename(columns={r.metric: "value"})})
    except ValueError:
        for _ in range(left):
            next(results)
        raise
    return long_rows


def task_config(cfg: CompareConfig, t: dict) -> CompareConfig:
    """``cfg`` with a task entry's keys (``task``, ``target``, ...; not its ``name``) in place, through the config
    loader (:func:`zoomfeat.config.from_dict`: an unknown key names the nearest valid one)."""
    return from_dict(type(cfg), {k: v for k, v in t.items() if k != "name"}, f"compare task {t.get('name')!r}",
                     base=cfg)


def _task_cohorts(cfg: CompareConfig, t: dict, tcfg: CompareConfig, entries: list[dict], files: dict, out: Path):
    """Each entry's validated cohort for the task, and the slides usable in every entry (skipped_{task}.csv)."""
    df, skipped = load_labels(cfg.labels, t["task"], t.get("target"), tcfg.time_col, tcfg.event_col)
    cohorts: dict[str, Cohort] = {}
    for e in entries:
        check_cohort_specs({s: files[e["name"]][s] for s in df["slide"] if s in files[e["name"]]}, e["mag"],
                           what=f"bags of encoder entry {e['name']}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cohorts[e["name"]] = build_cohort(df, files[e["name"]], t["task"], t.get("target"), mag=e["mag"],
                                              on_bad=cfg.on_bad, time_col=tcfg.time_col,
                                              event_col=tcfg.event_col, skipped=skipped)
    common = set.intersection(*(set(c.slides) for c in cohorts.values()))
    dropped = sorted({s for c in cohorts.values() for s in c.slides} - common)
    all_skipped = sorted({(s, f"{n}: {r}") for n, c in cohorts.items() for s, r in c.skipped}
                         | {(s, "not usable in every encoder entry") for s in dropped})
    pd.DataFrame(all_skipped, columns=["slide", "reason"]).to_csv(out / f"skipped_{t['name']}.csv", index=False)
    if all_skipped:
        warnings.warn(f"compare/{t['name']}: {len({s for s, _ in all_skipped})} slide(s) left out "
                      f"(see skipped_{t['name']}.csv)", stacklevel=2)
    if not common:
        raise ValueError(f"task {t['name']}: no slide has a usable bag in every encoder entry")
    order = [s for s in cohorts[entries[0]["name"]].slides if s in common]
    return cohorts, order


def _task_splits(ref: Cohort, cfg: CompareConfig, tcfg: CompareConfig, task_name: str, out: Path) -> pd.DataFrame:
    """The task's split table: given (``splits: {task: path}``, ours or a Patho-Bench TSV) or made once and
    saved to ``splits_{task}.csv``; reused by every encoder and framework."""
    given = cfg.splits
    path = given.get(task_name) if isinstance(given, dict) else None
    if path and str(path).endswith(".tsv"):
        splits = load_splits(read_pathobench(path), ref.slides)
        save_splits(splits, out / f"splits_{task_name}.csv")
        return splits
    n_rep, k = int(cfg.n_repeats), int(cfg.n_folds)
    splits = splits_for(ref, dataclasses.replace(tcfg, n_repeats=n_rep), path or out / f"splits_{task_name}.csv")
    have = (splits["repeat"].nunique(), splits["fold"].nunique() // max(1, splits["repeat"].nunique()))
    if not path and have != (n_rep, k):
        raise ValueError(f"{out / f'splits_{task_name}.csv'} holds {have[0]} × {have[1]}-fold splits but the config "
                         f"asks for {n_rep} × {k}: delete that file or use another --out")
    return splits


def _restrict(c: Cohort, order: list[str]) -> Cohort:
    pos = {s: i for i, s in enumerate(c.slides)}
    return c.subset([pos[s] for s in order])


def paired_statistics(table: pd.DataFrame, reference: dict) -> pd.DataFrame:
    """Add delta, delta_ci_low, delta_ci_high, p, p_adj, outcome (vs the reference row of the same task and
    metric) from the per-split scores in ``_folds``; the per-split Δ table rides in ``attrs['folds']``."""
    table = table.copy()
    fold_rows, stats = [], []
    for i, r in table.iterrows():
        ref_fw = reference["framework"] or r["framework"]
        ref = table[(table["encoder"] == reference["encoder"]) & (table["framework"] == ref_fw)
                    & (table["task"] == r["task"]) & (table["metric"] == r["metric"])]
        f = r["_folds"].set_index("fold")
        is_ref = r["encoder"] == reference["encoder"] and r["framework"] == ref_fw
        d = f["value"] - ref.iloc[0]["_folds"].set_index("fold")["value"].reindex(f.index)
        ratio = split_ratio(f["n_test"], f["n_train"] + f["n_val"])
        st = corrected_ttest(d.to_numpy(float), ratio) if not is_ref else {}
        stats.append({"reference": f"{reference['encoder']}/{ref_fw}", "delta": st.get("mean", np.nan),
                      "delta_ci_low": st.get("ci_low", np.nan), "delta_ci_high": st.get("ci_high", np.nan),
                      "p": st.get("p", np.nan), "is_reference": is_ref})
        fold_rows += [{"encoder": r["encoder"], "framework": r["framework"], "task": r["task"],
                       "metric": r["metric"], "fold": int(k), "repeat": int(f.loc[k, "repeat"]),
                       "value": float(f.loc[k, "value"]), "delta": float(d.loc[k])} for k in f.index]
    table = pd.concat([table.drop(columns="_folds"), pd.DataFrame(stats, index=table.index)], axis=1)
    table["p_adj"] = np.nan
    family = table["metric"].where(~table["metric"].isin(PRIMARY), "primary")
    for _, g in table.groupby(family):  # ONE Holm family: the primary metric (AUC / c-index) of every row × task;
        table.loc[g.index, "p_adj"] = holm(g["p"].to_numpy(float))  # each secondary metric is its own family
    table["outcome"] = [("ref" if r.is_reference else outcome(r.delta, r.p_adj)) for r in table.itertuples()]
    table.attrs["folds"] = pd.DataFrame(fold_rows)
    return table


def _fmt(x: float, signed: bool = False) -> str:
    return "—" if not np.isfinite(x) else (f"{x:+.3f}" if signed else f"{x:.3f}")


def _p(x: float) -> str:
    return "—" if not np.isfinite(x) else (f"{x:.2g}" if x >= 0.001 else "<0.001")


def to_markdown(table: pd.DataFrame, cfg: dict) -> str:
    """``cfg``: the compare config as a mapping (``to_dict``; a partial one in tests). Primary metric per row × task with its CI, Δ vs the reference with its CI, Holm p and win/tie/loss;
    then every metric; then the verdict sentence."""
    tasks = list(dict.fromkeys(table["task"]))
    prim = table[table["metric"].isin(PRIMARY)].assign(row=lambda t: _row_names(t))
    fws = "/".join(dict.fromkeys(table["framework"]))
    lines = [f"# Encoder comparison — {fws}, {cfg.get('n_repeats', 1)} × {cfg.get('n_folds')}-fold patient-level "
             f"CV (same splits for every row), seed {cfg.get('seed')}", "",
             f"Reference: **{', '.join(dict.fromkeys(table['reference']))}**"
             + (f" ({cfg['reference_note']})" if cfg.get("reference_note") else "")
             + ". Mean over fold models [95% CI, corrected resampled t-test]; Δ = paired per-split difference to the "
             f"reference [95% CI]; p_adj: Holm over one family, the table's {family_size(table)} primary-metric "
             "comparisons (every row × task, AUC and c-index together); win / loss: p_adj < 0.05.", ""]
    for t in tasks:
        g = prim[prim["task"] == t]
        lines += [f"## {t} ({g['metric'].iloc[0]})", "", "| row | mean [95% CI] | Δ [95% CI] | p_adj | outcome |",
                  "|---|---|---|---|---|"]
        for r in g.itertuples():
            delta = ("—" if r.is_reference else
                     f"{_fmt(r.delta, True)} [{_fmt(r.delta_ci_low, True)}, {_fmt(r.delta_ci_high, True)}]")
            lines.append(f"| {r.row} | {_fmt(r.mean)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}] | {delta} | "
                         f"{_p(r.p_adj)} | {r.outcome} |")
        lines.append("")
    lines += ["All metrics:", "", "| row | task | metric | mean ± std | 95% CI | Δ | p_adj | outcome |",
              "|---|---|---|---|---|---|---|---|"]
    for r in table.assign(row=_row_names(table)).itertuples():
        lines.append(f"| {r.row} | {r.task} | {r.metric} | {_fmt(r.mean)} ± {_fmt(r.std)} | "
                     f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}] | {_fmt(r.delta, True)} | {_p(r.p_adj)} | {r.outcome} |")
    return ("\n".join(lines) + "\n\n**Verdict:** " + verdict(table, note=cfg.get("reference_note")) + "\n\n**Power:** "
            + power_statement(table) + "\n")


def family_size(table: pd.DataFrame) -> int:
    """The Holm family's size: comparisons of the primary metric (every row × task) with a p-value."""
    return int(np.isfinite(table.loc[table["metric"].isin(PRIMARY), "p"].to_numpy(float)).sum())


def power_statement(table: pd.DataFrame, power: float = 0.8, alpha: float = 0.05, metric: str = "auc") -> str:
    """One line: the smallest Δ``metric`` the table's splits could detect at ``power`` (two-sided ``alpha``,
    unadjusted), from each comparison's observed per-split variance (the corrected standard error behind its Δ CI;
    :func:`mil.stats.detectable_delta`): the median over the comparisons and their range."""
    rows = table[(table["metric"] == metric) & ~table["is_reference"].astype(bool)]
    d = np.array([detectable_delta(se_from_ci(r.delta_ci_low, r.delta_ci_high, int(r.n_folds)), int(r.n_folds),
                                   power, alpha) for r in rows.itertuples()], dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        return f"no Δ{metric} comparison to size."
    return (f"with the observed fold variance these splits detect |Δ{metric}| ≥ {np.median(d):.3f} at "
            f"{power:.0%} power (median over {len(d)} comparison{'s' if len(d) != 1 else ''}, range "
            f"{d.min():.3f}–{d.max():.3f}; two-sided α = {alpha}, corrected t, before Holm): a smaller difference "
            "can be missed, so 'no difference' does not mean 'equal'.")


def verdict(table: pd.DataFrame, alpha: float = 0.05, note: str | None = None) -> str:
    """One sentence from the statistics of a compare table (primary metric): per task, the rows that beat or
    lose to the reference at Holm-adjusted p < ``alpha``, else the largest |Δ| and why it is not a difference.
    The count it names is the Holm family (:func:`family_size`); ``note`` says what the reference is."""
    prim = table[table["metric"].isin(PRIMARY)].assign(row=lambda t: _row_names(t))
    parts = []
    for task, g in prim.groupby("task", sort=False):
        g = g[~g["is_reference"]]
        metric = g["metric"].iloc[0] if len(g) else prim[prim["task"] == task]["metric"].iloc[0]
        sig = g[g["p_adj"] < alpha]
        if len(sig):
            items = [f"{r.row} {'beats' if r.delta > 0 else 'is worse than'} it "
                     f"(Δ{metric} {r.delta:+.3f} [{r.delta_ci_low:+.3f}, {r.delta_ci_high:+.3f}], "
                     f"p_adj {_p(r.p_adj)})" for r in sig.sort_values("delta", ascending=False).itertuples()]
            parts.append(f"on {task}, " + ", ".join(items))
        elif len(g) and g["delta"].notna().any():
            r = g.loc[g["delta"].abs().idxmax()]
            parts.append(f"on {task}, no row differs from it (largest: {r['row']} Δ{metric} {r['delta']:+.3f} "
                         f"[{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}], p_adj {_p(r['p_adj'])})")
    refs = list(dict.fromkeys(table["reference"]))
    ref = refs[0] if len(refs) == 1 else f"{refs[0].split('/')[0]} (within each framework)"
    ref += f" ({note})" if note else ""
    n = family_size(table)
    if not parts:
        return f"Nothing to compare against {ref}: the table has no other row."
    return (f"Against {ref} ({n} comparison{'s' if n != 1 else ''}, Holm-adjusted α = {alpha}): "
            + "; ".join(parts) + ".")


class _CallableModule(types.ModuleType):
    """``mil.compare`` is this module (so ``mil.compare.verdict`` works) and calling it runs :func:`compare`."""

    def __call__(self, cfg: dict, out_dir: str | os.PathLike, jobs: int | None = None) -> pd.DataFrame:
        return compare(cfg, out_dir, jobs)


sys.modules[__name__].__class__ = _CallableModule
