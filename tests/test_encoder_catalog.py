"""`zoomfeat encoders` and docs/encoders.md: the table lists every registered encoder, the doc's table is the
registry's, and the FLOP benchmark behind the doc's GFLOP column counts a known model right."""

from __future__ import annotations

import importlib.util
import re

import pytest

from tests.conftest import ROOT
from zoomfeat.cli import main
from zoomfeat.encoders import encoder_entries
from zoomfeat.encoders.catalog import COLUMNS, encoder_rows, format_rows

DOC = ROOT / "docs" / "encoders.md"
BEGIN, END = "<!-- encoders table: begin (zoomfeat encoders --format md) -->", "<!-- encoders table: end -->"


def test_cli_lists_every_registered_encoder(capsys):
    assert main(["encoders", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ",".join(COLUMNS)
    names = [re.split(r"[ ,]", line, maxsplit=1)[0] for line in lines[1:]]
    assert names == list(encoder_entries())
    assert "uni (alias of uni_v1)" in "\n".join(lines)
    assert main(["encoders"]) == 0 and "conch_v15" in capsys.readouterr().out


def test_bad_format_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["encoders", "--format", "xml"])
    assert info.value.code == 2
    with pytest.raises(ValueError, match="format must be one of"):
        format_rows(encoder_rows(), "xml")


def test_doc_table_matches_the_registry():
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"{DOC} lost its table markers"
    doc_table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert doc_table == format_rows(encoder_rows(builtin_only=True), "md").strip(), (
        "docs/encoders.md is out of date: paste the built-in rows of `zoomfeat encoders --format md` between its "
        "markers")
    assert "tiny-vit" in doc_table and "| uni (alias of uni_v1) |" in doc_table


def test_flop_benchmark_counts_vit_large_like_timm():
    """UNI's ViT-L/16 at 224 px is 61.6 GMACs (timm's model table) = 123.2 GFLOP at 2 FLOP per multiply-add."""
    spec = importlib.util.spec_from_file_location("encoder_flops", ROOT / "benchmarks" / "encoder_flops.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = {r["model"]: r for r in mod.main(["--encoders", "uni_v1,resnet50", "--no-zoomldm"])}
    assert abs(rows["uni_v1"]["gflop"] - 123.2) < 0.5 and abs(rows["uni_v1"]["params_M"] - 303.35) < 0.1
    assert 5 < rows["resnet50"]["gflop"] < 8.2  # truncated after layer3: less than the full ResNet-50's 8.2
