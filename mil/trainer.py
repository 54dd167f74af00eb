"""One fold's training: AdamW, early stopping on smoothed validation loss, best checkpoint, optional wandb, tqdm.

Small cohorts: a validation loss over 3–4 slides is noise, and stopping on it stopped the demo's heads at epoch
0. So the selection uses a moving average of the validation loss over ``smooth`` epochs and never stops before
``min_epochs``; and :func:`mil.cv.run_folds` drops early stopping altogether when a fold has fewer than
``min_val_slides`` validation slides (train + val are then trained on for the fixed ``epochs``, last weights kept).

Reproducibility: :func:`seed_everything` seeds python/numpy/torch and turns on deterministic algorithms;
the loader's shuffling and the instance sampling use seeded generators and run in-process by default
(``num_workers=0``), so one seed gives the same weights and metrics on the same machine.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mil.data import BagDataset, collate_bags
from mil.models import get_head, head_names, head_options
from mil.models.registry import option_names
from mil.tasks import TASKS, task_options
from zoomfeat.config import from_dict, unknown_message
from zoomfeat.io import atomic_path
from zoomfeat.precision import autocast, check_supported, effective_precision, resolve_device
from zoomfeat.threads import thread_count
from zoomfeat.tracking import WandbRun


@dataclass
class HeadTrainConfig:
    """Trainer hyperparameters of a MIL head (the model's own live in the head's constructor). Defaults follow CLAM.

    Not to be confused with :class:`zoomfeat.train.config.TrainConfig`, the ZoomLDM training config."""

    lr: float = 2e-4
    weight_decay: float = 1e-5
    epochs: int = 50
    patience: int = 10
    min_epochs: int = 10
    smooth: int = 5  # moving-average window (epochs) of the validation loss that early stopping reads
    min_val_slides: int = 16  # fewer validation slides in a fold: fixed schedule on train + val (see module doc)
    standardize: bool = True  # per-feature mean / std from the fold's training instances
    threads: int | None = None  # torch intra-op threads; None: `--threads` of the CLI (ZOOMFEAT_THREADS) or 1
    batch_size: int | None = None  # None: 1 for classification / NLL (peers), 16 for Cox (needs risk sets)
    max_instances: int | None = None
    class_weights: bool = True
    grad_clip: float | None = None
    num_workers: int = 0
    device: str = "auto"
    precision: str = "fp32"  # autocast dtype of the head's train/val forwards (fp32/bf16/fp16; bf16 runs on CPU too)
    progress: bool = True
    wandb: bool = True
    wandb_project: str = "zoomfeat-mil"
    cache: bool = False  # keep bags read from files in memory (in-memory bags always are)

    @classmethod
    def from_hparams(cls, hparams: dict) -> "HeadTrainConfig":
        """The trainer's keys of ``hparams``; the other keys must belong to a head or the task
        (:func:`check_hparams` rejects the rest)."""
        names = _names(cls)
        return cls(**{k: _coerce(k, v) for k, v in hparams.items() if k in names})

    def resolved_batch_size(self, task) -> int:
        if self.batch_size:
            return int(self.batch_size)
        return 16 if getattr(task, "kind", None) == "cox" else 1


_FLOATS = {"lr", "weight_decay", "grad_clip"}
_INTS = {"epochs", "patience", "min_epochs", "batch_size", "max_instances", "num_workers", "smooth",
         "min_val_slides", "threads"}


def _coerce(key: str, value: Any) -> Any:
    """YAML reads ``1e-4`` (no dot) as a string: numbers from configs/overrides are cast here."""
    if value is None or value == "null":
        return None
    try:
        if key in _FLOATS:
            return float(value)
        if key in _INTS:
            return int(float(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"hparams.{key} must be a number, got {value!r}") from exc
    return value


def _names(schema: type) -> set[str]:
    """The field names of an options dataclass."""
    return {f.name for f in fields(schema)}


def _reads(name: str) -> set[str]:
    """The option names of a registered head or a task."""
    return _names(task_options(name)) if name in TASKS else set(option_names(name))


def _keys_read(models: list[str], tasks: list[str]) -> set[str]:
    """The ``hparams`` keys the trainer, the heads ``models`` and the tasks ``tasks`` read."""
    return _names(HeadTrainConfig).union(*(_reads(n) for n in (*models, *tasks)))


def check_hparams(models: list[str] | str, tasks: list[str] | str, hparams: dict) -> None:
    """Every key of ``hparams`` must be a trainer setting (:class:`HeadTrainConfig`), an option of one of ``models``
    (their registered options dataclass) or of one of ``tasks`` (:func:`mil.tasks.task_options`). A key that is
    an option of another registered head or task (``attn_dim`` of an ABMIL config run with ``model=transmil``) is
    not read: a warning names it. Anything else is a ValueError naming the key and the nearest valid one."""
    models = [models] if isinstance(models, str) else list(models)
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    known = _keys_read(models, tasks)
    unknown = sorted(set(hparams or {}) - known)
    others = {k: [n for n in (*head_names(), *TASKS) if k in _reads(n)] for k in unknown}
    unread = {k: v for k, v in others.items() if v}
    if unread:
        warnings.warn(f"hparams not read by {'/'.join(models)} ({'/'.join(tasks)}): "
                      + ", ".join(f"{k!r} (an option of {', '.join(v)})" for k, v in unread.items()), stacklevel=3)
    bad = [k for k in unknown if k not in unread]
    if bad:
        raise ValueError(f"hparams ({'/'.join(models)}, {'/'.join(tasks)}): {unknown_message(bad, known)}")


def hparams_for(model: str, task: str, hparams: dict) -> dict:
    """The keys of ``hparams`` (checked over several heads: ``compare``) that ``model`` and ``task`` read: the
    trainer's, the head's and the task's."""
    own = _keys_read([model], [task])
    return {k: v for k, v in (hparams or {}).items() if k in own}


def head_settings(model: str, task: str, hparams: dict, in_dim: int | None = None, mag: str | None = None):
    """(trainer settings, head options, task options) of one head from a flat ``hparams`` mapping, every key
    checked (:func:`check_hparams`); numbers given as strings are cast, bag-dependent head defaults are filled
    (the head's ``resolve_options``) when ``in_dim`` is given."""
    check_hparams(model, task, dict(hparams or {}))  # misspelt keys: error; other heads' / tasks' options: warned
    hparams = hparams_for(model, task, hparams)
    pick = lambda schema: {k: v for k, v in hparams.items() if k in _names(schema)}  # noqa: E731
    entry = get_head(model)
    head = head_options(model, from_dict(entry.options, pick(entry.options), f"hparams ({model})"), in_dim, mag)
    topts = from_dict(task_options(task), pick(task_options(task)), f"hparams ({task})")
    return HeadTrainConfig.from_hparams(hparams), head, topts


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # = torch.use_deterministic_algorithms(True, warn_only=True) minus its import of torch._inductor (to set the
    # compiler's flag; nothing here compiles): that import cost 2-4 s in every process, every pool worker included
    torch.set_deterministic_debug_mode("warn")


def configure_threads(threads: int | None = None, workers: int = 0) -> int:
    """Set torch's intra-op threads so that threads × max(1, workers) ≤ available cores; returns the count.

    An explicit ``threads`` above the available cores is lowered to them (oversubscribed OpenMP threads spin
    at barriers while waiting for descheduled peers instead of working).
    """
    n = thread_count(threads, workers)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def limited_threads(threads: int | None = None, workers: int = 0):
    """:func:`configure_threads` for the duration of a block, then the caller's thread count again."""
    before = torch.get_num_threads()
    try:
        yield configure_threads(threads, workers)
    finally:
        torch.set_num_threads(before)


def head_threads(threads: int | None = None) -> int | None:
    """Intra-op threads for training MIL heads: explicit ``threads``, else the CLI's ``--threads``
    (``ZOOMFEAT_THREADS``), else 1. Why 1: the heads' matrices are small, so a second thread saves little when
    the cores are idle and, on a shared machine, costs 15–30× in spinning (benchmarks/mil_speed.py, docs/mil.md)."""
    if threads:
        return int(threads)
    env = os.environ.get("ZOOMFEAT_THREADS")
    return int(env) if env and env.isdigit() and int(env) > 0 else 1


class RunLogger(WandbRun):
    """The MIL heads' wandb run: :class:`zoomfeat.tracking.WandbRun` (offline by default, never raises) with the
    positional arguments ``train_model`` passes."""

    def __init__(self, enabled: bool, project: str, name: str, config: dict, out_dir: Path | None):
        super().__init__(project, name=name, config=config, out_dir=out_dir, enabled=enabled)


def _forward(model: torch.nn.Module, batch: dict, device: torch.device, attention: bool = False) -> dict:
    x, mask = batch["x"].to(device), batch["mask"].to(device)
    if mask.all():
        mask = None  # unpadded batch: the official (mask-free) path
    if attention or not hasattr(model, "mask_aware"):
        return model(x, mask)
    return model(x, mask, return_attention=False)


@torch.no_grad()
def predict(model: torch.nn.Module, task, dataset: BagDataset, batch_size: int = 1, device: str | torch.device = "cpu",
            attention: bool = False, precision: str = "fp32") -> dict[str, Any]:
    """Logits, task predictions, loss on the whole set and (optionally) per-bag attention arrays."""
    device = torch.device(device)
    model.eval()
    loader = _loader(dataset, batch_size)
    logits, ys, idx, atts = [], [], [], []
    for batch in loader:
        with autocast(device, precision):
            out = _forward(model, batch, device, attention)
        logits.append(out["logits"].float().cpu())
        ys.append(batch["y"])
        idx.append(batch["index"])
        if attention:
            a = out["attention"].float().cpu().numpy()
            m = batch["mask"].numpy()
            atts += [a[j][m[j]] for j in range(a.shape[0])]
    lg, y = torch.cat(logits), torch.cat(ys)
    return {"logits": lg, "pred": task.predict(lg), "y": y.numpy(), "index": torch.cat(idx).numpy(),
            "loss": float(task.loss(lg, y)), "attention": atts if attention else None}


#: Largest training (or validation) set, in bytes of its bag files, that :func:`prepared` keeps in memory.
PREPARED_MAX_BYTES = 2 << 30


class PreparedBags(Dataset):
    """A :class:`~mil.data.BagDataset` whose items (read, checked, standardised, as tensors) are computed on first
    use and kept, so the epochs after the first neither reopen the bag files nor standardise again; with
    ``batch_size`` 1 each item is kept as its one-bag batch (``collate_bags([item])``), so no epoch pads or stacks
    either. Only for datasets whose items do not change between calls (no instance sampling): the batches are the
    same tensors the dataset would give, so the trained weights are unchanged."""

    def __init__(self, dataset, batch_size: int):
        self.dataset = dataset
        self.collated = int(batch_size) == 1
        self.items: list = [None] * len(dataset)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        if item is None:
            item = self.dataset[i]
            self.items[i] = item = collate_bags([item]) if self.collated else item
        return item


def _bag_bytes(dataset) -> float:
    """Bytes of ``dataset``'s bag files (in-memory items: their arrays), inf when unknown."""
    total = 0.0
    for item in getattr(getattr(dataset, "cohort", None), "items", None) or []:
        if isinstance(item, (str, os.PathLike)):
            total += os.path.getsize(item) if os.path.exists(item) else 0
        elif hasattr(item, "nbytes"):
            total += float(item.nbytes)
        else:
            return float("inf")
    return total


def prepared(dataset, batch_size: int):
    """``dataset`` as :class:`PreparedBags` when its items are fixed (a BagDataset without instance sampling)
    and its bag files fit :data:`PREPARED_MAX_BYTES`; else ``dataset`` itself (None stays None)."""
    if dataset is None or isinstance(dataset, PreparedBags) or not isinstance(dataset, BagDataset):
        return dataset
    if dataset.sample and dataset.max_instances:  # a fresh random subset of instances each epoch
        return dataset
    if _bag_bytes(dataset) > PREPARED_MAX_BYTES:
        return dataset
    return PreparedBags(dataset, batch_size)


def _identity(batch):
    return batch


def _loader(dataset, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
            num_workers: int = 0, drop_last: bool = False) -> DataLoader:
    """The loader of ``dataset``: padded batches of ``batch_size`` bags (``collate_bags``), or the one-bag batches
    a :class:`PreparedBags` keeps (same sampler, so the same order from the same generator)."""
    if isinstance(dataset, PreparedBags) and dataset.collated and int(batch_size) == 1:
        return DataLoader(dataset, batch_size=None, shuffle=shuffle, generator=generator, collate_fn=_identity,
                          num_workers=num_workers)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate_bags,
                      num_workers=num_workers, drop_last=drop_last)


def train_model(model: torch.nn.Module, task, train_ds: BagDataset, val_ds: BagDataset | None, cfg: HeadTrainConfig,
                seed: int = 0, ckpt_path: str | os.PathLike | None = None, name: str = "fold",
                log_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train with AdamW. With a validation set: keep the weights of the epoch with the lowest moving-average
    validation loss (window ``smooth``), stop after ``patience`` epochs without improvement but not before
    ``min_epochs``. Without one: a fixed schedule of ``epochs``, last weights kept. The kept weights are saved to
    ``ckpt_path`` atomically and loaded back into ``model``."""
    device = resolve_device(cfg.device)
    check_supported(device, cfg.precision)
    model.to(device)
    bs = cfg.resolved_batch_size(task)
    gen = torch.Generator().manual_seed(seed)
    if cfg.num_workers == 0:  # every epoch sees the same bags: read and standardise each one once, not per epoch
        train_ds, val_ds = prepared(train_ds, bs), prepared(val_ds, max(bs, 1))
    loader = _loader(train_ds, bs, shuffle=True, generator=gen, num_workers=cfg.num_workers,
                     drop_last=bs > 1 and len(train_ds) > bs and getattr(task, "kind", None) == "cox")
    # foreach: the same arithmetic as the per-tensor loop (bit-identical weights), a third less optimizer time on
    # the CPU, where torch does not choose it by default (benchmarks/mil_step_overhead.py: 1.2-1.4x per step)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    scaler = torch.amp.GradScaler(device.type, enabled=effective_precision(device, cfg.precision) == "fp16")
    logger = RunLogger(cfg.wandb, cfg.wandb_project, name, {"lr": cfg.lr, "batch_size": bs}, log_dir)
    has_val = val_ds is not None and len(val_ds) > 0
    best = {"loss": float("inf"), "epoch": -1, "state": None}
    history, val_losses = [], []
    bad_epochs = 0
    bar = tqdm(range(cfg.epochs), desc=name, disable=not cfg.progress, leave=False)
    for epoch in bar:
        rec = {"epoch": epoch, "train_loss": _train_epoch(model, task, loader, opt, device, cfg.grad_clip,
                                                          cfg.precision, scaler)}
        if has_val:
            val_losses.append(predict(model, task, val_ds, batch_size=max(bs, 1), device=device,
                                      precision=cfg.precision)["loss"])
            rec["val_loss"] = val_losses[-1]
            rec["val_loss_smooth"] = float(np.mean(val_losses[-max(1, cfg.smooth):]))
            score = rec["val_loss_smooth"]
        else:
            score = -epoch  # fixed schedule: the last epoch is the one kept
        history.append(rec)
        logger.log(rec, epoch)
        bar.set_postfix(train=f"{rec['train_loss']:.3f}", val=f"{rec.get('val_loss', float('nan')):.3f}")
        if score < best["loss"] - 1e-6 or best["state"] is None or not np.isfinite(best["loss"]):
            best = {"loss": score, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
            bad_epochs = 0
        else:
            bad_epochs += 1
            if epoch + 1 >= cfg.min_epochs and bad_epochs >= cfg.patience:
                break
    logger.finish()
    model.load_state_dict(best["state"])
    if ckpt_path is not None:
        with atomic_path(ckpt_path) as tmp:
            torch.save({k: v.cpu() for k, v in best["state"].items()}, tmp)
    return {"best_epoch": best["epoch"], "best_val_loss": best["loss"] if has_val else float("nan"),
            "epochs_run": len(history), "history": history}


def _train_epoch(model, task, loader, opt, device, grad_clip, precision="fp32", scaler=None) -> float:
    """One pass over the training loader; the mean training loss per bag."""
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    model.train()
    total, n = 0.0, 0
    for batch in loader:
        with autocast(device, precision):  # the loss is computed in fp32 from fp32-cast logits
            out = _forward(model, batch, device)
        loss = task.loss(out["logits"].float(), batch["y"].to(device))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # a no-op scaler unless fp16 (whose small gradients underflow)
        if grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(opt)
        scaler.update()
        total += float(loss.detach()) * len(batch["index"])
        n += len(batch["index"])
    return total / max(n, 1)


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model
