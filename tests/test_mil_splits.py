"""Patient-level folds: no patient in two folds or two splits, reproducible, clear errors on bad labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mil.data import BadBagError, build_cohort, check_features, load_labels
from mil.splits import check_splits, load_splits, make_splits, save_splits


def _cohort(n_pat=30, seed=0, n_classes=3):
    rng = np.random.default_rng(seed)
    slides, patients, labels = [], [], []
    for p in range(n_pat):
        y = p % n_classes
        for s in range(int(rng.integers(1, 4))):  # 1-3 slides per patient
            slides.append(f"p{p:02d}_s{s}")
            patients.append(f"p{p:02d}")
            labels.append(y)
    return slides, patients, np.asarray(labels)


def test_no_patient_in_two_folds_or_two_splits():
    slides, patients, y = _cohort()
    df = make_splits(slides, patients, y, n_folds=5, seed=0)
    test = df[df["split"] == "test"]
    assert test.groupby("patient")["fold"].nunique().max() == 1  # each patient tested in one fold only
    assert sorted(test["slide"]) == sorted(slides)  # every slide tested exactly once
    for _, g in df.groupby("fold"):
        assert g.groupby("patient")["split"].nunique().max() == 1  # train / val / test disjoint by patient
        assert set(g["split"]) == {"train", "val", "test"}
        # stratified: every class appears in every test fold
        lab = dict(zip(slides, y))
        assert {lab[s] for s in g.loc[g["split"] == "test", "slide"]} == {0, 1, 2}


def test_same_seed_same_splits_and_round_trip(tmp_path):
    slides, patients, y = _cohort()
    a = make_splits(slides, patients, y, 5, seed=3)
    b = make_splits(slides, patients, y, 5, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(make_splits(slides, patients, y, 5, seed=4))
    save_splits(a, tmp_path / "splits.csv")
    pd.testing.assert_frame_equal(load_splits(tmp_path / "splits.csv", slides), a)
    with pytest.raises(ValueError, match="does not cover"):
        load_splits(tmp_path / "splits.csv", slides + ["new_slide"])


def test_leak_is_detected():
    slides, patients, y = _cohort()
    df = make_splits(slides, patients, y, 3, seed=0)
    bad = df.copy()
    # move one slide of a multi-slide patient to the other side of the fold
    multi = bad[bad["patient"].duplicated(keep=False) & (bad["fold"] == 0)].iloc[0]
    bad.loc[multi.name, "split"] = "test" if multi["split"] != "test" else "train"
    with pytest.raises(ValueError, match="leakage"):
        check_splits(bad)


def test_class_with_fewer_patients_than_folds():
    slides, patients, y = _cohort(n_pat=20)
    y = y.copy()
    rare = [i for i, p in enumerate(patients) if p in ("p00", "p03")]
    y[:] = np.where(y == 0, 1, y)
    y[rare] = 0
    with pytest.raises(ValueError, match="fewer patients than folds.*0.*2 patient"):
        make_splits(slides, patients, y, n_folds=5)


def test_patient_with_two_labels_stops(tmp_path):
    df = pd.DataFrame({"slide": ["a", "b", "c"], "patient": ["p1", "p1", "p2"], "hrd": [0, 1, 0]})
    rows, skipped = load_labels(df, "binary", "hrd")
    bags = {s: np.ones((3, 4), np.float32) for s in "abc"}
    with pytest.raises(ValueError, match="different labels.*patient p1: a=0, b=1"):
        build_cohort(rows, bags, "binary", "hrd")


def test_bad_bags_are_skipped_with_reasons_or_stop():
    df = pd.DataFrame({"slide": ["a", "b", "c", "d", "e"], "hrd": [0, 1, 0, 1, None]})
    rows, skipped = load_labels(df, "binary", "hrd")
    nan = np.ones((3, 4), np.float32)
    nan[1, 2] = np.nan
    bags = {"a": np.ones((3, 4), np.float32), "b": nan, "c": np.ones((2, 5), np.float32),
            "z": np.ones((3, 4), np.float32)}
    with pytest.warns(UserWarning):
        cohort = build_cohort(rows, bags, "binary", "hrd", skipped=skipped)
    assert cohort.slides == ["a"]
    reasons = dict(cohort.skipped)
    assert "NaN or inf" in reasons["b"] and "width" in reasons["c"] and "no bag" in reasons["d"]
    assert "empty" in reasons["e"]
    with pytest.raises(BadBagError, match="NaN or inf"):
        build_cohort(rows.iloc[:2], bags, "binary", "hrd", on_bad="error")
    with pytest.raises(BadBagError, match="empty"):
        check_features(np.zeros((0, 4), np.float32), "x")


def test_survival_folds_stratify_on_event():
    rng = np.random.default_rng(0)
    n = 60
    event = np.r_[np.ones(20, int), np.zeros(40, int)]
    df = make_splits([f"s{i}" for i in range(n)], [f"p{i}" for i in range(n)], event, 4, seed=0)
    ev = dict(zip([f"s{i}" for i in range(n)], event))
    per_fold = df[df["split"] == "test"].groupby("fold")["slide"].apply(lambda s: sum(ev[x] for x in s))
    assert per_fold.min() >= 4 and per_fold.max() <= 6
    del rng


def test_survival_with_few_censored_patients_warns_but_splits():
    event = np.r_[np.ones(18, int), np.zeros(2, int)]  # 2 censored < 5 folds: fine for survival, warned
    ids = [f"s{i}" for i in range(20)]
    with pytest.warns(UserWarning, match="fewer patients than folds"):
        df = make_splits(ids, ids, event, 5, seed=0, strict=False)
    assert df["fold"].nunique() == 5
    with pytest.raises(ValueError, match="with an event"):
        make_splits(ids, ids, 1 - event, 5, seed=0, strict=False)  # 2 events for 5 folds
