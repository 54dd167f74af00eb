"""zoomfeat probe: the recipe sweep writes its table, heatmaps and an extract-ready recipe, resumes from its cache
and continues past a bad slide (micro ZoomLDM fixture, a small synthetic cohort)."""

import numpy as np
import pandas as pd
import pytest

from tests.conftest import MICRO_LDM


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from zoomfeat.slides.synthetic import make_cohort
    from zoomfeat.slides.tiling import tile_cohort

    root = tmp_path_factory.mktemp("probe_cohort")
    labels = make_cohort(root / "cohort", n_slides=10, seed=1, sizes_20x=(1024,), progress=False)
    tile_cohort(root / "cohort" / "slides", root / "tiles", progress=False, qc=False)
    return root, labels


def test_sweep_outputs_resume_and_bad_slide(cohort):
    from zoomfeat.cli.extract import apply_config
    from zoomfeat.ldm import ZoomLDM
    from zoomfeat.probe import PROBE_COLUMNS, SweepSpec, sweep

    root, labels = cohort
    weights = MICRO_LDM / "weights.ckpt"
    spec = SweepSpec(blocks=[0, 2], t=[0, 100], conditioning=["none", "uni"], tasks=["hrd"], baselines=["tiny-vit"],
                     tiles_per_slide=6, n_folds=2, n_repeats=2, ssl_encoder="tiny-vit")
    out = root / "probe"
    res = sweep(root / "cohort" / "slides", root / "tiles", labels, weights, out, spec, progress=False)
    df = pd.read_csv(out / "probe.csv")
    assert list(df.columns) == PROBE_COLUMNS
    assert len(df) == 2 * 2 * 2 * 3 + 3 and set(df["subset"]) == {"all"}
    assert df["mean"].between(0, 1).all() and (df["n_splits"] == 4).all()
    ab = float(ZoomLDM.from_official(weights, MICRO_LDM / "config.yaml").alphas_cumprod[100])
    assert np.allclose(df.loc[df["t"] == 100, "alpha_bar"], ab, atol=1e-4)
    assert np.allclose(df.loc[df["t"] == 100, "noise_pct"], 100 * (1 - ab), atol=1e-2)
    for mag in ("20x", "5x", "20x+5x"):
        assert (out / f"heatmap_hrd_{mag}.png").stat().st_size > 1000
    best = res["best"]
    zl = df[df["encoder"] == "zoomldm"]
    assert best["mean"] == pytest.approx(zl["mean"].max(), abs=1e-4)
    # best_recipe.yaml is an extract config
    import argparse

    ns = argparse.Namespace(config=str(out / "best_recipe.yaml"), _defaults={k: None for k in (
        "encoder", "blocks", "t", "conditioning", "mags", "weights", "ssl_encoder")}, _explicit=set())
    apply_config(ns)
    assert ns.encoder == "zoomldm" and ns.blocks == [int(best["block"])] and ns.t == [int(best["t"])]
    # scores per split are stored for paired tests
    sc = pd.read_csv(out / "probe_scores.csv")
    assert len(sc) == 4 * len(df)

    # resume: cached slides are not recomputed; a slide without coordinates fails alone
    cache = sorted((out / "cache").glob("*.npz"))
    mtimes = [p.stat().st_mtime_ns for p in cache]
    victim = sorted((root / "tiles" / "coords").glob("*.h5"))[0]
    (out / "cache" / f"{victim.stem}.npz").unlink()
    victim.rename(victim.with_suffix(".bak"))
    try:
        res2 = sweep(root / "cohort" / "slides", root / "tiles", labels, weights, out, spec, progress=False)
    finally:
        victim.with_suffix(".bak").rename(victim)
    assert [f["slide"] for f in res2["failed"]] == [victim.stem]
    assert [p.stat().st_mtime_ns for p in cache if p.exists()] == [m for p, m in zip(cache, mtimes) if p.exists()]
    assert res2["n_slides"] == res["n_slides"] - 1
