"""The generation verbs' options (torch-free, so `zoomfeat generate-large --help` builds its flags from them without
torch): :class:`LargeImageConfig` (joint multi-scale sampling), :class:`SuperResConfig` (condition inversion +
sampling) and the verbs' whole options objects :class:`GenerateLargeConfig` / :class:`SuperResRunConfig` (the
model, inputs and output folder around them). Field metadata (help, flag, choices) feeds the generated flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

GUIDANCE_MODES = ("fd", "autograd", "none")
PRECISIONS = ("fp32", "bf16", "fp16")


def _opt(default=dataclasses.MISSING, factory=dataclasses.MISSING, **meta):
    return field(default=default, default_factory=factory, metadata=meta)


@dataclass
class LargeImageConfig:
    """Knobs of joint sampling; defaults follow the official notebook (spec §5), in our conventions."""

    #: first timestep (1-based like the official loop: indices t0-1, t0-1-stride, ...)
    t0: int = _opt(1000, help="first timestep")
    stride: int = _opt(50, help="timestep stride (50: 20 steps from 1000)")
    guidance_scale: float = _opt(3.0, help="CFG scale s in eps_u + s (eps_c - eps_u) (official w=2 in "
                                           "(1+w)eps_c - w eps_u is s=3)")
    guide_guidance_scale: float | None = _opt(None, help="CFG scale of the guide chain (default: --guidance-scale)")
    guidance: str = _opt("fd", choices=GUIDANCE_MODES, help="constraint update: backprop-free finite differences, "
                                                            "autograd, or none (unconstrained)")
    n_steps: int = _opt(10, help="constraint updates per timestep")
    lr: float = _opt(0.5, help="constraint step size on x_t (directions are max-normalised per sample)")
    h: float = _opt(0.005, help="finite-difference step")
    batch_size: int = _opt(16, help="20x patches per forward (CFG doubles it); bounds memory for 4096²")
    decode_stride: int | None = _opt(None, help="latent px between blended decode windows (default latent_size/4)")
    blend_sigma: float = _opt(0.8, help="Gaussian blending width (linspace(-1, 1) units)")
    refine: bool = _opt(False, help="sliding-window refinement pass after sampling (spec §5.7)")
    refine_t0: int = _opt(300, help="first timestep of the refinement")
    refine_stride: int = _opt(50, help="timestep stride of the refinement")
    refine_guidance_scale: float = _opt(3.0, help="CFG scale of the refinement (notebook guidance=2 → 3)")
    refine_window_stride: int | None = _opt(None, help="latent px between refinement windows (default "
                                                       "latent_size/4)")
    official_timesteps: bool = _opt(False, help="reproduce the official loop bit for bit: the UNet gets t (not t-1) "
                                                "and the last step's alpha_bar_prev is alpha_bar_0 (default: the "
                                                "timesteps the UNet was trained with)")
    progress: bool = _opt(True, flag="--no-progress", help="no progress bars")
    precision: str = _opt("fp32", choices=PRECISIONS, help="autocast dtype of the UNet + Summarizer (bf16/fp16 on "
                                                           "GPU); the VQ stays fp32")

    def __post_init__(self) -> None:
        if self.guidance not in GUIDANCE_MODES:
            raise ValueError(f"guidance must be one of {GUIDANCE_MODES}, got {self.guidance!r}")
        for name in ("t0", "stride", "batch_size", "refine_t0", "refine_stride"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.n_steps < 0:
            raise ValueError("n_steps must be >= 0")
        if self.t0 > 1000 or self.refine_t0 > 1000:
            raise ValueError("t0 must be <= num_train_timesteps (1000)")


@dataclass
class SuperResConfig:
    """SR knobs; defaults follow the official SR notebook (spec §6), in our conventions."""

    scale: int = _opt(4, help="SR factor N, a power of two (4: 5x -> 20x); the LR image is magnification log2 N")
    iters: int = _opt(200, help="condition-inversion iterations (one timestep each)")
    inv_lr: float = _opt(0.1, help="Adam learning rate of the inversion")
    t_max: int = _opt(950, help="inversion schedule linspace(t_max, t_min, iters)")
    t_min: int = _opt(50, help="last timestep of the inversion schedule")
    smooth_weight: float = _opt(0.05, help="weight of the (rewarded) mean pairwise cosine similarity")
    probe_points: int = _opt(8, help="fixed (t, eps) pairs on which the inversion objective is reported "
                                     "before/after")
    sampling: LargeImageConfig = field(default_factory=lambda: LargeImageConfig(n_steps=5))

    def __post_init__(self) -> None:
        if isinstance(self.sampling, dict):
            self.sampling = LargeImageConfig(**self.sampling)
        if self.iters < 1:
            raise ValueError("iters must be >= 1")
        if not 1 <= self.t_min <= self.t_max <= 1000:
            raise ValueError("need 1 <= t_min <= t_max <= 1000")


@dataclass
class _ModelRun:
    """The ZoomLDM, output folder, seed and device of a generation verb."""

    model: str | None = _opt(None, help="ZoomLDM model: a folder (zoomfeat convert / train) or an official "
                                        "weights.ckpt; required")
    official_config: str | None = _opt(None, help="official config.yaml of a .ckpt (default: the config.yaml "
                                                   "beside it)")
    ema: bool = _opt(True, flag="--online", help="official .ckpt only: load the online UNet instead of the EMA "
                                                 "weights (the released default)")
    out: str | None = _opt(None, help="output folder; required")
    seed: int = _opt(0, help="seed of the noise")
    device: str | None = _opt(None, help="cpu / cuda (default: cuda when available)")


@dataclass
class GenerateLargeConfig(_ModelRun):
    """Everything `zoomfeat generate-large` takes: the model, the region's SSL grid and the sampling knobs."""

    ssl: str | None = _opt(None, help="SSL grid of the region, one token per 20x tile (.npy/.pt: [C,N,N], [C,N*N] "
                                      "or [N*N,C]); required")
    size: int | None = _opt(None, help="output side in px = N * model image size (e.g. 1024 = 4x4 patches at 256 "
                                       "px); default: from the grid")
    sampling: LargeImageConfig = field(default_factory=LargeImageConfig)


@dataclass
class SuperResRunConfig(_ModelRun):
    """Everything `zoomfeat superres` takes: the model, the LR image (+ reference) and the SR knobs."""

    image: str | None = _opt(None, help="square low-magnification RGB image (resized to the model size); required")
    reference: str | None = _opt(None, help="high-resolution reference image for PSNR/SSIM")
    superres: SuperResConfig = field(default_factory=SuperResConfig)


@dataclass
class PatchSamplingConfig(_ModelRun):
    """Everything `zoomfeat generate` takes: the model, one conditioning source (an SSL grid file, or an image
    encoded with ``encoder``) and the sampler (:func:`zoomfeat.generate.patches.generate_patches`)."""

    ssl: str | None = _opt(None, help="SSL grid file (.npy or .pt); this or --image")
    image: str | None = _opt(None, help="an RGB image of the region to condition on (needs --encoder); this or --ssl")
    encoder: str = _opt("uni", help="encoder for --image")
    encoder_weights: str | None = _opt(None, help="weights for --encoder (default: weights registry)")
    weights_registry: str | None = _opt(None, metavar="YAML", help="your YAML encoder → local weights path registry")
    mag: str = _opt("20x", help="magnification: index 0..7 or label like 5x")
    n: int = _opt(8, help="number of patches")
    steps: int = _opt(50, help="sampler steps")
    scheduler: str = _opt("ddim", choices=("ddim", "plms"), help="sampler")
    guidance: float = _opt(2.0, help="CFG scale s in eps_u + s (eps_c - eps_u)")
    batch_size: int = _opt(8, help="patches per forward")
    precision: str = _opt("fp32", choices=PRECISIONS, help="autocast dtype of the UNet + Summarizer (the official "
                                                           "samples used fp16 on GPU); bf16 also autocasts on CPU; "
                                                           "the VQ decode stays fp32")
    progress: bool = _opt(True, flag="--no-progress", help="no progress bar")

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("--n must be at least 1")
