"""One place for mixed precision: names, the autocast context every stage uses, and the fp32 islands.

``--precision fp32|bf16|fp16`` means the same thing in extraction, training, generation and MIL: the module's
weights stay fp32 and its forward runs under ``torch.autocast`` with that dtype. On a GPU that is CUDA autocast;
on the CPU ``bf16`` is CPU autocast, which applies the same op lists (matmuls/convs in the low dtype, norms,
softmax and reductions in fp32), so every dtype path can be tested without a GPU. ``fp16`` on the CPU runs in
fp32 (CPUs without AVX512-FP16 emulate it slowly); :func:`effective_precision` says what really ran.

Official split kept for ZoomLDM (spec §1.2/§1.3): the UNet (and Summarizer) run under autocast, the VQ-f4 first
stage always runs in fp32 — :func:`fp32` switches autocast off around it (``ZoomLDM.encode``/``decode``).
"""

from __future__ import annotations

import contextlib
import os

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

#: Spellings accepted for the three precisions (accelerate's ``no``, Lightning's ``16-mixed``, dtype names).
ALIASES = {
    "fp32": "fp32", "no": "fp32", "32": "fp32", "float32": "fp32", "full": "fp32",
    "fp16": "fp16", "16": "fp16", "16-mixed": "fp16", "float16": "fp16", "half": "fp16",
    "bf16": "bf16", "bf16-mixed": "bf16", "bfloat16": "bf16",
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` = this rank's GPU (torchrun ``LOCAL_RANK``) if CUDA is available, else the CPU; any other value is
    passed to ``torch.device``. The one device rule of extraction, training, generation and MIL."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    return torch.device(device)


def normalize_precision(precision: str | None, default: str = "fp32") -> str:
    """A precision name in any accepted spelling → ``fp32``/``fp16``/``bf16`` (clear error otherwise)."""
    if precision is None or precision == "":
        return default
    key = str(precision).strip().lower()
    if key not in ALIASES:
        raise ValueError(f"precision must be one of fp32, bf16, fp16, got {precision!r}")
    return ALIASES[key]


AUTO = "auto"  #: bf16 where the device computes it natively (CPU: AVX512-BF16 / AMX; CUDA: Ampere+), else fp32/fp16


def cpu_native_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo, else
    oneDNN's own check): there CPU autocast to bf16 is faster than fp32 (docs/performance.md), elsewhere slower."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:  # pragma: no cover - not Linux
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def auto_precision(device: torch.device | str) -> str:
    """What ``--precision auto`` runs on ``device``: CUDA bf16 (native) or fp16; CPU bf16 with native bf16, else
    fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "bf16" if device.type == "cpu" and cpu_native_bf16() else "fp32"


def effective_precision(device: torch.device | str, precision: str) -> str:
    """What actually runs for ``precision`` on ``device``: the CPU runs fp16 requests in fp32; ``auto`` is
    :func:`auto_precision`."""
    if str(precision).strip().lower() == AUTO:
        return auto_precision(device)
    precision = normalize_precision(precision)
    if torch.device(device).type == "cpu" and precision == "fp16":
        return "fp32"
    return precision


def check_supported(device: torch.device | str, precision: str) -> None:
    """Fail before any work when the device cannot run the precision (bf16 needs an Ampere or newer GPU)."""
    device = torch.device(device)
    if str(precision).strip().lower() == AUTO:
        return  # auto picks what the device supports
    if normalize_precision(precision) == "bf16" and device.type == "cuda" and torch.cuda.is_available():
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ValueError(f"{torch.cuda.get_device_name(device)} has no native bf16: use --precision fp16")


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``precision`` on ``device`` (CUDA or CPU); a no-op for fp32 (and fp16 on the CPU)."""
    device = torch.device(device)
    eff = effective_precision(device, precision)
    if eff == "fp32" or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[eff])


def fp32(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast switched off inside (inputs must be cast to the module's dtype by the caller): the VQ island."""
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def autocast_active(device: torch.device | str) -> bool:
    """Whether autocast is on for ``device`` here (tests use it to check the fp32 islands)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.is_autocast_enabled("cuda")
    return torch.is_autocast_enabled("cpu")


__all__ = ["PRECISIONS", "AUTO", "cpu_native_bf16", "auto_precision", "resolve_device", "normalize_precision", "effective_precision", "check_supported", "autocast", "fp32",
           "autocast_active"]
