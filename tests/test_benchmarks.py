"""The guidance benchmark runs on the tiny fixture and its FLOP accounting holds (FLOP counts are deterministic)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("where", ["in_process", pytest.param("subprocesses", marks=pytest.mark.slow)])
def test_guidance_benchmark_tiny(tmp_path, micro_ldm_dir, capsys, where):
    # by default in-process (--in-process): the variants' own subprocesses cost a torch + diffusers import each, most
    # of the tiny problem's time; the slow twin runs the script as a user does, one subprocess per variant
    out = tmp_path / "guidance.json"
    argv = ["--problems", "tiny", "--repeats", "1", "--threads", "1", "--json", str(out)]
    if where == "in_process":
        from benchmarks.guidance import main

        assert main([*argv, "--in-process"]) == 0
        stdout = capsys.readouterr().out
    else:
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "guidance.py"), *argv],
                              capture_output=True, text=True, timeout=300, env=dict(os.environ))
        assert proc.returncode == 0, proc.stderr[-2000:]
        stdout = proc.stdout
    assert "ratio fd/autograd" in stdout and "per update (steady state)" in stdout
    rows = {r["mode"]: r for r in json.loads(out.read_text())}
    fd, ag = rows["fd"], rows["autograd"]
    for r in (fd, ag):
        assert r["wall_s"] > 0 and r["cpu_s"] > 0 and r["gflop"] > 0
    p = fd["pieces"]
    u, d, e2 = p["U"]["gflop"], p["D"]["gflop"], p["E2"]["gflop"]
    k = fd["n_steps"]
    # fd call = initial CFG pass + k × (decode + two encodes + two CFG passes)
    # (to 0.3 %: the few elementwise ops of the update itself are counted in the call but in no piece; they weigh
    # more in the micro fixture than at full size)
    assert abs(fd["gflop"] - (u + k * (d + e2 + 2 * u))) < 3e-3 * fd["gflop"]
    # autograd does the same arithmetic as fd per update, to within ~15%, and never less than the graph-free floor
    ag_update = (ag["gflop"] - 2 * u) / k
    assert 0.8 < (d + e2 + 2 * u) / ag_update < 1.2
    assert (d + u) / ag_update > 0.45


def test_table4_cost_counts_flops_on_the_meta_device_and_sums_gpu_hours():
    """benchmarks/table4_cost.py (docs/reproduce_table4.md): Phikon's ViT-B/16 FLOPs from shapes alone, and the
    GPU-hours arithmetic of the extraction plan (20x for UNI / Phikon, 20x + 5x for CTransPath and ZoomLDM + UNI)."""
    import pytest

    from benchmarks.table4_cost import meta_vit_gflop, run_cost

    assert meta_vit_gflop("phikon") == pytest.approx(35.13, rel=2e-3)  # ViT-B/16 at 224 px: 2 × 17.6 GMAC
    g = {"uni": 100.0, "phikon": 10.0, "ctranspath": 5.0}
    rows = {r["extraction"]: r for r in run_cost(g, zl=300.0, n_slides=36000, n20=1000, r5=0.1, missing=0.5,
                                                 peak=1000.0, util=0.5)}
    assert rows["UNI 20x"]["tflop_per_slide"] == 100.0  # 1000 tiles × 100 GFLOP
    assert rows["CTransPath (20x + 5x)"]["tflop_per_slide"] == 5.5  # (1000 + 100) × 5 GFLOP
    # ZoomLDM: 1000 × (300 + 100) + 100 regions × 300 + 100 × 16 × 0.5 children × 100 (UNI) = 510 TFLOP
    zl = rows["ZoomLDM 20x + 5x, UNI-conditioned"]
    assert zl["tflop_per_slide"] == 510.0
    assert zl["gpu_hours_at_peak"] == 5.1 and zl["gpu_hours"] == 10.2  # 510 TFLOP × 36000 / 1 PFLOP/s; at 50 %


def test_mil_step_overhead_benchmark_small(capsys, monkeypatch):
    """benchmarks/mil_step_overhead.py at a small size: foreach AdamW leaves the weights bit-identical (its exit
    code says so) and the cached bag reads give the same arrays as read_bag (asserted inside)."""
    import mil.data as data
    from benchmarks.mil_step_overhead import main

    monkeypatch.setattr(data, "BAG_CACHE", data.BagCache(1 << 24))  # the benchmark clears it: not the suite's
    assert main(["--steps", "40", "--bags", "4"]) == 0
    out = capsys.readouterr().out
    assert "bit-identical: True" in out and "read_features (BagCache)" in out
