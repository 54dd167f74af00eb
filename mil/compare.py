"""``zoomfeat compare``: the same patient-level splits over several bag folders × tasks → one table and plot.

Every encoder entry (a bag folder + a magnification choice) is trained on the SAME folds: the slides used
are those with a usable bag in every entry (slides missing or bad in any entry are dropped for all and
listed in ``skipped.csv``), and each task's split table is made once (``splits_{task}.csv``) and reused.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from mil.cv import CVResult, DEFAULTS, run_folds, splits_for, write_result
from mil.data import Cohort, build_cohort, load_labels
from mil.tasks import TASKS

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


def compare(cfg: dict, out_dir: str | os.PathLike) -> pd.DataFrame:
    """Run every (encoder entry × task) with shared splits; write compare.csv/.md/.png; return the long table."""
    from zoomfeat.bags import list_bags
    from zoomfeat.config import merge, save_yaml
    from zoomfeat.io import atomic_path, write_text_atomic

    from mil.plots import compare_plot

    cfg = merge({**DEFAULTS, "encoders": [], "tasks": ["hrd"]}, cfg)
    entries = [parse_entry(e) for e in cfg["encoders"]]
    if not entries:
        raise ValueError("compare needs at least one encoder entry (encoders: [{name, bags, mag}] or --bags)")
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"encoder entry names must be unique: {names}")
    tasks = [parse_task(t) for t in cfg["tasks"]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml({**cfg, "encoders": entries, "tasks": tasks}, out / "config.yaml")
    files = {e["name"]: list_bags(e["bags"], encoder=e.get("encoder")) for e in entries}
    long_rows: list[dict] = []
    failed: list[tuple[str, str]] = []
    for t in tasks:
        try:
            long_rows += _run_task(cfg, t, entries, files, out)
        except ValueError as exc:  # e.g. too few patients in a class for this task: the other tasks still run
            warnings.warn(f"compare: task {t['name']} skipped: {exc}", stacklevel=2)
            failed.append((t["name"], str(exc)))
    if not long_rows:
        raise ValueError("compare: every task failed: " + "; ".join(f"{n}: {r}" for n, r in failed))
    table = pd.DataFrame(long_rows)
    with atomic_path(out / "compare.csv") as tmp:
        table.to_csv(tmp, index=False)
    primary = table[table["metric"].isin(["auc", "c_index"])]
    compare_plot(primary, out / "compare.png", title=f"{cfg['model']}: encoder comparison ({cfg['n_folds']}-fold)")
    md = to_markdown(table, cfg)
    if failed:
        md += "\nTasks not run:\n\n" + "".join(f"- {n}: {r}\n" for n, r in failed)
    write_text_atomic(out / "compare.md", md)
    return table


def _run_task(cfg: dict, t: dict, entries: list[dict], files: dict, out: Path) -> list[dict]:
    """One task over every encoder entry with one shared split table; returns the summary rows."""
    from zoomfeat.config import merge

    long_rows = []
    tcfg = merge(cfg, {k: v for k, v in t.items() if k != "name"})
    df, skipped = load_labels(cfg["labels"], t["task"], t.get("target"), tcfg["time_col"], tcfg["event_col"])
    cohorts: dict[str, Cohort] = {}
    for e in entries:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cohorts[e["name"]] = build_cohort(df, files[e["name"]], t["task"], t.get("target"), mag=e["mag"],
                                              on_bad=cfg["on_bad"], time_col=tcfg["time_col"],
                                              event_col=tcfg["event_col"], skipped=skipped)
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
    ref = _restrict(cohorts[entries[0]["name"]], order)
    splits = splits_for(ref, tcfg, out / f"splits_{t['name']}.csv")
    for e in entries:
        cohort = _restrict(cohorts[e["name"]], order)
        sub = out / e["name"] / t["name"]
        res: CVResult = run_folds(cohort, splits, model=tcfg["model"], mag=e["mag"], seed=int(cfg["seed"]),
                                  out_dir=sub, attention=False, **(cfg.get("hparams") or {}))
        write_result(res, sub, {**tcfg, "bags": e["bags"], "mag": e["mag"]})
        for r in res.summary.itertuples():
            long_rows.append({"encoder": e["name"], "task": t["name"], "metric": r.metric, "mean": r.mean,
                              "std": r.std, "ci_low": r.ci_low, "ci_high": r.ci_high, "n_folds": r.n_folds,
                              "n_slides": len(order)})
    return long_rows


def _restrict(c: Cohort, order: list[str]) -> Cohort:
    pos = {s: i for i, s in enumerate(c.slides)}
    return c.subset([pos[s] for s in order])


def to_markdown(table: pd.DataFrame, cfg: dict) -> str:
    """Encoder × task table of the primary metric (AUC / c-index) as mean ± std, then all metrics."""
    def cell(r):
        return f"{r['mean']:.3f} ± {r['std']:.3f}"

    tasks = list(dict.fromkeys(table["task"]))
    encs = list(dict.fromkeys(table["encoder"]))
    prim = table[table["metric"].isin(["auc", "c_index"])]
    lines = [f"# Encoder comparison — {cfg.get('model')}, {cfg.get('n_folds')}-fold patient-level CV, seed "
             f"{cfg.get('seed')}", "",
             "Primary metric (AUC for classification, c-index for survival), mean ± std over folds:", "",
             "| encoder | " + " | ".join(f"{t} ({prim[prim['task'] == t]['metric'].iloc[0]})" for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for e in encs:
        cells = []
        for t in tasks:
            r = prim[(prim["encoder"] == e) & (prim["task"] == t)]
            cells.append(cell(r.iloc[0]) if len(r) else "—")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    lines += ["", "All metrics (mean ± std over folds; bootstrap 95% CI of pooled out-of-fold predictions):", "",
              "| encoder | task | metric | mean ± std | 95% CI |", "|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['encoder']} | {r['task']} | {r['metric']} | {cell(r)} | "
                     f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] |")
    return "\n".join(lines) + "\n"
