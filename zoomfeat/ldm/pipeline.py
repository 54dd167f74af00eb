"""ZoomLDM as diffusers modules: VQ-f4 first stage, conditional UNet, Summarizer, schedule and samplers.

One object bundles what every stage needs (extraction, training, generation): the official SSL preprocessing
(pool > 8×8, per-token z-score), the Summarizer context, ε-prediction, CFG sampling with diffusers' DDIM/PNDM,
VQ encode/quantized decode, and ``unet_features`` — the official ``return_intermediates`` activations computed
with early exit. Weights come from a released checkpoint (:meth:`ZoomLDM.from_official`), a
``save_pretrained`` folder (safetensors) or random init from our YAML config (:meth:`ZoomLDM.from_config`).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
from diffusers import UNet2DConditionModel, VQModel

from zoomfeat.config import load_yaml, save_yaml
from zoomfeat.ldm import official
from zoomfeat.ldm.modules import build_modules
from zoomfeat.ldm.schedulers import DEFAULT_SCHEDULE, make_scheduler, training_scheduler
from zoomfeat.ldm.summarizer import Summarizer, pool_and_normalize
from zoomfeat.mags import MAG_LABELS, mag_to_index
from zoomfeat.precision import fp32

CONFIG_FILE = "zoomldm_config.yaml"
SUBFOLDERS = ("unet", "vq", "summarizer")


@dataclass(frozen=True)
class FeatureBlock:
    """One official ``return_intermediates`` output: index (0 = middle block, 1.. = output blocks)."""

    index: int
    channels: int
    stride: int  # latent pixels per feature pixel (e.g. 8 for the 960-d middle block of a 64² latent)


def _normalize_config(cfg: dict | str | os.PathLike) -> dict:
    if not isinstance(cfg, dict):
        cfg = load_yaml(cfg)
    cfg = copy.deepcopy(cfg)
    for section in ("unet", "vq", "summarizer"):
        if section not in cfg:
            raise ValueError(f"ZoomLDM config lacks the {section!r} section")
    cfg.setdefault("schedule", dict(DEFAULT_SCHEDULE))
    cfg.setdefault("ssl_dim", cfg["summarizer"].get("input_channels", 1024))
    cfg.setdefault("latent_size", cfg["unet"].get("sample_size", 64))
    cfg.setdefault("image_size", cfg["vq"].get("sample_size", 256))
    cfg.setdefault("feat_target_size", 8)
    if "mag_labels" not in cfg:
        cfg["mag_labels"] = list(MAG_LABELS[: cfg["summarizer"].get("mag_levels", 8)])
    return cfg


class ZoomLDM(nn.Module):
    """The ZoomLDM model: ``.unet`` (UNet2DConditionModel), ``.vq`` (VQModel), ``.summarizer`` (Summarizer)."""

    def __init__(self, unet: UNet2DConditionModel, vq: VQModel, summarizer: Summarizer, config: dict):
        super().__init__()
        self.unet = unet
        self.vq = vq
        self.summarizer = summarizer
        self.config = _normalize_config(config)
        self.noise_scheduler = training_scheduler(self.config["schedule"])
        self.eval()

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: dict | str | os.PathLike) -> "ZoomLDM":
        """Random init from our YAML config (a dict or a path, e.g. ``configs/ldm/zoomldm_brca.yaml``)."""
        cfg = _normalize_config(cfg)
        return cls(*build_modules(cfg), cfg)

    @classmethod
    def from_official(
        cls, ckpt_path: str | os.PathLike, config_path: str | os.PathLike, ema: bool = True
    ) -> "ZoomLDM":
        """Load a released ZoomLDM (``weights.ckpt`` + official ``config.yaml``); UNet from EMA unless ``ema=False``.

        Every tensor is accounted for: all are loaded except the 12 schedule buffers and LitEma's
        ``decay``/``num_updates`` (and the UNet copy not chosen). Unknown or missing keys and shape disagreements
        between config and checkpoint raise :class:`zoomfeat.ldm.official.CheckpointMismatchError` naming them.
        """
        off_cfg = official.load_official_config(config_path)
        cfg = official.config_from_official(off_cfg, name=Path(ckpt_path).parent.name or None)
        sd = official.load_official_state_dict(ckpt_path)
        unet, vq, summ, report = official.modules_from_state_dict(sd, cfg, ema=ema)
        cfg["source"] = {
            "checkpoint": str(Path(ckpt_path).resolve()),
            "config": str(Path(config_path).resolve()),
            "unet_weights": report.unet_source,
            "n_tensors": len(sd),
            "skipped": list(report.skipped),
        }
        model = cls(unet, vq, summ, cfg)
        model.conversion_report = report
        return model

    @classmethod
    def load(cls, path: str | os.PathLike, config: str | os.PathLike | None = None, ema: bool = True,
             torch_dtype: torch.dtype | None = None) -> "ZoomLDM":
        """The one loader every verb uses: a :meth:`save_pretrained` folder, or an official ``.ckpt`` with its
        ``config.yaml`` (``config``, else the ``config.yaml`` beside the checkpoint). ``ema`` picks the EMA UNet of
        an official checkpoint (the released default); a folder holds one UNet already."""
        p = Path(path)
        if p.is_dir():
            return cls.from_pretrained(p, torch_dtype=torch_dtype)
        if not p.is_file():
            raise FileNotFoundError(f"ZoomLDM weights not found: {p} (a saved folder or an official .ckpt)")
        cfg = Path(config) if config is not None else p.with_name("config.yaml")
        if not cfg.is_file():
            raise FileNotFoundError(f"official ZoomLDM checkpoint {p} needs its config.yaml (looked for {cfg}; "
                                    "pass --official-config)")
        model = cls.from_official(p, cfg, ema=ema)
        return model.to(torch_dtype) if torch_dtype is not None else model

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> "ZoomLDM":
        """Load a folder written by :meth:`save_pretrained` (safetensors in ``unet/``, ``vq/``, ``summarizer/``)."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path}: not a ZoomLDM folder ({CONFIG_FILE} missing)")
        cfg = load_yaml(path / CONFIG_FILE)
        kw = {"local_files_only": True}
        if torch_dtype is not None:
            kw["torch_dtype"] = torch_dtype
        unet = UNet2DConditionModel.from_pretrained(path / "unet", **kw)
        vq = VQModel.from_pretrained(path / "vq", **kw)
        summ = Summarizer.from_pretrained(path / "summarizer", **kw)
        return cls(unet, vq, summ, cfg)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``unet/``, ``vq/``, ``summarizer/`` (diffusers safetensors) + ``zoomldm_config.yaml``, atomically."""
        path = Path(path)
        if path.exists() and any(path.iterdir()) and not (path / CONFIG_FILE).exists():
            raise FileExistsError(f"{path} exists and is not a ZoomLDM folder; refusing to overwrite")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            for name in SUBFOLDERS:
                getattr(self, name).save_pretrained(tmp / name, safe_serialization=True)
            save_yaml(self.config, tmp / CONFIG_FILE)
            if path.exists():
                old = path.with_name(f".{path.name}.old.{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    # ------------------------------------------------------------------------------------ attributes
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t of the training schedule, float32 ``[1000]`` on the model's device (never cast to half)."""
        return self.noise_scheduler.alphas_cumprod.to(self.device, torch.float32)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.config["schedule"]["num_train_timesteps"])

    @property
    def ssl_dim(self) -> int:
        return int(self.summarizer.config.input_channels)

    @property
    def context_dim(self) -> int:
        return int(self.summarizer.config.output_channels)

    @property
    def context_length(self) -> int:
        return int(self.summarizer.config.seq_length) + 1

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def latent_size(self) -> int:
        return int(self.config["latent_size"])

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def mag_levels(self) -> int:
        return int(self.summarizer.config.mag_levels)

    @property
    def mag_labels(self) -> list[str]:
        return list(self.config["mag_labels"])

    # ------------------------------------------------------------------------------------ conditioning
    def mag_index(self, mag, batch: int) -> torch.Tensor:
        """Magnification(s) → LongTensor ``[batch]``: an index, a label such as ``"5x"``, or one per sample."""
        def one(m) -> int:
            if isinstance(m, (np.integer,)):
                m = int(m)
            if isinstance(m, str) and m.strip() in self.mag_labels:
                k = self.mag_labels.index(m.strip())
            elif isinstance(m, str) and self.mag_levels == 4:  # NAIP labels: "1x" … "4x"
                raise ValueError(f"magnification {m!r} is not one of this model's {self.mag_labels}")
            else:
                k = mag_to_index(m)
            if not 0 <= k < self.mag_levels:
                raise ValueError(f"magnification {m!r} (index {k}) not in this model's {self.mag_levels} levels")
            return k

        if isinstance(mag, torch.Tensor):
            mag = mag.detach().cpu().reshape(-1).tolist()
        elif isinstance(mag, np.ndarray):
            mag = mag.reshape(-1).tolist()
        if isinstance(mag, (list, tuple)):
            idx = [one(m) for m in mag]
            if len(idx) == 1:
                idx = idx * batch
            if len(idx) != batch:
                raise ValueError(f"got {len(idx)} magnifications for a batch of {batch}")
        else:
            idx = [one(mag)] * batch
        return torch.tensor(idx, dtype=torch.long, device=self.device)

    def preprocess_ssl(self, grid) -> torch.Tensor:
        """Raw SSL grid ``[B, C, h, w]`` → pooled (side ≤ 8) and per-token z-scored grid, as at training time."""
        grid = torch.as_tensor(grid)
        if grid.ndim == 3:
            grid = grid.unsqueeze(0)
        if grid.ndim != 4:
            raise ValueError(f"SSL grid must be [B, C, h, w] (or [C, h, w]); got shape {tuple(grid.shape)}")
        b, c, h, w = grid.shape
        if c != self.ssl_dim:
            raise ValueError(f"SSL grid has {c} channels but this model expects {self.ssl_dim} (shape {tuple(grid.shape)})")
        if h != w or h < 1 or (h & (h - 1)) != 0:
            raise ValueError(f"SSL grid {h}x{w} is not supported: use a square power-of-two grid (1, 2, 4, 8, 16, …)")
        target = int(self.config.get("feat_target_size", 8))
        return pool_and_normalize(grid.to(self.device, torch.float32), target=target)

    def condition(self, ssl_grid, mag) -> torch.Tensor:
        """Raw SSL grid(s) + magnification → UNet context ``[B, 65, C]`` (no CFG dropout here, ever)."""
        ssl = self.preprocess_ssl(ssl_grid)
        mags = self.mag_index(mag, ssl.shape[0])
        return self.summarizer(ssl.to(self.summarizer.dtype), mags)

    def drop_condition(self, context: torch.Tensor, p_uncond: float | None = None, generator=None) -> torch.Tensor:
        """Training-only CFG dropout (zeros with probability ``p_uncond``, default from the config)."""
        return self.summarizer.drop_condition(context, p_uncond, generator)

    def null_context(self, batch: int) -> torch.Tensor:
        """The unconditional context: all zeros ``[B, 65, C]`` (official convention)."""
        return torch.zeros(batch, self.context_length, self.context_dim, device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------------------------ first stage
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ``[B, 3, H, W]`` → pre-quantization latents (scale 1.0, as ZoomLDM was trained).

        The VQ runs outside autocast, in its own dtype (fp32), as in the official code (zoomfeat.precision)."""
        with fp32(self.vq.device):
            return self.vq.encode(images.to(self.vq.device, self.vq.dtype)).latents

    def decode(self, latents: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Latents → images in [-1, 1] (snapped to the codebook first, as the official decode does); fp32 like
        :meth:`encode`."""
        with fp32(self.vq.device):
            return self.vq.decode(latents.to(self.vq.device, self.vq.dtype), force_not_quantize=not quantize).sample

    # ------------------------------------------------------------------------------------ diffusion
    def _timesteps(self, t, batch: int, device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        return t.reshape(batch) if t.numel() == batch else t

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """Forward process x_t = √ᾱ_t z + √(1−ᾱ_t) ε with the training schedule."""
        t = self._timesteps(t, latents.shape[0], latents.device).long()
        return self.noise_scheduler.add_noise(latents, noise, t)

    def predict_eps(self, x_t: torch.Tensor, t, context: torch.Tensor) -> torch.Tensor:
        """UNet ε-prediction for noisy latents at integer timesteps ``t`` with a context ``[B, 65, C]``."""
        t = self._timesteps(t, x_t.shape[0], x_t.device)
        return self.unet(x_t, t, encoder_hidden_states=context.to(x_t.dtype)).sample

    def guided_eps(self, x_t: torch.Tensor, t, context: torch.Tensor, guidance_scale: float = 2.0) -> torch.Tensor:
        """Classifier-free guidance, standard convention ε_u + s·(ε_c − ε_u), null context = zeros.

        The one CFG of every sampler (patches, large images, super-resolution, refinement): ``x_t`` is cast to the
        model dtype, ``t`` is a scalar or ``[B]``; ε comes back float32, the guidance arithmetic done in fp32. The batch is
        [cond, uncond]: the order the large-image code always used (its autograd update is not order-invariant)."""
        x_t = x_t.to(self.dtype)
        if guidance_scale == 1.0:
            return self.predict_eps(x_t, t, context).float()
        b = x_t.shape[0]
        t = self._timesteps(t, b, x_t.device)
        eps = self.predict_eps(
            torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([context, torch.zeros_like(context)])
        ).float()
        eps_c, eps_u = eps.chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    @torch.no_grad()
    def sample(
        self,
        context: torch.Tensor,
        steps: int = 50,
        scheduler: str = "ddim",
        guidance_scale: float = 2.0,
        latents: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        progress: bool = False,
    ) -> torch.Tensor:
        """Sample latents for ``context`` with DDIM (η=0 by default) or PLMS, CFG scale ``guidance_scale``."""
        sched = make_scheduler(scheduler, self.config["schedule"])
        sched.set_timesteps(steps, device=self.device)
        b = context.shape[0]
        shape = (b, self.latent_channels, self.latent_size, self.latent_size)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device, self.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"start latents have shape {tuple(latents.shape)}, expected {shape}")
        x = latents.to(self.device, self.dtype) * sched.init_noise_sigma
        context = context.to(self.device, self.dtype)
        kw = {"eta": eta, "generator": generator} if scheduler.lower() == "ddim" else {}
        if scheduler.lower() == "ddpm":
            kw = {"generator": generator}
        ts = sched.timesteps
        if progress:
            from tqdm.auto import tqdm

            ts = tqdm(ts, desc=f"{scheduler} sampling")
        for t in ts:
            eps = self.guided_eps(sched.scale_model_input(x, t), t, context, guidance_scale)
            x = sched.step(eps.to(x.dtype), t, x, **kw).prev_sample
        return x

    # ------------------------------------------------------------------------------------ features
    def feature_blocks(self) -> list[FeatureBlock]:
        """The official ``return_intermediates`` outputs: index, channel width and stride (latent px)."""
        widths = list(self.unet.config.block_out_channels)
        n_levels = len(widths)
        n_res = int(self.unet.config.layers_per_block) + 1
        blocks = [FeatureBlock(0, widths[-1], 2 ** (n_levels - 1))]
        for bi, w in enumerate(reversed(widths)):
            stride = 2 ** (n_levels - 1 - bi)
            for j in range(n_res):
                s = stride // 2 if (j == n_res - 1 and bi < n_levels - 1) else stride
                blocks.append(FeatureBlock(bi * n_res + j + 1, int(w), s))
        return blocks

    @property
    def num_feature_blocks(self) -> int:
        """1 (middle block) + number of official output blocks (12 for ZoomLDM)."""
        return len(self.feature_blocks())

    def unet_features(self, x_t: torch.Tensor, t, context: torch.Tensor, blocks: Iterable[int]) -> dict[int, torch.Tensor]:
        """Official ``return_intermediates`` activations with early exit.

        Block 0 is the middle-block output; block i ≥ 1 is official output block i ↔ diffusers
        ``up_blocks[(i-1)//n]`` resnet ``(i-1)%n`` (+ its cross-attention, + the block's upsampler after the last
        resnet), with n = layers_per_block + 1. The up path stops after the deepest requested block.
        """
        blocks = sorted({int(b) for b in blocks})
        n_blocks = self.num_feature_blocks
        if not blocks or blocks[0] < 0 or blocks[-1] >= n_blocks:
            raise ValueError(f"blocks must be a non-empty subset of 0..{n_blocks - 1}; got {blocks}")
        unet = self.unet
        b = x_t.shape[0]
        t = self._timesteps(t, b, x_t.device)
        context = context.to(x_t.dtype)
        emb = unet.time_embedding(unet.time_proj(t).to(x_t.dtype))
        h = unet.conv_in(x_t)
        skips: tuple[torch.Tensor, ...] = (h,)
        for down in unet.down_blocks:
            if getattr(down, "has_cross_attention", False):
                h, res = down(hidden_states=h, temb=emb, encoder_hidden_states=context)
            else:
                h, res = down(hidden_states=h, temb=emb)
            skips += res
        h = unet.mid_block(h, emb, encoder_hidden_states=context)
        out: dict[int, torch.Tensor] = {}
        if 0 in blocks:
            out[0] = h
        last = blocks[-1]
        k = 0
        for up in unet.up_blocks:
            n = len(up.resnets)
            attns = getattr(up, "attentions", None)
            for j, resnet in enumerate(up.resnets):
                if k >= last:
                    return out
                h = torch.cat([h, skips[-1]], dim=1)
                skips = skips[:-1]
                h = resnet(h, emb)
                if attns is not None:
                    h = attns[j](h, encoder_hidden_states=context, return_dict=False)[0]
                if j == n - 1 and up.upsamplers is not None:
                    size = skips[-1].shape[2:] if skips else None
                    for upsampler in up.upsamplers:
                        h = upsampler(h, size)
                k += 1
                if k in blocks:
                    out[k] = h
        return out

    def forward(self, x_t: torch.Tensor, t, context: torch.Tensor) -> torch.Tensor:
        return self.predict_eps(x_t, t, context)
