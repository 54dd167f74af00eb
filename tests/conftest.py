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
