"""The load engine: sends prompts to an OpenAI-compatible endpoint and records every request.

Closed loop (``parallel`` users, each sending its next prompt when the previous one ends) or open
loop (``rate`` requests per second on a seeded arrival schedule, optionally capped at ``parallel``
in flight). Warmup requests run first, at the same concurrency, and the measured phase starts when
they have all ended, so the measured window holds measured requests only. A request never raises:
its outcome, good or bad, is a RequestRecord. docs/load-engine.md explains the timing design.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import math
import re
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import accumulate, chain, repeat
from time import monotonic
from typing import Any, cast

from pytest_llmslo import interrupts
from pytest_llmslo.arrivals import arrival_offsets
from pytest_llmslo.config import LoadConfig
from pytest_llmslo.http_client import (
    ClientError,
    ConnectionPool,
    Exchange,
    Origin,
    build_request,
    parse_base_url,
)
from pytest_llmslo.records import Endpoint, ErrorCategory, Prompt, RequestRecord
from pytest_llmslo.sse import iter_events

CountTokens = Callable[[str], int]
ShouldStop = Callable[[], "str | None"]

_STOP_POLL_S = 0.05
_EVENTS_PER_SLICE = 64  # parsing yields to the loop this often so other streams keep their stamps
_ERROR_BODY_CHARS = 300
_PREWARM_CAP = 256  # open loop without a cap: connections opened ahead of the first send


@dataclass(frozen=True)
class LoadResult:
    """Every request of one run and the measured window."""

    records: list[RequestRecord]  # every request, warmup included (record.warmup flags it)
    window_start: float  # time.monotonic(): first measured (non-warmup) send
    window_end: float  # last measured end
    config: LoadConfig
    interrupted: str | None = None  # why the run stopped early; the records are kept

    @property
    def measured(self) -> list[RequestRecord]:
        return [r for r in self.records if not r.warmup]


def run_load(
    endpoint: Endpoint,
    prompts: Sequence[Prompt],
    config: LoadConfig,
    *,
    count_tokens: CountTokens | None = None,
    should_stop: ShouldStop | None = None,
    on_measured_start: Callable[[], None] | None = None,
) -> LoadResult:
    """Run one load test to completion (or interruption) and return every record.

    ``on_measured_start`` is called once the warmup requests have all ended, just before the
    first measured one is sent (nothing is in flight then, so it may block briefly): telemetry
    uses it to leave warmup out of the server's /metrics counters.
    """
    return asyncio.run(
        run_load_async(
            endpoint,
            prompts,
            config,
            count_tokens=count_tokens,
            should_stop=should_stop,
            on_measured_start=on_measured_start,
        )
    )


async def run_load_async(
    endpoint: Endpoint,
    prompts: Sequence[Prompt],
    config: LoadConfig,
    *,
    count_tokens: CountTokens | None = None,
    should_stop: ShouldStop | None = None,
    on_measured_start: Callable[[], None] | None = None,
) -> LoadResult:
    """Same as :func:`run_load`, inside a running event loop."""
    check_load(config, prompts)
    run = _Run(endpoint, prompts, config, count_tokens, should_stop)
    run.on_measured_start = on_measured_start
    return await run.execute()


def check_load(config: LoadConfig, prompts: Sequence[Prompt]) -> None:
    """Reject a configuration the engine cannot run, saying which field and how to fix it."""
    if not prompts:
        raise ValueError("no prompts to send: the dataset is empty after filtering and sampling")
    if config.parallel is not None and config.parallel < 1:
        raise ValueError(f"load.parallel must be >= 1, got {config.parallel}")
    if config.rate is not None and not (config.rate > 0 and math.isfinite(config.rate)):
        raise ValueError(f"load.rate must be a positive number of requests/s, got {config.rate}")
    if config.requests is not None and config.requests < 0:
        raise ValueError(f"load.requests must be >= 0, got {config.requests}")
    if config.duration is not None and not config.duration > 0:
        raise ValueError(f"load.duration must be > 0 seconds, got {config.duration}")
    if config.warmup < 0:
        raise ValueError(f"load.warmup must be >= 0, got {config.warmup}")
    if config.api not in ("chat", "completions"):
        raise ValueError(f"load.api must be 'chat' or 'completions', got {config.api!r}")
    for name in ("connect_timeout", "read_timeout", "total_timeout"):
        value = getattr(config, name)
        if not value > 0:
            raise ValueError(f"load.{name} must be > 0 seconds, got {value}")
    if config.max_response_bytes < 1:
        raise ValueError(
            f"load.max_response_bytes must be >= 1 byte, got {config.max_response_bytes}"
        )
    if config.max_consecutive_timeouts is not None and config.max_consecutive_timeouts < 1:
        raise ValueError(
            "load.max_consecutive_timeouts must be >= 1 (or None to never stop), got "
            f"{config.max_consecutive_timeouts}"
        )
    budget = config.failure_budget
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise ValueError(
                f"load.failure_budget as a fraction must be in (0, 1], got {budget}; "
                "give a whole number for a count of failed requests"
            )
        if config.requests is None:
            raise ValueError(
                "load.failure_budget as a fraction is a share of load.requests, which is not "
                "set; give a count of failed requests instead"
            )
    elif budget is not None and budget < 0:
        raise ValueError(f"load.failure_budget must be >= 0 failed requests, got {budget}")


def failure_budget(config: LoadConfig) -> int | None:
    """How many measured requests may fail before the run stops; None: no limit."""
    budget = config.failure_budget
    if budget is None:
        return None
    if isinstance(budget, float):
        return math.floor(budget * (config.requests or 0))
    return budget


# Fields that some backends reject, and the backends that reject them. transformers serve
# answers HTTP 422 to a field it does not know; every other backend gets what the spec asks for,
# and a server that rejects a field answers 4xx, which the report shows.
_REJECTED_BY = {"ignore_eos": ("hf",), "min_tokens": ("hf",)}


def unsent_fields(backend: str, config: LoadConfig) -> tuple[str, ...]:
    """The load fields a spec sets that are left out of requests to ``backend`` (see above)."""
    return tuple(
        name
        for name, backends in _REJECTED_BY.items()
        if backend in backends and getattr(config, name) is not None
    )


def request_body(endpoint: Endpoint, prompt: Prompt, config: LoadConfig) -> dict[str, Any]:
    """The JSON body of one request; fields a backend is known to reject are left out for it."""
    body: dict[str, Any] = {"model": endpoint.model}
    if config.api == "chat":
        body["messages"] = prompt.as_messages()
    else:
        body["prompt"] = prompt.as_text()
    if config.max_tokens is not None:
        body["max_tokens"] = config.max_tokens
    if config.temperature is not None:
        body["temperature"] = config.temperature
    if config.top_p is not None:
        body["top_p"] = config.top_p
    if config.stop:
        body["stop"] = list(config.stop)
    if config.request_seed:
        body["seed"] = config.seed
    body["stream"] = config.stream
    if config.stream and config.include_usage:
        body["stream_options"] = {"include_usage": True}
    unsent = unsent_fields(endpoint.backend, config)
    if config.ignore_eos is not None and "ignore_eos" not in unsent:
        body["ignore_eos"] = config.ignore_eos
    if config.min_tokens is not None and "min_tokens" not in unsent:
        body["min_tokens"] = config.min_tokens
    body.update(config.extra_body)
    return body


def request_headers(endpoint: Endpoint, config: LoadConfig) -> dict[str, str]:
    headers = {"Accept": "text/event-stream" if config.stream else "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    headers.update(config.headers)
    for name, value in headers.items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"load.headers: header {name!r} contains a line break; remove it")
    return headers


def _call_soon(loop: asyncio.AbstractEventLoop, stop: Callable[[str], None], reason: str) -> None:
    # called from a signal handler, which may run in the middle of the loop's own code: the
    # loop is only handed the call (what asyncio's own signal handling does)
    with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to stop
        loop.call_soon_threadsafe(stop, reason)


class _Run:
    def __init__(
        self,
        endpoint: Endpoint,
        prompts: Sequence[Prompt],
        config: LoadConfig,
        count_tokens: CountTokens | None,
        should_stop: ShouldStop | None,
    ) -> None:
        self.endpoint = endpoint
        self.prompts = prompts
        self.config = config
        self.count_tokens = count_tokens
        self.should_stop = should_stop
        self.origin: Origin = parse_base_url(endpoint.base_url)
        self.path = "/v1/chat/completions" if config.api == "chat" else "/v1/completions"
        self.headers = request_headers(endpoint, config)
        self.pool = ConnectionPool(self.origin, connect_timeout=config.connect_timeout)
        self.records: list[RequestRecord] = []
        self.interrupted: str | None = None
        self.stopped = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self._payloads: dict[int, bytes] = {}
        self._completed: deque[tuple[dict[str, Any], Exchange, Prompt]] = deque()
        self._wake_parser = asyncio.Event()
        self._closing = False
        self._index = itertools.count()
        self._timeouts_in_row = 0
        self._failed_measured = 0
        self._budget = failure_budget(config)
        self.on_measured_start: Callable[[], None] | None = None

    # -- orchestration ---------------------------------------------------------------------

    async def execute(self) -> LoadResult:
        loop = asyncio.get_running_loop()
        # SIGINT, SIGTERM, SIGHUP: stop dispatching and keep the records (interrupts.py)
        restore = interrupts.listen(lambda name: _call_soon(loop, self.stop, name))
        watcher = asyncio.create_task(self._watch())
        parser = asyncio.create_task(self._parse_completed())
        # objects that exist before the run are left out of garbage collection passes, which
        # otherwise scan the whole heap (pytest's included) and stall the loop for milliseconds
        gc.freeze()
        start = monotonic()
        measured_start = start
        try:
            await self._prewarm()
            if self.config.warmup and not self.stopped.is_set():
                await self._phase(warmup=True, count=self.config.warmup, duration=None)
            if self.on_measured_start is not None and not self.stopped.is_set():
                self.on_measured_start()
            measured_start = monotonic()
            if not self.stopped.is_set():
                count = self.config.requests
                if count is None and self.config.duration is None:
                    count = len(self.prompts)
                await self._phase(warmup=False, count=count, duration=self.config.duration)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            try:
                await self.pool.aclose()
                self._closing = True
                self._wake_parser.set()
                await parser
            finally:
                gc.unfreeze()
                restore()
        records = sorted(self.records, key=lambda r: r.index)
        records = self._count_missing_tokens(records)
        measured = [r for r in records if not r.warmup]
        if measured:
            window_start = min(r.sent_at for r in measured)
            window_end = max(r.end_at for r in measured)
        else:
            window_start = window_end = measured_start
        return LoadResult(records, window_start, window_end, self.config, self.interrupted)

    async def _parse_completed(self) -> None:
        chat_config = self.config
        while True:
            if self._completed:
                base, exchange, prompt = self._completed.popleft()
                parser = _record(base, exchange, chat_config, prompt)
                while True:
                    try:
                        next(parser)
                    except StopIteration as done:
                        self._keep(done.value)
                        break
                    if not self._closing:
                        await asyncio.sleep(0)
                if not self._closing:
                    await asyncio.sleep(0)
            elif self._closing:
                return
            else:
                self._wake_parser.clear()
                await self._wake_parser.wait()

    def stop(self, reason: str) -> None:
        if self.stopped.is_set():
            return
        self.interrupted = reason
        self.stopped.set()
        for task in list(self.in_flight):
            task.cancel(f"cancelled: {reason}")

    async def _watch(self) -> None:
        if self.should_stop is None:
            return
        while not self.stopped.is_set():
            reason = self.should_stop()
            if reason:
                self.stop(reason)
                return
            await asyncio.sleep(_STOP_POLL_S)

    async def _prewarm(self) -> None:
        config = self.config
        total = config.warmup + (config.requests if config.requests is not None else 10**9)
        if config.rate is None:
            want = config.parallel or 1
        elif config.parallel is not None:
            want = config.parallel
        else:
            # enough for about two seconds of arrivals; more open on demand
            want = min(_PREWARM_CAP, math.ceil(config.rate * 2))
        want = min(want, total)
        if want > 0:
            with contextlib.suppress(ClientError):
                await self.pool.prewarm(want)

    async def _phase(self, *, warmup: bool, count: int | None, duration: float | None) -> None:
        if count == 0:
            return
        deadline = monotonic() + duration if duration is not None else math.inf
        if self.config.rate is None:
            await self._closed_loop(warmup, count, deadline)
        else:
            await self._open_loop(warmup, count, deadline)

    async def _closed_loop(self, warmup: bool, count: int | None, deadline: float) -> None:
        sequence = itertools.count() if count is None else iter(range(count))

        async def user() -> None:
            for position in sequence:
                if self.stopped.is_set() or monotonic() >= deadline:
                    return
                await self._one(next(self._index), position, warmup, None)

        users = [asyncio.create_task(user()) for _ in range(self.config.parallel or 1)]
        self.in_flight.update(users)
        try:
            outcomes = await asyncio.gather(*users, return_exceptions=True)
        finally:
            self.in_flight.difference_update(users)
        _raise_bug(outcomes)

    async def _open_loop(self, warmup: bool, count: int | None, deadline: float) -> None:
        config = self.config
        assert config.rate is not None
        cap = asyncio.Semaphore(config.parallel) if config.parallel is not None else None
        # warmup and measured phases draw from differently seeded schedules
        offsets: Iterator[float] = arrival_offsets(
            config.rate,
            config.arrival,
            burstiness=config.burstiness,
            seed=config.seed + (1 if warmup else 0),
        )
        positions = itertools.count() if count is None else iter(range(count))
        tasks: set[asyncio.Task[None]] = set()
        start = monotonic()
        for position, offset in zip(positions, offsets, strict=False):
            scheduled = start + offset
            if scheduled >= deadline or self.stopped.is_set():
                break
            delay = scheduled - monotonic()
            if delay > 0 and await self._sleep_or_stop(delay):
                break
            if cap is not None:
                await cap.acquire()
                if self.stopped.is_set():
                    cap.release()
                    break
            task = asyncio.create_task(
                self._one(next(self._index), position, warmup, scheduled, cap)
            )
            tasks.add(task)
            self.in_flight.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(self.in_flight.discard)
        if tasks:
            _raise_bug(await asyncio.gather(*tasks, return_exceptions=True))

    async def _sleep_or_stop(self, delay: float) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopped.wait(), delay)
        return self.stopped.is_set()

    # -- one request -----------------------------------------------------------------------

    def _payload(self, prompt_index: int) -> bytes:
        payload = self._payloads.get(prompt_index)
        if payload is None:
            body = request_body(self.endpoint, self.prompts[prompt_index], self.config)
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            payload = build_request(self.origin, "POST", self.path, data, self.headers)
            self._payloads[prompt_index] = payload
        return payload

    async def _one(
        self,
        index: int,
        position: int,
        warmup: bool,
        scheduled_at: float | None,
        cap: asyncio.Semaphore | None = None,
    ) -> None:
        prompt_index = position % len(self.prompts)
        base: dict[str, Any] = {
            "index": index,
            "prompt_index": prompt_index,
            "warmup": warmup,
            "scheduled_at": scheduled_at,
            "server": "",
        }
        prompt = self.prompts[prompt_index]
        chat = self.config.api == "chat"
        slot = _Slot()
        try:
            exchange = await self._exchange(self._payload(prompt_index), slot)
            # parsing waits for the parser task, so that a burst of responses ending together
            # cannot hold the loop while other streams' chunks wait for their timestamps
            self._completed.append((base, exchange, prompt))
            self._wake_parser.set()
            return
        except ClientError as exc:
            now = monotonic()
            record = RequestRecord(
                **base,
                sent_at=now,
                end_at=now,
                error=ErrorCategory(exc.kind),
                error_message=str(exc),
            )
        except asyncio.CancelledError:
            self._keep(_cancelled(base, slot.exchange, self.interrupted, chat))
            raise
        finally:
            if cap is not None:
                cap.release()
        self._keep(record)

    def _keep(self, record: RequestRecord) -> None:
        """Keep a record; stop the run when the server looks hung or failures pass the budget.

        A hung server that still accepts connections makes every request wait its whole read
        timeout: without this, 100 requests from 10 users would take 10 x 300 s.
        """
        self.records.append(record)
        if self.stopped.is_set():
            return  # requests cancelled by the stop say so themselves
        config = self.config
        if record.error is ErrorCategory.TIMEOUT:
            self._timeouts_in_row += 1
            limit = config.max_consecutive_timeouts
            if limit is not None and self._timeouts_in_row >= limit:
                self.stop(
                    f"{self._timeouts_in_row} requests in a row timed out (last: "
                    f"{record.error_message}); the server looks hung, so the run stopped and "
                    f"the rest were not sent (load.max_consecutive_timeouts: {limit})"
                )
                return
        else:
            self._timeouts_in_row = 0
        if not record.warmup and not record.ok:
            self._failed_measured += 1
            budget = self._budget
            if budget is not None and self._failed_measured > budget:
                self.stop(
                    f"{self._failed_measured} measured requests failed, more than "
                    f"load.failure_budget allows ({budget}), so the run stopped and the rest "
                    "were not sent"
                )

    async def _exchange(self, payload: bytes, slot: _Slot) -> Exchange:
        """Send one request and wait for its whole answer, reconnecting once for a stale socket."""
        loop = asyncio.get_running_loop()
        config = self.config
        # a request is sent when the client starts on it: opening a connection (the server must
        # accept it) is part of its latency, as for a real user, and not dispatch lag
        dispatched_at = monotonic()
        for attempt in (0, 1):
            conn, reused = await self.pool.acquire()
            done: asyncio.Future[None] = loop.create_future()
            exchange = slot.exchange = conn.start(payload, done, config.max_response_bytes)
            exchange.sent_at = dispatched_at
            deadline = exchange.sent_at + config.total_timeout
            timer = _Watchdog(loop, exchange, config.read_timeout, deadline)
            try:
                await done
            except BaseException:
                self.pool.discard(conn)
                raise
            finally:
                timer.cancel()
            stale = (
                reused
                and attempt == 0
                and exchange.error is not None
                and exchange.first_byte_at is None
                and exchange.error.kind == "stream_broken"
            )
            self.pool.release(conn, exchange.error is None and exchange.keep_alive)
            if not stale:
                return exchange
        raise AssertionError("unreachable")

    def _count_missing_tokens(self, records: list[RequestRecord]) -> list[RequestRecord]:
        # counting runs after the measured window, so a slow tokenizer cannot skew the timing
        count = self.count_tokens
        if count is None:
            return records
        out = []
        for record in records:
            changes: dict[str, Any] = {}
            reasoning = str(record.extra.get("reasoning_text", ""))
            if record.reasoning_tokens is None and record.ok and reasoning:
                changes["reasoning_tokens"] = count(reasoning)
            if record.output_tokens is None and record.ok:
                # the answer and the reasoning are separate texts: counted apart, no token
                # spans the boundary between them
                answer = count(record.output_text) if record.output_text else 0
                changes["output_tokens"] = answer + (
                    changes.get("reasoning_tokens", record.reasoning_tokens) or 0
                )
                changes["token_source"] = "tokenizer"
            if record.input_tokens is None:
                prompt = self.prompts[record.prompt_index]
                changes["input_tokens"] = (
                    prompt.input_tokens
                    if prompt.input_tokens is not None
                    else count(prompt.as_text())
                )
            out.append(replace(record, **changes) if changes else record)
        return out


def _raise_bug(outcomes: Sequence[object]) -> None:
    # requests turn every failure into a record; anything else escaping one is a bug to show
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            raise outcome


class _Slot:
    """The exchange a request is waiting on, so a cancelled request can keep what arrived."""

    __slots__ = ("exchange",)

    def __init__(self) -> None:
        self.exchange: Exchange | None = None


class _Watchdog:
    """Read (longest silence) and total timeouts with one timer that rarely needs moving."""

    __slots__ = ("_deadline", "_exchange", "_handle", "_loop", "_read_timeout")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        exchange: Exchange,
        read_timeout: float,
        deadline: float,
    ) -> None:
        self._loop = loop
        self._exchange = exchange
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._handle = loop.call_at(min(exchange.sent_at + read_timeout, deadline), self._check)

    def _check(self) -> None:
        exchange = self._exchange
        if exchange.finished:
            return
        now = self._loop.time()
        silent_until = exchange.last_at + self._read_timeout
        if now >= self._deadline:
            exchange.fail(
                ClientError(
                    "timeout",
                    f"total timeout: no complete answer after "
                    f"{self._deadline - exchange.sent_at:g} s",
                )
            )
        elif now >= silent_until:
            exchange.fail(
                ClientError("timeout", f"read timeout: server silent for {self._read_timeout:g} s")
            )
        else:
            self._handle = self._loop.call_at(min(silent_until, self._deadline), self._check)

    def cancel(self) -> None:
        self._handle.cancel()


# -- turning a received answer into a record ----------------------------------------------


def _record(
    base: dict[str, Any], exchange: Exchange, config: LoadConfig, prompt: Prompt
) -> Generator[None, None, RequestRecord]:
    """Build the record of a finished exchange; yields now and then while parsing a long stream."""
    try:
        return (yield from _read(base, exchange, config, prompt))
    except Exception as exc:  # an answer too odd to read is a failed request, not a crash
        return _unreadable(base, exchange, exc)


def _read(
    base: dict[str, Any], exchange: Exchange, config: LoadConfig, prompt: Prompt
) -> Generator[None, None, RequestRecord]:
    error = exchange.error
    end_at = exchange.end_at if exchange.end_at is not None else monotonic()
    fields: dict[str, Any] = {
        **base,
        "sent_at": exchange.sent_at,
        "end_at": end_at,
        "http_status": exchange.status or None,
    }
    status = exchange.status
    if error is None and not 200 <= status < 300:
        text = exchange.body[:2000].decode("utf-8", "replace")
        category = ErrorCategory.HTTP_5XX if status >= 500 else ErrorCategory.HTTP_4XX
        return RequestRecord(
            **fields,
            error=category,
            error_message=f"HTTP {status}: {text[:_ERROR_BODY_CHARS]}",
        )
    chat = config.api == "chat"
    if config.stream and "json" not in exchange.headers.get("content-type", ""):
        parsed = yield from _parse_stream(exchange, chat)
    else:
        parsed = _parse_json(exchange, chat)
    fields.update(parsed.fields)
    extra: dict[str, Any] = {}
    if parsed.response_id:
        extra["response_id"] = parsed.response_id
    if parsed.reasoning:
        extra["reasoning_text"] = parsed.reasoning
    if error is not None:
        return RequestRecord(
            **fields, extra=extra, error=ErrorCategory(error.kind), error_message=str(error)
        )
    if parsed.error:
        return RequestRecord(
            **fields, extra=extra, error=ErrorCategory.STREAM_BROKEN, error_message=parsed.error
        )
    if not parsed.text and not parsed.reasoning:
        return RequestRecord(
            **fields,
            extra=extra,
            error=ErrorCategory.EMPTY_OUTPUT,
            error_message=(
                f"HTTP {status} answer carried no generated text "
                f"(finish_reason={fields.get('finish_reason')!r})"
            ),
        )
    if fields.get("input_tokens") is None and prompt.input_tokens is not None:
        fields["input_tokens"] = prompt.input_tokens
    if fields.get("reasoning_tokens") is None and not parsed.reasoning:
        fields["reasoning_tokens"] = 0
    return RequestRecord(**fields, extra=extra)


@dataclass
class _Parsed:
    fields: dict[str, Any]
    text: str = ""
    reasoning: str = ""
    response_id: str = ""
    error: str = ""


# Fast paths for what makes up almost all of a stream.
#
# A chunk whose delta is nothing but content, with a null finish reason, gives its text to a
# regex instead of the JSON decoder. Quotes inside JSON strings are escaped, so the pattern
# only matches the object's own structure; the brace right after the text rules out reasoning
# and tool calls in the same delta, and no bracket may come between it and the null finish
# reason, so both belong to the same choice. Usage and errors come in chunks of their own.
_STRING = rb'"([^"\\]*(?:\\.[^"\\]*)*)"'
_PLAIN_CHAT = re.compile(rb'"delta":\{"content":' + _STRING + rb'\}[^{}\[\]]*"finish_reason":null')
_PLAIN_TEXT = re.compile(
    rb'"choices":\[\{"index":0,"text":' + _STRING + rb'[^{}\[\]]*"finish_reason":null'
)
# A chunked body whose every frame holds one whole single-line `data:` event (what vLLM and
# most servers send) is split on the frame ends at once, with no per-frame decoding.
_FRAME_END = b"\n\n\r\n"  # an event's blank line, then the frame's CRLF
_DATA_LINE = b"\r\ndata: "


class _StreamState:
    """What a stream's events add up to, fed in order."""

    __slots__ = (
        "chat",
        "content_times",
        "error",
        "finish_reason",
        "first_chunk_at",
        "reasoning_only",
        "reasonings",
        "response_id",
        "texts",
        "usage",
    )

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.first_chunk_at: float | None = None
        self.content_times: list[float] = []
        self.texts: list[bytes | str] = []  # bytes: a JSON string body from the fast path
        self.reasonings: list[str] = []
        # positions in content_times of events with reasoning and no answer text; the fast
        # paths carry answer text only, so they never add to it
        self.reasoning_only: list[int] = []
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.response_id = ""
        self.error = ""

    def event(self, at: float, data: bytes) -> bool:
        """Take one event through the JSON decoder; False when the stream is broken."""
        if data == b"[DONE]":
            return True
        try:
            chunk = json.loads(data)
        except ValueError:
            self.error = f"malformed SSE data: {data[:200]!r}"
            return False
        if not isinstance(chunk, dict):
            self.error = f"unexpected SSE data: {data[:200]!r}"
            return False
        if chunk.get("error"):
            error = json.dumps(chunk["error"])[:_ERROR_BODY_CHARS]
            self.error = f"server error event: {error}"
            return False
        if not self.response_id and chunk.get("id"):
            self.response_id = str(chunk["id"])
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or ()
        if not choices:
            return True
        choice = choices[0]
        if self.chat:
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
        else:
            text = choice.get("text") or ""
            reasoning = ""
        if text or reasoning:
            if not text:
                self.reasoning_only.append(len(self.content_times))
            self.content_times.append(at)
            if text:
                self.texts.append(text)
            if reasoning:
                self.reasonings.append(reasoning)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return True

    def parsed(self) -> _Parsed:
        texts = self.texts
        if all(isinstance(t, bytes) for t in texts):
            joined = b"".join(cast(list[bytes], texts))
            output = joined.decode("utf-8") if b"\\" not in joined else _strings(texts)
        else:
            output = _strings(texts)
        times = self.content_times
        first_answer = 0
        for position in self.reasoning_only:
            if position != first_answer:
                break
            first_answer += 1
        fields: dict[str, Any] = {
            "first_chunk_at": self.first_chunk_at,
            "first_content_at": times[0] if times else None,
            "first_answer_at": times[first_answer] if first_answer < len(times) else None,
            "content_times": tuple(times),
            "finish_reason": self.finish_reason,
            "output_text": output,
        }
        _usage_fields(fields, self.usage)
        reasoning = "".join(self.reasonings)
        return _Parsed(fields, output, reasoning, self.response_id, self.error)


def _strings(texts: list[bytes | str]) -> str:
    return "".join(
        t if isinstance(t, str) else json.loads(b'"' + t + b'"') if b"\\" in t else t.decode()
        for t in texts
    )


def _parse_stream(exchange: Exchange, chat: bool) -> Generator[None, None, _Parsed]:
    state = _StreamState(chat)
    if exchange.chunked and (yield from _bulk_stream(exchange, state)):
        return state.parsed()
    state = _StreamState(chat)
    plain = (_PLAIN_CHAT if chat else _PLAIN_TEXT).search
    body, ends = exchange.decoded()
    times = exchange.times
    last_piece = len(ends) - 1
    piece = 0
    for count, (end, data, _name) in enumerate(iter_events(body), 1):
        if count % _EVENTS_PER_SLICE == 0:
            yield
        # events come in body order, so the read that completed each one only moves forward
        while piece < last_piece and ends[piece] < end:
            piece += 1
        at = times[piece]
        if state.first_chunk_at is None:
            state.first_chunk_at = at
        else:
            match = plain(data)
            if match is not None:
                text = match.group(1)
                if text:
                    state.content_times.append(at)
                    state.texts.append(text)
                continue
        if not state.event(at, data):
            break
    return state.parsed()


def _bulk_stream(exchange: Exchange, state: _StreamState) -> Generator[None, None, bool]:
    """Read a stream of one single-line event per frame with bulk operations; False if not one.

    The reader followed the framing as it arrived and counted the frames. If splitting on
    frame ends gives as many segments, and every segment holds exactly the one line break of
    its size line followed by ``data: ``, then each segment is one frame holding one event.
    """
    pieces = exchange.pieces
    raw = b"".join(pieces)
    segments = raw.split(_FRAME_END)
    tail = segments.pop()
    count = len(segments)
    if not count or count != exchange.frames or (tail and not tail.startswith(b"0\r\n")):
        return False
    if (
        raw.count(b"\n") != 4 * count + tail.count(b"\n")
        or raw.count(b"\r") != 2 * count + tail.count(b"\r")
        or raw.count(_DATA_LINE) != count
    ):
        return False
    # an event arrived with the read that held the last byte of its frame end
    completed = []
    previous = 0
    for end in accumulate(map(len, pieces)):
        completed.append(raw.count(_FRAME_END, max(previous - 3, 0), end))
        previous = end
    event_times = list(chain.from_iterable(map(repeat, exchange.times, completed)))
    if len(event_times) != count:
        return False
    state.first_chunk_at = event_times[0]
    plain = (_PLAIN_CHAT if state.chat else _PLAIN_TEXT).search
    content_times = state.content_times
    texts = state.texts
    events = zip(event_times, segments, map(plain, segments), strict=True)
    for index, (at, segment, match) in enumerate(events, 1):
        if index % _EVENTS_PER_SLICE == 0:
            yield
        if match is not None:
            text = match.group(1)
            if text:
                content_times.append(at)
                texts.append(text)
        elif not state.event(at, segment[segment.index(_DATA_LINE) + len(_DATA_LINE) :]):
            break
    return True


def _parse_json(exchange: Exchange, chat: bool) -> _Parsed:
    at = exchange.end_at
    fields: dict[str, Any] = {"first_chunk_at": at}
    try:
        answer = json.loads(exchange.body)
    except ValueError:
        if exchange.error is not None:
            return _Parsed(fields)
        return _Parsed(fields, error=f"malformed JSON answer: {exchange.body[:200]!r}")
    if not isinstance(answer, dict):
        return _Parsed(fields, error=f"unexpected JSON answer: {exchange.body[:200]!r}")
    choices = answer.get("choices") or ()
    text = reasoning = ""
    if choices:
        choice = choices[0]
        if chat:
            message = choice.get("message") or {}
            text = message.get("content") or ""
            reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
        else:
            text = choice.get("text") or ""
        fields["finish_reason"] = choice.get("finish_reason")
    if text or reasoning:
        fields["first_content_at"] = at
        fields["content_times"] = (at,)
    if text:
        fields["first_answer_at"] = at
    fields["output_text"] = text
    _usage_fields(fields, answer.get("usage"))
    return _Parsed(fields, text, reasoning, str(answer.get("id") or ""))


def _usage_fields(fields: dict[str, Any], usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    completion = usage.get("completion_tokens")
    prompt = usage.get("prompt_tokens")
    if isinstance(completion, int):
        fields["output_tokens"] = completion
        fields["token_source"] = "usage"
    if isinstance(prompt, int):
        fields["input_tokens"] = prompt
    # OpenAI's and vLLM's split of completion_tokens; transformers serve sends none
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
        fields["reasoning_tokens"] = details["reasoning_tokens"]


def _unreadable(base: dict[str, Any], exchange: Exchange, exc: Exception) -> RequestRecord:
    return RequestRecord(
        **base,
        sent_at=exchange.sent_at,
        end_at=exchange.end_at if exchange.end_at is not None else monotonic(),
        http_status=exchange.status or None,
        error=ErrorCategory.STREAM_BROKEN,
        error_message=f"unreadable answer ({type(exc).__name__}: {exc})",
    )


def _cancelled(
    base: dict[str, Any], exchange: Exchange | None, reason: str | None, chat: bool
) -> RequestRecord:
    now = monotonic()
    message = f"cancelled: {reason or 'run stopped'}"
    if exchange is None:
        return RequestRecord(
            **base,
            sent_at=now,
            end_at=now,
            error=ErrorCategory.STREAM_BROKEN,
            error_message=message + " (before it was sent)",
        )
    fields: dict[str, Any] = {}
    if exchange.pieces and "json" not in exchange.headers.get("content-type", ""):
        parser = _parse_stream(exchange, chat)
        while True:
            try:
                next(parser)
            except StopIteration as done:
                fields = done.value.fields
                break
    return RequestRecord(
        **base,
        **fields,
        sent_at=exchange.sent_at,
        end_at=now,
        http_status=exchange.status or None,
        error=ErrorCategory.STREAM_BROKEN,
        error_message=message,
    )
