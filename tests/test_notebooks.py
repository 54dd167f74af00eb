"""Execute every walkthrough notebook top to bottom (nbclient) on the shared fixtures, and check that the committed
notebooks are exactly what notebooks/build_notebooks.py generates (no outputs, no drift)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NB_DIR.glob("*.ipynb"))
KERNEL = "zoomfeat-nbtest"


def _builder():
    sys.path.insert(0, str(NB_DIR))
    try:
        import build_notebooks
    finally:
        sys.path.remove(str(NB_DIR))
    return build_notebooks


def test_notebooks_match_their_generator_and_have_no_outputs():
    build = _builder()
    assert sorted(build.NOTEBOOKS) == NOTEBOOKS == [
        "01_feature_extraction.ipynb", "02_mil_comparison.ipynb", "03_generation_superres.ipynb"]
    for name, cells in build.NOTEBOOKS.items():
        text = (NB_DIR / name).read_text()
        assert text == build.render(cells), f"{name} is stale: run python notebooks/build_notebooks.py"
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code), name
    assert build.main(["--check"]) == 0


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec pointing at *this* interpreter in a private JUPYTER_PATH: works on a fresh clone, whatever
    kernels the user has installed elsewhere."""
    jp = tmp_path_factory.mktemp("jupyter")
    kdir = jp / "kernels" / KERNEL
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "zoomfeat test kernel", "language": "python"}))
    return jp


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, kernel_env, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_env))
    monkeypatch.setenv("ZOOMFEAT_ROOT", str(ROOT))
    monkeypatch.setenv("ZOOMFEAT_SHARED", str(SHARED))
    monkeypatch.setenv("ZOOMFEAT_NB_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("ZOOMFEAT_NB_THREADS", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MPLBACKEND", "agg")
    nb = nbformat.read(NB_DIR / name, as_version=4)
    work = tmp_path / "cwd"  # not the repo: the notebook must find the repository through ZOOMFEAT_ROOT
    work.mkdir()
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300, allow_errors=False,
                                     resources={"metadata": {"path": str(work)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails
    print(f"{name}: {time.perf_counter() - t0:.1f} s")
    nbformat.write(nb, tmp_path / name)  # the executed copy, for a look when something is off
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    # every notebook shows at least one picture (QC image, plots, generated images)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), name
    out = tmp_path / "out"
    expected = {
        "01_feature_extraction.ipynb": ["bags/features_zoomldm/cmu_small_region.h5",
                                        "bags/features_tiny-vit/cmu_small_region.h5",
                                        "tiles/qc/cmu_small_region.png"],
        "02_mil_comparison.ipynb": ["compare/compare.md", "compare/compare.png", "compare/compare.csv"],
        "03_generation_superres.ipynb": ["patches_grid.png", "inversion_loss.png"],
    }[name]
    for rel in expected:
        assert (out / rel).is_file(), rel
