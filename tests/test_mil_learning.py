"""The heads learn what they should: a one-concept MIL task (not its frequency), and survival with known risk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import mil
from mil.data import BagDataset, Cohort
from mil.models import build_model
from mil.synthetic import concept_bags, survival_bags
from mil.tasks import ClassificationTask, c_index, classification_metrics
from mil.trainer import HeadTrainConfig, predict, seed_everything, train_model

D = 16


def _cohort(bags, y):
    ids = [str(i) for i in range(len(bags))]
    return Cohort(ids, bags, np.asarray(y), ids, "binary", [0, 1], D)


def _size_features(bags):
    """What a frequency-only model sees: mean-pooled features and log bag size."""
    return np.stack([np.r_[b.mean(0), np.log(len(b))] for b in bags])


HEADS = {
    "abmil": dict(embed_dim=32, attn_dim=16, dropout=0.1),
    "transmil": dict(embed_dim=32, heads=2, num_landmarks=16, dropout=0.1, mask_aware=True),
}
#: TransMIL at 5 epochs instead of 10 (half its time, the test's largest cost): measured test AUC 0.984 / 0.967 /
#: 0.968 (data seeds 0 / 1 / 2 with torch seeds 0 / 1 / 2; 10 epochs: 0.981 / 0.967 / 0.962), frequency reader
#: 0.784 / 0.748 / 0.719. A smaller cohort is not cheaper: 200 bags reach 0.84-0.98 in the same time.
EPOCHS = {"abmil": 10, "transmil": 5}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_head_learns_concept_presence_not_frequency(head):
    """Label = presence of 1–3 concept-A instances; decoy-B frequency and bag size are random.

    The test bags are 2–10× larger than the training bags, so the concept's *frequency* drops while its
    presence still decides the label: a presence detector keeps AUC > 0.95, a frequency reader does not
    (checked on a mean-pooling + bag-size logistic regression trained on the same bags).
    """
    train = concept_bags(300, D, size=(10, 40), strength=5.0, seed=0)
    val = concept_bags(60, D, size=(10, 40), strength=5.0, seed=100)
    test = concept_bags(100, D, size=(60, 120), strength=5.0, seed=200)
    seed_everything(0)
    net = build_model(head, D, 2, **HEADS[head])
    task = ClassificationTask(2).fit(train[1])
    cfg = HeadTrainConfig(lr=2e-3, epochs=EPOCHS[head], patience=4, batch_size=16, progress=False, wandb=False)
    train_model(net, task, BagDataset(_cohort(*train), cache=True), BagDataset(_cohort(*val), cache=True), cfg)
    res = predict(net, task, BagDataset(_cohort(*test)), batch_size=1, attention=True)
    auc = roc_auc_score(test[1], res["pred"][:, 1])
    assert auc > 0.95, f"{head} test AUC {auc:.3f}"

    freq = LogisticRegression(max_iter=3000).fit(_size_features(train[0]), train[1])
    auc_freq = roc_auc_score(test[1], freq.predict_proba(_size_features(test[0]))[:, 1])
    assert auc_freq < 0.9 and auc > auc_freq + 0.05, (auc, auc_freq)

    if head == "abmil":  # the attention points at the concept: its top instance is an A instance in most positives
        a_dir = np.linalg.qr(np.random.default_rng(12345).normal(size=(D, D)))[0][:, 0]
        hits = [float(b[np.argmax(att)] @ a_dir) > 2.5 for b, att, y in zip(test[0], res["attention"], test[1]) if y]
        assert np.mean(hits) > 0.8


def test_cox_survival_cindex_on_known_risk():
    bags, y, risk = survival_bags(120, D, seed=0)
    assert c_index(y[:, 0], y[:, 1], risk) > 0.75  # the cohort has signal to find
    df = mil.cross_validate(bags, y, model="abmil", task="survival", n_folds=3, seed=0, embed_dim=32,
                            attn_dim=16, lr=3e-3, epochs=20, patience=5, progress=False)
    assert list(df["fold"]) == [0, 1, 2] and "c_index" in df
    assert df["c_index"].mean() > 0.7, df
    summary = df.summary.set_index("metric")
    assert summary.loc["c_index", "ci_low"] <= summary.loc["c_index", "ci_high"]
    assert len(df.predictions) == 120


def test_cross_validate_is_reproducible_and_patient_level():
    bags, y = concept_bags(48, D, size=(10, 30), strength=5.0, seed=1)
    groups = [f"p{i // 2}" for i in range(48)]
    y = np.asarray([y[2 * (i // 2)] for i in range(48)])  # one label per patient
    kw = dict(model="abmil", task="binary", n_folds=3, seed=7, embed_dim=16, attn_dim=8, lr=3e-3, epochs=4,
              progress=False, batch_size=4)
    a = mil.cross_validate(bags, y, groups, **kw)
    b = mil.cross_validate(bags, y, groups, **kw)
    pd.testing.assert_frame_equal(a.metrics, b.metrics)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    assert set(a.columns) >= {"auc", "accuracy", "balanced_accuracy", "f1"}
    pred = a.predictions
    assert pred.groupby("patient")["fold"].nunique().max() == 1


def test_discrete_time_nll_head_learns_known_risk():
    """Issue 23.5: not just a finite c-index — the NLL head ranks patients by the planted risk (oracle c-index
    0.85; measured 0.77 / 0.76 / 0.77 per fold; a head that learns nothing scores ~0.5)."""
    from scipy.stats import spearmanr

    bags, y, risk = survival_bags(60, D, seed=2)
    df = mil.cross_validate(bags, y, model="abmil", task="survival", n_folds=3, seed=0, surv_loss="nll",
                            n_bins=4, embed_dim=16, attn_dim=8, lr=3e-3, epochs=20, batch_size=8, progress=False,
                            wandb=False)
    assert df["c_index"].mean() > 0.7 and df["c_index"].min() > 0.6, df["c_index"]
    pred = df.predictions.assign(true=risk[[int(s[3:]) for s in df.predictions["slide"]]])
    assert spearmanr(pred["risk"], pred["true"]).statistic > 0.4  # higher predicted risk = higher planted hazard


def test_bootstrap_metrics_equal_sklearn():
    from mil.external import boot_classification_metrics

    rng = np.random.default_rng(0)
    for c in (2, 3):
        prob = rng.dirichlet(np.ones(c), (10, 40)).round(1) + 1e-3
        prob /= prob.sum(-1, keepdims=True)
        y = rng.integers(0, c, (10, 40))
        fast = boot_classification_metrics(y, prob, c)
        for b in range(10):
            for k, v in classification_metrics(y[b], prob[b], c).items():
                assert np.isclose(v, fast[k][b], equal_nan=True), (c, k)
