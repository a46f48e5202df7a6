"""External servers as first-class: /metrics by choice, a still-loading server waited for."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from pytest_llmslo.config import ServerConfig
from pytest_llmslo.servers import ExternalServer, ServerStartError


class _Service(BaseHTTPRequestHandler):
    """A running service: answers 503 to the first `loading` probes, serves /metrics if asked."""

    seen: ClassVar[list[str]] = []
    loading: ClassVar[int] = 0
    metrics: ClassVar[bool] = True

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        if self.path == "/metrics":
            if self.metrics:
                self._send(
                    200, b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 0\n"
                )
            else:
                self._send(404, b"{}")
        elif type(self).loading > 0:
            type(self).loading -= 1
            self._send(503, b'{"error": "loading"}')
        else:
            self._send(200, json.dumps({"data": [{"id": "served"}]}).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def service() -> Iterator[str]:
    _Service.seen = []
    _Service.loading = 0
    _Service.metrics = True
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def external(base_url: str, **kw: object) -> ExternalServer:
    config = ServerConfig(name="svc", backend="external", base_url=base_url, **kw)  # type: ignore[arg-type]
    return ExternalServer(config)


def test_metrics_auto_asks_once_and_scrapes_when_served(service: str) -> None:
    server = external(service)
    assert server.start().has_metrics
    assert _Service.seen.count("/metrics") == 1
    assert server.metrics_reason is None


def test_metrics_auto_says_why_it_is_not_scraped(service: str) -> None:
    _Service.metrics = False
    server = external(service)
    assert not server.start().has_metrics
    assert server.metrics_reason == (
        "not served by this server (GET /metrics answered HTTP 404 when the run started)"
    )


def test_metrics_false_never_asks_for_metrics(service: str) -> None:
    server = external(service, metrics=False)
    endpoint = server.start()
    assert not endpoint.has_metrics
    assert "/metrics" not in _Service.seen
    assert server.metrics_reason == "not scraped: the server's spec sets `metrics: false`"


def test_metrics_true_fails_the_start_when_it_is_not_served(service: str) -> None:
    _Service.metrics = False
    with pytest.raises(ServerStartError, match=r"`metrics: true`, but .*/metrics is not served"):
        external(service, metrics=True).start()


def test_an_external_server_has_no_start_up_time(service: str) -> None:
    assert external(service).start().startup_seconds is None


def test_empty_model_takes_the_first_one_the_server_lists(service: str) -> None:
    assert external(service, model="").start().model == "served"


def test_a_server_that_accepts_connections_but_is_loading_is_waited_for(service: str) -> None:
    _Service.loading = 3
    endpoint = external(service, startup_timeout=30).start()
    assert endpoint.model == "served"
    assert _Service.seen.count("/v1/models") == 4
