"""The MIL trainer reads, standardises and collates each bag once per training run (issue 24.3), and the heads it
trains are the same as when every epoch reads the bags again."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mil.data
import mil.trainer
from mil.folds import head_hparams, train_head
from mil.data import Cohort

READ_FEATURES = mil.data.read_features


def _cohort(n: int = 16, dim: int = 8) -> Cohort:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    items = [rng.normal(y[i], 1.0, (int(rng.integers(5, 30)), dim)).astype(np.float32) for i in range(n)]
    return Cohort([f"s{i}" for i in range(n)], items, y.astype(np.int64), [f"p{i}" for i in range(n)], "binary",
                  [0, 1], dim)


def _train(monkeypatch, max_bytes: int, batch_size: int | None):
    reads = []
    monkeypatch.setattr(mil.data, "read_features",
                        lambda item, mag="20x": reads.append(id(item)) or READ_FEATURES(item, mag))
    monkeypatch.setattr(mil.trainer, "PREPARED_MAX_BYTES", max_bytes)
    cohort = _cohort()
    cfg, hp = head_hparams("abmil", "20x", cohort.dim, {"epochs": 6, "min_epochs": 6, "min_val_slides": 2,
                                                        "batch_size": batch_size, "progress": False, "wandb": False,
                                                        "embed_dim": 16, "attn_dim": 8}, cohort.task)
    net, _, info, _ = train_head(cohort, "abmil", "20x", cfg, hp, np.arange(12), np.arange(12, 16), seed=3,
                                 cache=False, name="t")
    return net.state_dict(), info, reads


@pytest.mark.parametrize("batch_size", [None, 4])
def test_prepared_bags_give_the_same_head_and_read_each_bag_once(monkeypatch, batch_size):
    state, info, reads = _train(monkeypatch, mil.trainer.PREPARED_MAX_BYTES, batch_size)
    ref_state, ref_info, ref_reads = _train(monkeypatch, -1, batch_size)  # -1: never prepared (old path)
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)
    assert info["history"] == ref_info["history"] and info["epochs_run"] == 6
    # the standardiser reads the 12 training bags once; training + validation then read all 16 once, not per epoch
    assert len(reads) == 12 + 16 and len(set(reads)) == 16
    assert len(ref_reads) == 12 + 6 * 16


def test_sampled_bags_are_not_prepared():
    ds = mil.data.BagDataset(_cohort(), max_instances=4, sample=True)
    assert mil.trainer.prepared(ds, 1) is ds  # a fresh instance subset each epoch must stay fresh
    assert isinstance(mil.trainer.prepared(mil.data.BagDataset(_cohort()), 1), mil.trainer.PreparedBags)
    assert mil.trainer.prepared(None, 1) is None
