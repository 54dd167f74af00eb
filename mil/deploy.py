"""Apply trained heads to bags (``zoomfeat mil predict``): load a model folder or a CV folder as an ensemble, check
the bags' feature spec, predict, and — with labels — score an external cohort with patient-grouped bootstrap CIs.

Outputs in ``out``: ``predictions.csv`` (one row per slide: ``prob_{k}`` in the model's class order, ``pred``,
``pred_label``; or ``risk``), ``attention/{slide}.csv`` (x, y, score, rank), ``heatmaps/{slide}.png``,
``skipped.csv``; with labels also ``metrics.csv`` / ``metrics.md`` and ``roc.png`` or ``km.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mil.data import BadBagError, BagDataset, Cohort, check_features, load_standardizer, read_features
from mil.modelfile import FEATURE_SPEC, META, STANDARDIZE, WEIGHTS, read_model_card
from mil.models import build_model
from mil.spec import cohort_spec
from mil.tasks import CLASSIFICATION, make_task
from mil.trainer import head_settings, predict
from zoomfeat.bags import list_bags
from zoomfeat.config import load_yaml
from zoomfeat.precision import resolve_device
from zoomfeat.weights import load_state_dict_file, torch_load_tensors

#: the task settings (:func:`mil.tasks.make_task`) a loaded head is rebuilt with; ``ties`` only changes the Cox
#: loss, not the predicted risk
TASK_HP = ("surv_loss", "n_bins", "alpha", "ties")


@dataclass
class Predictor:
    """One head (a model folder) or several (the folds of a CV run, averaged) plus what they need to be applied."""

    nets: list
    task: str
    classes: list
    mag: str
    feature_spec: dict
    task_hp: dict = field(default_factory=dict)
    in_dim: int = 0
    source: str = ""
    kind: str = "model"  # model | ensemble
    meta: dict = field(default_factory=dict)
    norms: list = field(default_factory=list)  #: per head: the training (mean, std) its inputs need, or None

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.task in CLASSIFICATION else 0

    def task_obj(self):
        return make_task(self.task, n_classes=max(self.n_classes, 2), **self.task_hp)


def load_model(path: str | os.PathLike) -> Predictor:
    """A ``zoomfeat mil train`` folder → :class:`Predictor` (weights from safetensors, strict)."""
    path = Path(path)
    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path}: not a model folder (needs {META} and {WEIGHTS}; "
                                "write one with `zoomfeat mil train`)")
    meta = read_model_card(path / META)
    head, task = meta["model"], meta["task"]
    # a pickle in disguise is one line (load_state_dict_file), not a traceback
    weights, kwargs = load_state_dict_file(path / WEIGHTS), dict(head.get("kwargs", {}))
    if head["name"] == "abmil" and "embed_dim" not in kwargs:  # saved before ABMIL's width followed in_dim
        kwargs.update(embed_dim=int(weights["fc.0.weight"].shape[0]),
                      attn_dim=int(weights["attention.a.0.weight"].shape[0]))
    net = build_model(head["name"], int(head["in_dim"]), int(head["n_out"]), **kwargs)
    if task["name"] in CLASSIFICATION and len(task.get("classes") or []) != int(head["n_out"]):
        raise ValueError(f"{path / META}: task.classes names {len(task.get('classes') or [])} class(es) but the head "
                         f"has {int(head['n_out'])} outputs; the model folder is inconsistent (re-run `zoomfeat mil "
                         "train`)")
    net.load_state_dict(weights, strict=True)
    hp = {k: task[k] for k in TASK_HP if k in task}
    return Predictor([net.eval()], task["name"], list(task["classes"]), meta["mag"], meta["feature_spec"], hp,
                     int(head["in_dim"]), str(path), "model", meta, [load_standardizer(path / STANDARDIZE)])


def _cv_classes(cv_dir: Path) -> list:
    """Class list of a CV run, index = the ``y`` code, from its out-of-fold predictions."""
    pred = pd.read_csv(cv_dir / "predictions.csv")
    pairs = pred[["y", "label"]].drop_duplicates().sort_values("y")
    return [_plain(v) for v in pairs["label"]]


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _cv_spec(cv_dir: Path, cfg: dict) -> tuple[dict, int]:
    """The CV run's feature spec and head input width: ``feature_spec.json`` (written by ``mil train --cv``),
    else read from the run's bag folder (which must still exist)."""
    if (cv_dir / FEATURE_SPEC).is_file():
        d = json.loads((cv_dir / FEATURE_SPEC).read_text())
        return d["feature_spec"], int(d["in_dim"])
    bags = cfg.get("bags")
    if not bags or not Path(bags).is_dir():
        raise FileNotFoundError(f"{cv_dir}: cannot tell which features the fold models need: its bag folder "
                                f"{bags!r} is gone (and there is no feature_spec.json)")
    tested = set(pd.read_csv(cv_dir / "predictions.csv", dtype={"slide": str})["slide"])
    files = [p for s, p in list_bags(bags, encoder=cfg.get("encoder")).items() if s in tested]
    mag = cfg.get("mag", "20x")
    return cohort_spec(files, mag, what=f"bags of CV run {cv_dir}"), int(read_features(files[0], mag).shape[1])


def load_ensemble(cv_dir: str | os.PathLike) -> Predictor:
    """The fold models of a ``zoomfeat mil cv`` folder as one predictor (mean of their outputs)."""
    cv_dir = Path(cv_dir)
    ckpts = sorted(cv_dir.glob("fold*/best.pt"), key=lambda p: int(p.parent.name[4:] or 0))
    if not ckpts or not (cv_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{cv_dir}: not a `zoomfeat mil cv` folder (needs config.yaml and fold*/best.pt)")
    cfg = load_yaml(cv_dir / "config.yaml")
    task_name, mag = cfg.get("task", "binary"), cfg.get("mag", "20x")
    classes = _cv_classes(cv_dir) if task_name in CLASSIFICATION else []
    spec, in_dim = _cv_spec(cv_dir, cfg)
    name = str(cfg.get("model", "abmil")).lower()
    _, head, topts = head_settings(name, task_name, dict(cfg.get("hparams") or {}), in_dim, mag)
    task = make_task(task_name, n_classes=max(len(classes), 2), options=topts)
    nets = []
    for ck in ckpts:
        net = build_model(name, in_dim, task.n_out, options=head)
        net.load_state_dict(torch_load_tensors(ck), strict=True)  # a pickled best.pt: one line, no torch advice
        nets.append(net.eval())
    task_hp = dataclasses.asdict(topts)
    return Predictor(nets, task_name, classes, mag, spec, task_hp, in_dim, str(cv_dir), "ensemble",
                     {"folds": [str(c.relative_to(cv_dir)) for c in ckpts], "config": cfg},
                     [load_standardizer(c.parent / STANDARDIZE) for c in ckpts])


def load_predictor(path: str | os.PathLike) -> Predictor:
    """A model folder (``model.json``) or a CV folder (``fold*/best.pt``, used as an ensemble)."""
    path = Path(path)
    if (path / META).is_file():
        return load_model(path)
    if any(path.glob("fold*/best.pt")):
        return load_ensemble(path)
    raise FileNotFoundError(f"{path}: neither a model folder (model.json) nor a `mil cv` folder (fold*/best.pt)")


# ------------------------------------------------------------------------------------------------ prediction


def usable_bags(bag_files: dict[str, Any], mag: str, dim: int) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Bags that can be read at ``mag`` with width ``dim``; the others as (slide, reason), scored by nobody."""
    ok, skipped = {}, []
    for slide, item in bag_files.items():
        try:
            check_features(read_features(item, mag), slide, dim or None)
            ok[slide] = item
        except BadBagError as exc:
            skipped.append((slide, str(exc)))
    return ok, skipped


def predict_bags(pr: Predictor, bag_files: dict[str, Any], device: str = "auto",
                 attention: bool = True) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One row per bag (mean over the predictor's heads) and each bag's mean attention (N,)."""
    slides = list(bag_files)
    n = len(slides)
    targets = np.zeros((n, 2), float) if pr.task == "survival" else np.zeros(n, np.int64)
    cohort = Cohort(slides, [bag_files[s] for s in slides], targets, slides, pr.task, pr.classes, pr.in_dim)
    ds = BagDataset(cohort, pr.mag, cache=len(pr.nets) > 1)
    dev = resolve_device(device)
    task = pr.task_obj()
    outs, atts = [], []
    for k, net in enumerate(pr.nets):
        ds.norm = pr.norms[k] if k < len(pr.norms) else None  # each head sees inputs scaled as in its training
        res = predict(net.to(dev), task, ds, batch_size=1, device=dev, attention=attention)
        net.cpu()
        outs.append(res["pred"])
        atts.append(res["attention"])
    pred = np.mean(outs, axis=0)
    rows = pd.DataFrame({"slide": slides, "n_instances": [len(a) for a in atts[0]] if attention else np.nan})
    if pr.task == "survival":
        rows["risk"] = pred[:, 0]
    else:
        for c in range(pr.n_classes):
            rows[f"prob_{c}"] = pred[:, c]
        rows["pred"] = pred.argmax(1)
        rows["pred_label"] = [pr.classes[int(k)] for k in rows["pred"]]
    attn = {s: np.mean([a[i] for a in atts], axis=0) for i, s in enumerate(slides)} if attention else {}
    return rows, attn
