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
