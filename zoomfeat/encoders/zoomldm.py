"""``zoomldm``: frozen ZoomLDM as a tile encoder — VQ-encode, noise to t, UNet up to the requested block, pool.

Pipeline per tile (spec §8 working hypothesis, every choice exposed):
  tile → resize to the model's image size, scale to [-1, 1] → VQ encode (pre-quant latent, as in training)
  → x_t = √ᾱ_t z + √(1-ᾱ_t) ε with ε drawn from a per-tile seed (slide id + level-0 coords + mag + base seed, so the
  same tile always gets the same noise, whatever batch or worker it lands in) → UNet with early exit after the
  deepest requested block (``ZoomLDM.unet_features``) → global average pool of each block → concatenation over
  blocks, then over timesteps.

Conditioning ``uni``: a 20x tile is conditioned on its own SSL embedding as a 1×1 grid at mag 20x; a 5x region on
the 4×4 grid of its 16 children's SSL embeddings at mag 5x (the training-time inputs, spec §1.5). ``none`` uses the
null (all-zeros) context that classifier-free guidance was trained with.

Defaults: block 0 (the middle-block output, the most compact and semantic activation the authors' hook returns),
t = 100 (low noise: the latent keeps the tile's content, yet the UNet runs in its denoising regime — feature papers
on diffusion models find small t best for recognition), conditioning ``uni`` (the model was trained conditioned;
the null context was seen only 10% of the time). The paper does not state its choice (spec §8), so all are options.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from zoomfeat.encoders.base import TileContext, TileEncoder, TileTransform
from zoomfeat.encoders.options import EncoderOptions, int_list, option
from zoomfeat.encoders.registry import create_encoder, get_encoder, register_encoder, resolve_weights
from zoomfeat.io import sha256_file
from zoomfeat.ldm import ZoomLDM
from zoomfeat.mags import mag_to_index
from zoomfeat.precision import autocast

#: The registry name of this encoder: the only place the string is written (bags, probe rows and the demo use it).
ZOOMLDM = "zoomldm"
DEFAULT_BLOCKS = (0,)
DEFAULT_T = (100,)
DEFAULT_CONDITIONING = "uni"
#: SSL grid side per magnification (spec §1.5): a 5x region holds 4×4 20x tiles.
GRID_SIDE = {"20x": 1, "5x": 4}


def tile_seed(slide: str, x: int, y: int, mag: str, base_seed: int = 0) -> int:
    """Reproducible 63-bit noise seed of one tile: independent of batch composition, worker count and rank."""
    h = hashlib.sha256(f"{slide}|{int(x)}|{int(y)}|{mag}|{int(base_seed)}".encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def tile_seeds(slide: str, coords: np.ndarray, mag: str, base_seed: int = 0) -> np.ndarray:
    return np.array([tile_seed(slide, x, y, mag, base_seed) for x, y in np.asarray(coords).reshape(-1, 2)],
                    dtype=np.int64)


class ZoomLDMEncoder(TileEncoder):
    """Tile → ZoomLDM UNet activation features. ``encode(images, ctx)`` reads the tiles' magnification, SSL grids
    (for ``conditioning='uni'``; its ``ssl_encoder`` asks the extractor for them) and per-tile noise seeds (from
    ``ctx.slide`` + ``ctx.coords``, or ``ctx.seeds``) from the :class:`TileContext`."""

    def __init__(self, ldm, blocks: Sequence[int] = DEFAULT_BLOCKS, t: Sequence[int] = DEFAULT_T,
                 conditioning: str = DEFAULT_CONDITIONING, ssl_encoder: TileEncoder | None = None,
                 precision: str = "fp16", base_seed: int = 0, weights_sha256: str | None = None,
                 weights_path: str | None = None):
        self.name = ZOOMLDM
        self.model = ldm
        self.blocks = [int(b) for b in (blocks if isinstance(blocks, (list, tuple)) else [blocks])]
        self.t = [int(v) for v in (t if isinstance(t, (list, tuple)) else [t])]
        if not self.blocks or not self.t:
            raise ValueError("zoomldm needs at least one block and one timestep")
        if conditioning not in ("uni", "none"):
            raise ValueError(f"conditioning must be 'uni' or 'none', got {conditioning!r}")
        n_t = int(getattr(ldm, "num_train_timesteps", 1000))
        bad_t = [v for v in self.t if not 0 <= v < n_t]
        if bad_t:
            raise ValueError(f"timesteps must lie in [0, {n_t - 1}], got {bad_t}")
        chans = {b.index: b.channels for b in ldm.feature_blocks()}
        bad = [b for b in self.blocks if b not in chans]
        if bad:
            raise ValueError(f"blocks must be in 0..{max(chans)} (0 = middle block, 1..{max(chans)} = decoder "
                             f"blocks), got {bad}")
        self.conditioning = conditioning
        if conditioning == "uni":
            if ssl_encoder is None:
                raise ValueError("conditioning 'uni' needs an SSL encoder (--ssl-encoder/--ssl-weights); "
                                 "use --conditioning none for the null context")
            if ssl_encoder.dim != ldm.ssl_dim:
                raise ValueError(f"SSL encoder {ssl_encoder.name} gives {ssl_encoder.dim}-d embeddings but this "
                                 f"ZoomLDM expects ssl dim {ldm.ssl_dim}")
        self.ssl_encoder = ssl_encoder if conditioning == "uni" else None
        self.precision = precision
        self.base_seed = int(base_seed)
        self.weights_sha256 = weights_sha256
        self.weights_path = weights_path
        self.image_size = int(ldm.image_size)
        # [0,1] → [-1,1] (mean = std = 0.5) at the model's image size (64 for the tiny fixture, 256 full size)
        self.transforms = TileTransform(size=self.image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        self.dim = sum(chans[b] for b in self.blocks) * len(self.t)
        self.config = {"blocks": self.blocks, "t": self.t, "conditioning": conditioning, "pool": "global_avg",
                       "noise_seed": "sha256(slide|x|y|mag|base_seed)", "base_seed": self.base_seed,
                       "image_size": self.image_size, "feature_order": "t-major, then blocks",
                       "ssl_encoder": ssl_encoder.name if self.ssl_encoder else None,
                       "ssl_weights_sha256": ssl_encoder.weights_sha256 if self.ssl_encoder else None}
        if (getattr(ldm, "config", None) or {}).get("source", {}).get("unet_weights") == "online":
            # the online UNet of an official .ckpt (--online) gives other features than the EMA one from the same
            # file (same sha256): record it, so the extract signature, resume and `predict` tell them apart
            self.config["unet_weights"] = "online"

    # -- TileEncoder protocol --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device(self.model.device)

    def to(self, device: torch.device | str) -> "ZoomLDMEncoder":
        self.model.to(device)
        if self.ssl_encoder is not None:
            self.ssl_encoder.to(device)
        return self

    def bag_attrs(self, opts: Any) -> dict:
        """The recipe as top-level bag attributes (``block``, ``t``, ``conditioning``, the SSL encoder)."""
        ssl = self.ssl_encoder
        return {"block": self.blocks, "t": self.t, "conditioning": self.conditioning,
                "missing_children_5x": opts.missing_children if ssl is not None else None,
                "ssl_encoder": ssl.name if ssl else None, "ssl_weights_sha256": ssl.weights_sha256 if ssl else None}

    def compile_units(self) -> list:
        """The VQ encoder and each UNet stage ``unet_features`` calls (not ``unet.forward``, which early exit
        bypasses), then the SSL encoder's."""
        ldm = self.model
        unet = ldm.unet
        units = [ldm.vq.encoder, ldm.vq.quant_conv, unet.conv_in, unet.time_embedding, *unet.down_blocks,
                 unet.mid_block, *unet.up_blocks]
        return units + (self.ssl_encoder.compile_units() if self.ssl_encoder is not None else [])

    def conv_modules(self) -> list:
        ssl = self.ssl_encoder
        return [self.model.vq, self.model.unet] + (ssl.conv_modules() if ssl is not None else [])

    # -- features ------------------------------------------------------------------------------------------------
    def _noise(self, seeds: Sequence[int] | np.ndarray | None, shape: tuple[int, ...], n: int) -> torch.Tensor:
        if seeds is None:
            g = torch.Generator().manual_seed(self.base_seed)
            return torch.randn((n, *shape), generator=g)
        seeds = np.asarray(seeds).reshape(-1)
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} tiles")
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

    def context(self, n: int, mag: str, ssl_grid: torch.Tensor | None) -> torch.Tensor:
        """UNet cross-attention context for ``n`` tiles: Summarizer(raw SSL grid, mag) or the null context."""
        if self.conditioning == "none":
            return self.model.null_context(n)
        if ssl_grid is None:
            raise ValueError("conditioning 'uni' needs ssl_grid [B, C, s, s] (s = 1 at 20x, 4 at 5x)")
        ssl_grid = torch.as_tensor(ssl_grid, dtype=torch.float32).to(self.device)
        if ssl_grid.ndim == 2:
            ssl_grid = ssl_grid[:, :, None, None]
        return self.model.condition(ssl_grid, mag_to_index(mag))

    @torch.inference_mode()
    def pooled_features(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Noisy latents → pooled activations of ``self.blocks`` concatenated, [B, Σ channels] float32."""
        acts = self.model.unet_features(x_t, t, context, self.blocks)
        return torch.cat([acts[b].float().mean(dim=(2, 3)) for b in self.blocks], dim=1)

    def seeds(self, ctx: TileContext) -> np.ndarray | Sequence[int] | None:
        """The batch's noise seeds: explicit ones, else derived from slide + coords (None: one base-seeded draw)."""
        if ctx.seeds is not None:
            return ctx.seeds
        if ctx.slide is not None and ctx.coords is not None:
            return tile_seeds(ctx.slide, ctx.coords, ctx.mag, self.base_seed)
        return None

    @torch.inference_mode()
    def encode(self, images: Any, ctx: TileContext | None = None) -> torch.Tensor:
        """Tiles (uint8 [B,H,W,3] or float [0,1]) → [B, dim] float32 features (see the module docstring)."""
        ctx = ctx or TileContext()
        mag, ssl_grid, seeds = ctx.mag, ctx.ssl_grid, self.seeds(ctx)
        ldm = self.model
        device = self.device
        x = self.transforms(images, device)
        n = x.shape[0]
        n_t = len(self.t)
        z0 = ldm.encode(x).float()  # the VQ runs in fp32 (official split); UNet + Summarizer under autocast
        with autocast(device, self.precision):
            ctx = self.context(n, mag, ssl_grid)
            noise = self._noise(seeds, tuple(z0.shape[1:]), n).to(device, z0.dtype)
            # all timesteps in one UNet batch: [t0 tiles…, t1 tiles…]
            tt = torch.cat([torch.full((n,), v, device=device, dtype=torch.long) for v in self.t])
            zt = ldm.add_noise(z0.repeat(n_t, 1, 1, 1), noise.repeat(n_t, 1, 1, 1), tt)
            pooled = self.pooled_features(zt, tt, ctx.repeat(n_t, 1, 1))  # [T*n, C]
        out = pooled.view(n_t, n, -1).permute(1, 0, 2).reshape(n, -1)
        if out.shape[1] != self.dim:
            raise RuntimeError(f"zoomldm features have width {out.shape[1]}, expected {self.dim}")
        return out.float()


@dataclass
class ZoomLDMOptions(EncoderOptions):
    """ZoomLDM's recipe and model options (the spec §8 working hypothesis by default; sweep with `zoomfeat probe`)."""

    blocks: list[int] = option(list(DEFAULT_BLOCKS), "UNet blocks to pool: 0 = middle block, 1..12 = decoder "
                               "blocks; several are concatenated", type=int_list)
    t: list[int] = option(list(DEFAULT_T), "noise timestep(s); several are concatenated", type=int_list)
    conditioning: str = option(DEFAULT_CONDITIONING, "uni: the tile's SSL embedding (20x: 1×1, 5x: 4×4 children "
                               "grid); none: null context", choices=("uni", "none"))
    ssl_encoder: str = option("uni", "SSL encoder for conditioning (tiny-vit for the tiny test model)",
                              choices=("uni", "tiny-vit", "phikon"))
    ssl_weights: str | None = option(None, "weights of the SSL encoder (default: from the registry)")
    seed: int = option(0, "base seed of the per-tile noise", type=int)
    random_init: bool = option(False, "its SSL encoder (uni/phikon) without weights (tests and timing only)")
    official_config: str | None = option(None, "official config.yaml of a .ckpt given as --weights (default: the "
                                         "config.yaml beside it)")
    online: bool = option(False, "official .ckpt only: load the online UNet instead of the EMA weights (the "
                          "released default)")

    def __post_init__(self) -> None:
        self.blocks, self.t = int_list(self.blocks), int_list(self.t)  # YAML may say `blocks: 0,3`

    def builder_kwargs(self) -> dict:
        kw = {"blocks": self.blocks, "t": self.t, "conditioning": self.conditioning, "base_seed": self.seed,
              "config": self.official_config, "ema": not self.online}
        if self.precision:
            kw["precision"] = self.precision
        if self.conditioning == "uni":
            kw.update(ssl_encoder=self.ssl_encoder, ssl_weights=self.ssl_weights)
            if self.random_init and "random_init" in get_encoder(self.ssl_encoder).options().own_fields():
                kw["ssl_kwargs"] = {"random_init": True}
        return kw

    @classmethod
    def recipe_kwargs(cls, spec: dict, weights: Any = None, ssl_weights: Any = None,
                      official_config: Any = None) -> dict:
        rc = spec.get("recipe") or {}
        kw = {**super().recipe_kwargs(spec), "blocks": rc.get("blocks", list(DEFAULT_BLOCKS)),
              "t": rc.get("t", list(DEFAULT_T)), "conditioning": rc.get("conditioning", DEFAULT_CONDITIONING),
              "base_seed": int(rc.get("base_seed", 0)), "ema": rc.get("unet_weights") != "online", "config": official_config}
        if kw["conditioning"] == "uni":
            kw.update(ssl_encoder=rc.get("ssl_encoder") or "uni", ssl_weights=ssl_weights)
        return kw


def ssl_encoder_for(ldm, name: str, weights=None, registry=None, precision: str | None = None,
                    kwargs: dict | None = None):
    """The conditioning encoder ``name`` of ``ldm`` (``tiny-vit`` sized to the model's ssl dim); ``precision``:
    the ZoomLDM forward's, or None for the encoder's own default."""
    kw = dict(kwargs or {})
    if precision is not None:
        kw.setdefault("precision", precision)  # one --precision for the whole forward
    if name == "tiny-vit":
        kw.setdefault("dim", int(ldm.ssl_dim))
    return create_encoder(name, weights=weights, registry=registry, **kw)


@register_encoder(ZOOMLDM, needs_weights=True, options=ZoomLDMOptions, info={
    "dim": "sum of the chosen blocks' channels x len(t)", "input": "256 px (VQ-f4 latent 64x64)",
    "scale": "20x tile, or 5x (1024-px region at 20x resized to 256)", "precision": "fp16 (VQ in fp32)",
    "license": "see the ZoomLDM release (cvlab-stonybrook/ZoomLDM)",
    "source": "released .ckpt + config.yaml, or a `zoomfeat convert` / training folder"})
def create_zoomldm(weights: str | os.PathLike | None = None, blocks: Sequence[int] = DEFAULT_BLOCKS,
                   t: Sequence[int] = DEFAULT_T, conditioning: str = DEFAULT_CONDITIONING,
                   ssl_encoder: TileEncoder | str | None = None, ssl_weights: str | os.PathLike | None = None,
                   ssl_kwargs: dict | None = None, precision: str = "fp16", base_seed: int = 0,
                   config: str | os.PathLike | None = None, ema: bool = True, ldm=None,
                   registry: str | os.PathLike | None = None) -> ZoomLDMEncoder:
    """ZoomLDM UNet features (VQ → noise to t → UNet blocks, pooled), from a saved folder or official .ckpt.

    ``weights``: a folder from ``zoomfeat convert``/training or an official ``.ckpt`` (+ ``config``, default the
    config.yaml beside it; ``ema=False`` loads the online UNet), or pass a loaded ``ldm``. ``ssl_encoder``: an
    encoder or a registry name (default ``uni``; ``tiny-vit`` for the tiny fixture, sized to the model's ssl dim).
    Fails before loading anything when conditioning needs SSL weights that are missing.
    """
    if conditioning == "uni":
        ssl_encoder = ssl_encoder or "uni"
        if (isinstance(ssl_encoder, str) and get_encoder(ssl_encoder).needs_weights
                and not (ssl_kwargs or {}).get("random_init")):
            ssl_weights = resolve_weights(ssl_encoder, ssl_weights, registry, required=True)
    if ldm is None:
        if weights is None:
            raise FileNotFoundError("zoomldm needs --weights: a folder from `zoomfeat convert`/training or an "
                                    "official weights.ckpt with config.yaml beside it")

        ldm = ZoomLDM.load(weights, config, ema=ema)
    sha, wpath = (sha256_file(weights), str(weights)) if weights is not None else (None, None)
    ssl = None
    if conditioning == "uni":
        ssl = (ssl_encoder_for(ldm, ssl_encoder, ssl_weights, registry, precision, ssl_kwargs)
               if isinstance(ssl_encoder, str) else ssl_encoder)
    return ZoomLDMEncoder(ldm, blocks=blocks, t=t, conditioning=conditioning, ssl_encoder=ssl, precision=precision,
                          base_seed=base_seed, weights_sha256=sha, weights_path=wpath)
