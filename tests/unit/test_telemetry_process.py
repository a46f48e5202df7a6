"""Telemetry in a process of its own: the figures of in-process telemetry, reasons if it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_llmslo import runner
from pytest_llmslo.config import ServerConfig
from pytest_llmslo.runner import MonitoredServer
from pytest_llmslo.telemetry import Telemetry, TelemetryReport
from pytest_llmslo.telemetry import process as telemetry_process
from pytest_llmslo.telemetry.process import TelemetryProcess
from pytest_llmslo.testing.timing_server import serve_timing_server
from tests.unit.test_telemetry import MetricsServer

MIB = 1024**2
HELD_MIB = 64  # what the "server" holds: its RSS is well above an idle interpreter's
INTERVAL_S = 0.02


class NoNvml:
    """NVML as on a machine without an NVIDIA driver; picklable, so the child gets it too."""

    def nvmlInit(self) -> None:
        raise RuntimeError("NVML Shared Library Not Found")


@pytest.fixture
def server() -> Iterator[subprocess.Popen[bytes]]:
    """A plain process standing in for a server: it holds HELD_MIB of memory and sleeps."""
    code = f"import time; held = bytearray({HELD_MIB} * {MIB}); time.sleep(120)"
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def both(pids: Callable[[], list[int]]) -> tuple[Telemetry, TelemetryProcess]:
    """The same telemetry in process and in a process of its own."""
    return (
        Telemetry(
            pids, metrics_url=None, interval_s=INTERVAL_S, metrics_interval_s=0.05, nvml=NoNvml()
        ),
        TelemetryProcess(
            pids, metrics_url=None, interval_s=INTERVAL_S, metrics_interval_s=0.05, nvml=NoNvml()
        ),
    )


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def sampled(telemetry: Telemetry | TelemetryProcess, ticks: int = 3) -> None:
    start = telemetry.samples
    wait_for(lambda: telemetry.samples >= start + ticks)


def child_gone(pid: int) -> bool:
    """True once no process has this PID (the child was joined, so it is not even a zombie)."""
    return not os.path.exists(f"/proc/{pid}")


def scrapes_in(telemetry: Telemetry | TelemetryProcess) -> int:
    metrics = telemetry.window_report().server_metrics
    return metrics.scrapes if metrics is not None else 0


def measure_one_window(
    telemetry: Telemetry | TelemetryProcess, metrics: MetricsServer
) -> TelemetryReport:
    """The calls a scenario run makes, while the /metrics counters and gauges move."""
    metrics.generated, metrics.kv, metrics.running = 100.0, 0.0, 0
    telemetry.start()
    try:
        telemetry.set_metrics_url(metrics.url)
        sampled(telemetry)
        window = telemetry.mark_load_start()
        metrics.generated = 120.0  # warmup: left out of the counters
        telemetry.mark_measured_start()
        metrics.generated, metrics.kv, metrics.running = 184.0, 0.5, 3
        sampled(telemetry, ticks=10)
        wait_for(lambda: scrapes_in(telemetry) >= 3)
        closed = telemetry.mark_load_end()
        metrics.kv, metrics.running = 0.0, 0
        sampled(telemetry)
        assert closed.index == 0 and closed.end is not None
        assert closed.measured_start is not None
        assert closed.start < closed.measured_start < closed.end <= time.monotonic()
        return telemetry.window_report(window)
    finally:
        whole = telemetry.stop()
        assert whole.host_rss_startup_peak is not None and whole.host_rss_peak is not None


def test_the_process_reports_what_in_process_telemetry_reports(
    server: subprocess.Popen[bytes], metrics_server: MetricsServer
) -> None:
    reports = [measure_one_window(t, metrics_server) for t in both(lambda: [server.pid])]

    in_process, own_process = reports
    for report in reports:
        assert report.host_rss_load_peak is not None and report.host_rss_steady is not None
        assert report.host_rss_load_peak > HELD_MIB * MIB
        assert report.host_rss_reason is None
        assert report.gpu == () and report.gpu_unavailable_reason
        assert report.samples > 10
        assert report.window is not None and report.window[1] is not None
    # the same sleeping process: the same memory, give or take a page table
    assert own_process.host_rss_load_peak == pytest.approx(in_process.host_rss_load_peak, rel=0.05)
    assert own_process.gpu_unavailable_reason == in_process.gpu_unavailable_reason
    assert own_process.server_metrics_reason is in_process.server_metrics_reason is None
    mine, theirs = own_process.server_metrics, in_process.server_metrics
    assert mine is not None and theirs is not None
    assert mine.generation_tokens == theirs.generation_tokens == 64.0
    assert mine.kv_cache_usage_max == theirs.kv_cache_usage_max == 0.5
    assert mine.requests_running_max == theirs.requests_running_max == 3
    assert mine.scrape_errors == theirs.scrape_errors == 0


def test_against_the_timing_instrument_its_missing_metrics_are_a_reason_in_both() -> None:
    with serve_timing_server(ttft_ms=5, gap_ms=1, tokens=4) as instrument:
        url = f"{instrument.base_url}/metrics"
        reports = []
        for telemetry in both(lambda: [instrument.pid]):
            telemetry.start()
            try:
                telemetry.set_metrics_url(url)
                window = telemetry.mark_load_start()
                telemetry.mark_measured_start()
                sampled(telemetry)
                telemetry.mark_load_end()
                sampled(telemetry)
                reports.append(telemetry.window_report(window))
            finally:
                telemetry.stop()
    in_process, own_process = reports
    # the instrument serves no /metrics: the same reason, never a traceback
    assert own_process.server_metrics is None
    assert own_process.server_metrics_reason == in_process.server_metrics_reason
    assert f"could not scrape {url}" in (own_process.server_metrics_reason or "")
    assert "HTTP 404" in (own_process.server_metrics_reason or "")
    assert own_process.host_rss_peak is not None and in_process.host_rss_peak is not None


def test_a_killed_child_gives_reasons_and_what_is_known(server: subprocess.Popen[bytes]) -> None:
    telemetry = TelemetryProcess(
        lambda: [server.pid], metrics_url=None, interval_s=INTERVAL_S, nvml=NoNvml()
    )
    telemetry.start()
    first = telemetry.mark_load_start()
    sampled(telemetry)
    telemetry.mark_load_end()
    known = telemetry.window_report(first)
    assert known.host_rss_load_peak is not None
    pid = telemetry.pid
    assert pid is not None

    os.kill(pid, signal.SIGKILL)
    second = telemetry.mark_load_start()
    telemetry.mark_measured_start()
    closed = telemetry.mark_load_end()
    lost = telemetry.window_report(closed)
    whole = telemetry.stop()

    reason = "telemetry process exited: killed by SIGKILL"
    assert telemetry.exited == reason
    assert (second.index, closed.index) == (1, 1)
    assert closed.end is not None and closed.end >= second.start
    assert telemetry.window_report(first) is known  # measured before the child died
    assert lost.window == (closed.start, closed.end)
    assert lost.host_rss_peak is None and lost.host_rss_reason == reason
    assert lost.server_metrics_reason == reason and lost.gpu_unavailable_reason == reason
    assert whole.host_rss_reason == reason
    assert telemetry.samples >= 3  # the last count the child gave
    assert child_gone(pid)


def test_a_child_that_stops_answering_is_killed_and_stop_does_not_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(telemetry_process, "CALL_MARGIN_S", 0.5)
    monkeypatch.setattr(telemetry_process, "THREAD_JOIN_S", 0.1)
    telemetry = TelemetryProcess(
        lambda: [os.getpid()], metrics_url=None, interval_s=INTERVAL_S, scrape_timeout_s=0.1
    )
    telemetry.start()
    pid = telemetry.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing

    began = time.monotonic()
    report = telemetry.stop()
    took = time.monotonic() - began

    assert took < 5.0
    assert (report.host_rss_reason or "").startswith(
        "telemetry process exited: killed after it did not answer stop() within"
    )
    assert telemetry.stop() is report  # idempotent
    assert child_gone(pid)


def test_stop_joins_the_child_and_the_forwarding_thread(server: subprocess.Popen[bytes]) -> None:
    telemetry = TelemetryProcess(lambda: [server.pid], metrics_url=None, interval_s=INTERVAL_S)
    telemetry.start()
    sampled(telemetry)
    pid = telemetry.pid
    assert pid is not None and not child_gone(pid)

    report = telemetry.stop()

    assert report.host_rss_peak is not None and report.host_rss_peak > HELD_MIB * MIB
    assert telemetry.exited is None  # it stopped when asked, it did not die
    assert child_gone(pid)
    assert not [t for t in threading.enumerate() if t.name == "llmslo-telemetry-pids"]


def test_a_process_that_cannot_be_spawned_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(self: TelemetryProcess) -> None:
        raise OSError("no new processes in this sandbox")

    monkeypatch.setattr(TelemetryProcess, "_spawn", refused)
    telemetry = TelemetryProcess(lambda: [os.getpid()], metrics_url=None)
    telemetry.start()
    window = telemetry.mark_load_start()
    telemetry.mark_load_end()
    report = telemetry.window_report(window)

    assert report.host_rss_reason == (
        "telemetry process exited: could not be started (OSError: no new processes in this sandbox)"
    )
    assert telemetry.stop().host_rss_reason == report.host_rss_reason


def test_misuse_still_raises_as_in_process() -> None:
    telemetry = TelemetryProcess(lambda: [], metrics_url=None)
    with pytest.raises(RuntimeError, match=r"needs start\(\) first"):
        telemetry.mark_load_start()
    with pytest.raises(RuntimeError, match="without mark_load_start"):
        telemetry.mark_load_end()
    telemetry.start()
    try:
        telemetry.mark_load_start()
        with pytest.raises(RuntimeError, match="already open"):
            telemetry.mark_load_start()
    finally:
        telemetry.stop()


def test_a_monitored_server_samples_from_its_own_process_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ServerConfig(name="svc", backend="external", base_url="http://127.0.0.1:9")

    assert isinstance(MonitoredServer(config, tmp_path).telemetry, TelemetryProcess)
    in_process = MonitoredServer(config, tmp_path, telemetry_process=False)
    assert isinstance(in_process.telemetry, Telemetry)
    monkeypatch.setattr(runner, "TELEMETRY_PROCESS", False)
    assert isinstance(MonitoredServer(config, tmp_path).telemetry, Telemetry)
    own = MonitoredServer(config, tmp_path, telemetry_process=True)
    assert isinstance(own.telemetry, TelemetryProcess)
