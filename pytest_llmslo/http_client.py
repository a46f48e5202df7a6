"""A minimal HTTP/1.1 client on asyncio protocols: timestamps every socket read, nothing more.

The load engine measures time to first token and inter-token gaps from the moment bytes reach
the process, so the work done per read is kept to a timestamp, chunked-encoding framing and an
append; everything else (SSE splitting, JSON) happens after the response has ended. General
clients (httpx, aiohttp) parse and dispatch per chunk through several layers and lag the socket
by tens of milliseconds under 64 concurrent streams on two cores (docs/load-engine.md has the
measurements). Only what OpenAI-compatible servers need is supported: one request at a time per
connection, keep-alive, chunked or Content-Length bodies or read-until-close, http and https.
What it does not speak it refuses by name rather than misreading: a compressed answer (it asks
for none), an HTTP/2-only server, an answer that is not HTTP at all (``UNSUPPORTED``).
Connections go straight to the server (``netpolicy``: no proxy variables), and one response may
hold at most a set number of bytes, so a server that never stops sending cannot exhaust memory.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from time import monotonic
from typing import cast
from urllib.parse import urlsplit

from pytest_llmslo.netpolicy import tls_context

_HEAD, _CHUNKED, _LENGTH, _UNTIL_CLOSE, _TRAILER, _DONE = range(6)
_MAX_HEAD = 64 * 1024
TOO_LARGE = "response_too_large"  # the ErrorCategory of an answer over its byte limit
UNSUPPORTED = "unsupported_protocol"  # the ErrorCategory of an answer this client cannot read


class ClientError(Exception):
    """A request that did not get a complete response; ``kind`` is an ErrorCategory value."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Origin:
    """Where requests go: parsed once from an endpoint's base URL."""

    scheme: str
    host: str
    port: int
    path_prefix: str  # any path of the base URL, without a trailing slash
    host_header: str

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


def parse_base_url(base_url: str) -> Origin:
    """Split ``scheme://host[:port][/prefix]``; a bad URL is an error that says how to fix it."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"endpoint base URL {base_url!r} is not an http(s) URL; "
            "expected e.g. http://127.0.0.1:8000 (without /v1)"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ValueError(f"endpoint base URL {base_url!r} has a bad port: {exc}") from None
    prefix = parts.path.rstrip("/")
    if prefix.endswith("/v1"):
        prefix = prefix[: -len("/v1")]
    return Origin(parts.scheme, parts.hostname, port, prefix, parts.netloc.rpartition("@")[2])


class Exchange:
    """One response as it arrives: status, headers, decoded body pieces and their arrival times."""

    __slots__ = (
        "_head",
        "_left",
        "_line",
        "_skip",
        "_state",
        "_trailer",
        "chunked",
        "done",
        "end_at",
        "error",
        "first_byte_at",
        "frames",
        "headers",
        "keep_alive",
        "last_at",
        "limit",
        "pieces",
        "received",
        "sent_at",
        "status",
        "times",
    )

    def __init__(
        self, done: asyncio.Future[None], sent_at: float, limit: int | None = None
    ) -> None:
        self.done = done
        self.sent_at = sent_at
        self.limit = limit if limit is not None else 1 << 62  # bytes, head and framing included
        self.received = 0
        self.last_at = sent_at
        self.first_byte_at: float | None = None
        self.end_at: float | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.pieces: list[bytes] = []  # the body as read (chunk framing kept), in arrival order
        self.times: list[float] = []  # times[i]: when pieces[i] reached the process
        self.chunked = False
        self.frames = 0  # chunks of the chunked encoding seen so far
        self.keep_alive = True
        self.error: ClientError | None = None
        self._state = _HEAD
        self._head = b""
        self._line = b""
        self._trailer = b""
        self._skip = 0
        self._left = 0

    @property
    def body(self) -> bytes:
        return self.decoded()[0]

    def decoded(self) -> tuple[bytes, list[int]]:
        """The body without chunk framing, and where each read ends in it (for arrival times).

        ``ends[i]`` is the length of body decoded from reads ``0..i``, so the read that
        delivered body byte ``k`` is the first ``i`` with ``ends[i] > k``.
        """
        raw = b"".join(self.pieces)
        if not self.chunked:
            ends = []
            total = 0
            for piece in self.pieces:
                total += len(piece)
                ends.append(total)
            return raw, ends
        spans = _chunk_spans(raw)
        body = b"".join(raw[start : start + size] for start, size in spans)
        ends = []
        read_end = 0
        decoded = 0  # body bytes in the spans that lie wholly before read_end
        span = 0
        for piece in self.pieces:
            read_end += len(piece)
            while span < len(spans) and spans[span][0] + spans[span][1] <= read_end:
                decoded += spans[span][1]
                span += 1
            partial = 0
            if span < len(spans) and spans[span][0] < read_end:
                partial = read_end - spans[span][0]
            ends.append(decoded + partial)
        return body, ends

    @property
    def finished(self) -> bool:
        return self.done.done()

    def feed(self, t: float, data: bytes) -> None:
        """Take one socket read that arrived at ``t``; this is the hot path."""
        self.last_at = t
        self.received += len(data)
        if self.received > self.limit:
            self.fail(
                ClientError(
                    TOO_LARGE,
                    f"the response exceeded {self.limit:,} bytes (load.max_response_bytes) "
                    "and was cut off",
                )
            )
            return
        state = self._state
        if state == _CHUNKED:
            self._feed_chunked(t, data)
        elif state == _HEAD:
            self._feed_head(t, data)
        elif state == _LENGTH:
            self.pieces.append(data)
            self.times.append(t)
            self._left -= len(data)
            if self._left <= 0:
                if self._left < 0:
                    self.keep_alive = False  # bytes beyond the body: do not reuse
                self._finish(t)
        elif state == _UNTIL_CLOSE:
            self.pieces.append(data)
            self.times.append(t)
        elif state == _TRAILER:
            self._feed_trailer(t, data)
        else:
            self.keep_alive = False  # bytes after a complete response

    def _feed_head(self, t: float, data: bytes) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = t
        head = self._head + data
        foreign = foreign_answer(head)
        if foreign:
            self.fail(ClientError(UNSUPPORTED, foreign))
            return
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > _MAX_HEAD:
                self.fail(ClientError("stream_broken", "response headers exceed 64 KiB"))
            self._head = head
            return
        self._head = b""
        lines = head[:end].decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        try:
            self.status = int(status_line[1])
        except (IndexError, ValueError):
            self.fail(ClientError("stream_broken", f"malformed status line {lines[0][:100]!r}"))
            return
        if 100 <= self.status < 200:
            # an interim answer (100 Continue): the real one follows
            self.status = 0
            rest = head[end + 4 :]
            if rest:
                self._feed_head(t, rest)
            return
        headers = self.headers
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("connection", "").lower() == "close":
            self.keep_alive = False
        encoding = headers.get("content-encoding", "").lower()
        if encoding not in ("", "identity") and 200 <= self.status < 300:
            # an error answer keeps its status; its compressed body is just not shown
            self.fail(ClientError(UNSUPPORTED, _compressed_message(encoding)))
            return
        rest = head[end + 4 :]
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _CHUNKED
            self.chunked = True
            if rest:
                self._feed_chunked(t, rest)
        elif "content-length" in headers:
            try:
                self._left = int(headers["content-length"])
            except ValueError:
                self.fail(ClientError("stream_broken", "malformed Content-Length header"))
                return
            if self._left > self.limit:
                self.fail(
                    ClientError(
                        TOO_LARGE,
                        f"the response announces {self._left:,} bytes (Content-Length), more "
                        f"than load.max_response_bytes ({self.limit:,})",
                    )
                )
                return
            self._state = _LENGTH
            if self._left == 0:
                self._finish(t)
            elif rest:
                self.feed(t, rest)
        else:
            self.keep_alive = False
            self._state = _UNTIL_CLOSE
            if rest:
                self.feed(t, rest)

    def _feed_chunked(self, t: float, data: bytes) -> None:
        # Only the framing is followed here, to see where the response ends; the chunks are
        # decoded once, after the end (decoded()). A read usually holds whole frames.
        self.pieces.append(data)
        self.times.append(t)
        n = len(data)
        pos = self._skip
        if pos >= n:
            self._skip = pos - n
            return
        line = self._line
        while True:
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._line = line + data[pos:]
                self._skip = 0
                if len(self._line) > 1024:
                    self.fail(ClientError("stream_broken", "malformed chunked encoding"))
                return
            if line:
                size_line = line + data[pos:newline]
                line = b""
            else:
                size_line = data[pos:newline]
            size = _chunk_size(size_line)
            if size < 0:
                self.fail(ClientError("stream_broken", f"malformed chunk size {size_line[:40]!r}"))
                return
            if size == 0:
                self._line = b""
                self._state = _TRAILER
                self._feed_trailer(t, data[newline + 1 :], record=False)
                return
            self.frames += 1
            pos = newline + 3 + size  # the size line's end, the data, its CRLF
            if pos >= n:
                self._line = b""
                self._skip = pos - n
                return

    def _feed_trailer(self, t: float, data: bytes, record: bool = True) -> None:
        if record:
            self.pieces.append(data)
            self.times.append(t)
        trailer = self._trailer + data
        if trailer.startswith(b"\r\n") or trailer.startswith(b"\n") or b"\r\n\r\n" in trailer:
            self._trailer = b""
            self._finish(t)
        else:
            self._trailer = trailer

    def _finish(self, t: float) -> None:
        self._state = _DONE
        self.end_at = t
        if not self.done.done():
            self.done.set_result(None)

    def fail(self, error: ClientError) -> None:
        if self.done.done():
            return
        self.error = error
        self.keep_alive = False
        self._state = _DONE  # what still arrives is dropped with the connection
        self.end_at = monotonic()
        self.done.set_result(None)

    def connection_lost(self) -> None:
        if self._state == _UNTIL_CLOSE:
            self._finish(monotonic())
            return
        foreign = foreign_answer(self._head, complete=True) if self._state == _HEAD else None
        if foreign:
            self.fail(ClientError(UNSUPPORTED, foreign))
            return
        received = sum(len(p) for p in self.pieces)  # framing included: a rough figure
        where = "before the response" if self._state == _HEAD else f"after {received} body bytes"
        self.fail(ClientError("stream_broken", f"server closed the connection {where}"))


def _compressed_message(encoding: str) -> str:
    return (
        f"the server sent a compressed answer (Content-Encoding: {encoding}) although the request "
        "asked for none (Accept-Encoding: identity); this client reads uncompressed answers only, "
        "since a compressor holds back a stream's chunks and its delay would be timed as the "
        "server's: turn compression off on the server or the proxy in front of it (or remove "
        "Accept-Encoding from load.headers)"
    )


_HTTP1 = b"HTTP/1."
_H2_FRAMES = {0x4: "SETTINGS", 0x7: "GOAWAY"}  # what an HTTP/2 server sends first (RFC 9113 3.4)
_ONLY_HTTP11 = (
    "this client speaks HTTP/1.1: let the server (or a proxy in front of it) serve HTTP/1.1 too"
)


def foreign_answer(head: bytes, complete: bool = False) -> str | None:
    """Why ``head``, the first bytes of an answer, is not HTTP/1.x; None when it is or may be.

    ``complete``: no more bytes will come, so a short answer is judged as it is.
    """
    if head.startswith(_HTTP1) or _HTTP1.startswith(head):
        return None
    known = recognised_protocol(head)
    if known or (len(head) < 9 and not complete):
        return known  # an HTTP/2 frame header is 9 bytes: wait for them
    return (
        f"the server's answer is not HTTP/1.x (it began {head[:16]!r}): the base_url points at "
        f"something other than an HTTP server, or at one that speaks HTTP/2 only; {_ONLY_HTTP11}"
    )


def recognised_protocol(head: bytes) -> str | None:
    """What ``head`` is when it is surely another protocol than HTTP/1.x: HTTP/2 or TLS.

    An HTTP/2-only server (h2c with prior knowledge, such as nginx's ``listen ... http2``
    without TLS) answers an HTTP/1.1 request with binary frames, a TLS server with a TLS alert:
    each would otherwise look like a connection closed before the response.
    """
    if head.startswith((b"HTTP/2", b"HTTP/3")):
        version = head[:8].decode("latin-1").split(" ")[0]
        return f"the server answered {version}, not HTTP/1.x; {_ONLY_HTTP11}"
    if len(head) >= 9 and head[3] in _H2_FRAMES and head[5:9] == bytes(4):
        return (
            f"the server speaks HTTP/2 only: it answered with an HTTP/2 {_H2_FRAMES[head[3]]} "
            f"frame ({head[:9].hex(' ')}); {_ONLY_HTTP11}"
        )
    if head[:2] in (b"\x15\x03", b"\x16\x03"):
        return "the server answered with TLS, not HTTP: it expects https; use an https:// base_url"
    return None


def _chunk_size(line: bytes) -> int:
    try:
        return int(line, 16)
    except ValueError:
        pass
    try:
        return int(line.split(b";", 1)[0], 16)  # a chunk extension, which nobody uses
    except ValueError:
        return -1


def _chunk_spans(raw: bytes) -> list[tuple[int, int]]:
    """``(start, size)`` of every chunk's data in a chunked body, up to the last chunk."""
    spans: list[tuple[int, int]] = []
    pos = 0
    while True:
        newline = raw.find(b"\n", pos)
        if newline < 0:
            return spans
        size = _chunk_size(raw[pos:newline])
        if size <= 0:
            return spans
        start = newline + 1
        spans.append((start, min(size, len(raw) - start)))
        pos = start + size + 2


_READ_BUFFER = 64 * 1024


class Connection(asyncio.BufferedProtocol):
    """One keep-alive connection carrying one exchange at a time.

    A buffered protocol: the transport reads into one buffer kept for the connection's life,
    where a plain protocol would have a fresh 256 KiB buffer allocated for every read (and
    shrunk after) - the costliest part of a read when thousands of small reads come a second.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = 0  # exchanges completed on it
        # why bytes that came before any request are not HTTP/1.x (an HTTP/2 server's preface)
        self.foreign: str | None = None
        self._exchange: Exchange | None = None
        self._buffer = memoryview(bytearray(_READ_BUFFER))
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        t = monotonic()
        exchange = self._exchange
        if exchange is not None:
            exchange.feed(t, self._buffer[:nbytes].tobytes())
        else:
            # only a sure sign counts here: a stray CRLF after an answer is not HTTP/2
            if self.foreign is None:
                self.foreign = recognised_protocol(self._buffer[:nbytes].tobytes())
            self.closed = True  # unsolicited bytes: the connection's state is unknown
            if self.transport is not None:
                self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        exchange = self._exchange
        if exchange is not None:
            exchange.connection_lost()

    def start(
        self, payload: bytes, done: asyncio.Future[None], limit: int | None = None
    ) -> Exchange:
        """Write ``payload`` and return the exchange that will receive the answer."""
        assert self.transport is not None
        exchange = Exchange(done, monotonic(), limit)
        self._exchange = exchange
        if self.foreign:
            # the server spoke first, and not HTTP/1.x: an HTTP/2 server sends its preface
            # as soon as it accepts, possibly before the request was written
            exchange.fail(ClientError(UNSUPPORTED, self.foreign))
            return exchange
        self.transport.write(payload)
        return exchange

    def detach(self) -> None:
        self._exchange = None

    def close(self) -> None:
        self.closed = True
        self._exchange = None
        if self.transport is not None:
            # nothing is left to send or read: drop the socket now (a TLS close would wait
            # for the peer's answer, and the run may end before it comes)
            self.transport.abort()


class ConnectionPool:
    """The connections of one run to one origin, reused across requests, opened ahead of load."""

    def __init__(self, origin: Origin, *, connect_timeout: float) -> None:
        self.origin = origin
        self.connect_timeout = connect_timeout
        self._idle: list[Connection] = []
        self._all: set[Connection] = set()
        self._closing: set[Connection] = set()  # discarded, until their sockets have closed
        self._ssl: ssl.SSLContext | None = tls_context() if origin.tls else None
        if self._ssl is not None:
            self._ssl.set_alpn_protocols(["http/1.1"])  # an HTTP/2-only server says so at once

    async def connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    Connection,
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl else None,
                ),
                self.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise ClientError(
                "timeout",
                f"connect to {origin.host}:{origin.port} timed out after "
                f"{self.connect_timeout:g} s",
            ) from None
        except (OSError, ssl.SSLError) as exc:
            if "no application protocol" in str(exc).lower().replace("_", " "):
                raise ClientError(
                    UNSUPPORTED,
                    f"the server at {origin.host}:{origin.port} speaks HTTP/2 only: it refused "
                    f"the TLS handshake offering HTTP/1.1 (ALPN): {exc}; {_ONLY_HTTP11}",
                ) from None
            raise ClientError(
                "connect", f"cannot connect to {origin.host}:{origin.port}: {exc}"
            ) from None
        self._all.add(conn)
        return conn

    async def prewarm(self, count: int) -> None:
        """Open up to ``count`` idle connections now, so no measured request pays a handshake."""
        want = count - len(self._idle)
        if want <= 0:
            return
        results = await asyncio.gather(
            *(self.connect() for _ in range(want)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Connection):
                self._idle.append(result)
            elif isinstance(result, BaseException) and not isinstance(result, ClientError):
                raise result

    async def acquire(self) -> tuple[Connection, bool]:
        """An open connection and whether it was reused (a reused one may have gone stale)."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
            self._all.discard(conn)
            if conn.foreign:  # an HTTP/2 server's preface reached the idle connection
                raise ClientError(UNSUPPORTED, conn.foreign)
        return await self.connect(), False

    def release(self, conn: Connection, reusable: bool) -> None:
        conn.detach()
        if reusable and not conn.closed:
            conn.used += 1
            self._idle.append(conn)
        else:
            self.discard(conn)

    def discard(self, conn: Connection) -> None:
        conn.close()
        self._all.discard(conn)
        if not conn.lost.done():
            self._closing.add(conn)

    async def aclose(self) -> None:
        closing = list(self._all | self._closing)
        for conn in closing:
            conn.close()
        self._all.clear()
        self._idle.clear()
        self._closing.clear()
        # wait until every socket is really closed, so none outlives the event loop
        if closing:
            await asyncio.wait([c.lost for c in closing], timeout=5)


def build_request(
    origin: Origin, method: str, path: str, body: bytes, headers: Mapping[str, str]
) -> bytes:
    """The bytes of one HTTP/1.1 request with a JSON body.

    It asks for an uncompressed answer (``Accept-Encoding: identity``) unless ``headers`` name
    an encoding; the reader refuses a compressed one with a message that says so.
    """
    lines = [
        f"{method} {origin.path_prefix}{path} HTTP/1.1",
        f"Host: {origin.host_header}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "User-Agent: pytest-llmslo",
    ]
    if not any(name.lower() == "accept-encoding" for name in headers):
        lines.append("Accept-Encoding: identity")
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
