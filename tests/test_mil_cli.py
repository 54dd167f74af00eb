"""`zoomfeat mil cv` and `zoomfeat compare` end to end on small synthetic HDF5 bags (with bad inputs mixed in)."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import good_and_noise_bags
from zoomfeat.cli import main


TINY = ["hparams.embed_dim=16", "hparams.attn_dim=8", "hparams.epochs=6", "hparams.min_epochs=0",
        "hparams.patience=3", "hparams.lr=3e-3", "hparams.progress=false", "n_folds=3"]
N = 18  # slides (9 patients) of the synthetic cohort; the last one gets a NaN feature
NAN = f"slide_{N - 1:03d}"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("milcohort")
    good, noise, labels = good_and_noise_bags(root, N, good="zoomldm")
    # bad inputs: a NaN bag, a bag nobody labelled, a labelled slide without a bag
    with h5py.File(good / f"{NAN}.h5", "r+") as h5:
        f = h5["features"][:]
        f[3, 1] = np.nan
        h5["features"][...] = f
    with h5py.File(good / "orphan.h5", "w") as h5:  # raw h5py: the documented layout, written by hand
        h5["features"] = np.ones((4, 8), np.float32)
        h5["coords"] = np.zeros((4, 2), np.int64)
    df = pd.read_csv(labels)
    df = pd.concat([df, pd.DataFrame([{**df.iloc[0].to_dict(), "slide": "ghost", "patient": "patient_ghost"}])])
    df.to_csv(labels, index=False)
    return root, good, noise, labels


def test_mil_cv_end_to_end(cohort, tmp_path, capsys):
    root, good, _, labels = cohort
    args = ["mil", "cv", "--config", "configs/mil/abmil_hrd.yaml", "--out", str(tmp_path / "a"),
            f"labels={labels}", f"bags={good}", *TINY, "hparams.epochs=3"]
    assert main(args) == 0
    out = tmp_path / "a"
    for name in ("splits.csv", "fold_metrics.csv", "predictions.csv", "summary.csv", "summary.md", "roc.png",
                 "config.yaml", "skipped.csv", "fold0/best.pt"):
        assert (out / name).exists(), name
    skipped = pd.read_csv(out / "skipped.csv").set_index("slide")["reason"]
    assert "NaN or inf" in skipped[NAN] and "no bag" in skipped["ghost"]
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == N - 1 and pred.groupby("patient")["fold"].nunique().max() == 1
    att = pd.read_csv(out / "attention" / "slide_000.csv")
    assert list(att.columns) == ["x", "y", "score", "rank"] and att["rank"].max() == 1.0
    assert len(list((out / "heatmaps").glob("*.png"))) == 3
    metrics = pd.read_csv(out / "fold_metrics.csv")
    assert set(metrics.columns) >= {"fold", "auc", "accuracy", "balanced_accuracy", "f1"}
    state = torch.load(out / "fold0" / "best.pt", weights_only=True)
    assert any(k.startswith("attention.") for k in state)

    # same seed, same config → identical splits and metrics; the saved splits are reused
    assert main([*args[:5], str(tmp_path / "b"), *args[6:]]) == 0
    pd.testing.assert_frame_equal(metrics, pd.read_csv(tmp_path / "b" / "fold_metrics.csv"))
    assert (out / "splits.csv").read_text() == (tmp_path / "b" / "splits.csv").read_text()


def test_compare_end_to_end(cohort, tmp_path):
    root, good, noise, labels = cohort
    out = tmp_path / "cmp"
    rc = main(["compare", "--config", "configs/mil/compare.yaml", "--out", str(out), "--labels", str(labels),
               "--frameworks", "abmil",
               "--bags", f"zoomldm-20x={good}:20x", "--bags", f"zoomldm-20x+5x={good}:20x+5x",
               "--bags", f"noise={noise}", "--tasks", "hrd,survival", *TINY, "hparams.epochs=2",
               "n_repeats=1", "n_folds=2"])
    assert rc == 0
    table = pd.read_csv(out / "compare.csv")
    assert set(table["encoder"]) == {"zoomldm-20x", "zoomldm-20x+5x", "noise"}
    assert set(table["task"]) == {"hrd", "survival"}
    md = (out / "compare.md").read_text()
    assert "| zoomldm-20x+5x |" in md and "±" in md
    assert (out / "compare.png").stat().st_size > 1000
    assert (out / "zoomldm-20x" / "survival" / "km.png").exists()
    # one split table per task, and every encoder was scored on exactly those test folds
    splits = pd.read_csv(out / "splits_hrd.csv")
    for enc in ("zoomldm-20x", "zoomldm-20x+5x", "noise"):
        pred = pd.read_csv(out / enc / "hrd" / "predictions.csv")
        test = splits[splits["split"] == "test"].set_index("slide")["fold"]
        assert (pred.set_index("slide")["fold"] == test.loc[pred["slide"]]).all()
    # the NaN slide is NaN in one encoder only: left out of every entry so the folds stay identical
    assert NAN not in set(splits["slide"])


def test_cli_errors_are_clear(cohort, tmp_path, capsys):
    root, good, _, labels = cohort
    df = pd.read_csv(labels)
    df.loc[1, "hrd"] = 1 - df.loc[0, "hrd"]  # slides 0 and 1 belong to patient_000
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    rc = main(["mil", "cv", "--config", "configs/mil/abmil_hrd.yaml", "--out", str(tmp_path / "x"),
               f"labels={bad}", f"bags={good}", *TINY])
    assert rc == 2
    assert "patient_000" in capsys.readouterr().err
    rc = main(["mil", "cv", "--config", "configs/mil/abmil_hrd.yaml", "--out", str(tmp_path / "y"),
               f"labels={labels}", f"bags={good}", *TINY, "n_folds=20"])
    assert rc == 2
    assert "fewer patients than folds" in capsys.readouterr().err


def test_cross_validate_reads_bag_paths(cohort):
    import mil

    root, good, _, labels = cohort
    df = pd.read_csv(labels, dtype={"slide": str})
    df = df[df["slide"].str.startswith("slide_")]
    paths = [good / f"{s}.h5" for s in df["slide"]]
    with pytest.warns(UserWarning, match="NaN or inf"):
        res = mil.cross_validate(paths, df["hrd"].tolist(), df["patient"].tolist(), model="abmil", n_folds=3,
                                 seed=0, slide_ids=df["slide"].tolist(), mag="20x+5x", embed_dim=8, attn_dim=4,
                                 epochs=2, progress=False)
    assert len(res) == 3 and res["n_test"].sum() == N - 1  # the NaN bag is skipped
