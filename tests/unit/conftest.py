"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.test_telemetry import MetricsServer


@pytest.fixture
def metrics_server() -> Iterator[MetricsServer]:
    """A /metrics endpoint serving a vLLM-shaped page whose values the test sets."""
    server = MetricsServer()
    try:
        yield server
    finally:
        server.close()
