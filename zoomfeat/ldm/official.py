"""Released-checkpoint support: read official ZoomLDM ``.ckpt`` + ``config.yaml`` and map them onto diffusers.

The official release (HF ``StonyBrook-CVLab/ZoomLDM``: ``brca|naip/weights.ckpt`` + ``config.yaml``) is a
LatentDiffusion state dict (spec §2.2): 12 schedule buffers, ``model.diffusion_model.*`` (online UNet),
``model_ema.*`` (EMA UNet with dot-less names + ``decay``/``num_updates``), ``first_stage_model.*`` (VQ-f4) and
``cond_stage_model.*`` (Summarizer). Key renaming uses diffusers' own legacy converters
(``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint``); this module adds what they lack: strict
accounting of every tensor, shape checks against the config, and our YAML config format.

Skipped on purpose (recomputed by the scheduler / LitEma bookkeeping): :data:`SKIPPED_KEYS`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from zoomfeat.ldm.modules import build_empty_modules
from zoomfeat.ldm.summarizer import rename_legacy_mlp_keys
from zoomfeat.mags import MAG_LABELS
from zoomfeat.weights import refuse_checkpoint, torch_load_tensors

#: Top-level schedule buffers (recomputed from the config) and LitEma counters — the only keys not loaded.
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
SKIPPED_KEYS = SCHEDULE_BUFFERS + ("model_ema.decay", "model_ema.num_updates")

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
VQ_PREFIX = "first_stage_model."
COND_PREFIX = "cond_stage_model."

#: ``name`` of a translated config when the caller gives none (``ZoomLDM.from_official`` passes the folder name).
DEFAULT_NAME = "ZoomLDM"

#: NAIP magnification table (spec §1.5).
NAIP_MAG_LABELS = ["1x", "2x", "3x", "4x"]


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the config (missing/unexpected keys or shape mismatches)."""


# ----------------------------------------------------------------------------------------------- loading
def load_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official ``.ckpt`` safely (``weights_only=True``): a flat state dict or ``{"state_dict": …}``.

    A pickle that holds arbitrary Python objects (e.g. a Lightning checkpoint with callbacks/optimizer
    objects) is refused with a clear message instead of being executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 — SafetensorError and friends: one line
            raise refuse_checkpoint(path, exc) from None
    else:  # pickled code, empty, truncated: "refusing to load … (not a tensor-only checkpoint)"; re-save it as a
        obj = torch_load_tensors(path)  # plain state dict (torch.save(ckpt['state_dict'], ...)) or safetensors
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: state dict entries that are not tensors: {bad[:10]}{' …' if len(bad) > 10 else ''}")
    return dict(obj)


def load_official_config(path: str | os.PathLike) -> dict:
    """Read an official LatentDiffusion ``config.yaml`` (plain YAML) and check it is one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    with open(path) as fh:
        cfg = yaml.safe_load(fh)
    try:
        cfg["model"]["params"]["unet_config"]["params"]
        cfg["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
        cfg["model"]["params"]["cond_stage_config"]["params"]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not an official ZoomLDM/LatentDiffusion config (model.params.*_config missing)") from None
    return cfg


# ----------------------------------------------------------------------------------------------- configs
def config_from_official(official: dict, name: str | None = None) -> dict:
    """Translate an official LatentDiffusion config into our ZoomLDM YAML format (any size, tiny included)."""
    p = official["model"]["params"]
    up = p["unet_config"]["params"]
    fs = p["first_stage_config"]["params"]
    dd = fs["ddconfig"]
    _check_supported(up, dd)
    unet = _unet_section(official, up, dd)
    summ = _summarizer_section(p["cond_stage_config"]["params"])
    if summ["output_channels"] != unet["cross_attention_dim"]:
        raise ValueError(
            f"Summarizer output_channels {summ['output_channels']} != UNet context_dim {unet['cross_attention_dim']}"
        )
    mag_levels = summ["mag_levels"]
    mag_labels = list(MAG_LABELS[:mag_levels]) if mag_levels != 4 else list(NAIP_MAG_LABELS)
    return {
        "name": name or DEFAULT_NAME,
        "image_size": int(dd["resolution"]),
        "latent_size": int(up["image_size"]),
        "vae_scale_factor": 2 ** (len(dd["ch_mult"]) - 1),
        "ssl_dim": summ["input_channels"],
        "feat_target_size": 8,
        "mag_labels": mag_labels,
        "unet": unet,
        "vq": _vq_section(fs, dd),
        "summarizer": summ,
        "schedule": _schedule_section(p),
    }


def _check_supported(up: dict, dd: dict) -> None:
    """Refuse official layouts the diffusers mapping does not cover (they are not ZoomLDM)."""
    if up.get("use_linear_in_transformer") or not up.get("use_spatial_transformer", False):
        raise ValueError("only the ZoomLDM UNet layout (spatial transformer, conv proj_in/out) is supported")
    if up.get("num_head_channels", -1) not in (-1, None) or not up.get("legacy", True):
        raise ValueError("only num_heads-based (legacy) attention heads are supported, as in ZoomLDM")
    if up.get("use_scale_shift_norm") or up.get("resblock_updown"):
        raise ValueError("use_scale_shift_norm / resblock_updown UNets are not ZoomLDM")
    if dd.get("attn_resolutions"):
        raise ValueError("VQ first stages with attention in the down/up blocks are not supported")


def _unet_section(official: dict, up: dict, dd: dict) -> dict:
    from diffusers.pipelines.stable_diffusion.convert_from_ckpt import create_unet_diffusers_config

    ucfg = create_unet_diffusers_config(official, image_size=dd["resolution"])
    return {
        "sample_size": int(up["image_size"]),
        "in_channels": int(up["in_channels"]),
        "out_channels": int(up["out_channels"]),
        "down_block_types": list(ucfg["down_block_types"]),
        "up_block_types": list(ucfg["up_block_types"]),
        "block_out_channels": [int(c) for c in ucfg["block_out_channels"]],
        "layers_per_block": int(up["num_res_blocks"]),
        "cross_attention_dim": int(ucfg["cross_attention_dim"]),
        "attention_head_dim": int(up["num_heads"]),  # diffusers' misnomer: this is the number of heads
        "use_linear_projection": False,
        "transformer_layers_per_block": int(up.get("transformer_depth", 1)),
    }


def _vq_section(fs: dict, dd: dict) -> dict:
    return {
        "in_channels": int(dd["in_channels"]),
        "out_channels": int(dd["out_ch"]),
        "down_block_types": ["DownEncoderBlock2D"] * len(dd["ch_mult"]),
        "up_block_types": ["UpDecoderBlock2D"] * len(dd["ch_mult"]),
        "block_out_channels": [int(dd["ch"] * m) for m in dd["ch_mult"]],
        "layers_per_block": int(dd["num_res_blocks"]),
        "latent_channels": int(dd["z_channels"]),
        "sample_size": int(dd["resolution"]),
        "num_vq_embeddings": int(fs["n_embed"]),
        "vq_embed_dim": int(fs["embed_dim"]),
        "norm_num_groups": 32,
        "scaling_factor": 1.0,
    }


def _summarizer_section(cp: dict) -> dict:
    return {
        "input_channels": int(cp.get("input_channels", 1024)),
        "hidden_channels": int(cp.get("hidden_channels", 512)),
        "vit_mlp_dim": int(cp.get("vit_mlp_dim", 2048)),
        "output_channels": int(cp.get("output_channels", 512)),
        "seq_length": int(cp.get("seq_length", 64)),
        "mag_levels": int(cp.get("mag_levels", 8)),
        "num_layers": int(cp.get("num_layers", 12)),
        "num_heads": int(cp.get("num_heads", 8)),
        "p_uncond": float(cp.get("p_uncond", 0.1)),
    }


def _schedule_section(p: dict) -> dict:
    return {
        "num_train_timesteps": int(p.get("timesteps", 1000)),
        "beta_start": float(p.get("linear_start", 0.0015)),
        "beta_end": float(p.get("linear_end", 0.0195)),
        "beta_schedule": "scaled_linear" if p.get("beta_schedule", "linear") == "linear" else p["beta_schedule"],
        "prediction_type": "epsilon" if p.get("parameterization", "eps") == "eps" else p["parameterization"],
    }


def _unet_config_for_converter(cfg: dict) -> dict:
    u = cfg["unet"]
    return {
        "layers_per_block": u["layers_per_block"],
        "class_embed_type": None,
        "addition_embed_type": None,
    }


# ----------------------------------------------------------------------------------------------- conversion
class _TrackingDict(dict):
    """A dict that records which keys were read, so conversion can prove every tensor was used."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.used: set[str] = set()

    def __getitem__(self, key):
        value = super().__getitem__(key)
        self.used.add(key)
        return value

    def pop(self, key, *default):
        if key in self:
            self.used.add(key)
        return super().pop(key, *default)

    def get(self, key, default=None):
        if key in self:
            self.used.add(key)
        return super().get(key, default)


@dataclass
class ConversionReport:
    """What happened to each checkpoint tensor (every key lands in exactly one bucket)."""

    unet_source: str = "ema"
    loaded: dict[str, list[str]] = field(default_factory=dict)  # part -> source keys used
    skipped: list[str] = field(default_factory=list)  # schedule buffers / EMA counters
    unused_alternate: list[str] = field(default_factory=list)  # the UNet copy not chosen (online or EMA)

    @property
    def n_accounted(self) -> int:
        return sum(len(v) for v in self.loaded.values()) + len(self.skipped) + len(self.unused_alternate)


def ema_key(unet_key: str) -> str:
    """LitEma shadow name of a UNet parameter: dots removed from ``diffusion_model.<key>``."""
    return EMA_PREFIX + ("diffusion_model." + unet_key).replace(".", "")


def split_official_state_dict(
    sd: dict[str, torch.Tensor], ema: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], ConversionReport]:
    """Split an official state dict into original-named UNet / VQ / Summarizer dicts; error on unknown keys."""
    report = ConversionReport()
    online = {k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    ema_keys = {k for k in sd if k.startswith(EMA_PREFIX) and k not in SKIPPED_KEYS}
    vq = {k[len(VQ_PREFIX):]: v for k, v in sd.items() if k.startswith(VQ_PREFIX)}
    cond = {k[len(COND_PREFIX):]: v for k, v in sd.items() if k.startswith(COND_PREFIX)}
    report.skipped = [k for k in sd if k in SKIPPED_KEYS]
    known = set(report.skipped) | ema_keys
    known |= {UNET_PREFIX + k for k in online} | {VQ_PREFIX + k for k in vq} | {COND_PREFIX + k for k in cond}
    unexpected = sorted(set(sd) - known)
    if unexpected:
        raise CheckpointMismatchError(
            f"unexpected keys in checkpoint ({len(unexpected)}): {unexpected[:20]}{' …' if len(unexpected) > 20 else ''}"
        )
    if not online and not ema_keys:
        raise CheckpointMismatchError("checkpoint holds no UNet weights (no model.diffusion_model.* / model_ema.*)")

    if ema_keys and online:
        expected_ema = {ema_key(k): k for k in online}
        missing_ema = sorted(set(expected_ema) - ema_keys)
        extra_ema = sorted(ema_keys - set(expected_ema))
        if missing_ema or extra_ema:
            raise CheckpointMismatchError(
                f"EMA and online UNet keys disagree: missing EMA {missing_ema[:10]}, unexpected EMA {extra_ema[:10]}"
            )
    if ema and ema_keys:
        if online:
            unet = {orig: sd[ek] for ek, orig in ((ema_key(k), k) for k in online)}
        else:  # EMA-only file: recover dotted names from the diffusers model later
            raise CheckpointMismatchError(
                "EMA-only checkpoints (no model.diffusion_model.*) are not supported: the dot-less EMA names "
                "cannot be mapped back without the online key list"
            )
        report.unet_source = "ema"
        report.loaded["unet"] = sorted(ema_keys)
        report.unused_alternate = sorted(UNET_PREFIX + k for k in online)
    else:
        if ema and not ema_keys:
            logging.getLogger(__name__).warning("checkpoint has no model_ema.* weights; using the online UNet")
        unet = online
        report.unet_source = "online"
        report.loaded["unet"] = sorted(UNET_PREFIX + k for k in online)
        report.unused_alternate = sorted(ema_keys)
    report.loaded["vq"] = sorted(VQ_PREFIX + k for k in vq)
    report.loaded["summarizer"] = sorted(COND_PREFIX + k for k in cond)
    return unet, vq, cond, report


def convert_unet_state_dict(unet_sd: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """Original ``openaimodel.UNetModel`` keys → diffusers ``UNet2DConditionModel`` keys (every key used)."""
    from diffusers.pipelines.stable_diffusion.convert_from_ckpt import convert_ldm_unet_checkpoint

    tracked = _TrackingDict(unet_sd)
    try:
        out = convert_ldm_unet_checkpoint(tracked, _unet_config_for_converter(cfg), skip_extract_state_dict=True)
    except KeyError as exc:
        raise CheckpointMismatchError(
            f"UNet key missing from checkpoint: {UNET_PREFIX}{exc.args[0]} (and its model_ema.* shadow)"
        ) from None
    unused = sorted(set(unet_sd) - tracked.used)
    if unused:
        raise CheckpointMismatchError(f"UNet tensors the converter did not map ({len(unused)}): {unused[:20]}")
    return out


def convert_vq_state_dict(vq_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original taming ``VQModel`` keys → diffusers ``VQModel`` keys (every key used)."""
    from diffusers.pipelines.stable_diffusion.convert_from_ckpt import convert_ldm_vae_checkpoint

    if "quantize.embedding.weight" not in vq_sd:
        raise CheckpointMismatchError("first_stage_model.quantize.embedding.weight missing: not a VQ first stage")
    rest = {k: v for k, v in vq_sd.items() if k != "quantize.embedding.weight"}
    try:
        out = convert_ldm_vae_checkpoint(rest, None)
    except KeyError as exc:
        raise CheckpointMismatchError(f"first-stage key missing from checkpoint: first_stage_model.{exc.args[0]}") from None
    out["quantize.embedding.weight"] = vq_sd["quantize.embedding.weight"]
    # the converter maps one source key to one target key; equal counts prove nothing was dropped
    if len(out) != len(vq_sd):
        raise CheckpointMismatchError(
            f"VQ conversion mapped {len(out)} of {len(vq_sd)} first-stage tensors; unmapped keys present"
        )
    return out


def check_against_model(part: str, converted: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Raise one error naming every missing, unexpected and shape-mismatched tensor of ``part``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(converted[k].shape)} vs config {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(converted))
        if tuple(converted[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"{part}: checkpoint and config disagree"]
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}):")
            lines += [f"    {m}" for m in mismatched]  # every one: a cut list hides the pattern
        if missing:
            lines.append(f"  missing from checkpoint ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  not in the model ({len(unexpected)}): {', '.join(unexpected)}")
        raise CheckpointMismatchError("\n".join(lines))


def convert_official_state_dict(
    sd: dict[str, torch.Tensor], cfg: dict, ema: bool = True
) -> tuple[dict[str, dict[str, torch.Tensor]], ConversionReport]:
    """Official state dict → ``{"unet": …, "vq": …, "summarizer": …}`` diffusers-named state dicts + report."""
    unet_sd, vq_sd, cond_sd, report = split_official_state_dict(sd, ema=ema)
    out = {
        "unet": convert_unet_state_dict(unet_sd, cfg),
        "vq": convert_vq_state_dict(vq_sd),
        "summarizer": rename_legacy_mlp_keys(cond_sd),
    }
    if report.n_accounted != len(sd):  # pragma: no cover - guarded by split_official_state_dict
        raise CheckpointMismatchError(f"accounted for {report.n_accounted} of {len(sd)} tensors")
    return out, report


def modules_from_state_dict(sd: dict[str, torch.Tensor], cfg: dict, ema: bool = True):
    """Official state dict + our config → loaded ``(unet, vq, summarizer, report)``; every mismatch is an error."""
    converted, report = convert_official_state_dict(sd, cfg, ema=ema)
    modules = build_empty_modules(cfg, device="meta")
    for part, module in zip(("unet", "vq", "summarizer"), modules):
        check_against_model(part, converted[part], module)
        module.load_state_dict(converted[part], strict=True, assign=True)
    return (*(m.float() for m in modules), report)


def check_official_keys(
    keys_and_shapes: dict[str, tuple[int, ...] | list], cfg: dict, ema: bool = True
) -> ConversionReport:
    """Map a full-size key manifest (``{key: shape}`` or ``{key: [shape, dtype]}``) with meta tensors.

    Proves without the 2 GB file that every tensor of a release lands in the model built from ``cfg`` (our
    format, or an official config which is translated first) with the right shape.
    """
    if "model" in cfg:
        cfg = config_from_official(cfg)
    sd = {}
    for k, spec in keys_and_shapes.items():
        shape, dtype = spec, "float32"
        if len(spec) == 2 and isinstance(spec[0], (list, tuple)):
            shape, dtype = spec
        sd[k] = torch.empty(tuple(shape), device="meta", dtype=getattr(torch, dtype))
    converted, report = convert_official_state_dict(sd, cfg, ema=ema)
    unet, vq, summ = build_empty_modules(cfg)
    check_against_model("unet", converted["unet"], unet)
    check_against_model("vq", converted["vq"], vq)
    check_against_model("summarizer", converted["summarizer"], summ)
    return report

