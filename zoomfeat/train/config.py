"""The training config: one dataclass tree holds every default (the official recipe, spec §3).

A YAML file (``configs/train/*.yaml``) and ``key.sub=value`` overrides only change it (:func:`load_train_config`,
through :func:`zoomfeat.config.load_config`: an unknown key is a one-line error naming it). The training API takes
the dataclass or a (partial) plain mapping of the same shape (:func:`as_train_config`: what it leaves out keeps its
default); the resolved config saved beside a run lists every key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoomfeat.config import field_types, from_dict, load_config, nested_schema, packaged, to_dict
from zoomfeat.mags import N_SCALES, mag_to_index


@dataclass
class ModelConfig:
    """The ZoomLDM to train. ``init``: ``config`` (random, seeded by ``seed``, from the architecture YAML
    ``config``), ``official`` (released ``ckpt`` + ``official_config``, default the config.yaml beside it; ``ema``
    picks its EMA UNet) or ``pretrained`` (a saved folder ``path``)."""

    init: str = "config"
    config: str = "ldm/zoomldm_brca.yaml"
    ckpt: str | None = None
    official_config: str | None = None
    ema: bool = True
    path: str | None = None


@dataclass
class FirstStageConfig:
    """Train the VQ autoencoder on the cohort before the UNet (:mod:`zoomfeat.train.vq`), then freeze it."""

    train: bool = False
    steps: int = 300
    batch_size: int = 8
    lr: float = 2.0e-3
    max_per_scale: int = 8  # patches per slide and scale
    latent_std_weight: float = 1.0  # keeps pre-quantisation latents at unit scale
    seed: int = 0


def _opt(default=None, factory=None, **meta):
    """A field with CLI metadata (help, flag, type: :func:`zoomfeat.cli.options.add_fields`)."""
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


def parse_scales(spec) -> list[int]:
    """Scale indices from ``'all'``, ``'0,1,2'`` / ``'20x,5x'`` (sorted) or a list of indices / labels (kept)."""
    if isinstance(spec, str):
        if spec.strip().lower() == "all":
            return list(range(N_SCALES))
        return sorted({mag_to_index(int(s) if s.strip().isdigit() else s.strip()) for s in spec.split(",")
                       if s.strip()})
    return [mag_to_index(k) if isinstance(k, str) else int(k) for k in spec]


@dataclass
class ShardConfig:
    """How slides become training-set shards (:func:`zoomfeat.train.shards.build_dataset` /
    ``build_slide_shard``): what makes the set (recorded in ``meta.json``) and how the slides are read."""

    patch_px: int = _opt(256, help="patch side after resizing")
    ssl_px: int = _opt(256, help="pixels at which each 20x tile is read for the SSL encoder")
    scales: list[int] = _opt(factory=lambda: list(range(N_SCALES)), type=str,
                             help="scales to build: 'all' or e.g. '0,1,2' / '20x,5x'")
    pool_to: int = _opt(8, help="average-pool SSL grids wider than this (0: store full grids)")
    max_per_scale: int | None = _opt(None, help="cap patches per slide and scale (random, seeded)")
    seed: int = _opt(0, help="seed of the patch choice (and of a --ldm-config model's random init)")
    batch_size: int = _opt(16, help="patches per forward")
    mpp: float | None = _opt(None, help="override the slides' level-0 µm/px")
    mpp_csv: str | None = _opt(None, help="CSV slide,mpp for slides without resolution metadata")

    def __post_init__(self) -> None:
        self.scales = parse_scales(self.scales)


@dataclass
class BuildDatasetConfig(ShardConfig):
    """Everything `zoomfeat build-dataset` takes besides the slides: the shard settings, the SSL encoder, the
    ZoomLDM whose VQ encodes the latents and the output folder."""

    patch_px: int | None = _opt(None, help="patch side after resizing (default: the model's image size, 256 full "
                                           "size)")
    out: str | None = _opt(help="dataset folder (shards/, index.csv, meta.json); required")
    ssl_encoder: str | None = _opt(help="SSL tile encoder name (uni, phikon, tiny-vit, custom, ...); required")
    ssl_weights: str | None = _opt(help="weights file of the SSL encoder (default: weights registry)")
    weights_registry: str | None = _opt(metavar="YAML", help="your YAML encoder → local weights path registry")
    ssl_dim: int | None = _opt(help="output width (tiny-vit only; default: the model's ssl dim)")
    model: str | None = _opt(help="ZoomLDM whose VQ encodes the latents: a folder (zoomfeat convert / train) or an "
                                  "official weights.ckpt")
    official_config: str | None = _opt(help="official config.yaml of a .ckpt (default: the config.yaml beside it)")
    ema: bool = _opt(True, flag="--online", help="official .ckpt only: load the online UNet instead of the EMA "
                                                 "weights (the released default)")
    ldm_config: str | None = _opt(help="instead of --model: our ZoomLDM YAML, random-init VQ from --seed (tests, "
                                       "from-scratch)")
    device: str = _opt("auto", help="auto (this rank's GPU if any, else CPU), cuda, cpu, ...")
    progress: bool = _opt(True, flag="--no-progress", help="no progress bar")

    def shard_config(self, patch_px: int | None = None) -> ShardConfig:
        """The shard settings (``patch_px``: the model's image size when the config leaves it None)."""
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(ShardConfig)}
        return ShardConfig(**{**kw, "patch_px": kw["patch_px"] or patch_px})


@dataclass
class BuildConfig:
    """``dataset.build``: how ``train`` builds the training set when ``dataset.root`` has none (self-contained
    configs). ``slides`` (folder, file or CSV), else a synthetic cohort made with ``synthetic`` (``make_cohort``
    keyword arguments); ``ssl_encoder`` ({name, ...encoder keyword arguments}) is required."""

    slides: str | None = None
    synthetic: dict | None = None
    ssl_encoder: dict | None = None
    patch_px: int | None = None  # None: the model's image size
    ssl_px: int = ShardConfig.ssl_px
    scales: list[int] = field(default_factory=lambda: list(range(N_SCALES)))
    pool_to: int = ShardConfig.pool_to
    max_per_scale: int | None = ShardConfig.max_per_scale
    batch_size: int = ShardConfig.batch_size
    tile_kwargs: dict | None = None


@dataclass
class DataConfig:
    """The training set: ``root`` (relative: under the run folder), magnification sampling, loader workers."""

    root: str = "dataset"
    mag_sampling: str = "uniform"  # official: uniform per sample; or "proportional" to the patches per scale
    num_workers: int = 0
    check_vq: bool = True  # refuse latents encoded by another VQ than the model's
    scales: list[int] | None = None  # train on these scales only (None: all in the set)
    build: BuildConfig | None = None


@dataclass
class SampleConfig:
    """The sample grid written every ``train.sample_every`` steps."""

    n: int = 8
    steps: int = 20
    guidance_scale: float = 2.0
    scheduler: str = "ddim"


@dataclass
class OptimConfig:
    """The ``train`` section: optimiser, schedule, EMA, precision, checkpoints, logging and sampling."""

    batch_size: int = 8  # per process
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 2.0e-5
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1.0e-8
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 1000
    p_uncond: float = 0.1  # CFG dropout of the whole context
    max_grad_norm: float | None = None
    ema_decay: float = 0.9999
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 1
    sample_every: int = 0
    save_model: bool = True
    sample: SampleConfig = field(default_factory=SampleConfig)


@dataclass
class WandbConfig:
    """wandb logging (:mod:`zoomfeat.tracking`: offline unless ``WANDB_MODE`` says otherwise)."""

    enabled: bool = True
    project: str = "zoomfeat-train"
    name: str | None = None


@dataclass
class TrainConfig:
    """Everything ``zoomfeat train`` reads; defaults = the official recipe."""

    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)
    dataset: DataConfig = field(default_factory=DataConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def load_train_config(path: str | os.PathLike | dict | None = None, overrides: list[str] | None = None) -> dict:
    """:class:`TrainConfig` defaults ← a training YAML (or mapping) ← ``key.sub=value`` overrides, as plain data
    (every key; what ``train`` saves as ``config.yaml``). :func:`train` and friends take it, or the dataclass."""
    return to_dict(load_config(TrainConfig, path, overrides))


def as_train_config(cfg: TrainConfig | dict | None) -> TrainConfig:
    """A (copy of a) :class:`TrainConfig` from itself or a (partial) mapping of the same shape."""
    if isinstance(cfg, TrainConfig):
        return from_dict(TrainConfig, to_dict(cfg))
    return from_dict(TrainConfig, dict(cfg or {}), "training config")


def resolve_path(path: str | os.PathLike, base: Path) -> Path:
    """A relative path of a training config: the cwd, the packaged configs (``configs/x`` or ``x``), else under
    ``base`` (the run folder)."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return p
    if (Path.cwd() / p).exists():
        return Path.cwd() / p
    return packaged(p) or base / p


def fields_table(schema: type = TrainConfig, prefix: str = "") -> list[tuple[str, str]]:
    """``(key, default)`` of every option, dotted (``train.lr``), defaults written as in YAML: the option table of
    docs/training.md (``python -m zoomfeat.train.config`` prints it)."""
    rows: list[tuple[str, str]] = []
    default = schema()
    for name, tp in field_types(schema).items():
        value, sub = getattr(default, name), nested_schema(tp)
        if sub is None or value is None:
            rows.append((f"{prefix}{name}", _yaml_value(value)))
        if sub is not None:
            rows += fields_table(sub, f"{prefix}{name}.")
    return rows


def _yaml_value(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def options_markdown() -> str:
    """The option table (markdown) of docs/training.md, generated from the dataclasses."""
    lines = ["| option | default |", "|---|---|"]
    lines += [f"| `{key}` | `{value}` |" for key, value in fields_table()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(options_markdown(), end="")
