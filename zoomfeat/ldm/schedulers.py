"""Noise schedule and samplers for ZoomLDM, as diffusers schedulers configured like the official code (spec §4).

The official CompVis DDIM/PLMS samplers use ``range(0, 1000, 1000//S) + 1`` timesteps and ᾱ_prev(last) = ᾱ_0;
diffusers reproduces this with ``timestep_spacing="leading"``, ``steps_offset=1``, ``set_alpha_to_one=False``
(and ``skip_prk_steps=True`` for PNDM ≙ PLMS, including the extra model call on the first step).
"""

from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler, PNDMScheduler

DEFAULT_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}

SCHEDULERS = ("ddim", "plms", "pndm", "ddpm")


def _base(schedule: dict | None) -> dict:
    s = dict(DEFAULT_SCHEDULE)
    s.update(schedule or {})
    return s


def _schedule_kwargs(s: dict) -> dict:
    """The β table and parameterisation every scheduler of one model shares."""
    return {k: s[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")}


def training_scheduler(schedule: dict | None = None) -> DDPMScheduler:
    """The training schedule (ᾱ table, ``add_noise``): ``scaled_linear`` 0.0015 → 0.0195 over 1000 steps."""
    return DDPMScheduler(**_schedule_kwargs(_base(schedule)), clip_sample=False)


def make_scheduler(name: str, schedule: dict | None = None):
    """A sampling scheduler: ``ddim`` (η=0) or ``plms``/``pndm`` (CompVis PLMS), or ``ddpm`` (ancestral)."""
    s = _base(schedule)
    common = dict(
        **_schedule_kwargs(s),
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    name = name.lower()
    if name == "ddim":
        return DDIMScheduler(clip_sample=False, **common)
    if name in ("plms", "pndm"):
        return PNDMScheduler(skip_prk_steps=True, **common)
    if name == "ddpm":
        common.pop("set_alpha_to_one")
        return DDPMScheduler(clip_sample=False, **common)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
