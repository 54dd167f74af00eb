"""End-to-end demo on an embedded synthetic cohort: the whole toolkit in one command (`make demo`).

Every step is the CLI verb a user would run (printed before it runs), executed in-process by the executor the CLI
layer hands in (``zoomfeat demo`` passes ``zoomfeat.cli.main``; this module never imports the CLI), so the demo
doubles as a worked example of the command line: synth-cohort (60 small slides with subtype / HRD / survival / architecture
labels) → tile → train (tiny ZoomLDM: VQ first stage, then UNet) → probe (recipe sweep on tuning patients) →
extract (ZoomLDM with the chosen recipe, conditioned on tiny-vit and unconditioned, + the tiny-vit baseline) →
compare (ABMIL, on the report patients the recipe choice never saw) → final subtype model + external validation
(``mil train --cv`` on the tiny-vit bags, a second synthetic cohort with another seed, ``predict`` on its raw slides:
external AUC with a patient-grouped bootstrap CI) → generate (real vs generated patches).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from mil.compare import power_statement, verdict
from mil.probe_eval import paired_test
from mil.splits import make_splits
from zoomfeat.encoders import create_encoder
from zoomfeat.encoders.zoomldm import ZOOMLDM
from zoomfeat.generate.realism import format_report, realism_report
from zoomfeat.jobs import process_cpu_seconds, resolve_jobs, run_jobs
from zoomfeat.ldm import ZoomLDM
from zoomfeat.names import resolve_slides
from zoomfeat.slides.coords import coords_path, read_coords
from zoomfeat.slides.grid import child_grid
from zoomfeat.slides.reader import open_slide
from zoomfeat.threads import available_cores, thread_count

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MICRO = ROOT / "tests" / "data" / "zoomldm_official_micro"  # vendored; only for --skip-train

#: The file every saved ZoomLDM folder holds (``zoomfeat.ldm.pipeline.CONFIG_FILE``; not imported: diffusers is slow).
MODEL_CONFIG = "zoomldm_config.yaml"

#: What the comparison's reference is (compare.md, the verdict): the numbers are gains over an untrained encoder.
REFERENCE_NOTE = "random-init tiny-vit, an untrained encoder"

#: The demo's sweep grid: small enough for the CPU budget, wide enough to show that the recipe matters.
SWEEP = {"blocks": "0,3,6,9,12", "t": "0,50,200", "conditioning": "none,uni", "mags": "20x,5x,20x+5x",
         "tasks": "subtype,hrd,architecture", "tiles_per_slide": "32", "tune_fraction": "0.5"}


def _cpu() -> float:
    """CPU seconds of the demo so far, pool workers (``--jobs``) included (:func:`zoomfeat.jobs.process_cpu_seconds`)."""

    return process_cpu_seconds()


@contextlib.contextmanager
def _own_threads():
    """Each step gets the torch thread count a fresh ``zoomfeat`` process would: a step's ``--threads`` /
    ``--workers`` (e.g. synth-cohort's 2 workers → 1 thread each) must not carry over to the next step run in this
    process (training ran on one thread). ``ZOOMFEAT_THREADS`` (set by ``--threads``) is restored too."""

    env = {k: os.environ.get(k) for k in ("ZOOMFEAT_THREADS",)}
    torch = sys.modules.get("torch")
    n = torch.get_num_threads() if torch is not None else thread_count(None, 0)  # a fresh process's default
    try:
        yield
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch = sys.modules.get("torch")
        if torch is not None and torch.get_num_threads() != n:
            torch.set_num_threads(n)


class Steps:
    """The demo's step runner: each step is the CLI verb a user would type (printed first), run in-process by
    ``execute`` (argv → exit code; ``zoomfeat.cli.main``) and logged as (command, wall s, CPU s) in ``log``."""

    def __init__(self, execute: Callable[[list[str]], int | None], log: list | None = None, jobs: int = 1):
        self.execute = execute
        self.log = log if log is not None else []
        self.jobs = resolve_jobs(int(jobs))  # 0: the usable cores

    def __call__(self, argv: Sequence, ok: tuple[int, ...] = (0,)) -> int:
        argv = [str(a) for a in argv]
        cmd = "zoomfeat " + " ".join(shlex.quote(a) for a in argv)
        print(f"\n$ {cmd}", flush=True)
        t0, c0 = time.perf_counter(), _cpu()
        with _own_threads():
            rc = int(self.execute(argv) or 0)
        dt, dc = time.perf_counter() - t0, _cpu() - c0
        self.log.append((cmd, dt, dc))
        if rc not in ok:
            raise RuntimeError(f"demo step failed (exit {rc}): {cmd}")
        print(f"  ({dt:.1f} s wall, {dc:.1f} s CPU)", flush=True)
        return rc


    def side_by_side(self, jobs: Sequence[tuple[Callable, tuple]]) -> list:
        """Run independent one-core jobs ``(fn, args)`` — each ``fn(execute, *args)`` returns ``(log rows,
        result)`` — on ``self.jobs`` pool workers (:func:`zoomfeat.jobs.run_jobs`, one core each), or here in order
        when ``self.jobs`` is 1; the rows join this log in job order, followed by the group's own wall / CPU."""
        n = resolve_jobs(self.jobs, len(jobs))
        if n > 1:
            print(f"\n# {len(jobs)} independent step chains side by side on {n} processes (one core each; their "
                  "output interleaves)", flush=True)
        t0, c0 = time.perf_counter(), _cpu()
        done = run_jobs([(fn, (self.execute, *args), {}) for fn, args in jobs], jobs=n)
        results = []
        for rows, result in done:
            self.log.extend(rows)
            results.append(result)
        if n > 1:
            dt, dc = time.perf_counter() - t0, _cpu() - c0
            self.log.append((f"  ↳ the {len(jobs)} chains above, side by side on {n} processes", dt, dc))
            print(f"  (side by side: {dt:.1f} s wall, {dc:.1f} s CPU)", flush=True)
        return results


def _chain(execute, argvs: Sequence[Sequence]) -> tuple[list, None]:
    """A :meth:`Steps.side_by_side` job: CLI steps run one after another (in a pool worker)."""
    steps = Steps(execute)
    for argv in argvs:
        steps(argv)
    return steps.log, None


def _external_job(execute, out: Path, labels: Path, bags: Path, folds: int) -> tuple[list, dict]:
    """A :meth:`Steps.side_by_side` job: :func:`external_validation` (final model, external predictions)."""
    steps = Steps(execute)
    return steps.log, external_validation(out, labels, bags, steps, folds=folds)


def _generate_job(execute, argv: Sequence, model_dir: Path, slides: Path, tiles: Path, gen: Path) -> tuple[list, dict]:
    """A :meth:`Steps.side_by_side` job: generate patches, then the real vs generated report."""
    steps = Steps(execute)
    steps(argv)
    realism = _timed("real vs generated patches (zoomfeat.generate.realism)",
                     lambda: realism_report(model_dir, resolve_slides(slides), tiles, gen, n=64), steps.log)
    return steps.log, realism


def _timed(name: str, fn, log: list):
    t0, c0 = time.perf_counter(), _cpu()
    out = fn()
    log.append((name, time.perf_counter() - t0, _cpu() - c0))
    return out


def _train(out: Path, slides: Path, train_steps: int, skip_train: bool, run_step: Steps) -> Path:
    """The tiny ZoomLDM trained on the demo cohort (first stage, then UNet), or — only with ``skip_train`` — the
    micro fixture (random weights). A training step that writes no model stops the demo: falling back to random
    weights would make the sweep and the verdict describe noise."""
    if not skip_train:
        run_dir = out / "train"
        run_step(["train", "--config", "configs/train/tiny.yaml", "--out", str(run_dir), "--max-steps", str(train_steps),
              "--set", f"dataset.build.slides={slides}", "--set", "dataset.build.max_per_scale=8", "--no-progress",
              *(["--resume"] if (run_dir / "checkpoints").exists() else [])])
        if not (run_dir / "model" / MODEL_CONFIG).is_file():
            raise RuntimeError(f"demo: training exited 0 but wrote no model ({run_dir / 'model' / MODEL_CONFIG} is "
                               "missing); the demo stops rather than go on with random weights (rerun it, or pass "
                               "--skip-train to use the random micro fixture on purpose)")
        return run_dir / "model"
    model_dir = out / "model_fixture"
    if not model_dir.exists():
        run_step(["convert", str(FIXTURE_MICRO / "weights.ckpt"), str(FIXTURE_MICRO / "config.yaml"), str(model_dir)])
    return model_dir


def _model_dims(model_dir: Path) -> tuple[int, int]:
    """(feature blocks, SSL dim) of the trained model: the sweep's block list and the SSL grid's width. Loaded
    once; only the two numbers are kept."""

    ldm = ZoomLDM.load(model_dir)
    return int(ldm.num_feature_blocks), int(ldm.ssl_dim)


def _probe(out: Path, slides: Path, tiles: Path, labels: Path, model_dir: Path, n_blocks: int,
           run_step: Steps) -> Path:
    blocks = ",".join(b for b in SWEEP["blocks"].split(",") if int(b) < n_blocks)
    probe = out / "probe"
    run_step(["probe", str(slides), "--tiles", str(tiles), "--labels", str(labels), "--weights", str(model_dir),
          "--blocks", blocks, "--t", SWEEP["t"], "--conditioning", SWEEP["conditioning"], "--mags", SWEEP["mags"],
          "--tasks", SWEEP["tasks"], "--baselines", "tiny-vit", "--ssl-encoder", "tiny-vit",
          "--tiles-per-slide", SWEEP["tiles_per_slide"], "--tune-fraction", SWEEP["tune_fraction"],
          "--threads", "1", "--out", str(probe), "--no-progress"])
    return probe


def _report_labels(labels: Path, probe: Path) -> Path:
    """labels.csv restricted to the report patients (never used to choose the recipe)."""

    split = pd.read_csv(probe / "split_patients.csv")
    rep = set(split.loc[split["subset"] == "report", "slide"].astype(str))
    df = pd.read_csv(labels)
    out = labels.with_name("labels_report.csv")
    df[df["slide"].astype(str).isin(rep)].to_csv(out, index=False)
    return out


def run_demo(execute: Callable[[list[str]], int | None], out: str | Path = "demo_out", n_slides: int = 60,
             train_steps: int = 200, folds: int = 5, skip_train: bool = False, jobs: int = 1) -> Path:
    """Run the demo into ``out`` and return the comparison folder; reruns reuse finished steps. ``execute`` runs one
    CLI command line (argv → exit code): ``zoomfeat.cli.main``, as ``zoomfeat demo`` passes it. ``jobs`` > 1 runs
    the one-core steps that do not depend on each other (the three extractions and the external cohort; the external
    validation beside generation) side by side on a process pool (``execute`` must then pickle: a module-level
    function); the outputs do not depend on it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_step = Steps(execute, jobs=jobs)
    log = run_step.log
    t_start, c_start = time.perf_counter(), _cpu()

    cohort = out / "cohort"
    labels = cohort / "labels.csv"
    if not labels.exists():
        run_step(["synth-cohort", "--out", str(cohort), "--n-slides", str(n_slides), "--seed", "0",
              "--sizes", "1792,2048,2304", "--workers", str(available_cores())])  # slides are independent
    slides = cohort / "slides"
    tiles = out / "tiles"
    run_step(["tile", str(slides), "--out", str(tiles), "--no-progress"])
    model_dir = _train(out, slides, train_steps, skip_train, run_step)
    n_blocks, ssl_dim = _model_dims(model_dir)
    probe = _probe(out, slides, tiles, labels, model_dir, n_blocks, run_step)

    feats = out / "features"
    common = [str(slides), "--tiles", str(tiles), "--out", str(feats), "--no-progress", "--workers", "0",
              "--threads", "1"]
    recipe = ["--config", str(probe / "best_recipe.yaml"), "--weights", str(model_dir)]
    # two chains of about equal CPU (demo: 52 + 13 s | 33 + 25 s)
    first = [["extract", *common, *recipe, "--conditioning", "uni", "--ssl-encoder", "tiny-vit", "--tag", ZOOMLDM],
             ["extract", *common, "--encoder", "tiny-vit", "--mags", "20x,5x"]]
    second = [["extract", *common, *recipe, "--conditioning", "none", "--tag", f"{ZOOMLDM}_none"]]
    if run_step.jobs > 1 and not (out / "external" / "cohort" / "labels.csv").exists():
        second.append(_external_cohort(out, workers=1))  # on a core of its own while the extractions run
    run_step.side_by_side([(_chain, (first,)), (_chain, (second,))])

    cmp_root = out / "compare"
    report_labels = _report_labels(labels, probe)
    uni, none = feats / f"features_{ZOOMLDM}", feats / f"features_{ZOOMLDM}_none"
    bags = [f"{ZOOMLDM}-uni-20x={uni}:20x", f"{ZOOMLDM}-uni-20x+5x={uni}:20x+5x", f"{ZOOMLDM}-none-20x={none}:20x",
            f"{ZOOMLDM}-none-20x+5x={none}:20x+5x", f"baseline-tinyvit={feats / 'features_tiny-vit'}:20x"]
    argv = ["compare", "--config", "configs/mil/demo_compare.yaml", "--out", str(cmp_root), "--labels",
            str(report_labels), "--frameworks", "linear,abmil", "--reference", "baseline-tinyvit"]
    for b in bags:
        argv += ["--bags", b]
    run_step([*argv, f"n_folds={folds}", f"reference_note={REFERENCE_NOTE}"])  # key=value overrides last, together

    gen = out / "generated"
    generate = ["generate", "--model", str(model_dir), "--ssl", str(_ssl_grid(slides, tiles, out, ssl_dim)), "--mag",
                "5x", "--n", "4", "--steps", "20", "--out", str(gen / "5x")]
    _, realism = run_step.side_by_side([(_external_job, (out, labels, feats / "features_tiny-vit", folds)),
                                        (_generate_job, (generate, model_dir, slides, tiles, gen))])
    _summary(out, probe, cmp_root, realism, format_report, log, time.perf_counter() - t_start, _cpu() - c_start,
             n_slides=None if skip_train else n_slides)
    print(f"\nLook at the results (slides, attention heatmaps, generated patches; 127.0.0.1 only):\n"
          f"  zoomfeat view {out}")
    return cmp_root


def cv_impossible(labels: str | Path, folds: int, val_fraction: float = 0.2) -> str | None:
    """Why ``mil train --cv`` cannot split the labelled cohort into ``folds`` patient-level folds with inner
    validation splits (``mil.splits.make_splits``' own message), or None when it can."""


    df = pd.read_csv(labels, dtype={"slide": str, "patient": str}).dropna(subset=["subtype"])
    try:
        make_splits(df["slide"], df["patient"], df["subtype"].astype(str), n_folds=folds, val_fraction=val_fraction)
    except ValueError as exc:
        return str(exc)
    return None


def external_validation(out: str | Path, labels: str | Path, bags: str | Path, run_step: Steps,
                        n_slides: int = 12, seed: int = 1, folds: int = 5) -> dict:
    """Train MODEL on (labels, bags), predict an external synthetic cohort (``seed``) from its slides; returns the
    external metrics as {metric: (value, ci_low, ci_high)}."""

    out = Path(out)
    model = out / "subtype_model"
    train = ["mil", "train", "--config", "mil/demo_final.yaml", "--out", model, f"labels={labels}", f"bags={bags}",
             f"n_folds={folds}"]
    reason = cv_impossible(labels, folds)
    if reason:  # a cohort too small for k folds with inner splits (as `compare` skips such a task)
        print(f"  cross-validation impossible on this cohort ({reason}): training the final model without a CV "
              "estimate")
        run_step(train)
    else:  # any other failure of the CV run stops the demo with its own error
        run_step([*train, "--cv"])
    ext = out / "external"
    ext_labels = ext / "cohort" / "labels.csv"
    if not ext_labels.exists():
        run_step(_external_cohort(out, n_slides, seed))
    pred = ext / "predictions"
    rc = run_step(["predict", ext / "cohort" / "slides", "--model", model, "--out", pred, "--labels", ext_labels,
                "--no-progress"], ok=(0, 3))
    m = pd.read_csv(pred / "metrics.csv").set_index("metric")
    res = {k: (float(r.value), float(r.ci_low), float(r.ci_high)) for k, r in m.iterrows()}
    auc = res["auc"]
    print(f"\nExternal validation (synthetic cohort, seed {seed}, {int(m.loc['auc', 'n_slides'])} slides / "
          f"{int(m.loc['auc', 'n_patients'])} patients{'; some slides failed' if rc == 3 else ''}): "
          f"subtype AUC {auc[0]:.3f} (95% CI {auc[1]:.3f}–{auc[2]:.3f}); model card {model / 'README.md'}, "
          f"predictions {pred / 'predictions.csv'}")
    return res


def _external_cohort(out: Path, n_slides: int = 12, seed: int = 1, workers: int | None = None) -> list:
    """The synth-cohort command of the external cohort (another seed): slides are independent, so every core."""
    return ["synth-cohort", "--out", Path(out) / "external" / "cohort", "--n-slides", n_slides, "--seed", seed,
            "--workers", available_cores() if workers is None else workers]


def _ssl_grid(slides: Path, tiles: Path, out: Path, ssl_dim: int) -> Path:
    """The 4×4 SSL grid (tiny-vit embeddings of 16 20x tiles) of one 5x region: a real conditioning input."""


    slide = sorted(slides.iterdir())[0]
    grid = read_coords(coords_path(tiles, slide.stem))
    enc = create_encoder("tiny-vit", dim=ssl_dim)
    x0, y0 = (int(v) for v in grid.coords_5x[len(grid.coords_5x) // 2])
    step = int(grid.patch_size_level0)
    with open_slide(slide) as wsi:  # the region's 16 children, row-major: the grid order the model was trained on
        tl = [wsi.read_region_l0(int(x), int(y), step, 256) for x, y in child_grid([[x0, y0]], step)[0]]
    with torch.inference_mode():
        emb = enc.encode(torch.from_numpy(np.stack(tl)))  # [16, D], row-major
    path = out / "ssl_grid_5x.npy"
    np.save(path, emb.float().T.reshape(1, ssl_dim, 4, 4).numpy())
    # where the grid came from, so `zoomfeat view` can show generated patches beside the real region
    path.with_suffix(".region.json").write_text(
        f'{{"slide": "{slide.stem}", "x": {x0}, "y": {y0}, "size_l0": {4 * step}}}')
    return path


def _cell(r) -> str:
    """'block b, t' label of a probe row (baselines have none)."""
    return f"block {int(r['block'])}, t {int(r['t'])}, {r['conditioning']}" if r["encoder"] == ZOOMLDM else ""


def probe_highlights(probe: Path) -> list[str]:
    """Lines for the demo summary: the sweep's best per task × mag, the chosen recipe (and each task's own best
    cell) on the report patients next to the baseline, and the paired 5x / 20x+5x vs 20x tests (corrected
    resampled t-test over the same splits) — the architecture positive control."""


    rows = pd.read_csv(probe / "probe.csv")
    tune = rows[(rows["encoder"] == ZOOMLDM) & (rows["subset"].isin(["tune", "all"]))]
    lines = ["Recipe sweep (linear probe, repeated patient-level CV) — best ZoomLDM cell per task and mag on the "
             "tuning patients (selection-biased: the maximum over the grid on the patients that chose it):"]
    for (task, mag), g in tune.groupby(["task", "mag"], sort=False):
        b = g.loc[g["mean"].idxmax()]
        lines.append(f"  {task:<13} {mag:<7} {b['mean']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}]  block {int(b['block'])}, "
                     f"t = {int(b['t'])} ({b['noise_pct']:.0f}% noise), conditioning {b['conditioning']}")
    rep = rows[rows["subset"] == "report"]
    if len(rep):
        lines.append("Chosen recipe (and each task's own best cell) vs baseline on the report patients (never used "
                     "for the choice):")
        for _, r in rep.iterrows():
            lines.append(f"  {r['encoder']:<9} {_cell(r):<22} {r['task']:<13} {r['mag']:<7} {r['metric']} "
                         f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
    ratio = 1 / (int(json.loads((probe / "probe_summary.json").read_text())["spec"]["n_folds"]) - 1)  # n_test/n_train
    paired = paired_lines(pd.read_csv(probe / "probe_scores.csv"), ratio)
    if any(", architecture)" in p for p in paired):
        paired.append("  (architecture rows: the block was chosen on this cohort, so they are selection-biased; "
                      "the evidence for the control is its confirmation on an independent cohort, "
                      "docs/feature_evidence.md)")
    return lines + paired


def paired_lines(sc, ratio: float) -> list[str]:
    """5x and 20x+5x vs 20x of the same feature cell and task, on the last subset (report, or all)."""

    sc = sc[sc["subset"] == sc["subset"].unique()[-1]].fillna({"block": -1, "t": -1, "conditioning": ""})
    lines = []
    for (enc, b, t, c, task), s in sc.groupby(["encoder", "block", "t", "conditioning", "task"], sort=False):
        if task not in ("architecture", "subtype"):
            continue
        get = lambda mag: s[s["mag"] == mag].sort_values("split")["score"].to_numpy()  # noqa: E731
        base = get("20x")
        cell = f", block {int(b)}, t {int(t)}, {c}" if enc == ZOOMLDM else ""
        for mag in ("5x", "20x+5x"):
            other = get(mag)
            if len(base) and len(other) == len(base):
                p = paired_test(other, base, ratio)
                lines.append(f"  paired ({enc}{cell}, {task}): {mag} − 20x = {p['delta']:+.3f} "
                             f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}], p = {p['p']:.3g}")
    return lines


def encoder_note(n_slides: int | None) -> str:
    """What the report patients have and have not seen (issue 23.6)."""
    if n_slides is None:
        return ("Encoder: the random micro fixture (--skip-train): ZoomLDM features carry no trained signal.")
    return (f"Encoder: the tiny ZoomLDM was trained (without labels) on all {n_slides} slides, so the report patients "
            "are unseen by the recipe choice and the heads but not by the encoder.")


def verdict_lines(cmp_root: Path) -> list[str]:
    """The verdict from compare.csv (its Holm family size, what the reference is) and the power statement."""


    table = pd.read_csv(cmp_root / "compare.csv")
    return ["Verdict (computed from the paired statistics above): " + verdict(table, note=REFERENCE_NOTE),
            "Power: " + power_statement(table)]


def _summary(out: Path, probe: Path, cmp_root: Path, realism: dict, format_report, log: list, wall: float,
             cpu: float, n_slides: int | None = None) -> None:
    print("\n" + "=" * 100)
    print(f"zoomfeat demo finished in {wall:.0f} s wall, {cpu:.0f} s CPU\n")
    print(encoder_note(n_slides) + "\n")
    print("\n".join(probe_highlights(probe)))
    print(f"  heatmaps: {probe}/heatmap_*.png   recipe: {probe / 'best_recipe.yaml'}\n")
    table_md = cmp_root / "compare.md"
    if table_md.exists():
        print(table_md.read_text())
        print("\n".join(verdict_lines(cmp_root)) + "\n")
    print(format_report(realism))
    print("\nOutputs:")
    for name, path in [("synthetic cohort + labels", out / "cohort"), ("coordinate files, QC PNGs", out / "tiles"),
                       ("recipe sweep (probe.csv, heatmaps)", probe), ("feature bags", out / "features"),
                       ("comparison tables + plots", cmp_root), ("generated patches", out / "generated")]:
        print(f"  {name:<38} {path}")
    print("\nStep timings (wall / CPU):")
    for cmd, dt, dc in log:
        print(f"  {dt:7.1f} s {dc:7.1f} s  {cmd[:110]}")
