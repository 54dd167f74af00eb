"""The demo's step runner: each step is the CLI verb a user would type, run in-process by the executor the CLI layer
hands in (zoomfeat.demo never imports zoomfeat.cli), printed first and logged with its wall and CPU seconds."""

from __future__ import annotations

import pandas as pd
import pytest

from zoomfeat.cli import main
from zoomfeat.demo import Steps


def test_steps_run_cli_verbs_print_and_log_them(tmp_path, capsys):
    steps = Steps(main)
    out = tmp_path / "cohort"
    assert steps(["synth-cohort", "--out", out, "--n-slides", 2, "--seed", 0, "--sizes", "1024"]) == 0
    assert len(pd.read_csv(out / "labels.csv")) == 2 and len(list((out / "slides").iterdir())) == 2
    cmd, wall, cpu = steps.log[0]
    assert cmd == f"zoomfeat synth-cohort --out {out} --n-slides 2 --seed 0 --sizes 1024" and wall > 0 and cpu >= 0
    assert f"$ {cmd}" in capsys.readouterr().out


def test_a_failing_step_stops_the_demo_unless_its_exit_code_is_accepted(tmp_path):
    seen = []
    steps = Steps(lambda argv: seen.append(argv) or 3)
    with pytest.raises(RuntimeError, match="exit 3.*zoomfeat predict x"):
        steps(["predict", "x"])
    assert steps(["predict", "x"], ok=(0, 3)) == 3  # some slides failed: the demo goes on, as `predict` documents
    assert seen == [["predict", "x"], ["predict", "x"]] and len(steps.log) == 2



def _chains(root):
    """Two independent chains of CLI steps, as `run_demo` hands them to `Steps.side_by_side`."""
    from zoomfeat.demo import _chain

    return [(_chain, ([["synth-cohort", "--out", root / "a", "--n-slides", 1, "--seed", 0, "--sizes", "1024"],
                       ["tile", root / "a" / "slides", "--out", root / "a_tiles", "--no-progress"]],)),
            (_chain, ([["synth-cohort", "--out", root / "b", "--n-slides", 1, "--seed", 1, "--sizes", "1024"]],))]


def _outputs(root):
    """Every output file below ``root`` with its bytes where they do not name the run folder (slides, labels)."""
    return {p.relative_to(root): p.read_bytes() if p.suffix in (".tiff", ".svs", ".csv") and "summary" not in p.name
            else None for p in root.rglob("*") if p.is_file() and ".lock" not in p.name}


def test_side_by_side_in_one_process_runs_the_chains_in_order(tmp_path, capsys):
    """`--jobs 1` (and the Python API's default): the chains run here, one after another, logged in job order with
    no group row. Its pool form (two real processes, same files) is the slow twin below."""
    one = Steps(main, jobs=1)
    assert one.side_by_side(_chains(tmp_path)) == [None, None]
    assert [c.split()[1] for c, _, _ in one.log] == ["synth-cohort", "tile", "synth-cohort"]
    assert "side by side" not in capsys.readouterr().out
    out = _outputs(tmp_path)
    assert any(p.suffix == ".h5" for p in out) and len(pd.read_csv(tmp_path / "b" / "labels.csv")) == 1


@pytest.mark.slow
def test_side_by_side_chains_on_two_processes_give_the_files_of_one(tmp_path, capsys):
    """`zoomfeat demo --jobs 2`: the chains run in two loky worker processes (each imports torch: ~10 s, so slow;
    the in-process form is the default twin above) and write the same files as one after another; the log keeps
    job order and adds the group's own row."""
    one, two = Steps(main, jobs=1), Steps(main, jobs=2)
    assert one.side_by_side(_chains(tmp_path / "one")) == [None, None]
    assert two.side_by_side(_chains(tmp_path / "two")) == [None, None]
    assert [c.split()[1] for c, _, _ in two.log[:3]] == ["synth-cohort", "tile", "synth-cohort"]
    assert "side by side on 2 processes" in two.log[3][0] and len(two.log) == 4
    assert _outputs(tmp_path / "one") == _outputs(tmp_path / "two")
    assert "2 independent step chains side by side on 2 processes" in capsys.readouterr().out
