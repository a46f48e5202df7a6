"""Worker processes: one load spread over several client processes on this host.

One event loop reads every stream of a load and stamps every chunk; past a few hundred fast
streams it is the client, not the server, that sets the pace (client_health.py says when). With
`load.workers: N` the load is divided (`parallel`, `rate`, `requests` and `warmup` split, each
worker with its own arrival seed and its own turn through the prompts) and run by N worker
processes, each the same engine as a single-process run (load.py). A worker is a fresh
interpreter (`python -m pytest_llmslo.worker_child`, child_process.py) that talks to the parent
over a socket pair: no `__main__` guard is needed in a script, and no helper process is left
behind. The workers finish their warmup, wait for one another, and start the measured phase
together, so the window and the telemetry's measured start are one.

Records stream: each worker sends what finished since its last batch every few tenths of a
second, as plain tuples (chunk times packed as doubles) in one pickle, and keeps only their slim
form. The parent gives each record as it arrives its dataset prompt index and an `index` in the
order it received them, counts it in the live progress and hands it to `keep` (which writes
requests.jsonl); at the end it orders them by send time into one record set: one window, one
summary, one report. Timestamps are time.monotonic(), one clock for every process on the host.

Signals stop every worker through the parent (the workers ignore SIGINT, SIGTERM and SIGHUP,
which a terminal sends to the whole process group): the parent tells each to stop, each
worker's engine stops dispatching, cancels what is in flight and sends what it has. A worker
that dies is reported as the reason the load stopped early, and every record received is kept.
Every worker is stopped and reaped by its PID before the run returns.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import os
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from multiprocessing.connection import Connection, wait
from typing import Any

from pytest_llmslo import interrupts
from pytest_llmslo.child_process import Child, start_child
from pytest_llmslo.client_health import ClientHealth
from pytest_llmslo.config import LoadConfig
from pytest_llmslo.load import Keep, LoadResult, count_missing_tokens, run_load
from pytest_llmslo.progress import LoadProgress
from pytest_llmslo.records import Endpoint, ErrorCategory, Prompt, RequestRecord

AUTO_STREAMS_PER_WORKER = 256
AUTO_RATE_PER_WORKER = 200.0
POLL_S = 0.05
# Often enough for a live display (drawn twice a second), seldom enough that pickling a batch
# costs the worker's event loop nothing it would notice.
BATCH_S = 0.3
# After a stop, how long the workers get to cancel what is in flight and send it; then killed.
STOP_GRACE_S = 10.0
# How long a worker that sent everything gets to exit before it is killed.
EXIT_WAIT_S = 5.0
WORKER_MODULE = "pytest_llmslo.worker_child"
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
    keep: Keep | None = None,
) -> LoadResult:
    """`config` in this process, or spread over the worker processes `load.workers` asks for.

    `progress` counts requests as they finish, the workers' as their batches arrive. `keep` is
    called once for every finished record as it completes (load.run_load), with workers in this
    process as each record arrives; the run stores what it returns.
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
            keep=keep,
        )
    return run_load_spread(
        endpoint,
        prompts,
        config,
        parts,
        count_tokens=count_tokens,
        should_stop=should_stop,
        on_measured_start=on_measured_start,
        progress=progress,
        keep=keep,
    )


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


# --- what parent and worker say to each other ---------------------------------------------------

WARMED = "warmed"  # worker: my warmup is over, I wait for GO
GO = "go"  # parent: the measured phase starts
STOP = "stop"  # parent: stop dispatching, cancel what is in flight, send what you have


@dataclass(frozen=True)
class WorkerJob:
    """A worker's first message: its share of the load and the prompts in its own order."""

    endpoint: Endpoint
    prompts: list[Prompt]
    share: LoadConfig


@dataclass(frozen=True)
class RecordBatch:
    """The records a worker finished since its last batch, `encode`d."""

    rows: list[tuple[Any, ...]]


@dataclass(frozen=True)
class WorkerDone:
    """A worker's last message, after its last batch."""

    window: tuple[float, float]
    interrupted: str | None
    decoded_by: dict[str, int]
    client: ClientHealth | None


# --- the worker (in its own process, worker_child.py) -------------------------------------------


class _Outbox:
    """What goes to the parent: one lock for every message, and the finished records waiting for
    the next batch (appended by the event loop, taken by the sending thread)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._waiting: collections.deque[RequestRecord] = collections.deque()
        self.broken = threading.Event()  # the parent no longer reads

    def add(self, record: RequestRecord) -> None:
        self._waiting.append(record)  # a deque: append and popleft need no lock between threads

    def send(self, message: Any) -> None:
        if self.broken.is_set():
            return
        try:
            with self._lock:
                self._conn.send(message)
        except OSError:
            self.broken.set()

    def flush(self) -> None:
        """Send the records finished so far, if any, as one batch."""
        batch = [self._waiting.popleft() for _ in range(len(self._waiting))]
        if batch:
            self.send(RecordBatch(encode(batch)))


class _Orders:
    """What the parent says (go, stop), read by a thread of its own."""

    def __init__(self, conn: Connection) -> None:
        self.stop = threading.Event()
        self.released = threading.Event()  # go or stop: the measured start may return
        listener = threading.Thread(
            target=self._listen, args=(conn,), name="llmslo-worker-orders", daemon=True
        )
        listener.start()

    def _listen(self, conn: Connection) -> None:
        while not self.stop.is_set():
            try:
                order = conn.recv()
            except (EOFError, OSError):  # the parent is gone: nobody reads the records
                order = STOP
            if order == STOP:
                self.stop.set()
            if order in (GO, STOP):
                self.released.set()


def serve_worker(conn: Connection, job: WorkerJob) -> None:
    """Run `job`'s share of the load, streaming its records to the parent over `conn`."""
    outbox = _Outbox(conn)
    orders = _Orders(conn)
    finished = threading.Event()

    def send_batches() -> None:
        while not finished.wait(BATCH_S) and not outbox.broken.is_set():
            outbox.flush()

    def keep(record: RequestRecord) -> RequestRecord:
        outbox.add(record)
        return record.slim()  # sent whole; the engine needs its records for the window only

    def measured_start() -> None:
        outbox.send(WARMED)
        orders.released.wait()  # the loop may block: nothing is in flight between the phases

    sender = threading.Thread(target=send_batches, name="llmslo-worker-batches", daemon=True)
    sender.start()
    try:
        result = run_load(
            job.endpoint,
            job.prompts,
            job.share,
            should_stop=lambda: "stopped with the other workers" if orders.stop.is_set() else None,
            on_measured_start=measured_start,
            keep=keep,
        )
    finally:
        finished.set()
        sender.join()
        outbox.flush()
    outbox.send(
        WorkerDone(
            (result.window_start, result.window_end),
            result.interrupted,
            {str(k): v for k, v in result.decoded_by.items()},
            result.client,
        )
    )


# --- the parent --------------------------------------------------------------------------------


@dataclass
class _Worker:
    """One worker as the parent sees it."""

    number: int
    child: Child
    conn: Connection
    offset: int  # where its prompt list starts in the dataset's (`_rotated`)
    warmed: bool = False
    done: WorkerDone | None = None
    gone: str | None = None  # why it ended without WorkerDone

    @property
    def running(self) -> bool:
        return self.done is None and self.gone is None


@dataclass
class _Received:
    """The records as they arrive, each given its index and what `keep` made of it."""

    prompts: Sequence[Prompt]
    count_tokens: Callable[[str], int] | None
    progress: LoadProgress | None
    keep: Keep | None
    records: list[RequestRecord] = field(default_factory=list)
    arrivals: itertools.count[int] = field(default_factory=itertools.count)

    def add(self, worker: _Worker, rows: Sequence[tuple[Any, ...]]) -> None:
        for record in decode(rows):
            original = (record.prompt_index + worker.offset) % len(self.prompts)
            record = replace(record, prompt_index=original, index=next(self.arrivals))
            if self.keep is not None:
                # `keep` may drop the text (RequestRecord.slim): count missing tokens first
                [record] = count_missing_tokens([record], self.prompts, self.count_tokens)
            if self.progress is not None:
                self.progress.count(record)
            self.records.append(self.keep(record) if self.keep is not None else record)


def run_load_spread(
    endpoint: Endpoint,
    prompts: Sequence[Prompt],
    config: LoadConfig,
    parts: int,
    *,
    count_tokens: Callable[[str], int] | None = None,
    should_stop: Callable[[], str | None] | None = None,
    on_measured_start: Callable[[], None] | None = None,
    progress: LoadProgress | None = None,
    keep: Keep | None = None,
) -> LoadResult:
    """`config` run by `parts` worker processes, merged into one LoadResult.

    Records arrive in batches while the workers run; each is given the dataset's prompt index
    and an `index` in the order this process received it (so the indices are not in send order,
    which the returned list is), then counted in `progress` and handed to `keep` (as
    load.run_load's), in this thread.
    """
    signalled: list[str] = []  # set by the signal handler, which may take no lock
    restore = interrupts.listen(signalled.append)
    received = _Received(prompts, count_tokens, progress, keep)
    workers: list[_Worker] = []
    try:
        for i, share in enumerate(shares(config, parts)):
            own, offset = _rotated(prompts, i, parts)
            child, conn = start_child(WORKER_MODULE)
            workers.append(_Worker(i, child, conn, offset))
            conn.send(WorkerJob(endpoint, own, share))
        if progress is not None and config.warmup:
            progress.warming(config.warmup)

        def go() -> None:
            if on_measured_start is not None:
                on_measured_start()
            _tell(workers, GO)
            if progress is not None:
                progress.measuring(
                    _measured_count(config, parts, prompts), config.duration, time.monotonic()
                )

        reason = _drive(workers, received, go, should_stop, signalled)
    finally:
        _tell(workers, STOP)
        _reap(workers)
        restore()
    return _merge(config, received, [w.done for w in workers if w.done is not None], reason)


def _measured_count(config: LoadConfig, parts: int, prompts: Sequence[Prompt]) -> int | None:
    """How many measured requests the workers send together (None: until the duration ends)."""
    if config.requests is not None:
        return config.requests
    if config.duration is None:
        return parts * len(prompts)  # each worker sends every prompt once, as one engine does
    return None


def _drive(
    workers: Sequence[_Worker],
    received: _Received,
    go: Callable[[], None],
    should_stop: Callable[[], str | None] | None,
    signalled: list[str],
) -> str | None:
    """Take in every worker's messages until all are done; lets them start the measured phase
    together once every one is warmed, stops them all when a reason comes. Returns the reason."""
    reason: str | None = None
    measuring = False  # GO sent
    stopped_at: float | None = None
    while any(w.running for w in workers):
        by_conn = {id(w.conn): w for w in workers if w.running}
        for ready in wait([w.conn for w in workers if w.running], timeout=POLL_S):
            worker = by_conn[id(ready)]
            _take(worker, received)
            if worker.gone is not None and reason is None:
                reason = worker.gone
        if reason is None:
            reason = signalled[0] if signalled else (should_stop() if should_stop else None)
        if reason is not None and stopped_at is None:
            stopped_at = time.monotonic()
            _tell(workers, STOP)
        elif reason is None and not measuring and all(w.warmed or not w.running for w in workers):
            measuring = True
            go()
        if stopped_at is not None and (
            interrupts.urgent() or time.monotonic() - stopped_at > STOP_GRACE_S
        ):
            return reason  # the ones still running are killed by _reap
    return reason


def _take(worker: _Worker, received: _Received) -> None:
    """Read one message from `worker`; its end of file is its death, said as the reason."""
    try:
        message = worker.conn.recv()
    except (EOFError, OSError):
        worker.child.join(EXIT_WAIT_S)  # its socket closed: it is exiting, if not gone already
        worker.gone = (
            f"client worker {worker.number} exited before it finished "
            f"({worker.child.describe_exit()})"
        )
        return
    if isinstance(message, RecordBatch):
        received.add(worker, message.rows)
    elif isinstance(message, WorkerDone):
        worker.done = message
    elif message == WARMED:
        worker.warmed = True


def _tell(workers: Sequence[_Worker], order: str) -> None:
    for worker in workers:
        if worker.running:
            with contextlib.suppress(OSError):  # it exited: _take says so
                worker.conn.send(order)


def _reap(workers: Sequence[_Worker]) -> None:
    """Every worker gone and reaped, by its PID: those that finished get a moment to exit, one
    still running after a stop (or a second signal) is killed at once."""
    deadline = time.monotonic() + EXIT_WAIT_S
    for worker in workers:
        if not worker.running and not interrupts.urgent():
            worker.child.join(max(0.0, deadline - time.monotonic()))
        worker.child.kill()
        worker.child.join(EXIT_WAIT_S)
        worker.conn.close()


def _merge(
    config: LoadConfig,
    received: _Received,
    done: Sequence[WorkerDone],
    reason: str | None,
) -> LoadResult:
    """One record set from what arrived, in order of sending (the indices stay those of arrival);
    one window from the first measured send to the last measured end, whichever worker sent it
    (one that died included)."""
    records = sorted(received.records, key=lambda r: r.sent_at)
    if received.keep is None:  # counted as they arrived otherwise
        records = count_missing_tokens(records, received.prompts, received.count_tokens)
    measured = [r for r in records if not r.warmup]
    if measured:
        start = min(r.sent_at for r in measured)
        end = max(r.end_at for r in measured)
    else:
        start = end = min((d.window[0] for d in done), default=time.monotonic())
    interrupted = reason or next((d.interrupted for d in done if d.interrupted), None)
    decoded: Counter[str] = Counter()
    for part in done:
        decoded.update(part.decoded_by)
    return LoadResult(
        records,
        start,
        end,
        config,
        interrupted,
        dict(sorted(decoded.items())),  # type: ignore[arg-type]
        ClientHealth.pooled([part.client for part in done]),
    )
