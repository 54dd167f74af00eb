"""Speed options of an encoder that leave its features unchanged: ``torch.compile`` and channels-last memory.

Both act in place on the modules the forward runs through and keep parameter names (``nn.Module.compile``
wraps ``__call__`` only), so weights hashes, bag signatures and ``state_dict`` stay as they were. Each encoder says
what to act on (``compile_units()`` / ``conv_modules()`` of the :class:`~zoomfeat.encoders.base.TileEncoder`
protocol; for ZoomLDM the VQ encoder and each UNet stage that ``unet_features`` calls).
``benchmarks/gpu.py`` measures whether they pay off on a given GPU (docs/gpu.md).
"""

from __future__ import annotations

import torch


def optimize_encoder(encoder, compile: bool | str = False, channels_last: bool = False, mode: str | None = None,
                     dynamic: bool | None = None):
    """Apply ``torch.compile`` and/or channels-last weights to ``encoder`` in place; returns it.

    ``compile``: False, True (= ``"inductor"``) or a backend name (``"aot_eager"`` traces the same graphs without
    code generation: a quick check on CPUs, where inductor takes minutes); ``mode``: None, ``"reduce-overhead"``
    (CUDA graphs), ``"max-autotune"``. The first batches of each new shape pay the compile time."""
    backend = "inductor" if compile is True else (compile or None)
    if channels_last:
        for m in encoder.conv_modules():
            m.to(memory_format=torch.channels_last)
    if backend:
        kw = {"mode": mode} if backend == "inductor" else {}
        for m in encoder.compile_units():
            m.compile(backend=backend, dynamic=dynamic, **kw)
    encoder.speed = {"compile": backend, "compile_mode": mode, "channels_last": bool(channels_last)}
    return encoder


def reset_encoder_speed(encoder):
    """Undo :func:`optimize_encoder` (eager calls, contiguous weights) — lets a benchmark compare variants."""
    for m in encoder.compile_units():
        for sub in m.modules():
            if getattr(sub, "_compiled_call_impl", None) is not None:
                sub._compiled_call_impl = None
    for m in encoder.conv_modules():
        m.to(memory_format=torch.contiguous_format)
    encoder.speed = {"compile": None, "compile_mode": None, "channels_last": False}
    return encoder


__all__ = ["optimize_encoder", "reset_encoder_speed"]
