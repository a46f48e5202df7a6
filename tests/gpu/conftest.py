"""GPU tier: every test here needs an NVIDIA GPU and is skipped, with the reason, without one."""

from __future__ import annotations

import pytest

from pytest_llmslo.telemetry import open_gpu_probe


def _no_gpu_reason() -> str | None:
    probe, reason = open_gpu_probe()
    if probe is None:
        return reason or "no NVIDIA GPU visible"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    checked = False
    for item in items:
        if item.get_closest_marker("gpu") is None:
            continue
        if not checked:
            reason, checked = _no_gpu_reason(), True
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"needs an NVIDIA GPU: {reason}"))
