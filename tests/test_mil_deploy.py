"""Final models end to end on two synthetic slide cohorts (train seed 0, external seed 1), tiny-vit features:
`mil train` → `zoomfeat predict` on the external slides (AUC with a patient-grouped CI) = `mil predict` on bags
extracted separately; feature-spec mismatches exit 2 naming the difference; CV folds as an ensemble."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from zoomfeat.cli import main

HP = ["hparams.embed_dim=16", "hparams.attn_dim=8", "hparams.epochs=4", "hparams.min_epochs=2",
      "hparams.patience=3", "hparams.lr=2e-3", "hparams.progress=false", "hparams.wandb=false",
      "val_fraction=0.34", "n_folds=3", "heatmaps=0"]


def _bags(slides, tiles, feats, *extra):
    assert main(["tile", str(slides), "--out", str(tiles), "--no-progress", "--scales", "20x"]) == 0
    assert main(["extract", str(slides), "--tiles", str(tiles), "--encoder", "tiny-vit", "--mags", "20x",
                 "--out", str(feats), "--workers", "0", "--no-progress", *extra]) == 0
    return feats / "features_tiny-vit"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from zoomfeat.slides import make_cohort

    root = tmp_path_factory.mktemp("deploy")
    la = make_cohort(root / "A", n_slides=12, seed=0, sizes_20x=(1024,), progress=False)
    lb = make_cohort(root / "B", n_slides=6, seed=1, sizes_20x=(1024,), progress=False)
    bags_a = _bags(root / "A" / "slides", root / "A" / "tiles", root / "A" / "feats")
    model = root / "model"
    assert main(["mil", "train", "--config", "configs/mil/abmil_subtype.yaml", "--out", str(model), "--cv",
                 f"labels={la}", f"bags={bags_a}", *HP]) == 0
    return {"root": root, "la": la, "lb": lb, "bags_a": bags_a, "model": model}


def test_mil_train_writes_self_describing_model(trained):
    from safetensors.torch import load_file

    from zoomfeat.encoders import create_encoder

    model = trained["model"]
    for name in ("model.safetensors", "model.json", "config.yaml", "history.csv", "training_slides.csv",
                 "README.md", "cv/summary.csv", "cv/fold0/best.pt", "cv/feature_spec.json"):
        assert (model / name).exists(), name
    meta = json.loads((model / "model.json").read_text())
    spec = meta["feature_spec"]
    assert spec["encoder"] == "tiny-vit" and spec["weights_sha256"] == create_encoder("tiny-vit").weights_sha256
    assert spec["tile_px"] == 256 and spec["target_mpp"] == 0.5 and spec["dim"] == 48
    assert spec["recipe"]["seed"] == 0 and spec["recipe"]["input_size"] == 64
    assert meta["task"]["classes"] == [0, 1, 2] and meta["task"]["target"] == "subtype"
    tr = meta["training"]
    assert tr["n_slides"] == 12 and tr["n_train"] + tr["n_val"] == 12 and tr["n_val"] > 0
    slides = pd.read_csv(model / "training_slides.csv")
    assert slides.groupby("patient")["split"].nunique().max() == 1  # the early-stopping split is patient-level
    assert {r["metric"] for r in meta["cv"]["summary"]} >= {"auc", "balanced_accuracy"}
    assert load_file(str(model / "model.safetensors"))  # plain tensors, no pickle
    card = (model / "README.md").read_text()
    for part in ("## Task", "## Training cohort", "## Cross-validation estimate", "## Feature spec",
                 "## Intended use", "## Limits", spec["weights_sha256"], "12 slides"):
        assert part in card, part


def test_predict_slides_matches_mil_predict_and_reports_auc_ci(trained, tmp_path, capsys):
    root, lb, model = trained["root"], trained["lb"], trained["model"]
    out = tmp_path / "pred"
    argv = ["predict", str(root / "B" / "slides"), "--model", str(model), "--out", str(out), "--labels", str(lb),
            "--no-progress", "--n-boot", "100"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "auc:" in printed and "95% CI" in printed
    m = pd.read_csv(out / "metrics.csv").set_index("metric")
    assert m.loc["auc", "n_slides"] == 6 and m.loc["auc", "n_patients"] < 6  # a patient with two slides
    assert m.loc["auc", "ci_low"] <= m.loc["auc", "value"] <= m.loc["auc", "ci_high"]
    assert (out / "roc.png").exists() and len(list((out / "heatmaps").glob("*.png"))) == 6
    att = pd.read_csv(out / "attention" / "syn000.csv")
    assert (att["x"] >= 0).all() and np.isclose(att["score"].sum(), 1.0, atol=1e-4)  # ABMIL softmax over tiles
    # the same slides tiled and extracted separately, then `mil predict`: the same numbers
    bags_b = _bags(root / "B" / "slides", tmp_path / "tiles", tmp_path / "feats")
    assert main(["mil", "predict", str(model), "--bags", str(bags_b), "--out", str(tmp_path / "mp"),
                 "--labels", str(lb), "--n-boot", "100", "--heatmaps", "0"]) == 0
    a, b = pd.read_csv(out / "predictions.csv"), pd.read_csv(tmp_path / "mp" / "predictions.csv")
    probs = [f"prob_{k}" for k in range(3)]
    assert list(a["slide"]) == list(b["slide"])
    np.testing.assert_allclose(a[probs].to_numpy(), b[probs].to_numpy(), atol=1e-6)
    pd.testing.assert_frame_equal(m.reset_index(), pd.read_csv(tmp_path / "mp" / "metrics.csv"))
    # a rerun resumes: tiles and bags are skipped, predictions identical (no heatmaps redrawn: they were checked
    # above and are drawn after the predictions, so they cannot change what a resume reads or writes before them)
    assert main([*argv, "--heatmaps", "0"]) == 0
    summ = pd.read_csv(out / "features_tiny-vit" / "summary.csv")
    assert set(summ["status"]) == {"skipped"}
    pd.testing.assert_frame_equal(a, pd.read_csv(out / "predictions.csv"))


def test_predict_slides_survives_a_bad_slide(trained, tmp_path):
    from tests.conftest import SLIDES

    src = trained["root"] / "B" / "slides"
    mixed = tmp_path / "slides"
    mixed.mkdir()
    for p in sorted(src.iterdir())[:2]:
        shutil.copy(p, mixed / p.name)
    shutil.copy(SLIDES / "unopenable.tiff", mixed / "broken.tiff")
    out = tmp_path / "out"
    assert main(["predict", str(mixed), "--model", str(trained["model"]), "--out", str(out), "--no-progress"]) == 3
    summ = pd.read_csv(out / "summary.csv").set_index("slide")
    assert summ.loc["broken", "status"] == "failed" and summ.loc["broken", "error"].startswith("tile:")
    assert len(pd.read_csv(out / "predictions.csv")) == 2


def test_mismatching_features_exit_2_naming_the_difference(trained, tmp_path, capsys):
    from zoomfeat.encoders import create_encoder

    root, model = trained["root"], trained["model"]
    # bags of the same architecture with other weights (tiny-vit seed 1): weights hash and recipe differ
    two = tmp_path / "two"  # two slides are enough to be refused
    two.mkdir()
    for p in sorted((root / "B" / "slides").iterdir())[:2]:
        shutil.copy(p, two / p.name)
    other = _bags(two, tmp_path / "tiles", tmp_path / "feats1", "--seed", "1")
    capsys.readouterr()
    assert main(["mil", "predict", str(model), "--bags", str(other), "--out", str(tmp_path / "p1")]) == 2
    err = capsys.readouterr().err
    assert "feature spec mismatch" in err and "weights sha256" in err and "recipe.seed: model 0, bags 1" in err
    assert not (tmp_path / "p1" / "predictions.csv").exists()  # nothing scored
    # another encoder recorded on the bag
    enc_dir = tmp_path / "enc"
    shutil.copytree(trained["bags_a"], enc_dir)
    for f in enc_dir.glob("*.h5"):
        with h5py.File(f, "r+") as h5:
            h5.attrs["encoder"] = "phikon"
    assert main(["mil", "predict", str(model), "--bags", str(enc_dir), "--out", str(tmp_path / "p2")]) == 2
    assert "encoder: model tiny-vit, bags phikon" in capsys.readouterr().err
    # a model that reads 20x+5x features refuses 20x-only bags
    meta = json.loads((model / "model.json").read_text())
    fused = tmp_path / "fused"
    shutil.copytree(model, fused)
    (fused / "model.json").write_text(json.dumps({**meta, "mag": "20x+5x"}))
    assert main(["mil", "predict", str(fused), "--bags", str(trained["bags_a"]), "--out", str(tmp_path / "p3")]) == 2
    assert "reads 20x+5x features" in capsys.readouterr().err
    # zoomfeat predict with encoder weights other than the recorded ones: refused before any slide is touched
    torch.save(create_encoder("tiny-vit", seed=1).model.state_dict(), tmp_path / "other.pt")
    out = tmp_path / "p4"
    assert main(["predict", str(root / "B" / "slides"), "--model", str(model), "--out", str(out),
                 "--weights", str(tmp_path / "other.pt"), "--no-progress"]) == 2
    assert "weights sha256: model" in capsys.readouterr().err and not out.exists()


def test_cv_folds_as_ensemble_average_the_fold_models(trained, tmp_path):
    from mil.data import read_features
    from mil.models import build_model

    cv, bags = trained["model"] / "cv", trained["bags_a"]
    out = tmp_path / "ens"
    assert main(["mil", "predict", "--ensemble", str(cv), "--bags", str(bags), "--out", str(out),
                 "--labels", str(trained["la"]), "--n-boot", "100", "--heatmaps", "1"]) == 0
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == 12 and len(list((out / "heatmaps").glob("*.png"))) == 1
    # brute force: each fold's checkpoint by hand, softmax, mean
    nets = []
    for ck in sorted(cv.glob("fold*/best.pt")):
        net = build_model("abmil", 48, 3, embed_dim=16, attn_dim=8)
        net.load_state_dict(torch.load(ck, weights_only=True))
        with np.load(ck.parent / "standardize.npz") as z:  # each fold head reads its own training mean / std
            nets.append((net.eval(), z["mean"], z["std"]))
    assert len(nets) == 3
    x = read_features(bags / "syn003.h5")
    with torch.no_grad():
        want = torch.stack([torch.softmax(n(torch.from_numpy((x - m) / s)[None])["logits"], -1)[0]
                            for n, m, s in nets]).mean(0).numpy()
    got = pred.set_index("slide").loc["syn003", ["prob_0", "prob_1", "prob_2"]].to_numpy(float)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert {"auc", "balanced_accuracy"} <= set(pd.read_csv(out / "metrics.csv")["metric"])


def test_zoomldm_spec_round_trip_rebuilds_the_encoder(trained, tmp_path):
    """The recorded ZoomLDM recipe (blocks, t, conditioning, SSL encoder + hash, 5x fill) rebuilds an encoder whose
    spec equals the bag's; a changed timestep or other weights are named."""
    from mil.spec import SpecMismatchError, read_spec
    from tests.conftest import MICRO_LDM
    from zoomfeat.predict import encoder_for_model

    ckpt = MICRO_LDM / "weights.ckpt"
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(trained["root"] / "B" / "slides" / "syn000.tiff", one)
    assert main(["extract", str(one), "--encoder", "zoomldm", "--weights", str(ckpt), "--ssl-encoder", "tiny-vit",
                 "--blocks", "0,2", "--mags", "20x,5x", "--out", str(tmp_path / "f"), "--workers", "0",
                 "--no-progress"]) == 0
    spec = read_spec(tmp_path / "f" / "features_zoomldm" / "syn000.h5")
    assert spec["recipe"]["blocks"] == [0, 2] and spec["recipe"]["missing_children_5x"] == "embed"
    enc = encoder_for_model(spec, weights=ckpt, mag="20x+5x")
    assert enc.blocks == [0, 2] and enc.ssl_encoder.name == "tiny-vit"
    assert encoder_for_model({**spec, "recipe": {**spec["recipe"], "t": [200]}}, weights=ckpt).t == [200]
    # what the weights fix cannot be asked for: a model trained at another image size is refused, named
    with pytest.raises(SpecMismatchError, match=r"recipe\.image_size: model 256, encoder built here 64"):
        encoder_for_model({**spec, "recipe": {**spec["recipe"], "image_size": 256}}, weights=ckpt)
    with pytest.raises(SpecMismatchError, match="weights sha256"):
        encoder_for_model({**spec, "weights_sha256": "0" * 64}, weights=ckpt)


def test_model_saved_before_abmil_width_followed_in_dim_still_loads(trained, tmp_path):
    """A model folder whose kwargs lack the ABMIL sizes (written before issue 23.4's width rule) is rebuilt at the
    sizes its weights have; new folders record the resolved sizes."""
    import json
    import shutil

    from mil.deploy import load_model

    meta = json.loads((trained["model"] / "model.json").read_text())
    assert {"embed_dim": 16, "attn_dim": 8}.items() <= meta["model"]["kwargs"].items()
    old = tmp_path / "old_model"
    shutil.copytree(trained["model"], old)
    meta["model"]["kwargs"] = {k: v for k, v in meta["model"]["kwargs"].items() if k not in ("embed_dim", "attn_dim")}
    (old / "model.json").write_text(json.dumps(meta))
    net = load_model(old).nets[0]
    assert net.fc[0].out_features == 16 and net.attention.a[0].out_features == 8
