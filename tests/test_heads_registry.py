"""Heads are registered like encoders: one decorated class (with its options dataclass) runs through `mil cv` and
`compare`; every hparams key belongs to the trainer, the head or the task, and a misspelt one exits 2 naming it."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from torch import nn

from mil.models import get_head, head_names, register_head, unregister_head
from mil.tasks import SurvivalOptions, make_task
from mil.trainer import check_hparams, head_settings
from tests.conftest import good_and_noise_bags
from zoomfeat.cli import main

TINY = ["hparams.epochs=2", "hparams.min_epochs=0", "hparams.patience=2", "hparams.progress=false",
        "hparams.wandb=false", "n_folds=2", "heatmaps=0"]


@dataclass
class MeanOptions:
    width: int = 4
    scale: float = 1.0


@pytest.fixture
def mean_head():
    @register_head("meanpool", options=MeanOptions)
    class MeanPool(nn.Module):
        """Mean of a linear projection of the instances: the smallest head there is."""

        def __init__(self, in_dim: int, n_out: int, width: int = 4, scale: float = 1.0):
            super().__init__()
            self.proj, self.out, self.scale = nn.Linear(in_dim, width), nn.Linear(width, n_out), scale
            MeanPool.built.append((width, scale))

        def forward(self, x, mask=None):
            x = x.unsqueeze(0) if x.dim() == 2 else x
            h = self.proj(x) * self.scale
            w = mask.float().unsqueeze(-1) if mask is not None else torch.ones_like(h[..., :1])
            logits = self.out((h * w).sum(1) / w.sum(1).clamp(min=1))
            return {"logits": logits, "attention": (w / w.sum(1, keepdim=True)).squeeze(-1)}

    MeanPool.built = []
    yield MeanPool
    unregister_head("meanpool")


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    return good_and_noise_bags(tmp_path_factory.mktemp("heads"), 16)


def test_builtin_heads_are_ordinary_registered_heads():
    assert {"abmil", "transmil", "twobranch", "linear"} <= set(head_names())
    assert not get_head("linear").trained and get_head("abmil").trained
    with pytest.raises(ValueError, match="did you mean 'abmil'"):
        get_head("abmill")
    _, head, _ = head_settings("twobranch", "binary", {"embed_dim": "16"}, in_dim=12, mag="20x+5x")
    assert head.split_dim == 6 and head.embed_dim == 16  # the head's hook; a string number cast by its type
    with pytest.raises(ValueError, match="20x\\+5x"):
        head_settings("twobranch", "binary", {}, in_dim=12, mag="20x")


def test_task_options_are_typed_and_checked():
    task = make_task("survival", options=SurvivalOptions(surv_loss="nll", n_bins=3))
    assert task.kind == "nll" and task.n_out == 3
    with pytest.raises(ValueError, match="n_bin"):
        make_task("survival", n_bin=3)
    check_hparams("abmil", "survival", {"surv_loss": "nll", "lr": 1e-3, "dropout": 0.1})
    with pytest.warns(UserWarning, match="'surv_loss' \\(an option of survival\\)"):
        check_hparams("abmil", "binary", {"surv_loss": "nll"})  # a survival option: not read, and said so
    with pytest.warns(UserWarning, match="'attn_dim' \\(an option of abmil, twobranch\\)"):
        _, head, _ = head_settings("transmil", "binary", {"attn_dim": 8, "heads": 2})  # abmil config, transmil
    assert head.heads == 2
    with pytest.raises(ValueError, match=r"'dropuot' \(did you mean 'dropout'\?\)"):
        check_hparams(["linear", "abmil"], "binary", {"dropuot": 0.5})


def test_a_head_in_one_decorated_class_runs_through_mil_cv_and_compare(mean_head, bags, tmp_path):
    good, noise, labels = bags
    assert main(["mil", "cv", "--config", "configs/mil/abmil_hrd.yaml", "--out", str(tmp_path / "cv"),
                 f"labels={labels}", f"bags={good}", "model=meanpool", *TINY, "hparams={width: 3, epochs: 2, min_epochs: 0, progress: false, "
                 "wandb: false, min_val_slides: 2}", "--jobs", "1"]) == 0
    metrics = pd.read_csv(tmp_path / "cv" / "fold_metrics.csv")
    assert len(metrics) == 2 and metrics["auc"].notna().all()
    assert (3, 1.0) in mean_head.built  # its option reached its constructor
    assert (tmp_path / "cv" / "fold0" / "best.pt").exists()
    assert main(["compare", "--config", "configs/mil/compare.yaml", "--out", str(tmp_path / "cmp"),
                 "--labels", str(labels), "--bags", f"good={good}", "--bags", f"noise={noise}", "--tasks", "hrd",
                 "--frameworks", "linear,meanpool", "n_repeats=1", "hparams={width: 5, epochs: 2, min_epochs: 0, "
                 "progress: false, wandb: false}", "n_folds=2", "--jobs", "1"]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert set(table["framework"]) == {"linear", "meanpool"}
    assert (5, 1.0) in mean_head.built


@pytest.mark.parametrize("verb,override,key,near", [
    ("cv", "n_fold=3", "n_fold", "n_folds"),
    ("cv", "hparams.dropuot=0.5", "dropuot", "dropout"),
    ("compare", "n_fold=3", "n_fold", "n_folds"),
    ("compare", "hparams.dropuot=0.5", "dropuot", "dropout"),
    ("train", "n_fold=3", "n_fold", "n_folds"),
    ("train", "hparams.dropuot=0.5", "dropuot", "dropout"),
])
def test_misspelt_key_exits_2_naming_it(bags, tmp_path, capsys, verb, override, key, near):
    good, noise, labels = bags
    out = str(tmp_path / "o")
    if verb == "compare":
        argv = ["compare", "--config", "configs/mil/compare.yaml", "--out", out, "--labels", str(labels), "--bags",
                f"good={good}", "--tasks", "hrd", override]
    else:
        argv = ["mil", verb, "--config", "configs/mil/abmil_hrd.yaml", "--out", out, f"labels={labels}",
                f"bags={good}", override]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and repr(key) in err and f"did you mean {near!r}" in err
    assert not (tmp_path / "o" / "fold_metrics.csv").exists()
