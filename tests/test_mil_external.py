"""Final-model pieces on synthetic bags (no slides): patient-grouped bootstrap against a brute-force sklearn loop,
the CV-chosen epoch count, survival heads through `mil train` / `mil predict`, and the feature-spec comparison."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mil.synthetic import write_bags
from zoomfeat.cli import main

TINY = ["hparams.embed_dim=16", "hparams.attn_dim=8", "hparams.epochs=3", "hparams.min_epochs=0",
        "hparams.patience=3", "hparams.lr=3e-3", "hparams.progress=false", "hparams.wandb=false",
        "n_folds=3", "heatmaps=0"]


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("ext")
    return write_bags(root, n_slides=24, dim=8, seed=0, encoder="zoomldm")


def test_grouped_bootstrap_equals_brute_force_patient_resampling():
    from sklearn.metrics import roc_auc_score

    from mil.external import grouped_bootstrap_ci

    rng = np.random.default_rng(3)
    n = 40
    patients = [f"p{i // 2}" for i in range(n)]  # two slides per patient
    y = np.repeat(rng.integers(0, 2, n // 2), 2)
    p1 = np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1)
    pred = pd.DataFrame({"slide": [f"s{i}" for i in range(n)], "patient": patients, "y": y,
                         "prob_0": 1 - p1, "prob_1": p1})
    ci = grouped_bootstrap_ci(pred, "binary", 2, n_boot=300, seed=7)
    # brute force: the same patient draws, sklearn's AUC on each resampled slide set
    r = np.random.default_rng(7)
    groups = list(pred.groupby("patient").indices.values())
    aucs = []
    for _ in range(300):
        idx = np.concatenate([groups[k] for k in r.integers(0, len(groups), len(groups))])
        if len(np.unique(y[idx])) == 2:
            aucs.append(roc_auc_score(y[idx], p1[idx]))
    assert ci["auc"] == pytest.approx((np.quantile(aucs, 0.025), np.quantile(aucs, 0.975)), abs=1e-12)
    assert ci["auc"][0] < roc_auc_score(y, p1) < ci["auc"][1]


def test_final_epochs_from_cv_and_cv_estimate_in_card(bags, tmp_path):
    good, labels = bags
    cv = tmp_path / "cv"
    assert main(["mil", "cv", "--config", "configs/mil/abmil_hrd.yaml", "--out", str(cv), f"labels={labels}",
                 f"bags={good}", *TINY]) == 0
    best = pd.read_csv(cv / "fold_metrics.csv")["best_epoch"]
    # a plain `mil cv` folder (no feature_spec.json) works as an ensemble: spec read from its bag folder
    assert main(["mil", "predict", "--ensemble", str(cv), "--bags", str(good), "--out", str(tmp_path / "ens"),
                 "--heatmaps", "0"]) == 0
    assert len(pd.read_csv(tmp_path / "ens" / "predictions.csv")) == 24
    model = tmp_path / "model"
    assert main(["mil", "train", "--config", "configs/mil/abmil_hrd.yaml", "--out", str(model), "--cv-from", str(cv),
                 f"labels={labels}", f"bags={good}", "final.strategy=epochs", *TINY]) == 0
    meta = json.loads((model / "model.json").read_text())
    n = int(np.median(best)) + 1
    assert meta["training"]["epochs_run"] == n and meta["training"]["n_train"] == 24
    assert "median best epoch" in meta["training"]["strategy"]
    auc = pd.read_csv(cv / "summary.csv").set_index("metric").loc["auc"]
    assert f"{auc['mean']:.3f} ± {auc['std']:.3f}" in (model / "README.md").read_text()
    assert main(["mil", "train", "--config", "configs/mil/abmil_hrd.yaml", "--out", str(tmp_path / "m2"),
                 f"labels={labels}", f"bags={good}", "final.strategy=epochs", *TINY]) == 2  # no epoch count


def test_survival_model_predicts_risk_with_c_index_ci(bags, tmp_path):
    good, labels = bags
    model = tmp_path / "surv"
    assert main(["mil", "train", "--config", "configs/mil/abmil_survival.yaml", "--out", str(model),
                 f"labels={labels}", f"bags={good}", "hparams.batch_size=8", "hparams.max_instances=null",
                 "val_fraction=0.25", *TINY]) == 0
    assert "survival" in (model / "README.md").read_text()
    out = tmp_path / "pred"
    assert main(["mil", "predict", str(model), "--bags", str(good), "--out", str(out), "--labels", str(labels),
                 "--n-boot", "100", "--heatmaps", "2"]) == 0
    pred = pd.read_csv(out / "predictions.csv")
    assert "risk" in pred and np.isfinite(pred["risk"]).all() and len(pred) == 24
    m = pd.read_csv(out / "metrics.csv").set_index("metric")
    assert list(m.index) == ["c_index"] and m.loc["c_index", "ci_low"] <= m.loc["c_index", "ci_high"]
    assert (out / "km.png").exists() and len(list((out / "heatmaps").glob("*.png"))) == 2


def test_spec_differences_name_each_field():
    from mil.spec import cohort_spec, differences, spec_from_attrs

    base = {"encoder": "zoomldm", "encoder_weights_sha256": "a" * 64, "dim": 320, "patch_size": 256,
            "target_mpp": 0.5, "precision": "fp16", "mags": ["20x", "5x"], "missing_children_5x": "embed",
            "encoder_config": json.loads(json.dumps({"blocks": [0], "t": [100], "conditioning": "uni",
                                                     "precision": "fp16", "name": "zoomldm", "dim": 320}))}
    s = spec_from_attrs(base)
    assert differences(s, spec_from_attrs({**base, "precision": "fp32"})) == []  # precision is not compared
    d = differences(s, spec_from_attrs({**base, "encoder_config": {**base["encoder_config"], "t": [200]},
                                        "target_mpp": 0.25}))
    assert d == ["target mpp: model 0.5, bags 0.25", "recipe.t: model [100], bags [200]"]
    other5x = spec_from_attrs({**base, "missing_children_5x": "mean"})
    assert differences(s, other5x, "20x") == [] and differences(s, other5x, "5x")  # 5x fill only matters at 5x
    assert "20x+5x" in differences(s, spec_from_attrs({**base, "mags": ["20x"]}), "20x+5x")[0]
    with pytest.raises(ValueError, match="no feature spec"):
        spec_from_attrs({"layout": "clam"})
    with pytest.raises(ValueError, match="no training bags"):
        cohort_spec([])
