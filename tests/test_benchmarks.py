"""The guidance benchmark runs on the tiny fixture and its FLOP accounting holds (FLOP counts are deterministic)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_guidance_benchmark_tiny(tmp_path, micro_ldm_dir):
    out = tmp_path / "guidance.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "guidance.py"), "--problems", "tiny", "--repeats", "1",
         "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio fd/autograd" in proc.stdout and "per update (steady state)" in proc.stdout
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
