"""The layers as tests: import-linter contracts (pyproject.toml, [tool.importlinter]) must hold — slides is the bottom
layer, mil reads bags only through zoomfeat.bags, encoders import neither training nor generation, and only the
entry point imports the CLI. The few known exceptions are listed there as ``ignore_imports`` (issue 13)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_import_contracts_hold():
    pytest.importorskip("importlinter")
    exe = shutil.which("lint-imports", path=str(ROOT / ".venv" / "bin")) or shutil.which("lint-imports")
    cmd = [exe] if exe else [sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                                                    "lint_imports_command()"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
