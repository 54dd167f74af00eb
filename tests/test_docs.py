"""The docs: the README is a short front page whose links resolve, and the mkdocs site builds with --strict
(broken internal links, missing anchors and pages left out of the nav are errors)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_is_a_front_page_with_working_links():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path = target.split("#")[0]
        assert not path or (ROOT / path).exists(), f"README links to missing {target}"
    for need in ("make demo", "make test", "## Install", "docs/cli.md", "docs/api.md", "ZOOMFEAT_WEIGHTS_REGISTRY"):
        assert need in text
    assert "cat > configs/encoders/weights.yaml" not in text  # users never write into the packaged example


def test_cli_page_lists_every_verb():
    """The verb table moved from the README to docs/cli.md: every top-level verb of `zoomfeat` is in it."""
    from zoomfeat.cli import build_parser

    page = (ROOT / "docs" / "cli.md").read_text()
    verbs = next(a for a in build_parser()._actions if a.dest == "verb").choices
    assert len(verbs) >= 15
    missing = sorted(v for v in verbs if f"`zoomfeat {v}" not in page)
    assert not missing, f"docs/cli.md does not list: {missing}"


def test_mkdocs_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    mkdocs = shutil.which("mkdocs", path=str(ROOT / ".venv" / "bin")) or shutil.which("mkdocs")
    cmd = [mkdocs] if mkdocs else [sys.executable, "-m", "mkdocs"]
    proc = subprocess.run([*cmd, "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "extraction" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "index.html").read_text()  # mkdocstrings rendered the docstrings
    for name in ("zoomfeat.encoders.registry.create_encoder", "zoomfeat.extract.extract_cohort", "mil.cv.cross_validate",
                 "mil.compare.compare", "mil.final.train_final", "zoomfeat.ldm.pipeline.ZoomLDM"):
        assert f'id="{name}"' in api, name
