"""The load engine: sends prompts to an OpenAI-compatible endpoint and records every request.

Closed loop (``parallel`` users, each sending its next prompt when the previous one ends) or open
loop (``rate`` requests per second on a seeded arrival schedule, optionally capped at ``parallel``
in flight). Warmup requests run first, at the same concurrency, and the measured phase starts when
they have all ended, so the measured window holds measured requests only. A request never raises:
its outcome, good or bad, is a RequestRecord. This module runs the load (users, schedule, window,
stopping); ``http_client`` carries the bytes and ``decode`` reads the answers. docs/load-engine.md
explains the timing design.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import math
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from time import monotonic
from typing import Any

from pytest_llmslo import interrupts
from pytest_llmslo.arrivals import arrival_offsets
from pytest_llmslo.client_health import ClientHealth, LagProbe
from pytest_llmslo.config import LoadConfig
from pytest_llmslo.decode import DecodePath, decode_answer, decode_stream, finish
from pytest_llmslo.http_client import (
    ClientError,
    ConnectionPool,
    Exchange,
    Origin,
    build_request,
    parse_base_url,
)
from pytest_llmslo.progress import LoadProgress
from pytest_llmslo.records import Endpoint, ErrorCategory, Prompt, RequestRecord

CountTokens = Callable[[str], int]
ShouldStop = Callable[[], "str | None"]

# what a run stores of each finished record (load.run_load's `keep`)
Keep = Callable[[RequestRecord], RequestRecord]
_STOP_POLL_S = 0.05
_PREWARM_CAP = 256  # open loop without a cap: connections opened ahead of the first send


@dataclass(frozen=True)
class LoadResult:
    """Every request of one run and the measured window."""

    records: list[RequestRecord]  # every request, warmup included (record.warmup flags it)
    window_start: float  # time.monotonic(): first measured (non-warmup) send
    window_end: float  # last measured end
    config: LoadConfig
    interrupted: str | None = None  # why the run stopped early; the records are kept
    # how many answers each decoder read (decode.DecodePath): a vLLM-shaped stream that is not
    # read by "bulk" costs about half of the client's capacity, and only this count shows it
    decoded_by: dict[DecodePath, int] = field(default_factory=dict)
    client: ClientHealth | None = None  # the client's side of the measured phase

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
    progress: LoadProgress | None = None,
    keep: Keep | None = None,
) -> LoadResult:
    """Run one load test to completion (or interruption) and return every record.

    ``on_measured_start`` is called once the warmup requests have all ended, just before the
    first measured one is sent (nothing is in flight then, so it may block briefly): telemetry
    uses it to leave warmup out of the server's /metrics counters. ``progress`` is counted up
    as requests finish, for a display in another thread to read (progress.py). ``keep`` is
    called once for every finished record as it completes, in the thread that receives it; the
    run stores what it returns (the slim form, once the full record is written out: a long run
    then holds no chunk times, record_log.py).
    """
    return asyncio.run(
        run_load_async(
            endpoint,
            prompts,
            config,
            count_tokens=count_tokens,
            should_stop=should_stop,
            on_measured_start=on_measured_start,
            progress=progress,
            keep=keep,
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
    progress: LoadProgress | None = None,
    keep: Keep | None = None,
) -> LoadResult:
    """Same as :func:`run_load`, inside a running event loop."""
    check_load(config, prompts)
    run = _Run(endpoint, prompts, config, count_tokens, should_stop)
    run.on_measured_start = on_measured_start
    run.progress = progress
    run.keep = keep
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
        self._decoded_by: Counter[DecodePath] = Counter()
        self._closing = False
        self._index = itertools.count()
        self._timeouts_in_row = 0
        self._failed_measured = 0
        self._budget = failure_budget(config)
        self.on_measured_start: Callable[[], None] | None = None
        self.progress: LoadProgress | None = None
        self.keep: Keep | None = None

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
        # the client's own health over the measured phase (client_health.py)
        probe = LagProbe()
        client: ClientHealth | None = None
        try:
            await self._prewarm()
            if self.config.warmup and not self.stopped.is_set():
                if self.progress is not None:
                    self.progress.warming(self.config.warmup)
                await self._phase(warmup=True, count=self.config.warmup, duration=None)
            if self.on_measured_start is not None and not self.stopped.is_set():
                self.on_measured_start()
            measured_start = monotonic()
            if not self.stopped.is_set():
                count = self.config.requests
                if count is None and self.config.duration is None:
                    count = len(self.prompts)
                if self.progress is not None:
                    self.progress.measuring(count, self.config.duration, monotonic())
                probe.start()
                try:
                    await self._phase(warmup=False, count=count, duration=self.config.duration)
                finally:
                    client = await probe.stop()
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
        return LoadResult(
            records,
            window_start,
            window_end,
            self.config,
            self.interrupted,
            dict(sorted(self._decoded_by.items())),
            client,
        )

    async def _parse_completed(self) -> None:
        config = self.config
        while True:
            if self._completed:
                base, exchange, prompt = self._completed.popleft()
                decoding = decode_answer(base, exchange, config, prompt)
                while True:
                    try:
                        next(decoding)
                    except StopIteration as done:
                        self._decoded_by[done.value.path] += 1
                        self._keep(done.value.record)
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
        if self.progress is not None:
            self.progress.count(record)
        self.records.append(self.keep(record) if self.keep is not None else record)
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
        return count_missing_tokens(records, self.prompts, self.count_tokens)


def needs_counting(record: RequestRecord) -> bool:
    """Whether count_missing_tokens, given a tokenizer, would count something for `record`."""
    if record.input_tokens is None:
        return True
    if not record.ok:
        return False
    reasoning = bool(record.extra.get("reasoning_text"))
    return record.output_tokens is None or (record.reasoning_tokens is None and reasoning)


def count_missing_tokens(
    records: list[RequestRecord], prompts: Sequence[Prompt], count: CountTokens | None
) -> list[RequestRecord]:
    """`records` with the token counts the server did not send counted with `count` (labelled
    `token_source: tokenizer`); as they are without a tokenizer."""
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
            prompt = prompts[record.prompt_index]
            changes["input_tokens"] = (
                prompt.input_tokens if prompt.input_tokens is not None else count(prompt.as_text())
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


# -- a request cancelled by a stop ------------------------------------------------------


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
        # what had arrived is kept: the run is stopping, so the loop need not be given turns
        fields = finish(decode_stream(exchange, chat)).fields
    return RequestRecord(
        **base,
        **fields,
        sent_at=exchange.sent_at,
        end_at=now,
        http_status=exchange.status or None,
        error=ErrorCategory.STREAM_BROKEN,
        error_message=message,
    )
