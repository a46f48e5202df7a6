"""What the HTTP/1.1 client does not speak it refuses by name: compression, redirects, HTTP/2.

Each test runs the load engine against a small server of its own that answers every request
with the same bytes, as a misconfigured or HTTP/2-only server would.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import shutil
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llmslo.config import LoadConfig
from pytest_llmslo.http_client import Connection, build_request, foreign_answer, parse_base_url
from pytest_llmslo.load import LoadResult, run_load
from pytest_llmslo.records import Endpoint, ErrorCategory, Prompt, RequestRecord

PROMPTS = [Prompt(index=0, text="question")]
SSE = (
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
    b"data: [DONE]\n\n"
)


class CannedServer:
    """Answers every request on 127.0.0.1 with ``answer``; ``greeting`` is sent on accept.

    ``requests`` keeps the bytes of each request received (head and body).
    """

    def __init__(self, answer: bytes, greeting: bytes = b"") -> None:
        self.answer = answer
        self.greeting = greeting
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(f"http://127.0.0.1:{self.port}", "m", "external")

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                if self.greeting:
                    conn.sendall(self.greeting)
                request = _read_request(conn)
                if not request:
                    return
                self.requests.append(request)
                conn.sendall(self.answer)
                # let the client read it all before the close
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(5)
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        # shutdown wakes the accept() blocked in the serving thread, which close() alone does not
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.fixture
def serve() -> Iterator[type[CannedServer]]:
    servers: list[CannedServer] = []

    class Tracked(CannedServer):
        def __init__(self, answer: bytes, greeting: bytes = b"") -> None:
            super().__init__(answer, greeting)
            servers.append(self)

    yield Tracked
    for server in servers:
        server.close()


def _load(endpoint: Endpoint, **config: object) -> LoadResult:
    settings: dict[str, object] = {"parallel": 1, "requests": 2, "max_consecutive_timeouts": None}
    settings.update(config)
    return run_load(endpoint, PROMPTS, LoadConfig(**settings))  # type: ignore[arg-type]


def _only(result: LoadResult) -> RequestRecord:
    """The one kind of outcome every request had."""
    assert len(result.records) == 2
    first = result.records[0]
    assert {(r.error, r.error_message) for r in result.records} == {
        (first.error, first.error_message)
    }
    return first


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


# -- compression ---------------------------------------------------------------------------


def test_requests_ask_for_an_uncompressed_answer_unless_the_headers_choose() -> None:
    origin = parse_base_url("http://h:1")
    plain = build_request(origin, "POST", "/v1/chat/completions", b"{}", {})
    assert b"\r\nAccept-Encoding: identity\r\n" in plain
    chosen = build_request(origin, "POST", "/v1/x", b"{}", {"accept-encoding": "gzip"})
    assert chosen.lower().count(b"accept-encoding") == 1
    assert b"\r\naccept-encoding: gzip\r\n" in chosen


def _brotli_like(body: bytes) -> bytes:
    return b"\x1b" + body[::-1]  # the client must not try to read it, whatever it holds


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("br", _brotli_like)],
)
@pytest.mark.parametrize("stream", [True, False])
def test_a_compressed_answer_is_refused_by_name_not_read_as_malformed(
    serve: type[CannedServer], encoding: str, compress: object, stream: bool
) -> None:
    assert callable(compress)
    body = compress(SSE if stream else b'{"choices":[{"message":{"content":"hi"}}]}')
    ctype = b"text/event-stream" if stream else b"application/json"
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-encoding: %s\r\n"
        b"transfer-encoding: chunked\r\n\r\n" % (ctype, encoding.encode()) + _chunked(body)
    )
    server = serve(answer)
    record = _only(_load(server.endpoint, stream=stream))
    assert record.error == ErrorCategory.UNSUPPORTED_PROTOCOL
    assert f"compressed answer (Content-Encoding: {encoding})" in record.error_message
    assert "turn compression off on the server" in record.error_message
    assert b"\r\nAccept-Encoding: identity\r\n" in server.requests[0]


def test_an_answer_marked_identity_is_read(serve: type[CannedServer]) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: identity\r\n"
        b"transfer-encoding: chunked\r\n\r\n" + _chunked(SSE)
    )
    record = _only(_load(serve(answer).endpoint))
    assert record.ok, record.error_message
    assert record.output_text == "hi"


# -- redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [b"301 Moved Permanently", b"307 Temporary Redirect"])
def test_a_redirect_is_not_a_4xx_and_names_where_it_points(
    serve: type[CannedServer], status: bytes
) -> None:
    answer = (
        b"HTTP/1.1 %s\r\nlocation: https://api.example.org/v1/chat/completions\r\n"
        b"content-length: 0\r\n\r\n" % status
    )
    record = _only(_load(serve(answer).endpoint))
    assert record.error == ErrorCategory.HTTP_REDIRECT
    assert record.http_status == int(status[:3])
    assert record.error_message.startswith(
        f"HTTP {status[:3].decode()} redirect to 'https://api.example.org/v1/chat/completions'"
    )
    assert "set the server's base_url" in record.error_message


# -- servers that do not speak HTTP/1.1 -----------------------------------------------------------


def _frame(kind: int, payload: bytes, flags: int = 0) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + bytes(4) + payload


# nginx with `listen ... http2` and no TLS (h2c with prior knowledge only) answers an HTTP/1.1
# request this way: its SETTINGS, a WINDOW_UPDATE, then GOAWAY with PROTOCOL_ERROR
H2_SETTINGS = _frame(0x4, bytes.fromhex("00030000008000040001000000050000ffff"))
H2_REFUSAL = (
    H2_SETTINGS + _frame(0x8, bytes.fromhex("7fff0000")) + _frame(0x7, bytes(4) + b"\0\0\0\x01")
)


def test_an_http2_only_server_answering_with_frames_says_so(serve: type[CannedServer]) -> None:
    record = _only(_load(serve(H2_REFUSAL).endpoint))
    assert record.error == ErrorCategory.UNSUPPORTED_PROTOCOL
    assert record.error_message.startswith(
        "the server speaks HTTP/2 only: it answered with an HTTP/2 SETTINGS frame"
    )
    assert "this client speaks HTTP/1.1" in record.error_message


def test_an_http2_server_that_speaks_first_is_recognised_on_any_connection(
    serve: type[CannedServer],
) -> None:
    # its preface may reach a connection opened ahead of the load, before any request
    server = serve(_frame(0x7, bytes(4) + b"\0\0\0\x01"), greeting=H2_SETTINGS)
    record = _only(_load(server.endpoint, parallel=2))
    assert record.error == ErrorCategory.UNSUPPORTED_PROTOCOL
    assert "speaks HTTP/2 only" in record.error_message


def test_505_is_a_server_that_refuses_http_1_1(serve: type[CannedServer]) -> None:
    answer = b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-length: 0\r\n\r\n"
    record = _only(_load(serve(answer).endpoint))
    assert record.error == ErrorCategory.UNSUPPORTED_PROTOCOL
    assert "speaks HTTP/2 only; this client speaks HTTP/1.1" in record.error_message


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", "is not HTTP/1.x (it began b'SSH-2.0-OpenSSH_')"),
        (b"HTTP/2 200\r\n\r\n", "the server answered HTTP/2, not HTTP/1.x"),
        (b"\x15\x03\x03\x00\x02\x02\x46", "it expects https; use an https:// base_url"),
        (b"ok\n", "is not HTTP/1.x (it began b'ok\\n')"),
    ],
)
def test_an_answer_that_is_not_http_1_says_what_it_was(
    serve: type[CannedServer], answer: bytes, message: str
) -> None:
    record = _only(_load(serve(answer).endpoint))
    assert record.error == ErrorCategory.UNSUPPORTED_PROTOCOL
    assert message in record.error_message


def test_the_first_bytes_decide_only_once_they_can() -> None:
    assert foreign_answer(b"") is None
    assert foreign_answer(b"HTT") is None
    assert foreign_answer(b"HTTP/1.0 200 OK\r\n") is None
    assert foreign_answer(H2_SETTINGS[:5]) is None  # an HTTP/2 frame header is 9 bytes
    assert foreign_answer(H2_SETTINGS[:5], complete=True) is not None
    assert "SETTINGS" in (foreign_answer(H2_SETTINGS[:9]) or "")


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def close(self) -> None:
        self.closing = True


@pytest.mark.parametrize(
    ("unsolicited", "foreign"),
    [(b"\r\n", None), (b"HTTP/1.1 408 Request Timeout\r\n\r\n", None), (H2_SETTINGS, "HTTP/2")],
)
def test_bytes_on_an_idle_connection_count_as_http2_only_when_they_surely_are(
    unsolicited: bytes, foreign: str | None
) -> None:
    async def receive() -> Connection:
        conn = Connection()
        transport = _Transport()
        conn.connection_made(transport)
        conn.get_buffer(len(unsolicited))[: len(unsolicited)] = unsolicited
        conn.buffer_updated(len(unsolicited))
        assert conn.closed and transport.closing  # never reused, whatever the bytes were
        return conn

    conn = asyncio.run(receive())
    if foreign is None:
        assert conn.foreign is None  # dropped quietly: the next request opens a new one
    else:
        assert conn.foreign is not None and foreign in conn.foreign


def test_an_http2_only_tls_server_refusing_http_1_1_says_so(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed for a TLS server that speaks only h2")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # `openssl s_server -alpn h2` ends a handshake that offers no h2 with a fatal alert
    proc = subprocess.Popen(
        [openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
         "-key", str(key), "-alpn", "h2", "-naccept", "4", "-quiet"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "openssl s_server did not start"
                time.sleep(0.05)
        endpoint = Endpoint(f"https://127.0.0.1:{port}", "m", "external")
        record = run_load(endpoint, PROMPTS, LoadConfig(parallel=1, requests=1)).records[0]
    finally:
        proc.kill()
        proc.wait()
    assert record.error == ErrorCategory.UNSUPPORTED_PROTOCOL, record.error_message
    assert "speaks HTTP/2 only: it refused the TLS handshake offering HTTP/1.1 (ALPN)" in (
        record.error_message
    )
