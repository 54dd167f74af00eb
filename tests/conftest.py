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
