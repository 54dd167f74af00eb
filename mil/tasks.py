"""Losses, predictions and metrics per task: classification (CE, AUC/bal-acc/F1/acc) and survival (Cox or discrete-time NLL, c-index)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mil.survival import cox_loss

CLASSIFICATION = ("binary", "multiclass")
TASKS = (*CLASSIFICATION, "survival")


@dataclass
class ClassificationOptions:
    """Options of the binary / multiclass tasks: none (class weights are the trainer's ``class_weights``)."""


@dataclass
class SurvivalOptions:
    """Options of the survival task (``hparams`` keys)."""

    surv_loss: str = "cox"  # cox | nll (discrete-time)
    n_bins: int = 4  # time bins of the NLL loss
    alpha: float = 0.4  # NLL weight of the uncensored term
    ties: str = "efron"  # Cox partial-likelihood ties


def task_options(task: str) -> type:
    """The options dataclass of ``task``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    return SurvivalOptions if task == "survival" else ClassificationOptions


class ClassificationTask:
    """Cross-entropy over ``n_classes`` logits (binary uses two logits), optional class weights."""

    primary = "auc"
    metric_names = ("auc", "accuracy", "balanced_accuracy", "f1")

    def __init__(self, n_classes: int, class_weights: np.ndarray | None = None):
        if n_classes < 2:
            raise ValueError("classification needs at least two classes")
        self.n_classes = int(n_classes)
        self.n_out = self.n_classes
        self.weight = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None

    def fit(self, y_train: np.ndarray, balance: bool = True) -> "ClassificationTask":
        """Inverse-frequency class weights from the training fold (never from val/test)."""
        if balance:
            counts = np.bincount(np.asarray(y_train, dtype=int), minlength=self.n_classes).astype(np.float64)
            w = np.where(counts > 0, counts.sum() / (self.n_classes * np.maximum(counts, 1)), 0.0)
            self.weight = torch.as_tensor(w, dtype=torch.float32)
        return self

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(logits.device) if self.weight is not None else None
        return F.cross_entropy(logits, y.long().view(-1), weight=w)

    def predict(self, logits: torch.Tensor) -> np.ndarray:
        """Class probabilities (n, C)."""
        return torch.softmax(logits.float(), dim=-1).detach().cpu().numpy()

    def metrics(self, y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
        return classification_metrics(np.asarray(y, dtype=int), prob, self.n_classes)


def classification_metrics(y: np.ndarray, prob: np.ndarray, n_classes: int) -> dict[str, float]:
    """AUC (one-vs-rest macro for >2 classes), accuracy, balanced accuracy, macro-F1; AUC is NaN when a class is absent."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    pred = prob.argmax(axis=1)
    present = np.unique(y)
    auc = float("nan")
    if len(present) >= 2:
        try:
            if n_classes == 2:
                auc = float(roc_auc_score(y, prob[:, 1]))
            elif len(present) == n_classes:
                auc = float(roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=list(range(n_classes))))
            else:
                warnings.warn("test set lacks a class: AUC is NaN for it", stacklevel=2)
        except ValueError as exc:
            warnings.warn(f"AUC undefined: {exc}", stacklevel=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "auc": auc,
            "accuracy": float(accuracy_score(y, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "f1": float(f1_score(y, pred, average="macro", labels=list(range(n_classes)), zero_division=0)),
        }


def nll_surv_loss(logits: torch.Tensor, bins: torch.Tensor, event: torch.Tensor, alpha: float = 0.4,
                  eps: float = 1e-7) -> torch.Tensor:
    """Discrete-time survival NLL (Zadeh & Schmid; Patch-GCN/MCAT form): hazards = sigmoid(logits)."""
    hazards = torch.sigmoid(logits)
    s = torch.cumprod(1 - hazards, dim=1)
    s_pad = torch.cat([torch.ones_like(s[:, :1]), s], dim=1)
    y = bins.long().view(-1, 1)
    c = 1.0 - event.float().view(-1, 1)  # censored indicator
    h_y = torch.gather(hazards, 1, y).clamp(min=eps)
    uncensored = -(1 - c) * (torch.log(torch.gather(s_pad, 1, y).clamp(min=eps)) + torch.log(h_y))
    censored = -c * torch.log(torch.gather(s_pad, 1, y + 1).clamp(min=eps))
    neg_l = censored + uncensored
    return ((1 - alpha) * neg_l + alpha * uncensored).mean()


class SurvivalTask:
    """Survival head: ``loss='cox'`` (one risk logit, ``ties`` 'efron' or 'breslow') or ``'nll'`` (``n_bins``
    discrete-time hazards).

    Targets are (time, event) rows. The predicted risk (higher = earlier death) is the logit for Cox and
    minus the summed survival curve for the discrete-time model. The NLL bins are event-time quantiles of
    the training fold only.
    """

    primary = "c_index"
    metric_names = ("c_index",)

    def __init__(self, loss: str = "cox", n_bins: int = 4, alpha: float = 0.4, ties: str = "efron"):
        if loss not in ("cox", "nll"):
            raise ValueError("survival loss must be 'cox' or 'nll'")
        self.kind = loss
        self.ties = ties
        self.n_bins = int(n_bins)
        self.alpha = float(alpha)
        self.n_out = 1 if loss == "cox" else self.n_bins
        self.edges: np.ndarray | None = None

    def fit(self, y_train: np.ndarray, balance: bool = True) -> "SurvivalTask":
        if self.kind == "nll":
            t, e = y_train[:, 0], y_train[:, 1] > 0
            src = t[e] if e.sum() >= self.n_bins else t
            q = np.quantile(src, np.linspace(0, 1, self.n_bins + 1)[1:-1])
            self.edges = np.unique(q)
        return self

    def _bins(self, time: torch.Tensor) -> torch.Tensor:
        edges = torch.as_tensor(self.edges if self.edges is not None else [], dtype=time.dtype, device=time.device)
        return torch.bucketize(time.contiguous(), edges, right=True).clamp(max=self.n_bins - 1)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.float().view(-1, 2)
        if self.kind == "cox":
            return cox_loss(logits.view(-1), y[:, 0], y[:, 1], self.ties)
        return nll_surv_loss(logits, self._bins(y[:, 0]), y[:, 1], self.alpha)

    def predict(self, logits: torch.Tensor) -> np.ndarray:
        """Risk scores (n, 1): higher means shorter expected survival."""
        logits = logits.float()
        if self.kind == "cox":
            return logits.view(-1, 1).detach().cpu().numpy()
        s = torch.cumprod(1 - torch.sigmoid(logits), dim=1)
        return (-s.sum(dim=1, keepdim=True)).detach().cpu().numpy()

    def metrics(self, y: np.ndarray, risk: np.ndarray) -> dict[str, float]:
        return {"c_index": c_index(y[:, 0], y[:, 1], np.asarray(risk).reshape(-1))}


def c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's c-index through lifelines (which expects scores that grow with survival, hence -risk)."""
    from lifelines.utils import concordance_index

    if np.sum(event) < 1 or len(time) < 2:
        return float("nan")
    try:
        return float(concordance_index(time, -np.asarray(risk), event))
    except ZeroDivisionError:
        return float("nan")


def make_task(task: str, n_classes: int = 2, options: ClassificationOptions | SurvivalOptions | None = None,
              **kwargs):
    """Task object by name from its options (:func:`task_options`; an instance, or its fields as keywords)."""
    cls = task_options(task)
    if options is None:
        try:
            options = cls(**kwargs)
        except TypeError as exc:
            raise ValueError(f"task {task!r}: {exc}") from None
    elif not isinstance(options, cls):
        raise TypeError(f"task {task!r} takes {cls.__name__}, got {type(options).__name__}")
    if task == "survival":
        return SurvivalTask(options.surv_loss, options.n_bins, options.alpha, options.ties)
    if task == "binary" and n_classes != 2:
        raise ValueError(f"task 'binary' needs exactly 2 classes, the labels have {n_classes}; use 'multiclass'")
    return ClassificationTask(n_classes)
