"""A timing instrument: an OpenAI-compatible server whose token timing and faults are set exactly.

It streams a role-only chunk at once, then ``tokens`` content chunks, the first ``ttft_ms`` after
the request arrived and the rest ``gap_ms`` apart, and logs on ``time.monotonic_ns()`` when it
received each request and wrote each event, so a client's timestamps can be checked against the
moment the bytes left. With ``ttft_per_stream_ms``, a request's TTFT grows by that much for each
other request open when it arrives, so the server slows down with concurrency as a real one does,
at a knee that is known exactly. Body fields override the defaults per request: ``x_ttft_ms``,
``x_gap_ms``, ``x_tokens`` (else ``max_tokens``), ``x_no_usage``, ``x_fault`` (see ``FAULTS``) and
``x_reasoning`` (the first N tokens are reasoning, streamed as vLLM does, in ``delta.reasoning``,
and counted in usage's ``completion_tokens_details``). Stdlib only
and one asyncio loop, so it costs little CPU next to the client it measures.

    python -m pytest_llmslo.testing.timing_server --port 0 --ttft-ms 200 --gap-ms 20 --tokens 20

One loop writing one chunk at a time saturates near 60-70k chunks/s, below what a client spread
over processes ingests (1,024 streams at 100 tokens/s is 100k). ``--processes K`` serves one port
from K processes (``SO_REUSEPORT``: the kernel spreads the connections among them); the process
started supervises them and stops them all by PID when it is stopped or one of them dies. Each
process answers its own connections only, so the ``/log`` route cannot see the others' requests:
with K > 1 it answers 409, and the log is the ``--log`` file, which every process appends whole
lines to (``TimingServerProcess.fetch_log`` reads it; ``serve_timing_server(processes=K)`` always
gives one). Response ids carry the process's number (``chatcmpl-p1-7``), so they stay unique.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pytest_llmslo.records import Endpoint

FAULTS = {
    "http_500": "answer HTTP 500 with a JSON error body",
    "http_400": "answer HTTP 400 with a JSON error body (any http_NNN works)",
    "close": "close the connection without answering",
    "drop_mid_stream": "send half of the chunks, then close the connection",
    "stall": "send the role chunk (streaming) or nothing, then stay silent",
    "empty": "a 200 answer with no generated text",
    "bad_json": "a malformed SSE data line after the first content chunk",
    "error_event": "an SSE event carrying an `error` object mid-stream",
}
DEFAULT_MODEL = "timing-model"
_MODULE = "pytest_llmslo.testing.timing_server"
_SERVING = "timing_server serving processes "  # the supervisor's line naming them
_DRAIN_ABOVE = 64 * 1024
_ZERO_GAP_BURST = 16


@dataclass(frozen=True)
class Timing:
    """Defaults for every request; each can be overridden by a body field of the request."""

    ttft_ms: float = 200.0
    gap_ms: float = 20.0
    tokens: int = 20
    model: str = DEFAULT_MODEL
    # added to the TTFT for each other request open when this one arrives (0: no slow-down)
    ttft_per_stream_ms: float = 0.0


@dataclass
class _Entry:
    id: str
    path: str
    received_ns: int
    body: dict[str, Any]
    headers: dict[str, str]
    stream: bool = False
    status: int = 200
    fault: str | None = None
    events_ns: list[int] = field(default_factory=list)  # every SSE event, role chunk first
    content_ns: list[int] = field(default_factory=list)  # the content-bearing events only
    end_ns: int = 0


class TimingServer:
    """The server itself; run it with ``await TimingServer(timing).serve(host, port)``."""

    def __init__(
        self,
        timing: Timing,
        log_path: str | None = None,
        *,
        id_prefix: str = "",
        memory_log: bool = True,
        metrics_page: bytes | None = None,
    ) -> None:
        self.timing = timing
        # a Prometheus text page to answer GET /metrics with (a recorded vLLM one, say), so
        # that telemetry scrapes it as it would vLLM's; None: /metrics is not served
        self.metrics_page = metrics_page
        self.log: list[dict[str, Any]] = []
        # False in a process of several: its /log would hold a part of the requests only
        self.memory_log = memory_log
        self.id_prefix = id_prefix
        # one os.write per line on an O_APPEND file: lines of several processes never interleave
        self._log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT) if log_path else -1
        self._next_id = 0
        self._open = 0  # completion requests being answered now
        self.port = 0

    async def serve(
        self,
        host: str,
        port: int,
        ready: TextIO | None = None,
        tls: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        server = await asyncio.start_server(
            self._connection, host, port, backlog=1024, ssl=tls, reuse_port=reuse_port or None
        )
        self.port = server.sockets[0].getsockname()[1]
        scheme = "https" if tls else "http"
        if ready is not None:
            print(
                f"timing_server listening on {scheme}://{host}:{self.port}", file=ready, flush=True
            )
        async with server:
            await server.serve_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                received_ns = time.monotonic_ns()
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = [*lines[0].split(" "), "", ""][:3]
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                raw = await reader.readexactly(length) if length else b""
                keep = await self._dispatch(writer, method, path, headers, raw, received_ns)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _dispatch(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        received_ns: int,
    ) -> bool:
        route = path.split("?", 1)[0]
        if method == "GET" and route == "/health":
            return await _send(writer, 200, b"ok", "text/plain")
        if method == "GET" and route == "/metrics" and self.metrics_page is not None:
            return await _send(writer, 200, self.metrics_page, "text/plain; version=0.0.4")
        if method == "GET" and route == "/v1/models":
            models = {"object": "list", "data": [{"id": self.timing.model, "object": "model"}]}
            return await _send(writer, 200, json.dumps(models).encode())
        if method == "GET" and route == "/log" and not self.memory_log:
            message = "this instrument runs in several processes: read its --log file instead"
            return await _send(writer, 409, _error(message))
        if method == "GET" and route == "/log":
            lines = "".join(json.dumps(e) + "\n" for e in self.log)
            if "clear=1" in path:
                self.log.clear()
            return await _send(writer, 200, lines.encode(), "application/x-ndjson")
        if method == "POST" and route in ("/v1/chat/completions", "/v1/completions"):
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the body is not a JSON object")
            except ValueError as exc:
                return await _send(writer, 400, _error(f"bad JSON body: {exc}"))
            return await self._complete(writer, route, headers, body, received_ns)
        return await _send(writer, 404, _error(f"no route {method} {route}"))

    async def _complete(
        self,
        writer: asyncio.StreamWriter,
        route: str,
        headers: dict[str, str],
        body: dict[str, Any],
        received_ns: int,
    ) -> bool:
        self._next_id += 1
        chat = route.endswith("chat/completions")
        entry = _Entry(
            id=f"{'chatcmpl' if chat else 'cmpl'}-{self.id_prefix}{self._next_id}",
            path=route,
            received_ns=received_ns,
            body=body,
            headers=headers,
            stream=bool(body.get("stream")),
            fault=body.get("x_fault"),
        )
        others = self._open
        self._open += 1
        try:
            return await self._answer(writer, entry, chat, body, others)
        finally:
            self._open -= 1
            entry.end_ns = time.monotonic_ns()
            self._record(entry)

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        entry: _Entry,
        chat: bool,
        body: dict[str, Any],
        others: int = 0,
    ) -> bool:
        timing = self.timing
        ttft = (
            float(body.get("x_ttft_ms", timing.ttft_ms)) + timing.ttft_per_stream_ms * others
        ) / 1000
        gap = float(body.get("x_gap_ms", timing.gap_ms)) / 1000
        tokens = int(body.get("x_tokens") or body.get("max_tokens") or 0) or timing.tokens
        if body.get("max_completion_tokens") and "x_tokens" not in body:
            tokens = int(body["max_completion_tokens"])
        fault = entry.fault
        if fault is not None and fault not in FAULTS and not str(fault).startswith("http_"):
            entry.status = 400
            choices = ", ".join(FAULTS)
            return await _send(writer, 400, _error(f"unknown x_fault {fault!r}; use {choices}"))
        if fault and fault.startswith("http_"):
            entry.status = int(fault[5:])
            return await _send(writer, entry.status, _error(f"injected fault {fault}"))
        if fault == "close":
            return False
        if fault == "empty":
            tokens = 0
        usage = not body.get("x_no_usage")
        reasoning = min(int(body.get("x_reasoning") or 0), tokens) if chat else 0
        if not entry.stream:
            return await self._answer_json(writer, entry, chat, ttft, gap, tokens, usage, reasoning)
        include_usage = usage and bool((body.get("stream_options") or {}).get("include_usage"))
        return await self._answer_stream(
            writer, entry, chat, ttft, gap, tokens, include_usage, reasoning
        )

    async def _answer_json(
        self,
        writer: asyncio.StreamWriter,
        entry: _Entry,
        chat: bool,
        ttft: float,
        gap: float,
        tokens: int,
        usage: bool,
        reasoning: int = 0,
    ) -> bool:
        if entry.fault == "stall":
            await _forever(writer)
            return False
        loop = asyncio.get_running_loop()
        start = entry.received_ns / 1e9
        delay = start + ttft + gap * max(tokens - 1, 0) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        text = "".join(_token(i) for i in range(reasoning, tokens))
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length" if tokens else "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
            if reasoning:
                choice["message"]["reasoning_content"] = "".join(map(_token, range(reasoning)))
        else:
            choice["text"] = text
        answer: dict[str, Any] = {
            "id": entry.id,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.timing.model,
            "choices": [choice],
        }
        if usage:
            answer["usage"] = _usage(tokens, reasoning)
        entry.content_ns.append(time.monotonic_ns())
        return await _send(writer, 200, json.dumps(answer).encode())

    async def _answer_stream(
        self,
        writer: asyncio.StreamWriter,
        entry: _Entry,
        chat: bool,
        ttft: float,
        gap: float,
        tokens: int,
        usage: bool,
        reasoning: int = 0,
    ) -> bool:
        loop = asyncio.get_running_loop()
        transport = writer.transport
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        head = {"id": entry.id, "created": int(time.time()), "model": self.timing.model}
        kind = "chat.completion.chunk" if chat else "text_completion"
        prefix = _compact({**head, "object": kind})[:-1].encode()

        def event(choice: dict[str, Any] | None, extra: str = "") -> bytes:
            choices = "[]" if choice is None else "[" + _compact(choice) + "]"
            data = prefix + b',"choices":' + choices.encode() + extra.encode() + b"}"
            return _frame(b"data: " + data + b"\n\n")

        # content chunks are built from a template: at zero delay the server must outrun the
        # client it measures, and a JSON dump per chunk would make it the slower side
        if chat:
            choice = {"index": 0, "delta": {"content": "\0"}, "logprobs": None}
        else:
            choice = {"index": 0, "text": "\0", "logprobs": None}
        before, after = (
            b"data: "
            + prefix
            + b',"choices":['
            + _compact({**choice, "finish_reason": None}).encode()
        ).split(b"\\u0000")
        after += b"]}\n\n"

        thinking = before.replace(b'"delta":{"content":"', b'"delta":{"reasoning":"')

        def content(i: int) -> bytes:
            return _frame((thinking if i < reasoning else before) + _token(i).encode() + after)

        events_ns = entry.events_ns
        content_ns = entry.content_ns
        if chat:
            role = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": None,
            }
            events_ns.append(time.monotonic_ns())
            transport.write(event(role))
        if entry.fault == "stall":
            await _forever(writer)
            return False
        start = entry.received_ns / 1e9
        drop_after = tokens // 2 if entry.fault == "drop_mid_stream" else -1
        if gap <= 0 and entry.fault is None:
            if not await self._burst(writer, start + ttft, tokens, content, entry):
                return False
            tokens_left = 0
        else:
            tokens_left = tokens
        for i in range(tokens_left):
            if i == drop_after:
                transport.abort()
                return False
            if gap > 0 or i == 0:
                delay = start + ttft + gap * i - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if transport.is_closing():
                return False
            frame = content(i)
            now = time.monotonic_ns()
            events_ns.append(now)
            content_ns.append(now)
            transport.write(frame)
            if i == 0 and entry.fault in ("bad_json", "error_event"):
                bad = (
                    _frame(b'data: {"choices": [\n\n')
                    if entry.fault == "bad_json"
                    else _frame(b'data: {"error": {"message": "injected", "code": 500}}\n\n')
                )
                events_ns.append(time.monotonic_ns())
                transport.write(bad)
            if transport.get_write_buffer_size() > _DRAIN_ABOVE:
                await writer.drain()
            elif gap <= 0:
                await asyncio.sleep(0)
        if chat:
            final = {"index": 0, "delta": {}, "finish_reason": "length" if tokens else "stop"}
        else:
            final = {"index": 0, "text": "", "finish_reason": "length" if tokens else "stop"}
        tail = [event(final)]
        if usage:
            tail.append(event(None, ',"usage":' + _compact(_usage(tokens, reasoning))))
        tail.append(_frame(b"data: [DONE]\n\n"))
        for frame in tail:
            events_ns.append(time.monotonic_ns())
            transport.write(frame)
        transport.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def _burst(
        self,
        writer: asyncio.StreamWriter,
        first_at: float,
        tokens: int,
        content: Callable[[int], bytes],
        entry: _Entry,
    ) -> bool:
        """Zero gap: chunks go out as fast as the client takes them, several per write.

        Writing them one by one would make the server, not the client it loads, the slower
        side; the bytes on the wire are the same either way.
        """
        loop = asyncio.get_running_loop()
        transport = writer.transport
        delay = first_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for first in range(0, tokens, _ZERO_GAP_BURST):
            if transport.is_closing():
                return False
            frames = [content(i) for i in range(first, min(first + _ZERO_GAP_BURST, tokens))]
            now = time.monotonic_ns()
            entry.events_ns.extend([now] * len(frames))
            entry.content_ns.extend([now] * len(frames))
            transport.write(b"".join(frames))
            if transport.get_write_buffer_size() > _DRAIN_ABOVE:
                await writer.drain()
            else:
                await asyncio.sleep(0)  # other streams get their turn
        return True

    def _record(self, entry: _Entry) -> None:
        data = entry.__dict__.copy()
        if self.memory_log:
            self.log.append(data)
        if self._log_fd >= 0:
            os.write(self._log_fd, (json.dumps(data) + "\n").encode())


def _compact(value: Any) -> str:
    # the separators vLLM's chunks use, so clients see the same bytes they would from vLLM
    return json.dumps(value, separators=(",", ":"))


def _token(i: int) -> str:
    return f" t{i}"


def _usage(tokens: int, reasoning: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": 7,
        "completion_tokens": tokens,
        "total_tokens": 7 + tokens,
    }
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def _frame(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()


async def _send(
    writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str = "application/json"
) -> bool:
    reason = {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        409: "Conflict",
        500: "Internal Server Error",
    }
    writer.write(
        f"HTTP/1.1 {status} {reason.get(status, 'Status')}\r\ncontent-type: {ctype}\r\n"
        f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    return True


async def _forever(writer: asyncio.StreamWriter) -> None:
    # stay silent until the client gives up and closes the connection
    while not writer.transport.is_closing():
        await asyncio.sleep(0.05)
        if writer.transport.get_extra_info("socket") is None:
            return


# -- running it as a separate process --------------------------------------------------------


@dataclass(frozen=True)
class TimingServerProcess:
    """A running instrument subprocess."""

    base_url: str
    port: int
    pid: int
    log_path: str  # its stderr
    ca_file: str | None = None  # the certificate to trust when it serves https
    # with several processes: the ones serving (`pid` supervises them) and their shared log
    serving_pids: tuple[int, ...] = ()
    request_log: str | None = None

    def endpoint(self, backend: str = "external", model: str = DEFAULT_MODEL) -> Endpoint:
        return Endpoint(base_url=self.base_url, model=model, backend=backend, pid=self.pid)

    def fetch_log(self, clear: bool = False) -> list[dict[str, Any]]:
        """Every request logged so far, oldest first (by `received_ns`).

        A request is logged just after its answer's last bytes are written, so a client that
        has just read an answer may read the log a moment before its line is there. With
        several processes the log is read from their shared file; `clear` empties that file,
        so a request that ends while it is read and emptied can be lost: clear between runs,
        not during one.
        """
        if self.request_log is not None:
            return _read_request_log(self.request_log, clear)
        url = f"{self.base_url}/log" + ("?clear=1" if clear else "")
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        # directly, as the plugin connects: proxy variables are not used (pytest_llmslo.netpolicy)
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        with opener.open(url, timeout=30) as answer:
            text = answer.read().decode()
        return [json.loads(line) for line in text.splitlines() if line]


def _read_request_log(path: str, clear: bool) -> list[dict[str, Any]]:
    with open(path, "rb") as file:
        text = file.read().decode()
    if clear:
        os.truncate(path, 0)  # the writers append, so they carry on at the new end
    entries = [json.loads(line) for line in text.splitlines() if line]
    return sorted(entries, key=lambda entry: int(entry["received_ns"]))


@contextlib.contextmanager
def serve_timing_server(
    *,
    ttft_ms: float = 200.0,
    gap_ms: float = 20.0,
    tokens: int = 20,
    model: str = DEFAULT_MODEL,
    ttft_per_stream_ms: float = 0.0,
    cpu: int | None = None,
    host: str = "127.0.0.1",
    tls_cert: str | None = None,
    tls_key: str | None = None,
    startup_timeout: float = 30.0,
    processes: int = 1,
    metrics_file: str | None = None,
) -> Iterator[TimingServerProcess]:
    """Start the instrument in its own process group, wait until it answers, stop it after.

    `processes` > 1 serves the port from that many processes (see the module's docstring),
    their request log in a temporary file that `fetch_log` reads. `metrics_file`: a Prometheus
    text page to answer GET /metrics with.
    """
    command = [
        sys.executable,
        "-m",
        _MODULE,
        "--host",
        host,
        "--port",
        "0",
        "--ttft-ms",
        str(ttft_ms),
        "--gap-ms",
        str(gap_ms),
        "--tokens",
        str(tokens),
        "--model",
        model,
        "--ttft-per-stream-ms",
        str(ttft_per_stream_ms),
    ]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    if tls_cert is not None:
        command += ["--tls-cert", tls_cert] + (["--tls-key", tls_key] if tls_key else [])
    if metrics_file is not None:
        command += ["--metrics-file", metrics_file]
    request_log = None
    if processes > 1:
        with tempfile.NamedTemporaryFile(
            prefix="timing-server-requests-", suffix=".jsonl", delete=False
        ) as requests:
            request_log = requests.name
        command += ["--processes", str(processes), "--log", request_log]
    with tempfile.NamedTemporaryFile(
        "w+b", prefix="timing-server-", suffix=".log", delete=False
    ) as err:
        log_path = err.name
    with open(log_path, "wb") as stderr:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        port, serving = _wait_for_port(process, startup_timeout, log_path)
        scheme = "https" if tls_cert else "http"
        yield TimingServerProcess(
            f"{scheme}://{host}:{port}",
            port,
            process.pid,
            log_path,
            tls_cert,
            serving_pids=serving,
            request_log=request_log,
        )
    finally:
        _stop(process)
        if process.stdout is not None:
            process.stdout.close()
        if request_log is not None:
            with contextlib.suppress(OSError):
                os.unlink(request_log)


def _wait_for_port(
    process: subprocess.Popen[bytes], timeout: float, log_path: str
) -> tuple[int, tuple[int, ...]]:
    """The port it listens on and, when it supervises several, the serving processes' PIDs."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    serving: tuple[int, ...] = ()
    pending = b""  # read unbuffered: a buffered readline could leave a second line unseen
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            *lines, pending = (pending + os.read(process.stdout.fileno(), 4096)).split(b"\n")
            for line in (raw.decode() for raw in lines):
                if line.startswith(_SERVING):
                    serving = tuple(int(pid) for pid in line[len(_SERVING) :].split())
                if "listening on" in line:
                    return int(line.rsplit(":", 1)[1]), serving
        if process.poll() is not None:
            break
    tail = Path(log_path).read_text(errors="replace")[-2000:]
    raise RuntimeError(
        f"timing server did not start within {timeout:g} s (exit code {process.poll()}); "
        f"its log {log_path} ends with:\n{tail}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--ttft-ms", type=float, default=200.0, help="first content delay")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="gap between content chunks")
    parser.add_argument("--tokens", type=int, default=20, help="content chunks per answer")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--ttft-per-stream-ms",
        type=float,
        default=0.0,
        help="added to a request's TTFT for each other request open when it arrives",
    )
    parser.add_argument("--log", help="append one JSON line per request to this file")
    parser.add_argument("--metrics-file", help="answer GET /metrics with this file's text")
    parser.add_argument("--cpu", type=int, help="pin the server to this CPU core")
    parser.add_argument("--tls-cert", help="serve https with this PEM certificate (chain)")
    parser.add_argument("--tls-key", help="its private key, if not in the certificate file")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="serve the port from this many processes (SO_REUSEPORT); with more than one, "
        "/log answers 409 and the request log is the --log file",
    )
    # set by the supervisor of several processes: this one's number among them
    parser.add_argument("--serving-index", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error(f"--processes must be 1 or more, not {args.processes}")
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})  # several processes inherit it
    if args.processes > 1:
        sys.exit(_supervise(args))
    timing = Timing(args.ttft_ms, args.gap_ms, args.tokens, args.model, args.ttft_per_stream_ms)
    index = args.serving_index
    server = TimingServer(
        timing,
        args.log,
        id_prefix="" if index is None else f"p{index}-",
        memory_log=index is None,
        metrics_page=_read_page(parser, args.metrics_file),
    )
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    # the log is flushed per request, so nothing is lost by leaving at once; a clean asyncio
    # shutdown would wait for clients that are mid-handshake or stalled on purpose
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    serving = server.serve(args.host, args.port, sys.stdout, tls, reuse_port=index is not None)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serving if index is None else _serve_supervised(serving))


def _read_page(parser: argparse.ArgumentParser, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        parser.error(f"--metrics-file: cannot read {path}: {exc.strerror or exc}")


# -- several processes on one port ----------------------------------------------------------


async def _serve_supervised(serving: Any) -> None:
    """Serve, and leave if the supervisor is gone (killed without a chance to stop us)."""
    supervisor = os.getppid()

    async def orphaned() -> None:
        while os.getppid() == supervisor:
            await asyncio.sleep(0.5)
        os._exit(0)

    watch = asyncio.create_task(orphaned())
    try:
        await serving
    finally:
        watch.cancel()


def _supervise(args: argparse.Namespace) -> int:
    """Start `args.processes` serving processes on one port, print it, stop them all on a signal
    or when one of them dies (then exit 1)."""
    stopping: list[int] = []
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        signal.signal(getattr(signal, name), lambda number, _: stopping.append(number))
    # hold the port (bound, not listening: no connection is queued here) while they bind it too
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as reservation:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind((args.host, args.port))
        port = reservation.getsockname()[1]
        children = [
            subprocess.Popen(_serving_command(args, port, i), stdout=subprocess.PIPE)
            for i in range(args.processes)
        ]
        try:
            listening = _await_listening(children, stopping)
        except BaseException:
            _stop_children(children)
            raise
    if listening is not None:
        _stop_children(children)
        print(f"timing_server: {listening}", file=sys.stderr, flush=True)
        return 0 if stopping else 1
    print(_SERVING + " ".join(str(c.pid) for c in children), flush=True)
    scheme = "https" if args.tls_cert else "http"
    print(f"timing_server listening on {scheme}://{args.host}:{port}", flush=True)
    died = None
    while not stopping and died is None:
        time.sleep(0.1)
        died = next((c for c in children if c.poll() is not None), None)
    _stop_children(children)
    if died is not None and not stopping:
        print(
            f"timing_server: serving process {died.pid} exited with status {died.returncode}; "
            "stopped the others",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0


def _serving_command(args: argparse.Namespace, port: int, index: int) -> list[str]:
    command = [sys.executable, "-m", _MODULE, "--host", args.host, "--port", str(port)]
    command += ["--ttft-ms", str(args.ttft_ms), "--gap-ms", str(args.gap_ms)]
    command += ["--tokens", str(args.tokens), "--model", args.model]
    command += ["--ttft-per-stream-ms", str(args.ttft_per_stream_ms)]
    command += ["--serving-index", str(index)]
    if args.log:
        command += ["--log", args.log]
    if args.metrics_file:
        command += ["--metrics-file", args.metrics_file]
    if args.tls_cert:
        command += ["--tls-cert", args.tls_cert]
    if args.tls_key:
        command += ["--tls-key", args.tls_key]
    return command


def _await_listening(
    children: list[subprocess.Popen[bytes]], stopping: list[int], timeout: float = 30.0
) -> str | None:
    """Wait until every serving process listens; why not, if one did not."""
    deadline = time.monotonic() + timeout
    waiting = list(children)
    while waiting:
        if stopping:
            return "stopped while starting"
        if time.monotonic() > deadline:
            return f"{len(waiting)} serving process(es) did not listen within {timeout:g} s"
        for child in list(waiting):
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], 0.05)
            if ready and "listening on" in child.stdout.readline().decode():
                waiting.remove(child)
            elif child.poll() is not None:
                return f"serving process {child.pid} exited with status {child.returncode}"
    return None


def _stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    """Each by its PID: SIGTERM, then SIGKILL to any still there after 5 s."""
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
    for child in children:
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
        if child.stdout is not None:
            child.stdout.close()


if __name__ == "__main__":
    main()
