"""What the plugin tests share: the timing instrument reached as a spec's external server.

The instrument is a real HTTP server with exact timing (pytest_llmslo/testing/timing_server.py);
a spec names it as `svc` through ${INSTRUMENT_URL}, and its prompts come from `prompts.txt`.
"""

from __future__ import annotations

import pytest

from pytest_llmslo.testing.timing_server import TimingServerProcess

# the top of every spec these tests write; each adds its `scenarios:`
SERVICE = """
servers:
  svc: {backend: external, base_url: "${INSTRUMENT_URL}", model: timing}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
"""
# settings a developer's shell or CI may hold, which a test must not inherit
_INHERITED = (
    "GITHUB_STEP_SUMMARY",
    "LLMSLO_INCONCLUSIVE",
    "LLMSLO_CONFIDENCE",
    "LLMSLO_PROGRESS",
    "LLMSLO_BASELINE",
    "LLMSLO_SAVE_BASELINE",
    "LLMSLO_BASELINE_ALLOW_MISMATCH",
)


def point_at(
    monkeypatch: pytest.MonkeyPatch, instrument: TimingServerProcess, *, inconclusive: str = ""
) -> TimingServerProcess:
    """Specs' ${INSTRUMENT_URL} is `instrument`, with none of the inherited settings;
    `inconclusive` sets $LLMSLO_INCONCLUSIVE (a policy for every run of the test)."""
    monkeypatch.setenv("INSTRUMENT_URL", instrument.base_url)
    for name in _INHERITED:
        monkeypatch.delenv(name, raising=False)
    if inconclusive:
        monkeypatch.setenv("LLMSLO_INCONCLUSIVE", inconclusive)
    return instrument
