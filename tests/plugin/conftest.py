"""Fixtures the plugin tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server


@pytest.fixture(scope="module")
def slowing() -> Iterator[TimingServerProcess]:
    """An instrument that slows with load: each other open stream adds 50 ms to a TTFT of 50 ms,
    so a capacity search has a knee at a known load."""
    with serve_timing_server(ttft_ms=50, gap_ms=5, tokens=4, ttft_per_stream_ms=50) as server:
        yield server
