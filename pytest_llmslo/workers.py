"""Worker processes: one load spread over several client processes on this host.

One event loop reads every stream of a load and stamps every chunk; past a few hundred fast
streams it is the client, not the server, that sets the pace (client_health.py says when). With
`load.workers: N` the load is divided (`parallel`, `rate`, `requests` and `warmup` split, each
worker with its own arrival seed and its own turn through the prompts) and run by N spawned
processes, each the same engine as a single-process run (load.py). They finish their warmup,
wait for one another, and start the measured phase together, so the window and the telemetry's
measured start are one; then each sends its records back once, at the end, as plain tuples in
one pickle (not an object, nor a message, per chunk). The parent merges them into one record
set: one window, one summary, one report. Timestamps are time.monotonic(), one clock for every
process on the host.

Signals stop every worker through the parent (the workers ignore SIGINT, SIGTERM and SIGHUP,
which a terminal sends to the whole process group): the parent sets one stop event, each
worker's engine stops dispatching and cancels what is in flight, keeps its records and sends
them. A worker that dies is reported as the reason the load stopped early, and the other
workers' records are kept.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import signal
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from multiprocessing.connection import Connection, wait
from typing import Any

from pytest_llmslo import interrupts
from pytest_llmslo.client_health import ClientHealth
from pytest_llmslo.config import LoadConfig
from pytest_llmslo.load import LoadResult, count_missing_tokens, run_load
from pytest_llmslo.progress import LoadProgress
from pytest_llmslo.records import Endpoint, ErrorCategory, Prompt, RequestRecord

AUTO_STREAMS_PER_WORKER = 256
AUTO_RATE_PER_WORKER = 200.0
POLL_S = 0.05
_FIELDS = tuple(f.name for f in fields(RequestRecord))
_TIMES = _FIELDS.index("content_times")
_ERROR = _FIELDS.index("error")


def run_load_any(
    endpoint: Endpoint,
    prompts: Sequence[Prompt],
    config: LoadConfig,
    *,
    count_tokens: Callable[[str], int] | None = None,
    should_stop: Callable[[], str | None] | None = None,
    on_measured_start: Callable[[], None] | None = None,
    progress: LoadProgress | None = None,
) -> LoadResult:
    """`config` in this process, or spread over the worker processes `load.workers` asks for.

    `progress` counts requests as they finish in this process; the workers' records arrive at
    the end, and are counted then.
    """
    parts = worker_count(config)
    if parts == 1:
        return run_load(
            endpoint,
            prompts,
            config,
            count_tokens=count_tokens,
            should_stop=should_stop,
            on_measured_start=on_measured_start,
            progress=progress,
        )
    spread = run_load_spread(
        endpoint,
        prompts,
        config,
        parts,
        count_tokens=count_tokens,
        should_stop=should_stop,
        on_measured_start=on_measured_start,
    )
    if progress is not None:
        progress.measuring(config.requests, config.duration, spread.window_start)
        for record in spread.records:
            progress.count(record)
    return spread


def worker_count(config: LoadConfig, cores: int | None = None) -> int:
    """How many processes `config` runs in: as set, or for `auto` one per 256 streams (closed
    loop) or 200 req/s (open loop), at most the host's cores less one (the server and the parent
    need some), and never more than there are users or requests to share."""
    wanted = config.workers
    if wanted == 0:
        host = cores if cores is not None else (os.cpu_count() or 1)
        if config.rate is not None:
            need = math.ceil(config.rate / AUTO_RATE_PER_WORKER)
        else:
            need = math.ceil((config.parallel or 1) / AUTO_STREAMS_PER_WORKER)
        wanted = max(1, min(need, host - 1))
    if config.rate is None:
        wanted = min(wanted, config.parallel or 1)
    if config.requests is not None:
        wanted = min(wanted, max(config.requests, 1))
    return max(wanted, 1)


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def shares(config: LoadConfig, parts: int) -> list[LoadConfig]:
    """Each worker's part of `config`: users, rate, requests and warmup divided among `parts`
    (the duration is everyone's), a seed of its own so arrival schedules differ."""
    parallel = _split(config.parallel, parts) if config.parallel is not None else None
    requests = _split(config.requests, parts) if config.requests is not None else None
    warmup = _split(config.warmup, parts)
    return [
        replace(
            config,
            workers=1,
            parallel=parallel[i] if parallel is not None else None,
            rate=config.rate / parts if config.rate is not None else None,
            requests=requests[i] if requests is not None else None,
            warmup=warmup[i],
            seed=config.seed + i,
        )
        for i in range(parts)
    ]


def _rotated(prompts: Sequence[Prompt], worker: int, parts: int) -> tuple[list[Prompt], int]:
    """The prompts as worker `worker` takes them (starting its own way into the list, so the
    workers do not send the same prompt at the same moment), and the rotation."""
    offset = (worker * len(prompts)) // parts
    return [*prompts[offset:], *prompts[:offset]], offset


# --- records across a process boundary ---------------------------------------------------------


def encode(records: Sequence[RequestRecord]) -> list[tuple[Any, ...]]:
    """Records as plain tuples (chunk times packed as doubles): cheap to pickle in one piece."""
    out = []
    for record in records:
        row = [getattr(record, name) for name in _FIELDS]
        row[_TIMES] = array("d", record.content_times).tobytes()
        row[_ERROR] = record.error.value if record.error is not None else None
        out.append(tuple(row))
    return out


def decode(rows: Sequence[tuple[Any, ...]]) -> list[RequestRecord]:
    out = []
    for row in rows:
        values = list(row)
        values[_TIMES] = tuple(array("d", values[_TIMES]))
        values[_ERROR] = ErrorCategory(values[_ERROR]) if values[_ERROR] is not None else None
        out.append(RequestRecord(**dict(zip(_FIELDS, values, strict=True))))
    return out


@dataclass(frozen=True)
class _Sent:
    """What one worker sends back, once."""

    rows: list[tuple[Any, ...]]
    window: tuple[float, float]
    measured: int
    interrupted: str | None
    decoded_by: dict[str, int]
    client: ClientHealth | None


# --- the worker ------------------------------------------------------------------------------


def _worker(
    endpoint: Endpoint,
    prompts: list[Prompt],
    share: LoadConfig,
    warmed: Any,
    go: Any,
    stop: Any,
    conn: Connection,
) -> None:
    # the terminal signals the whole process group: the parent decides, through `stop`
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)

    def measured_start() -> None:
        warmed.set()
        while not go.wait(POLL_S) and not stop.is_set():
            pass

    try:
        result = run_load(
            endpoint,
            prompts,
            share,
            should_stop=lambda: "stopped with the other workers" if stop.is_set() else None,
            on_measured_start=measured_start,
        )
        warmed.set()  # a run stopped before its measured phase must not hold the others
        sent = _Sent(
            encode(result.records),
            (result.window_start, result.window_end),
            len(result.measured),
            result.interrupted,
            {str(k): v for k, v in result.decoded_by.items()},
            result.client,
        )
        conn.send_bytes(pickle.dumps(sent, protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        warmed.set()
        conn.close()


# --- the parent ------------------------------------------------------------------------------


def run_load_spread(
    endpoint: Endpoint,
    prompts: Sequence[Prompt],
    config: LoadConfig,
    parts: int,
    *,
    count_tokens: Callable[[str], int] | None = None,
    should_stop: Callable[[], str | None] | None = None,
    on_measured_start: Callable[[], None] | None = None,
) -> LoadResult:
    """`config` run by `parts` worker processes, merged into one LoadResult."""
    context = mp.get_context("spawn")  # fork would copy the telemetry threads' locks
    stop = context.Event()
    go = context.Event()
    signalled: list[str] = []  # set by the signal handler, which may take no lock
    restore = interrupts.listen(signalled.append)
    workers: list[tuple[Any, Connection, Any, int]] = []
    try:
        for i, share in enumerate(shares(config, parts)):
            own, offset = _rotated(prompts, i, parts)
            receive, send = context.Pipe(duplex=False)
            warmed = context.Event()
            process = context.Process(
                target=_worker,
                args=(endpoint, own, share, warmed, go, stop, send),
                name=f"llmslo-worker-{i}",
                daemon=True,
            )
            process.start()
            send.close()
            workers.append((process, receive, warmed, offset))
        reason = _await_warmup(workers, stop, should_stop, signalled)
        if reason is None and on_measured_start is not None:
            on_measured_start()
        go.set()
        sent, reason = _collect(workers, stop, should_stop, signalled, reason)
    finally:
        stop.set()
        go.set()
        for process, receive, _, _ in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
            receive.close()
        restore()
    return _merge(config, prompts, sent, reason, count_tokens)


def _stop_reason(
    workers: Sequence[tuple[Any, Connection, Any, int]],
    should_stop: Callable[[], str | None] | None,
    signalled: list[str],
    waiting_for: set[int],
) -> str | None:
    if signalled:
        return signalled[0]
    reason = should_stop() if should_stop is not None else None
    if reason:
        return reason
    for i in waiting_for:
        process = workers[i][0]
        if not process.is_alive() and not workers[i][1].poll():
            return (
                f"client worker {i} exited with status {process.exitcode} before sending its "
                "records"
            )
    return None


def _await_warmup(
    workers: Sequence[tuple[Any, Connection, Any, int]],
    stop: Any,
    should_stop: Callable[[], str | None] | None,
    signalled: list[str],
) -> str | None:
    """Wait until every worker finished its warmup; the reason to stop instead, if one came."""
    while not all(warmed.is_set() for _, _, warmed, _ in workers):
        reason = _stop_reason(workers, should_stop, signalled, set(range(len(workers))))
        if reason is not None:
            stop.set()
            return reason
        time.sleep(POLL_S)
    return None


def _collect(
    workers: Sequence[tuple[Any, Connection, Any, int]],
    stop: Any,
    should_stop: Callable[[], str | None] | None,
    signalled: list[str],
    reason: str | None,
) -> tuple[list[tuple[_Sent, int]], str | None]:
    """Every worker's records as they arrive, and why the load stopped early (if it did)."""
    sent: list[tuple[_Sent, int]] = []
    waiting = {i: workers[i][1] for i in range(len(workers))}
    while waiting:
        for ready in wait(list(waiting.values()), timeout=POLL_S):
            i = next(k for k, c in waiting.items() if c is ready)
            conn = waiting.pop(i)
            try:
                sent.append((pickle.loads(conn.recv_bytes()), workers[i][3]))
            except (EOFError, OSError) as exc:
                reason = reason or f"client worker {i} sent no records ({type(exc).__name__})"
                stop.set()
        if reason is None and waiting:
            reason = _stop_reason(workers, should_stop, signalled, set(waiting))
            if reason is not None:
                stop.set()
    return sent, reason


def _merge(
    config: LoadConfig,
    prompts: Sequence[Prompt],
    sent: Sequence[tuple[_Sent, int]],
    reason: str | None,
    count_tokens: Callable[[str], int] | None,
) -> LoadResult:
    """One record set from the workers': prompt indices back to the dataset's, in order of
    sending, indexed anew; one window from the first measured send to the last measured end."""
    records: list[RequestRecord] = []
    for part, offset in sent:
        for record in decode(part.rows):
            original = (record.prompt_index + offset) % len(prompts)
            records.append(replace(record, prompt_index=original))
    records.sort(key=lambda r: r.sent_at)
    records = [replace(r, index=i) for i, r in enumerate(records)]
    records = count_missing_tokens(records, prompts, count_tokens)
    measured = [part.window for part, _ in sent if part.measured]
    start = min((w[0] for w in measured), default=time.monotonic())
    end = max((w[1] for w in measured), default=start)
    interrupted = reason or next((p.interrupted for p, _ in sent if p.interrupted), None)
    decoded: Counter[str] = Counter()
    for part, _ in sent:
        decoded.update(part.decoded_by)
    return LoadResult(
        records,
        start,
        end,
        config,
        interrupted,
        dict(sorted(decoded.items())),  # type: ignore[arg-type]
        ClientHealth.pooled([part.client for part, _ in sent]),
    )
