"""The demo's orchestration without its heavy steps (issue 23.2, 23.3, 23.6): ``run_demo`` with an executor that writes
what each CLI verb would write, the report-label split, ``probe_highlights`` / ``paired_lines``, and the printed
summary (encoder note, the verdict's Holm family, what the reference is, the detectable Δ). Seconds, no torch work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import zoomfeat.demo as demo
from zoomfeat.encoders.zoomldm import ZOOMLDM

N = 20  # slides (= patients) of the fake cohort


def _labels() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"slide": [f"syn{i:03d}" for i in range(N)], "patient": [f"p{i:03d}" for i in range(N)],
                         "subtype": rng.integers(0, 3, N), "hrd": rng.integers(0, 2, N)})


def _write_probe(out: Path, labels: pd.DataFrame) -> None:
    """The files `zoomfeat probe --tune-fraction 0.5` writes, for a 2-cell grid and the tiny-vit baseline."""
    out.mkdir(parents=True, exist_ok=True)
    split = labels[["slide", "patient"]].assign(subset=["tune" if i % 2 else "report" for i in range(len(labels))])
    split.to_csv(out / "split_patients.csv", index=False)
    rows, scores = [], []
    rng = np.random.default_rng(1)
    cells = [(ZOOMLDM, 3, 0, "none"), (ZOOMLDM, 12, 0, "uni"), ("tiny-vit", np.nan, np.nan, np.nan)]
    for subset in ("tune", "report"):
        for enc, b, t, c in cells:
            for task in ("subtype", "architecture"):
                for mag in ("20x", "5x", "20x+5x"):
                    sc = rng.uniform(0.5, 0.9, 10)
                    rows.append({"encoder": enc, "block": b, "t": t, "conditioning": c, "mag": mag, "task": task,
                                 "metric": "auc", "mean": sc.mean(), "std": sc.std(), "ci_low": sc.min(),
                                 "ci_high": sc.max(), "alpha_bar": 1.0, "noise_pct": 0.0, "subset": subset,
                                 "n_slides": N // 2, "n_splits": 10})
                    scores += [{"encoder": enc, "block": b, "t": t, "conditioning": c, "mag": mag, "task": task,
                                "subset": subset, "split": k, "score": s} for k, s in enumerate(sc)]
    pd.DataFrame(rows).to_csv(out / "probe.csv", index=False)
    pd.DataFrame(scores).to_csv(out / "probe_scores.csv", index=False)
    (out / "probe_summary.json").write_text(json.dumps({"spec": {"n_folds": 5}}))
    (out / "best_recipe.yaml").write_text("encoder: {name: zoomldm}\n")


def _write_compare(out: Path, labels: Path) -> None:
    """compare.csv / compare.md from the real paired statistics of a 2-task table (3 AUC rows, 1 c-index row)."""
    from mil.compare import paired_statistics, to_markdown

    rng = np.random.default_rng(2)
    rows = []
    for task, metric, encs in (("subtype", "auc", ("a", "b", "c")), ("survival", "c_index", ("a",))):
        base = rng.uniform(0.6, 0.8, 15)
        for enc in ("baseline-tinyvit", *encs):
            d = 0 if enc == "baseline-tinyvit" else rng.normal(0.02, 0.05, 15)
            f = pd.DataFrame({"fold": range(15), "repeat": np.repeat([0, 1, 2], 5), "n_train": 8, "n_val": 0,
                              "n_test": 2, "value": base + d})
            rows.append({"encoder": enc, "framework": "abmil", "task": task, "metric": metric,
                         "mean": f["value"].mean(), "std": 0.1, "ci_low": 0.5, "ci_high": 0.9, "n_folds": 15,
                         "n_slides": N // 2, "_folds": f})
    table = paired_statistics(pd.DataFrame(rows), {"encoder": "baseline-tinyvit", "framework": None})
    table.attrs.clear()
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "compare.csv", index=False)
    (out / "compare.md").write_text(to_markdown(table, {"n_folds": 5, "reference_note": demo.REFERENCE_NOTE}))


class FakeCLI:
    """An executor that writes what each verb would write (no slides, no models) and records the argv."""

    def __init__(self, write_model: bool = True):
        self.calls: list[list[str]] = []
        self.write_model = write_model

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        from zoomfeat.cli import build_parser

        build_parser(argv[0]).parse_args([str(a) for a in argv])  # every step must be a valid command line
        opt = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
        out = Path(opt["--out"]) if "--out" in opt else None
        if argv[0] == "synth-cohort":
            (out / "slides").mkdir(parents=True)
            _labels().to_csv(out / "labels.csv", index=False)
        elif argv[0] == "train" and self.write_model:
            (out / "model").mkdir(parents=True)
            (out / "model" / "zoomldm_config.yaml").write_text("{}\n")
        elif argv[0] == "probe":
            _write_probe(out, pd.read_csv(opt["--labels"]))
        elif argv[0] == "compare":
            _write_compare(out, Path(opt["--labels"]))
        return 0


@pytest.fixture
def light(monkeypatch):
    """run_demo's in-process heavy pieces replaced by stand-ins (model dims, SSL grid, external step, realism)."""
    seen = {}
    monkeypatch.setattr(demo, "_model_dims", lambda model_dir: (13, 24))
    monkeypatch.setattr(demo, "_ssl_grid", lambda slides, tiles, out, dim: out / "ssl_grid_5x.npy")
    monkeypatch.setattr(demo, "external_validation",
                        lambda out, labels, bags, run_step, folds: seen.setdefault("external", (labels, bags, folds)))
    monkeypatch.setattr(demo, "realism_report", lambda *a, **k: {})  # the demo's own bindings (imported at its top)
    monkeypatch.setattr(demo, "format_report", lambda rep: "realism report")
    return seen


def test_run_demo_orchestration_report_split_and_printed_verdict(tmp_path, light, capsys):
    cli = FakeCLI()
    cmp_root = demo.run_demo(cli, tmp_path / "demo", n_slides=N, train_steps=3, folds=4)
    assert [c[0] for c in cli.calls] == ["synth-cohort", "tile", "train", "probe", "extract", "extract", "extract",
                                         "compare", "generate"]
    probe = cli.calls[3]
    assert probe[probe.index("--blocks") + 1] == "0,3,6,9,12" and probe[probe.index("--tune-fraction") + 1] == "0.5"
    cmp = cli.calls[7]
    report = pd.read_csv(cmp[cmp.index("--labels") + 1])
    split = pd.read_csv(tmp_path / "demo" / "probe" / "split_patients.csv")
    assert set(report["slide"]) == set(split.loc[split["subset"] == "report", "slide"])  # never the tuning half
    assert len(report) == N // 2 and "n_folds=4" in cmp and f"reference_note={demo.REFERENCE_NOTE}" in cmp
    assert cmp[cmp.index("--reference") + 1] == "baseline-tinyvit"
    assert light["external"][2] == 4 and cmp_root == tmp_path / "demo" / "compare"
    out = capsys.readouterr().out
    assert f"trained (without labels) on all {N} slides" in out and "not by the encoder" in out
    verdict = next(ln for ln in out.splitlines() if ln.startswith("Verdict (computed"))
    assert "(random-init tiny-vit, an untrained encoder) (4 comparisons, Holm-adjusted" in verdict  # 3 AUC + 1 c-index
    power = next(ln for ln in out.splitlines() if ln.startswith("Power: "))
    assert "at 80% power (median over 3 comparisons" in power and "'no difference' does not mean 'equal'" in power
    assert "selection-biased" in out and "realism report" in out


def test_training_that_writes_no_model_stops_the_demo(tmp_path, light):
    """Issue 23.2: no silent fallback to the random micro fixture."""
    cli = FakeCLI(write_model=False)
    with pytest.raises(RuntimeError, match="wrote no model.*random weights"):
        demo.run_demo(cli, tmp_path / "demo", n_slides=N, train_steps=3)
    assert [c[0] for c in cli.calls] == ["synth-cohort", "tile", "train"]  # no `convert` of the fixture, no sweep


def test_probe_highlights_and_paired_lines(tmp_path):
    probe = tmp_path / "probe"
    _write_probe(probe, _labels())
    lines = demo.probe_highlights(probe)
    assert "selection-biased" in lines[0]
    tune = [ln for ln in lines[1:] if "block" in ln and "paired" not in ln][:6]
    assert len(tune) == 6  # best ZoomLDM cell per task × mag on the tuning patients
    best = pd.read_csv(probe / "probe.csv").query("encoder == @ZOOMLDM and subset == 'tune' and task == 'subtype' "
                                                   "and mag == '20x'")["mean"].max()
    assert f"{best:.3f}" in tune[0]
    paired = [ln for ln in lines if ln.startswith("  paired")]
    assert len(paired) == 3 * 2 * 2  # 3 cells × (architecture, subtype) × (5x, 20x+5x) on the report subset
    sc = pd.read_csv(probe / "probe_scores.csv")
    from mil.probe_eval import paired_test

    rep = sc[(sc["subset"] == "report") & (sc["encoder"] == "tiny-vit") & (sc["task"] == "architecture")]
    p = paired_test(rep[rep["mag"] == "5x"]["score"].to_numpy(), rep[rep["mag"] == "20x"]["score"].to_numpy(), 0.25)
    assert any(ln.startswith(f"  paired (tiny-vit, architecture): 5x − 20x = {p['delta']:+.3f} ") for ln in paired)
    assert "independent cohort" in lines[-1]


def _external_cli(fail_cv: bool):
    calls = []

    def run(argv, ok=(0,)):
        argv = [str(a) for a in argv]
        calls.append(argv)
        if fail_cv and "--cv" in argv:
            raise RuntimeError("demo step failed (exit 1): zoomfeat mil train ... --cv")
        if argv[0] == "predict":
            out = Path(argv[argv.index("--out") + 1])
            out.mkdir(parents=True)
            pd.DataFrame({"metric": ["auc"], "value": [0.9], "ci_low": [0.8], "ci_high": [1.0], "n_slides": [12],
                          "n_patients": [10]}).to_csv(out / "metrics.csv", index=False)
        return 0

    return run, calls


def test_external_step_names_the_real_reason_and_never_hides_a_cv_failure(tmp_path, capsys):
    """Issue 23.5: only a cohort too small for k folds skips the CV estimate (saying why); any other CV failure
    stops the demo instead of being reported as 'cross-validation impossible'."""
    from zoomfeat.demo import external_validation

    labels = tmp_path / "labels.csv"
    _labels().assign(subtype=np.arange(N) % 2).to_csv(labels, index=False)  # 10 patients per class: 5 folds work
    run, calls = _external_cli(fail_cv=True)
    with pytest.raises(RuntimeError, match="--cv"):
        external_validation(tmp_path, labels, tmp_path / "bags", run, folds=5)
    assert len(calls) == 1 and "impossible" not in capsys.readouterr().out

    small = tmp_path / "small.csv"
    _labels().assign(subtype=[0] * 17 + [1] * 3).to_csv(small, index=False)  # 3 patients of class 1 for 5 folds
    run, calls = _external_cli(fail_cv=False)
    res = external_validation(tmp_path / "b", small, tmp_path / "bags", run, folds=5)
    out = capsys.readouterr().out
    assert "cross-validation impossible on this cohort (" in out and "n_folds=5" in out
    assert "--cv" not in calls[0] and calls[0][:2] == ["mil", "train"] and res["auc"] == (0.9, 0.8, 1.0)


def test_a_steps_thread_settings_do_not_leak_into_the_next_step(monkeypatch):
    """Steps run in one process: synth-cohort's `--workers 2` (→ 1 thread, OMP_NUM_THREADS=1) made the next step,
    training, run on one thread, unlike the same command typed in a shell. Each step now starts as a fresh process."""
    import os

    import torch

    from zoomfeat.demo import Steps

    before = torch.get_num_threads()

    monkeypatch.delenv("ZOOMFEAT_THREADS", raising=False)

    def narrow(argv):
        os.environ["ZOOMFEAT_THREADS"] = "1"
        torch.set_num_threads(1 if before > 1 else 2)
        return 0

    Steps(narrow)(["synth-cohort", "--workers", "2"])
    assert torch.get_num_threads() == before and "ZOOMFEAT_THREADS" not in os.environ
