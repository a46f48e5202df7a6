"""Fixtures shared by every test tier."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmslo.testing.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny offline Qwen2-architecture model, built once into the cache ($LLMSLO_CACHE).

    The build is atomic, so pytest-xdist workers that race to build it all get a whole model.
    """
    return build_tiny_model()
