"""Test fixtures: the vendored test data in tests/data (see its README) and, when present, the larger optional
official-format fixture ``zoomldm_official_tiny`` from ``$ZOOMFEAT_SHARED`` or ``../shared/fixtures``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
# fold / cell jobs run in the test process (tests/test_jobs.py checks --jobs 2 against --jobs 1): a process pool per
# test would only add worker start-ups, and pytest-xdist already runs one test per core
os.environ.setdefault("ZOOMFEAT_JOBS", "1")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"  # vendored: always present in a clone
SLIDES = DATA / "slides"
MICRO_LDM = DATA / "zoomldm_official_micro"  # official-format ZoomLDM, random weights, 4.3 MB
MANIFESTS = DATA / "manifests"  # every key of the full-size released checkpoints
PEER = DATA / "peer_outputs"  # files written by the real CLAM and TRIDENT code


def good_and_noise_bags(root: Path, n_slides: int, good: str = "good") -> tuple[Path, Path, Path]:
    """A synthetic cohort's bags twice (``mil.synthetic.write_bags``, 8-d, seed 0): with the planted concepts
    (encoder ``good``) and as pure noise (encoder ``noise``), for the same slides; (good, noise, labels CSV)."""
    from mil.synthetic import write_bags

    good_dir, labels = write_bags(root, n_slides=n_slides, dim=8, seed=0, encoder=good)
    noise_dir, _ = write_bags(root, n_slides=n_slides, dim=8, seed=0, informative=False, encoder="noise")
    return good_dir, noise_dir, labels


def _optional_fixtures() -> Path:
    env = os.environ.get("ZOOMFEAT_SHARED")
    base = Path(env) if env else ROOT.parent / "shared"
    return (base / "fixtures").resolve()


#: The larger official-format fixture (13 UNet intermediates, 34 MB): not vendored; its tests skip when absent.
TINY_LDM = _optional_fixtures() / "zoomldm_official_tiny"
TINY_SKIP_REASON = (f"optional large fixture zoomldm_official_tiny not found at {TINY_LDM} "
                    "(set ZOOMFEAT_SHARED to the folder that holds fixtures/)")
needs_tiny = pytest.mark.skipif(not (TINY_LDM / "weights.ckpt").exists(), reason=TINY_SKIP_REASON)


@pytest.fixture(scope="session")
def slides_dir() -> Path:
    return SLIDES


@pytest.fixture(scope="session")
def micro_ldm_dir() -> Path:
    return MICRO_LDM


@pytest.fixture(scope="session")
def tiny_ldm_dir() -> Path:
    """The optional large fixture; the requesting test is skipped with a one-line reason when it is absent."""
    if not (TINY_LDM / "weights.ckpt").exists():
        pytest.skip(TINY_SKIP_REASON)
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
    """The vendored micro official-format ZoomLDM, loaded once per test module (some tests patch it)."""
    from zoomfeat.ldm import ZoomLDM

    return ZoomLDM.from_official(MICRO_LDM / "weights.ckpt", MICRO_LDM / "config.yaml")


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
