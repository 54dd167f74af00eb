"""Execute every walkthrough notebook top to bottom (nbclient) on the vendored test data, and check that the committed
notebooks (the single source: no generator) carry their executed outputs."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from tests.conftest import ROOT

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("IPython")

NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NB_DIR.glob("*.ipynb"))
KERNEL = "zoomfeat-nbtest"


def test_committed_notebooks_carry_their_outputs():
    """The .ipynb files are the single source and are committed executed (`make notebooks`), so a reader on a code
    host sees every table and plot; the pictures stay small."""
    assert NOTEBOOKS == ["01_feature_extraction.ipynb", "02_mil_comparison.ipynb", "03_generation_superres.ipynb"]
    for name in NOTEBOOKS:
        nb = nbformat.read(NB_DIR / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(c.execution_count for c in code), f"{name}: not executed (run `make notebooks`)"
        assert not [o for c in code for o in c.outputs if o.output_type == "error"], name
        n_png = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
        assert n_png == {"01": 2, "02": 3, "03": 4}[name[:2]], (name, n_png)
        assert (NB_DIR / name).stat().st_size < 1_500_000, name


@pytest.fixture(scope="module")
def executed(tmp_path_factory, request):
    """Run all notebooks at once, each in its own kernel pinned to one thread (so together they use the cores of
    a small machine), and return ``{name: (executed notebook, its output folder, seconds, error or None)}``.

    The kernel is a kernelspec pointing at *this* interpreter in a private JUPYTER_PATH: it works on a fresh
    clone, whatever kernels the user has installed elsewhere. The working directory is outside the repository,
    so the notebooks must find it through ZOOMFEAT_ROOT.
    """
    import asyncio

    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # only the notebooks whose test was selected (e.g. with -k 02)
    wanted = sorted({it.callspec.params["name"] for it in request.session.items
                     if getattr(it, "originalname", "") == "test_notebook_runs_top_to_bottom"}) or NOTEBOOKS
    base = tmp_path_factory.mktemp("notebooks")
    kdir = base / "jupyter" / "kernels" / KERNEL
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "zoomfeat test kernel", "language": "python"}))
    env = {**os.environ, "JUPYTER_PATH": str(base / "jupyter"), "ZOOMFEAT_ROOT": str(ROOT),
           "ZOOMFEAT_NB_THREADS": "1", "WANDB_MODE": "disabled"}

    async def run(name: str):
        stem = name.removesuffix(".ipynb")
        work, out = base / stem / "cwd", base / stem / "out"
        work.mkdir(parents=True)
        nb = nbformat.read(NB_DIR / name, as_version=4)
        client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300, allow_errors=False,
                                         resources={"metadata": {"path": str(work)}})
        t0 = time.perf_counter()
        err = None
        try:
            await client.async_execute(env={**env, "ZOOMFEAT_NB_OUT": str(out)})
        except Exception as exc:  # CellExecutionError carries the failing cell's traceback
            err = exc
        seconds = time.perf_counter() - t0
        nbformat.write(nb, base / name)  # the executed copy, for a look when something is off
        return name, (nb, out, seconds, err)

    async def run_all():
        return dict(await asyncio.gather(*(run(n) for n in wanted)))

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", env["JUPYTER_PATH"])
        results = asyncio.run(run_all())
    for name, (_, _, seconds, err) in results.items():
        print(f"{name}: {seconds:.1f} s{' FAILED' if err else ''}")
    return results


EXPECTED_FILES = {
    "01_feature_extraction.ipynb": ["bags/features_zoomldm/cmu_small_region.h5",
                                    "bags/features_tiny-vit/cmu_small_region.h5", "tiles/qc/cmu_small_region.png"],
    "02_mil_comparison.ipynb": ["compare/compare.md", "compare/compare.png", "compare/compare.csv"],
    "03_generation_superres.ipynb": ["patches_grid.png", "inversion_loss.png"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, executed):
    """Each notebook in its own real Jupyter kernel (slow: three kernels start and import torch). By default
    test_notebook_runs_top_to_bottom_fast runs the same cells in this process and checks the same outputs."""
    nb, out, seconds, err = executed[name]
    if err is not None:
        raise err
    check_executed(name, nb, out)


# the fast twin's smaller sizes (the real-kernel test runs the notebooks as committed)
SHRINK = {
    "01_feature_extraction.ipynb": {},
    "02_mil_comparison.ipynb": {"epochs=6": "epochs=2", "n_folds=3": "n_folds=2", '"n_folds": 3': '"n_folds": 2, "n_repeats": 1',
                                "concept_bags(48": "concept_bags(24", "survival_bags(60": "survival_bags(32",
                                "n_slides=24": "n_slides=16"},
    "03_generation_superres.ipynb": {"steps=10": "steps=2", "iters=6": "iters=2", "stride=250": "stride=500"},
}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom_fast(name, tmp_path, monkeypatch):
    """The default twin of test_notebook_runs_top_to_bottom: every code cell of the committed notebook, in order,
    in one namespace in this process (tests/_fx_e2e.py: last expressions and display() calls go through IPython's
    display formatter, as in a kernel), with the Makefile's notebook environment and the working directory
    outside the repository, at the smaller sizes of SHRINK (fewer epochs, folds, compare repeats, sampler steps); the same checks of
    outputs, pictures and written files."""
    from tests._fx_e2e import run_notebook_in_process

    out = tmp_path / "out"
    nb = run_notebook_in_process(NB_DIR / name, tmp_path / "cwd", out, monkeypatch, ROOT, SHRINK[name])
    check_executed(name, nb, out)


def check_executed(name: str, nb, out) -> None:
    """What an executed notebook must show and have written to its output folder ``out``."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    # the pictures are shown: thumbnail + QC image; compare plot, ROC, KM; patches, large image, SR, loss curve
    n_png = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert n_png == {"01": 2, "02": 3, "03": 4}[name[:2]], (name, n_png)
    for rel in EXPECTED_FILES[name]:
        assert (out / rel).is_file(), rel
    if name.startswith("01"):  # the bags hold what the notebook says: 20x rows linked to 5x rows, CLAM-readable
        import h5py

        with h5py.File(out / EXPECTED_FILES[name][0], "r") as f:
            n, d = f["features"].shape
            assert f["coords"].shape == (n, 2) and f["parent_index"].shape == (n,) and n > 0
            assert f["5x/features"].shape[1] == d and f["parent_index"][:].max() < f["5x/features"].shape[0]
    if name.startswith("02"):  # every encoder entry × task made it into the comparison table
        import pandas as pd

        table = pd.read_csv(out / "compare" / "compare.csv")
        assert set(table["encoder"]) == {"informative-20x+5x", "noise-20x"}
        assert set(table["task"]) == {"subtype", "survival"} and table["mean"].notna().all()
