"""Fixtures shared by every test tier."""

from __future__ import annotations

from pathlib import Path

# pytester's in-process runs drop every module first imported inside them when they end. httpx
# imports httpcore lazily and keeps a table of httpcore's exception classes: if that happened in an
# inner run, later connection errors come from a re-imported httpcore and escape httpx's mapping
# (an httpcore.ConnectError instead of httpx.ConnectError). Importing it here keeps one copy.
import httpcore  # noqa: F401
import pytest

from pytest_llmslo.testing.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny offline Qwen2-architecture model, built once into the cache ($LLMSLO_CACHE).

    The build is atomic, so pytest-xdist workers that race to build it all get a whole model.
    """
    return build_tiny_model()
