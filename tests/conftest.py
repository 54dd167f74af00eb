"""Shared test fixtures: paths into ../shared/fixtures and a few tiny synthetic inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ZOOMFEAT_SHARED", ROOT.parent / "shared")).resolve()
FIXTURES = SHARED / "fixtures"
SLIDES = FIXTURES / "slides"
TINY_LDM = FIXTURES / "zoomldm_official_tiny"


def pytest_configure(config):
    if not FIXTURES.exists():
        raise pytest.UsageError(f"shared fixtures not found at {FIXTURES} (set ZOOMFEAT_SHARED)")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def slides_dir() -> Path:
    return SLIDES


@pytest.fixture(scope="session")
def tiny_ldm_dir() -> Path:
    return TINY_LDM


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread for the whole suite: the test models are tiny, and on a busy 2-core machine OpenMP
    barriers waiting for a descheduled second thread made them 10-30x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    """The tiny official-format ZoomLDM, loaded once per test module (some tests patch it; modules stay isolated)."""
    from zoomfeat.ldm import ZoomLDM

    return ZoomLDM.from_official(TINY_LDM / "weights.ckpt", TINY_LDM / "config.yaml")


@pytest.fixture
def invertible_first_stage(monkeypatch, model):
    """Swap the VQ for an exactly invertible linear pair: E = f×f average pooling, D = nearest upsampling.

    The backprop-free update uses the encoder's finite difference in place of the decoder's VJP, which
    assumes E ≈ D⁻¹ — true for a trained VQ, false for the fixture's random one. UNet and Summarizer stay real.
    """
    import torch.nn.functional as F

    f = model.image_size // model.latent_size
    monkeypatch.setattr(model, "encode", lambda img: F.avg_pool2d(img.float(), f))
    monkeypatch.setattr(model, "decode", lambda z, quantize=True: F.interpolate(z.float(), scale_factor=f, mode="nearest"))
    return model
