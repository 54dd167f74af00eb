"""`benchmarks/gpu.py --smoke` (CPU, tiny models) runs and writes every field the GPU run reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("where", ["in_process", pytest.param("subprocess", marks=pytest.mark.slow)])
def test_gpu_benchmark_smoke_writes_every_field(tmp_path, capsys, monkeypatch, where):
    # by default main() runs in the test's process (torch and diffusers already imported: a subprocess spent a
    # quarter of the smoke run importing them); the slow twin runs the script as a user does
    if where == "in_process":
        import torch

        from benchmarks.gpu import main
        from zoomfeat.encoders.zoomldm import ZoomLDMEncoder

        # the compile part through its whole path (reset, optimize_encoder, first call, rate, speed-up) on the
        # ZoomLDM's stem and time embedding: dynamo tracing the VQ encoder and UNet stages was half of this test
        # (8.6 of 18.8 s); the slow subprocess twin compiles every unit, as does test_optimize's slow test
        stem = lambda self: [self.model.vq.quant_conv, self.model.unet.conv_in,  # noqa: E731
                             self.model.unet.time_embedding]
        monkeypatch.setattr(ZoomLDMEncoder, "compile_units", stem)
        threads = torch.get_num_threads()
        try:
            assert main(["--smoke", "--out", str(tmp_path)]) == 0, capsys.readouterr().out[-3000:]
        finally:
            torch.set_num_threads(threads)  # --smoke pins one thread
            torch._dynamo.reset()  # the compile part's graphs must not count against other tests' recompile limits
    else:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--out", str(tmp_path)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert res["smoke"] and res["device_type"] == "cpu" and set(res["peak_tflops"]) >= {"bf16", "fp16"}

    ext = res["extraction"]  # precision × batch, FLOPs → TFLOP/s and fraction of peak
    assert {(r["precision"], r["batch"]) for r in ext} == {(p, b) for p in ("bf16", "fp16") for b in (2, 4)}
    for r in ext:
        assert r["tiles_s"] > 0 and r["tflops"] > 0 and "frac_peak" in r and r["block"] == [0] and r["t"] == [100]
        assert 0 < r["gflop_vq_per_tile_fp32"] < r["gflop_per_tile"]
    assert len({r["gflop_per_tile"] for r in ext}) == 1  # FLOPs per tile depend on neither batch nor precision
    assert {r["precision_effective"] for r in ext} == {"bf16", "fp32"}  # fp16 runs as fp32 on a CPU

    rec = res["recipe"]  # the sweep's recipe (last decoder block, t = 0) beside block 0, per batch
    assert [r["batch"] for r in rec] == [2, 4] and all(r["recipe_block"] >= 1 for r in rec)
    for r in rec:
        assert r["recipe_tiles_s"] > 0 and r["block0_tiles_s"] > 0
        assert r["recipe_gflop_per_tile"] > r["block0_gflop_per_tile"]  # a full pass does more than an early exit
    assert "full UNet pass" in (tmp_path / "gpu.md").read_text()

    assert {r["precision"] for r in res["uni"]} == {"bf16", "fp16"}
    assert all(r["tiles_s"] > 0 and r["gflop_per_tile"] > 0 for r in res["uni"])
    dl = res["dataloader"]
    assert dl["tiles"] == 16 and min(dl["loader_only_tiles_s"], dl["end_to_end_tiles_s"], dl["model_only_tiles_s"]) > 0
    tr = res["training"]
    assert [r["gradient_checkpointing"] for r in tr] == [False, True]
    assert all(r["steps_s"] > 0 and "peak_mem_gib" in r for r in tr)
    li = res["large_image"]
    assert li["seconds"] > 0 and li["finite"] and li["paper_seconds_1024"] == 28.0 and li["size_px"] == 128
    comp = res["compile"]
    assert [(r["compile"], r["channels_last"]) for r in comp[:2]] == [(None, False), (None, True)]
    faster_layout = comp[1]["tiles_s"] > comp[0]["tiles_s"]
    assert (comp[2]["compile"], comp[2]["channels_last"]) == ("aot_eager", faster_layout)
    assert all(r["tiles_s"] > 0 and r["speedup"] > 0 for r in comp)
    md = (tmp_path / "gpu.md").read_text()
    for title in ("ZoomLDM extraction", "UNI tiles/s", "DataLoader", "Training", "Joint large image", "torch.compile"):
        assert title in md
