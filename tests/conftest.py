"""Shared test setup: a private model cache so tests never touch a user's converted models."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """Tiny models are built once per test session in a temporary cache."""
    os.environ.setdefault("DISTILL_CACHE", str(tmp_path_factory.mktemp("model-cache")))
    yield
