"""Live progress of a run: counters the load engine bumps, and what shows them.

The engine's event loop only adds to plain numbers (`LoadProgress.count`, once per finished
request, never per chunk); reading them, the rate over the last seconds, the server's log and the
terminal all live in another thread (`LiveProgress`) or after the load (`LinesProgress`), so
showing progress costs the request timestamps nothing (bench/progress_overhead.py measures it).
No pytest here: the plugin hands in how to write to its terminal.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from time import monotonic
from typing import Literal, Protocol

from pytest_llmslo.records import RequestRecord

PROGRESS_MODES = ("auto", "live", "lines", "off")
ProgressMode = Literal["auto", "live", "lines", "off"]
DRAW_INTERVAL_S = 0.5  # at most twice a second
RATE_WINDOW_S = 5.0  # "current" output tok/s: over this many seconds
_LOG_TAIL_BYTES = 4096
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x1f\x7f]")


class LoadProgress:
    """How far one scenario's load is; written by the event loop, read by any thread.

    Plain ints and floats, no lock: the loop is the only writer, and a reader that sees one
    field a request ahead of another shows a number off by one for half a second. Rounds and
    capacity steps add to the same counters, so `total` grows as runs are added.
    """

    __slots__ = (
        "done",
        "ends_by",
        "failed",
        "label",
        "last_end",
        "open_ended",
        "output_tokens",
        "phase",
        "runs",
        "started",
        "total",
        "warmup_done",
        "warmup_total",
    )

    def __init__(self, label: str) -> None:
        self.label = label
        self.phase: Literal["starting", "warmup", "measured"] = "starting"
        self.total = 0  # measured requests asked for, over every run so far
        self.open_ended = False  # a run without a request count (duration only): total unknown
        self.ends_by: float | None = None  # monotonic deadline of a duration-bound run
        self.done = 0
        self.failed = 0
        self.output_tokens = 0
        self.warmup_done = 0
        self.warmup_total = 0
        self.started: float | None = None  # monotonic: the first measured phase's start
        self.last_end: float | None = None  # monotonic: the latest measured request's end
        self.runs = 0

    def warming(self, requests: int) -> None:
        """A warmup phase of `requests` starts."""
        self.warmup_total, self.warmup_done = requests, 0
        self.phase = "warmup"

    def measuring(self, requests: int | None, duration: float | None, now: float) -> None:
        """A measured phase starts: `requests` more (None: until `duration` ends)."""
        if self.started is None:
            self.started = now
        self.runs += 1
        if requests is None:
            self.open_ended = True
        else:
            self.total += requests
        self.ends_by = now + duration if duration is not None else None
        self.phase = "measured"

    def count(self, record: RequestRecord) -> None:
        """One request finished (called on the event loop: a few additions, nothing more)."""
        if record.warmup:
            self.warmup_done += 1
            return
        self.done += 1
        self.last_end = record.end_at
        if record.error is not None:
            self.failed += 1
        # a server that sends no usage: its content chunks stand in (one token each for vLLM)
        tokens = record.output_tokens
        self.output_tokens += tokens if tokens is not None else len(record.content_times)

    def snapshot(self, now: float, rate: float | None = None) -> LoadSnapshot:
        started = self.started
        ends_by = self.ends_by
        return LoadSnapshot(
            label=self.label,
            phase=self.phase,
            done=self.done,
            total=None if self.open_ended else self.total,
            failed=self.failed,
            output_tokens=self.output_tokens,
            warmup_done=self.warmup_done,
            warmup_total=self.warmup_total,
            elapsed=now - started if started is not None else 0.0,
            until_deadline=max(ends_by - now, 0.0) if ends_by is not None else None,
            rate=rate,
            runs=self.runs,
        )


@dataclass(frozen=True)
class LoadSnapshot:
    """The counters of one load at one moment, and the output rate the reader measured."""

    label: str
    phase: str
    done: int
    total: int | None  # None: the run ends at a deadline, not a count
    failed: int
    output_tokens: int
    warmup_done: int
    warmup_total: int
    elapsed: float  # seconds since the first measured request
    until_deadline: float | None  # seconds left of a duration-bound run
    rate: float | None  # output tokens/s (recent while running, overall at the end)
    runs: int

    def seconds_left(self) -> float | None:
        """Estimated seconds to the end: the request count at the rate so far, or the
        deadline, whichever comes first; None when neither can be told yet."""
        guesses: list[float] = []
        if self.total is not None and self.done > 0 and self.elapsed > 0:
            guesses.append(max(self.total - self.done, 0) * self.elapsed / self.done)
        if self.until_deadline is not None:
            guesses.append(self.until_deadline)
        return min(guesses) if guesses else None


def format_load(snapshot: LoadSnapshot, *, final: bool = False) -> str:
    """One line for a load: `chat::svc: 40/100 requests, 1 failed, 512 tok/s, 12 s, ~18 s left`.

    `final`: the line written when the load has ended (no time left to estimate).
    """
    s = snapshot
    if s.phase == "starting":
        return f"{s.label}: " + ("ended before its load ran" if final else "starting the load")
    if s.phase == "warmup":
        return f"{s.label}: warmup {s.warmup_done}/{s.warmup_total} requests"
    total = "?" if s.total is None else str(s.total)
    parts = [f"{s.done}/{total} requests", f"{s.failed} failed"]
    parts.append(f"{s.rate:,.0f} tok/s" if s.rate is not None else "- tok/s")
    parts.append(_seconds(s.elapsed))
    left = None if final else s.seconds_left()
    if left is not None:
        parts.append(f"~{_seconds(left)} left")
    runs = f" ({s.runs} runs)" if s.runs > 1 else ""
    return f"{s.label}{runs}: " + ", ".join(parts)


def format_server_start(name: str, elapsed: float, last_line: str) -> str:
    """`starting svc (12 s): <the last line of its log>`."""
    head = f"starting {name} ({_seconds(elapsed)})"
    return f"{head}: {last_line}" if last_line else head


def format_server_started(name: str, elapsed: float, error: str | None) -> str:
    if error is None:
        return f"server {name} ready after {_seconds(elapsed, exact=True)}"
    return f"server {name} did not start ({_seconds(elapsed, exact=True)})"


def _seconds(value: float, *, exact: bool = False) -> str:
    if exact or value < 10:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{value:.0f} s"
    return f"{value / 3600:.1f} h"


def last_log_line(path: Path | None) -> str:
    """The last non-empty line of a log, without colours or control characters; "" if none."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - _LOG_TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    # progress bars rewrite their line with \r: the text after the last one is what shows
    for line in reversed(data.decode("utf-8", errors="replace").splitlines()):
        shown = _CONTROL.sub("", line.rsplit("\r", 1)[-1]).strip()
        if shown:
            return shown
    return ""


class RateWindow:
    """Output tokens/s over the last `seconds`, from (time, running total) samples."""

    def __init__(self, seconds: float = RATE_WINDOW_S) -> None:
        self.seconds = seconds
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, tokens: int) -> float | None:
        samples = self._samples
        samples.append((now, tokens))
        while len(samples) > 2 and now - samples[1][0] >= self.seconds:
            samples.popleft()
        first_at, first = samples[0]
        if now - first_at <= 0:
            return None
        return (tokens - first) / (now - first_at)


# --- what the session tells, and how it is shown ------------------------------------------------


class Line(Protocol):
    """One line of a terminal, rewritten in place and cleared (see `AnsiLine`)."""

    def show(self, text: str) -> None: ...

    def clear(self) -> None: ...


class Progress:
    """`--slo-progress off`: the session's news is dropped. The base of the other modes."""

    def __init__(self, clock: Callable[[], float] = monotonic) -> None:
        self.clock = clock

    def server_starting(self, name: str, log_path: Callable[[], Path | None]) -> None:
        """A server start begins; `log_path` says where its log is (once it is known)."""

    def server_started(self, name: str, error: str | None) -> None:
        """The start ended: ready, or `error`."""

    def load(self, label: str) -> LoadProgress:
        """Counters for the load of `label` (scenario::server), about to start."""
        return LoadProgress(label)

    def load_ended(self, counters: LoadProgress) -> None:
        """The load of `counters` ended (every round and step of it)."""

    def close(self) -> None:
        """Nothing more will come; stops what runs. Safe to call more than once."""


class LinesProgress(Progress):
    """One line per server start and per scenario when it ends (`-q`, CI logs)."""

    def __init__(
        self, write_line: Callable[[str], None], clock: Callable[[], float] = monotonic
    ) -> None:
        super().__init__(clock)
        self._write_line = write_line
        self._starts: dict[str, float] = {}
        self._lock = threading.Lock()  # side-by-side loads end in threads of their own

    def server_starting(self, name: str, log_path: Callable[[], Path | None]) -> None:
        self._starts[name] = self.clock()

    def server_started(self, name: str, error: str | None) -> None:
        now = self.clock()
        since = self._starts.pop(name, now)
        self._write(format_server_started(name, now - since, error))

    def load_ended(self, counters: LoadProgress) -> None:
        # up to the last request's end: what follows (telemetry, verdicts) is not the load's
        end = counters.last_end if counters.last_end is not None else self.clock()
        snapshot = counters.snapshot(end)
        rate = snapshot.output_tokens / snapshot.elapsed if snapshot.elapsed > 0 else None
        self._write(format_load(replace(snapshot, rate=rate), final=True))

    def _write(self, text: str) -> None:
        with self._lock:
            self._write_line(f"llmslo: {text}")


@dataclass
class _Start:
    name: str
    since: float
    log_path: Callable[[], Path | None]


class LiveProgress(Progress):
    """One line rewritten in place by a thread of its own, at most once per `interval`.

    What is under way (server starts, loads; several at once side by side) is kept in a dict
    that the session changes and the thread reads. An ending clears the line at once, on the
    caller's thread, so that nothing the caller writes next lands beside a stale line.
    """

    def __init__(
        self,
        line: Line,
        *,
        interval: float = DRAW_INTERVAL_S,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        super().__init__(clock)
        self.line = line
        self.interval = interval
        self._under_way: dict[str, _Start | LoadProgress] = {}
        self._rates: dict[str, RateWindow] = {}
        self._lock = threading.Lock()  # held while the line is drawn or cleared
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def server_starting(self, name: str, log_path: Callable[[], Path | None]) -> None:
        self._begin(f"server {name}", _Start(name, self.clock(), log_path))

    def server_started(self, name: str, error: str | None) -> None:
        self._end(f"server {name}")

    def load(self, label: str) -> LoadProgress:
        counters = LoadProgress(label)
        self._begin(label, counters)
        return counters

    def load_ended(self, counters: LoadProgress) -> None:
        self._end(counters.label)

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        with self._lock:
            self._under_way.clear()
            self.line.clear()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _begin(self, key: str, what: _Start | LoadProgress) -> None:
        with self._lock:  # side-by-side loads begin from threads of their own
            self._under_way[key] = what
            self._rates[key] = RateWindow()
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._draw_loop, name="llmslo-progress")
                self._thread.daemon = True  # close() joins it; never keeps a dying process alive
                self._thread.start()

    def _end(self, key: str) -> None:
        with self._lock:
            self._under_way.pop(key, None)
            self._rates.pop(key, None)
            if not self._under_way:
                self.line.clear()

    def _draw_loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.draw()

    def draw(self) -> None:
        """Show what is under way now (the thread calls this once per interval)."""
        with self._lock:
            if not self._under_way:
                return
            now = self.clock()
            texts = [self._describe(key, what, now) for key, what in self._under_way.items()]
            self.line.show(" | ".join(texts))

    def _describe(self, key: str, what: _Start | LoadProgress, now: float) -> str:
        if isinstance(what, _Start):
            return format_server_start(what.name, now - what.since, last_log_line(what.log_path()))
        rate = self._rates[key].add(now, what.output_tokens) if what.phase == "measured" else None
        return format_load(what.snapshot(now, rate))


class AnsiLine:
    """A line of a terminal rewritten in place with ANSI codes, leaving the cursor where the
    caller's writer believes it is.

    `begin()` moves the writer to a line of its own and says whether it went down one; the line
    is drawn there, cut to the terminal's `width()` so that it never wraps, and cleared by
    erasing it and going back up. Drawn again before the writer wrote anything (a server start,
    then its load), it goes down to the same line again.
    """

    def __init__(
        self,
        write: Callable[[str], None],
        width: Callable[[], int],
        begin: Callable[[], bool],
    ) -> None:
        self._write = write
        self._width = width
        self._begin = begin
        self._shown = False
        self._went_down = False
        self._parked_above = False  # cleared and gone back up: the empty line is below

    def show(self, text: str) -> None:
        if not self._shown:
            went_down = self._begin()
            if not went_down and self._parked_above:
                self._write("\n")
                went_down = True
            self._went_down, self._parked_above = went_down, False
        room = max(self._width() - 1, 10)
        if len(text) > room:
            text = text[: room - 1] + "…"
        self._write(f"\r{text}\x1b[K")
        self._shown = True

    def clear(self) -> None:
        if not self._shown:
            return
        self._write("\r\x1b[K" + ("\x1b[1A" if self._went_down else ""))
        self._shown = False
        self._parked_above = self._went_down
