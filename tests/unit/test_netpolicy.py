"""One connection policy for all of the plugin's HTTP, and answers that cannot fill memory.

The misbehaving server is the test's own: a socket server whose first path segment picks how it
answers (an endless SSE stream, a huge Content-Length, a body that never closes, or a proper
answer), so load requests, readiness probes and /metrics scrapes meet the same faults.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from pytest_llmslo.config import LoadConfig
from pytest_llmslo.load import run_load
from pytest_llmslo.netpolicy import ProbeAnswerError, bounded_get, probe_client
from pytest_llmslo.records import Endpoint, ErrorCategory, Prompt
from pytest_llmslo.servers.base import metrics_problem, wait_ready
from pytest_llmslo.telemetry import Telemetry
from pytest_llmslo.testing.timing_server import serve_timing_server

PROMPTS = [Prompt(index=0, text="hello")]
# the server gives up after this much, so a client without a limit ends the test by failing it
SERVER_CAP_BYTES = 256 * 2**20
SERVER_CAP_S = 30.0
METRICS_TEXT = b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 2\n"
SSE_FRAME = b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n'


class _Faulty(socketserver.BaseRequestHandler):
    """Answers by the first path segment: sse, length, close (each endless) or ok."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                return
            head += data
        path = head.split(b" ", 2)[1].decode()
        mode = path.strip("/").split("/", 1)[0]
        try:
            if mode == "ok":
                self._ok(sock, path)
            elif mode == "sse":
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                self._forever(sock, b"%x\r\n%s\r\n" % (len(SSE_FRAME), SSE_FRAME) * 64)
            elif mode == "length":
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: 1000000000000\r\n\r\n"
                )
                self._forever(sock, b"x" * 65536)
            elif mode == "close":
                sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")
                self._forever(sock, METRICS_TEXT * 1000)
        except OSError:
            return  # the client hung up, as it should

    def _ok(self, sock: socket.socket, path: str) -> None:
        if path.endswith("/metrics"):
            body, kind = METRICS_TEXT, b"text/plain"
        else:
            body, kind = json.dumps({"data": [{"id": "m"}]}).encode(), b"application/json"
        sock.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (kind, len(body), body)
        )

    def _forever(self, sock: socket.socket, block: bytes) -> None:
        sent = 0
        deadline = time.monotonic() + SERVER_CAP_S
        while sent < SERVER_CAP_BYTES and time.monotonic() < deadline:
            sock.sendall(block)
            sent += len(block)


@pytest.fixture(scope="module")
def faulty() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Faulty)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def dead_proxy(monkeypatch: pytest.MonkeyPatch) -> str:
    """Every proxy variable points at a port where nothing listens; nothing is exempt."""
    proxy = f"http://127.0.0.1:{_dead_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return proxy


# --- responses that never end ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "stream", "message"),
    [
        ("sse", True, "exceeded 1,048,576 bytes"),
        ("length", False, "announces 1,000,000,000,000 bytes"),
        ("close", False, "exceeded 1,048,576 bytes"),
    ],
)
def test_a_response_that_never_ends_is_cut_off_as_too_large(
    faulty: str, mode: str, stream: bool, message: str
) -> None:
    endpoint = Endpoint(base_url=f"{faulty}/{mode}", model="m", backend="external")
    config = LoadConfig(parallel=2, requests=2, stream=stream, max_response_bytes=2**20)
    result = run_load(endpoint, PROMPTS, config)
    assert len(result.records) == 2
    for record in result.records:
        assert record.error == ErrorCategory.RESPONSE_TOO_LARGE, record.error_message
        assert message in record.error_message
        assert "load.max_response_bytes" in record.error_message


def test_the_response_limit_has_a_default_that_bounds_every_run() -> None:
    assert LoadConfig().max_response_bytes == 64 * 2**20


@pytest.mark.parametrize("mode", ["sse", "length", "close"])
def test_a_probe_reads_a_bounded_answer(faulty: str, mode: str) -> None:
    with probe_client() as client, pytest.raises(ProbeAnswerError, match=r"announces|exceeds|end"):
        bounded_get(client, f"{faulty}/{mode}/v1/models", max_bytes=2**20, deadline_s=5)


def test_readiness_and_metrics_probes_give_up_on_an_endless_answer(faulty: str) -> None:
    with pytest.raises(TimeoutError, match=r"exceeds|announces"):
        wait_ready(f"{faulty}/close", ["/v1/models"], timeout=0)
    problem = metrics_problem(f"{faulty}/length")
    assert problem is not None and "announces" in problem


def test_a_metrics_scrape_that_never_ends_is_an_error_not_a_hang(faulty: str) -> None:
    telemetry = Telemetry(
        lambda: [], metrics_url=f"{faulty}/close/metrics", scrape_timeout_s=1.0, nvidia_smi=None
    )
    telemetry.start()
    try:
        telemetry.mark_load_start()
        telemetry.mark_load_end()
        report = telemetry.window_report()
    finally:
        telemetry.stop()
    assert report.server_metrics is None
    assert report.server_metrics_reason is not None
    assert "ProbeAnswerError" in report.server_metrics_reason


# --- one proxy policy --------------------------------------------------------------------------


def test_every_request_of_the_plugin_ignores_proxy_variables(faulty: str, dead_proxy: str) -> None:
    base = f"{faulty}/ok"
    assert wait_ready(base, ["/v1/models"], timeout=0) == ["m"]
    assert metrics_problem(base) is None
    telemetry = Telemetry(lambda: [], metrics_url=f"{base}/metrics", nvidia_smi=None)
    telemetry.start()
    try:
        telemetry.mark_load_start()
        telemetry.mark_load_end()
        report = telemetry.window_report()
    finally:
        telemetry.stop()
    assert report.server_metrics is not None, report.server_metrics_reason
    with serve_timing_server(ttft_ms=1, gap_ms=1, tokens=2) as instrument:
        config = LoadConfig(parallel=1, requests=2, max_tokens=None)
        records = run_load(instrument.endpoint(), PROMPTS, config).records
        assert len(instrument.fetch_log()) == 2  # the instrument's own log is read directly too
    assert all(r.ok for r in records), [r.error_message for r in records]
