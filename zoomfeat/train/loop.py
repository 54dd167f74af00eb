"""ZoomLDM training loop: UNet + Summarizer jointly (VQ frozen), ε-MSE, EMA, checkpoints with exact resume, accelerate.

The official recipe (spec §3): magnification uniform per sample, t ~ U{0..999}, CFG dropout 0.1 of the whole
context to zeros, AdamW (lr 2e-5, wd 0.01) with a 1000-step linear warm-up, EMA 0.9999 of the UNet only.
Every random choice of a step (patches, t, noise, CFG dropout) is drawn from a generator seeded by
(seed, step, micro-batch, rank), so a killed run resumed from a checkpoint reproduces the uninterrupted loss curve
and ranks never draw the same samples. Multi-GPU / multi-process: launch with ``torchrun`` or ``accelerate launch``.

The pieces: :mod:`.config` (the options and their defaults), :mod:`.objective` (the loss of a step),
:mod:`.checkpoints` (save / exact resume), :mod:`.metrics` (metrics.csv + wandb), :mod:`.sampling` (sample grids).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoomfeat.config import load_yaml, save_yaml, to_dict
from zoomfeat.encoders import create_encoder
from zoomfeat.io import write_json_atomic
from zoomfeat.ldm import ZoomLDM
from zoomfeat.names import resolve_slides
from zoomfeat.precision import normalize_precision
from zoomfeat.slides.synthetic import make_cohort
from zoomfeat.train.checkpoints import list_checkpoints, load_checkpoint, param_checksum, save_checkpoint
from zoomfeat.train.config import BuildConfig, ShardConfig, TrainConfig, as_train_config, resolve_path
from zoomfeat.train.dataset import DatasetError, MultiScaleLatentDataset, StepBatchSampler, collate
from zoomfeat.train.metrics import MetricsLog, step_row
from zoomfeat.train.objective import DiffusionObjective, draw_step_noise
from zoomfeat.train.sampling import save_sample_grid, with_ema
from zoomfeat.train.shards import build_dataset, vq_fingerprint
from zoomfeat.train.vq import prepare_first_stage

KILL_ENV = "ZOOMFEAT_TRAIN_KILL_AT_STEP"  # test hook: SIGKILL this process right after that step (crash simulation)


# --------------------------------------------------------------------------------------------------- model, data
def make_model(cfg: TrainConfig | dict, base: Path | None = None):
    """The ZoomLDM to train: ``init: config`` (random, seeded), ``official`` (released ckpt) or ``pretrained`` (dir).

    Checkpoints go through :meth:`ZoomLDM.load`; relative paths: :func:`zoomfeat.train.config.resolve_path`."""
    cfg = as_train_config(cfg)
    base = base or Path.cwd()
    m = cfg.model
    if m.init == "config":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed))
            return ZoomLDM.from_config(load_yaml(resolve_path(m.config, base)))
    if m.init in ("official", "pretrained"):
        key = "ckpt" if m.init == "official" else "path"
        source = getattr(m, key)
        if not source:
            raise ValueError(f"model.init: {m.init} needs model.{key}")
        config = resolve_path(m.official_config, base) if m.official_config else None
        return ZoomLDM.load(resolve_path(source, base), config, ema=bool(m.ema))
    raise ValueError(f"model.init must be 'config', 'official' or 'pretrained', got {m.init!r}")


def build_slides(spec: BuildConfig | None, root: Path):
    """The slides of ``dataset.build``: ``slides`` as given, else a synthetic cohort made under ``root/cohort``."""
    slides = spec.slides if spec is not None else None
    if slides is None:
        syn = (spec.synthetic if spec is not None else None) or {}

        cohort_dir = root / "cohort"
        if not (cohort_dir / "slides").exists() or not any((cohort_dir / "slides").glob("*.tiff")):
            make_cohort(cohort_dir, **syn)
        slides = cohort_dir / "slides"
    return slides


def _dataset_complete(root: Path) -> bool:
    meta = root / "meta.json"
    return (root / "index.csv").exists() and meta.exists() and bool(json.loads(meta.read_text()).get("complete"))


def ensure_dataset(cfg: TrainConfig | dict, root: Path, ldm, progress: bool = True) -> None:
    """Build the training set from ``dataset.build`` when ``root`` has no index yet (self-contained configs)."""
    if _dataset_complete(root):
        return
    cfg = as_train_config(cfg)
    spec = cfg.dataset.build
    if spec is None:
        raise FileNotFoundError(
            f"training set not found at {root} and the config has no dataset.build section; "
            "run `zoomfeat build-dataset` first"
        )
    enc_spec = dict(spec.ssl_encoder or {})
    if not enc_spec.get("name"):
        raise ValueError(
            "dataset.build.ssl_encoder is missing (or has no name): the SSL encoder that makes the conditioning "
            "grids must be the model's (UNI for the released ZoomLDM), never a silent default; set e.g. "
            "ssl_encoder: {name: uni, weights: /path/to/uni} or {name: tiny-vit, dim: 48} for the tiny model"
        )

    slides = build_slides(spec, root)
    encoder = create_encoder(enc_spec.pop("name"), **enc_spec)
    shards = ShardConfig(patch_px=int(spec.patch_px or ldm.image_size), ssl_px=int(spec.ssl_px), scales=spec.scales,
                         pool_to=int(spec.pool_to), max_per_scale=spec.max_per_scale, seed=int(cfg.seed),
                         batch_size=int(spec.batch_size))
    report = build_dataset(slides, root, encoder, ldm.vq, shards, tile_kwargs=spec.tile_kwargs, progress=progress)
    report.print()
    if report.exit_code == 2:
        raise RuntimeError(f"building the training set at {root} failed for every slide (see build_summary.csv)")


def _prepare_data(cfg: TrainConfig, ldm, out_dir: Path, accelerator, progress: bool) -> MultiScaleLatentDataset:
    """First stage (trained VQ, frozen) before the dataset (the latents are its encodings), then the training set
    (built by the main rank when missing) opened and checked against the model's VQ."""
    root = Path(os.path.expanduser(str(cfg.dataset.root)))
    root = root if root.is_absolute() else out_dir / root  # relative dataset roots live in the run folder
    if accelerator.is_main_process:
        def slides_fn():  # only called when the first stage is trained
            return resolve_slides(build_slides(cfg.dataset.build, root))

        prepare_first_stage(cfg, ldm, out_dir, slides_fn, progress=progress)
        ensure_dataset(cfg, root, ldm, progress=progress)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        prepare_first_stage(cfg, ldm, out_dir, lambda: [], progress=False)
    latent_shape = (ldm.latent_channels, ldm.latent_size, ldm.latent_size)
    dataset = MultiScaleLatentDataset(root, latent_shape=latent_shape, ssl_dim=ldm.ssl_dim, scales=cfg.dataset.scales)
    if cfg.dataset.check_vq and dataset.meta.get("vq_sha256"):
        if dataset.meta["vq_sha256"] != vq_fingerprint(ldm.vq):
            raise DatasetError(
                f"{root}: its latents were encoded by another VQ than the model's (vq_sha256 differs); rebuild the "
                "dataset with this model (`zoomfeat build-dataset --model ...`) or set dataset.check_vq: false"
            )
    return dataset


# --------------------------------------------------------------------------------------------------- accelerate
def _mixed_precision(setting: str) -> str:
    """``train.mixed_precision`` (auto, or any zoomfeat.precision spelling) → accelerate's no/fp16/bf16.

    accelerate wraps the forward in autocast: CUDA for fp16/bf16, CPU for bf16 (same op lists; fp16 on CPU = no)."""
    if setting in (None, "auto"):
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"

    try:
        p = normalize_precision(setting)
    except ValueError:
        raise ValueError(f"train.mixed_precision must be auto, fp32 (no), fp16 or bf16; got {setting!r}") from None
    return "no" if p == "fp32" else p


def _accelerator(mixed_precision: str):
    """A fresh Accelerator; the precision of an earlier train() in this process is forgotten (the distributed
    state is kept), so tests and notebooks can train in fp32 and bf16 one after the other."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    # cpu=True on GPU-less machines: without it accelerate ignores torchrun's env and every process thinks it is rank 0
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


# --------------------------------------------------------------------------------------------------- train
@dataclass
class _Run:
    """What the steps of one training run share."""

    cfg: TrainConfig
    out_dir: Path
    accelerator: Any
    ldm: Any
    module: Any  # DiffusionObjective (wrapped by accelerate once prepared)
    optimizer: Any
    lr_sched: Any
    ema: Any
    t0: float = 0.0

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def _claim_out_dir(accelerator, out_dir: Path, resume: bool) -> list[Path]:
    """Create the run folder; refuse one with checkpoints unless resuming. Returns its checkpoints."""
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    ckpts = list_checkpoints(out_dir)
    if ckpts and not resume:
        raise ValueError(f"{out_dir} already holds checkpoints ({ckpts[-1].name}); pass --resume or use another --out")
    accelerator.wait_for_everyone()
    return ckpts


def _setup(cfg: TrainConfig, ldm, accelerator, out_dir: Path) -> _Run:
    """VQ frozen, UNet + Summarizer in training mode inside the objective; AdamW, LR schedule, EMA of the UNet."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    tc = cfg.train
    device = accelerator.device
    ldm.to(device)
    ldm.vq.requires_grad_(False).eval()
    ldm.unet.train()
    ldm.summarizer.train()
    if tc.gradient_checkpointing:
        ldm.unet.enable_gradient_checkpointing()
    module = DiffusionObjective(ldm, p_uncond=float(tc.p_uncond)).to(device)
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=float(tc.lr), weight_decay=float(tc.weight_decay),
                                  betas=tuple(tc.betas), eps=float(tc.adam_eps),
                                  foreach=True)  # the per-tensor arithmetic, fewer dispatches (CPU default: off)
    lr_sched = get_scheduler(tc.lr_scheduler, optimizer, num_warmup_steps=int(tc.warmup_steps),
                             num_training_steps=int(tc.max_steps))
    ema = EMAModel(ldm.unet.parameters(), decay=float(tc.ema_decay))
    ema.to(device)
    return _Run(cfg, out_dir, accelerator, ldm, module, optimizer, lr_sched, ema)


def _restore(run: _Run, ckpts: list[Path], resume: bool) -> int:
    """The step to start from: the latest checkpoint's (everything restored) when resuming, else 0."""
    if resume and ckpts:
        start_step = load_checkpoint(ckpts[-1], run.accelerator, run.module, run.optimizer, run.lr_sched, run.ema)
        if run.main:
            print(f"resumed from {ckpts[-1]} at step {start_step}")
        return start_step
    if resume and run.main:
        print(f"no checkpoint in {run.out_dir}/checkpoints; starting from step 0")
    return 0


def _optimizer_step(run: _Run, batches, step: int) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """One optimiser step over ``grad_accum`` micro-batches (backward, clip, AdamW, LR schedule, EMA).

    Returns this rank's per-sample losses, their magnifications, the CFG-dropout count and the LR the step used."""
    acc, module, tc = run.accelerator, run.module, run.cfg.train
    device, accum = acc.device, int(tc.grad_accum)
    step_losses, step_mags, n_uncond = [], [], 0
    for micro in range(accum):
        batch = next(batches)
        latents = batch["latents"].to(device, non_blocking=True)
        t, noise, g_drop = draw_step_noise(int(run.cfg.seed), step, micro, acc.process_index, latents.shape,
                                           run.ldm.num_train_timesteps)
        sync = acc.no_sync(module) if micro < accum - 1 else contextlib.nullcontext()
        with sync:
            per_sample, nu = module(latents, [g.to(device) for g in batch["ssl"]], batch["mag"].to(device),
                                    t.to(device), noise.to(device), g_drop)
            acc.backward(per_sample.mean() / accum)
        step_losses.append(per_sample.detach())
        step_mags.append(batch["mag"].to(device))
        n_uncond += int(nu)
    if tc.max_grad_norm:
        acc.clip_grad_norm_(module.parameters(), float(tc.max_grad_norm))
    run.optimizer.step()
    lr_now = run.lr_sched.get_last_lr()[0]
    run.lr_sched.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.ema.step(acc.unwrap_model(module).unet.parameters())
    return torch.cat(step_losses), torch.cat(step_mags), n_uncond, lr_now


def _gathered_row(run: _Run, done: int, losses, mags, n_uncond: int, lr_now: float) -> dict | None:
    """The metrics row of a step over all ranks (main rank; None elsewhere)."""
    acc = run.accelerator
    all_loss = acc.gather(losses.float())
    all_mag = acc.gather(mags)
    all_unc = acc.gather(torch.tensor([n_uncond], device=acc.device))
    if not run.main:
        return None
    return step_row(done, all_loss, all_mag, int(all_unc.sum()), lr_now, time.perf_counter() - run.t0)


def _after_step(run: _Run, dataset: MultiScaleLatentDataset, done: int) -> None:
    """Checkpoint and sample grid when due; the crash-simulation hook of the tests."""
    tc, seed = run.cfg.train, int(run.cfg.seed)
    if tc.checkpoint_every and (done % int(tc.checkpoint_every) == 0 or done == int(tc.max_steps)):
        save_checkpoint(run.accelerator, run.out_dir, done, run.module, run.optimizer, run.lr_sched, run.ema,
                        to_dict(run.cfg), keep=int(tc.keep_checkpoints))
    if tc.sample_every and done % int(tc.sample_every) == 0 and run.main:
        path = run.out_dir / "samples" / f"step_{done:08d}.png"
        with_ema(run.ema, run.ldm, lambda: save_sample_grid(run.ldm, dataset, path, tc.sample, seed=seed))
    kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
    if kill_at and done == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


def _run_steps(run: _Run, dataset: MultiScaleLatentDataset, start_step: int, resume: bool, progress: bool) -> list:
    """Steps ``start_step … max_steps``: batches, optimiser steps, metrics, checkpoints, samples. Returns the losses."""
    from tqdm.auto import tqdm

    cfg, acc = run.cfg, run.accelerator
    max_steps = int(cfg.train.max_steps)
    sampler = StepBatchSampler(dataset, int(cfg.train.batch_size), seed=int(cfg.seed), rank=acc.process_index,
                               start_step=start_step, max_steps=max_steps, accum=int(cfg.train.grad_accum),
                               mag_sampling=cfg.dataset.mag_sampling)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=int(cfg.dataset.num_workers),
                                         pin_memory=acc.device.type == "cuda", persistent_workers=False)
    log = MetricsLog(run.out_dir, cfg, start_step if resume else None, enabled=run.main)
    run.t0 = time.perf_counter()
    losses_seen: list[float] = []
    batches = iter(loader)
    bar = tqdm(range(start_step, max_steps), desc="train", unit="step", disable=not (progress and run.main),
               initial=start_step, total=max_steps)
    try:
        for step in bar:
            done = step + 1
            row = _gathered_row(run, done, *_optimizer_step(run, batches, step))
            if row is not None:
                losses_seen.append(row["loss"])
                if done % max(1, int(cfg.train.log_every)) == 0 or done == max_steps:
                    log.log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                if not math.isfinite(row["loss"]):
                    raise FloatingPointError(f"loss is {row['loss']} at step {done}")
            _after_step(run, dataset, done)
    finally:
        log.close()
        dataset.close()
    return losses_seen


def _save_final_model(run: _Run, dataset_root: Path) -> None:
    """EMA weights into the UNet, then ``model/`` (what extraction and generation load)."""
    ldm, tc = run.ldm, run.cfg.train
    run.ema.copy_to(ldm.unet.parameters())
    ldm.unet.eval()
    ldm.summarizer.eval()
    if tc.gradient_checkpointing:
        ldm.unet.disable_gradient_checkpointing()
    ldm.to("cpu")
    ldm.config["training"] = {"steps": int(tc.max_steps), "dataset": str(dataset_root),
                              "ema_decay": float(tc.ema_decay)}
    ldm.save_pretrained(run.out_dir / "model")


def _finish(run: _Run, dataset_root: Path, start_step: int, losses_seen: list[float]) -> dict:
    """Per-rank parameter checksums, the final model and ``train_summary.json``."""
    acc = run.accelerator
    acc.wait_for_everyone()
    write_json_atomic(run.out_dir / "ranks" / f"rank{acc.process_index}.json",
                      {"rank": acc.process_index, "world_size": acc.num_processes,
                       "param_checksum": param_checksum(acc.unwrap_model(run.module))})
    summary = {"steps": int(run.cfg.train.max_steps), "start_step": start_step, "world_size": acc.num_processes,
               "seconds": round(time.perf_counter() - run.t0, 3), "model": str(run.out_dir / "model")}
    if run.main and run.cfg.train.save_model:
        _save_final_model(run, dataset_root)
    if run.main:
        if losses_seen:
            summary["last_loss"] = losses_seen[-1]
        write_json_atomic(run.out_dir / "train_summary.json", summary)
    acc.wait_for_everyone()
    return summary


def train(cfg: TrainConfig | dict, out_dir: str | os.PathLike, max_steps: int | None = None, resume: bool = False,
          progress: bool = True) -> dict:
    """Train ZoomLDM per ``cfg`` (a :class:`~zoomfeat.train.config.TrainConfig` or a mapping of its shape; what it
    leaves out keeps its default) into ``out_dir``; return a small summary dict.

    ``out_dir`` receives ``config.yaml`` (the resolved config, every key), ``metrics.csv``, ``checkpoints/step_N``,
    ``samples/step_N.png`` and the final ``model/`` (EMA UNet + Summarizer + VQ, ``ZoomLDM.load``-able).
    """
    cfg = as_train_config(cfg)
    if max_steps is not None:
        cfg.train.max_steps = int(max_steps)
    out_dir = Path(out_dir)
    accelerator = _accelerator(_mixed_precision(cfg.train.mixed_precision))
    ckpts = _claim_out_dir(accelerator, out_dir, resume)
    ldm = make_model(cfg, out_dir)  # the same seeded init on every rank
    dataset = _prepare_data(cfg, ldm, out_dir, accelerator, progress)
    run = _setup(cfg, ldm, accelerator, out_dir)
    start_step = _restore(run, ckpts, resume)
    if run.main:
        save_yaml(to_dict(cfg), out_dir / "config.yaml")
    run.module, run.optimizer = accelerator.prepare(run.module, run.optimizer)
    losses_seen = _run_steps(run, dataset, start_step, resume, progress)
    return _finish(run, dataset.root, start_step, losses_seen)
