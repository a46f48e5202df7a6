"""Telemetry in a process of its own: the sampler's threads away from the loop that stamps requests.

``TelemetryProcess`` is what ``runner.MonitoredServer`` drives: the same calls as ``Telemetry``
(sampler.py), served by a real ``Telemetry`` in a child process (a fresh interpreter,
``python -m pytest_llmslo.telemetry.child``). On a busy 2-core machine the sampler's reads (every
process's /proc files, NVML, a 70 KB /metrics page parsed) compete with the client's event loop
for the GIL; in a process of its own they compete for a core only.

The parent and the child talk over one socket pair (a ``multiprocessing`` ``Connection``): a
``_Call`` names a ``Telemetry`` method, the child answers it with a ``_Reply`` whose value is one
of analysis.py's picklable dataclasses (``LoadWindow``, ``TelemetryReport``). The server's
process tree is known to the parent only (``Server.pids`` reads its ``Popen``): a parent thread
sends it as a ``_Pids`` message about once a second, or every tick until the server has
launched. Times stay ``time.monotonic()``, one clock for every process on the host, so windows
and records compare as before.

A child that dies or stops answering never fails the run: every later call returns what is known
(the windows marked so far; reports whose figures are not measurable) with the reason
``telemetry process exited: ...``, and ``stop()`` waits a bounded time, then kills the child by
its PID and joins it.
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any, Protocol

from pytest_llmslo.child_process import Child, ignore_group_signals, start_child
from pytest_llmslo.telemetry import analysis
from pytest_llmslo.telemetry.analysis import LoadWindow, Samples, TelemetryReport

# Spawning Python and importing the sampler (httpx) takes well under a second on an idle machine;
# a CI box running a test suite on 2 cores has taken several.
READY_TIMEOUT_S = 60.0
# A mark scrapes /metrics once (at most `scrape_timeout_s`); the rest of a call is microseconds.
CALL_MARGIN_S = 10.0
# The child's stop() joins its two threads, each given this long after a scrape's timeout.
THREAD_JOIN_S = 5.0
# After stop's answer (or its timeout), how long the child gets to exit before it is killed.
EXIT_WAIT_S = 5.0
# What the child answers; anything else is a programming error, raised back in the parent.
_METHODS = frozenset(
    {
        "start",
        "set_metrics_url",
        "metrics_not_scraped",
        "mark_load_start",
        "mark_measured_start",
        "mark_load_end",
        "window_report",
        "report",
        "collected",
        "stop",
        "samples",
        "windows",
    }
)


class ServerTelemetry(Protocol):
    """What a scenario run asks of a server's telemetry, in process or in a process of its own."""

    def start(self) -> None: ...
    def set_metrics_url(self, url: str | None, headers: dict[str, str] | None = None) -> None: ...
    def metrics_not_scraped(self, reason: str) -> None: ...
    def mark_load_start(self) -> LoadWindow: ...
    def mark_measured_start(self) -> None: ...
    def mark_load_end(self) -> LoadWindow: ...
    def window_report(self, window: LoadWindow | None = None) -> TelemetryReport: ...
    def report(self) -> TelemetryReport: ...
    def stop(self) -> TelemetryReport: ...


@dataclass(frozen=True)
class _Call:
    """Call ``method`` (a name in ``_METHODS``) of the child's Telemetry; answered by id."""

    id: int
    method: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class _Reply:
    id: int
    value: Any = None
    raised: BaseException | None = None


@dataclass(frozen=True)
class _Pids:
    """The server's live process tree, as the parent last saw it; never answered."""

    pids: tuple[int, ...]


class _Exited(Exception):
    """The child cannot answer: the reason is the message."""


class TelemetryProcess:
    """``Telemetry``'s calls, answered by a ``Telemetry`` in a spawned child process.

    Takes ``Telemetry``'s arguments: ``pids`` is called in this process (by the forwarding
    thread), the keyword options go to the child's ``Telemetry`` and must pickle. One instance
    per server lifetime, like ``Telemetry``: ``start()``, marks and reports, ``stop()``.
    """

    def __init__(
        self,
        pids: Callable[[], list[int]],
        *,
        metrics_url: str | None,
        interval_s: float = 0.1,
        scrape_timeout_s: float = 5.0,
        pids_refresh_s: float = 1.0,
        not_ours: str | None = None,
        **options: Any,
    ) -> None:
        self._pids = pids
        self._interval_s = interval_s
        self._pids_refresh_s = pids_refresh_s
        self._not_ours = not_ours
        self._metrics_url = metrics_url
        self._metrics_reason = analysis.NOT_SERVED
        self._call_timeout_s = scrape_timeout_s + CALL_MARGIN_S
        self._stop_timeout_s = 2 * (scrape_timeout_s + THREAD_JOIN_S) + CALL_MARGIN_S
        self._options: dict[str, Any] = {
            **options,
            "metrics_url": metrics_url,
            "interval_s": interval_s,
            "scrape_timeout_s": scrape_timeout_s,
            "not_ours": not_ours,
            # the child reads the list the parent last sent: cheap, so at every tick
            "pids_refresh_s": 0.0,
        }
        self._process: Child | None = None  # once started
        self._conn: Connection | None = None
        self._ids = itertools.count()
        self._call_lock = threading.Lock()  # one call and its answer at a time
        self._send_lock = threading.Lock()  # calls and pid lists share the pipe
        self._stopping = threading.Event()
        self._forwarder: threading.Thread | None = None
        self._pending: list[_Call] = []  # settings given before start(), sent with it
        self._exited: str | None = None
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._report: TelemetryReport | None = None
        self._windows: list[LoadWindow] = []
        # each window's latest report: what is still known if the child exits later
        self._window_reports: dict[int, TelemetryReport] = {}
        self._samples = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the child and begin sampling there; returns once it samples (or could not)."""
        if self._started_at is not None:
            return
        self._started_at = time.monotonic()
        try:
            self._spawn()
            # the tree as it is now goes first: the child samples from its first tick
            self._forwarder = threading.Thread(
                target=self._forward_pids, name="llmslo-telemetry-pids", daemon=True
            )
            self._forwarder.start()
            # the first answer waits for the child's imports
            for call in (*self._pending, _Call(-1, "start")):
                self._call(call.method, *call.args, timeout_s=READY_TIMEOUT_S)
        except _Exited:
            return
        except Exception as exc:  # no process could be spawned: reported, never raised
            self._exit(f"could not be started ({type(exc).__name__}: {exc})")

    def set_metrics_url(self, url: str | None, headers: dict[str, str] | None = None) -> None:
        """As ``Telemetry.set_metrics_url``: where /metrics is, once the server's port is known."""
        if url is None or self._metrics_url is not None or self._stopped_at is not None:
            return
        self._metrics_url = url
        self._send_setting("set_metrics_url", url, dict(headers or {}))

    def metrics_not_scraped(self, reason: str) -> None:
        """Why /metrics is not scraped, for the report (default: NOT_SERVED)."""
        self._metrics_reason = reason
        self._send_setting("metrics_not_scraped", reason)

    def mark_load_start(self) -> LoadWindow:
        """Open a load window in the child (its /metrics snapshot first), or here if it exited."""
        self._require_running("mark_load_start")
        if self._windows and self._windows[-1].end is None:
            raise RuntimeError(
                "Telemetry.mark_load_start(): a load window is already open; "
                "call mark_load_end() first"
            )
        try:
            window: LoadWindow = self._call("mark_load_start")
        except _Exited:
            window = LoadWindow(index=len(self._windows), start=time.monotonic(), end=None)
        self._windows.append(window)
        return window

    def mark_measured_start(self) -> None:
        """The open window's warmup is over; waits for the child's /metrics snapshot, so the
        measured requests start after it, as in process."""
        if self._exited is None and self._started_at is not None:
            with contextlib.suppress(_Exited):
                self._call("mark_measured_start")

    def mark_load_end(self) -> LoadWindow:
        """Close the open load window and return it."""
        if not self._windows or self._windows[-1].end is not None:
            raise RuntimeError("Telemetry.mark_load_end() without mark_load_start()")
        try:
            window: LoadWindow = self._call("mark_load_end")
        except _Exited:
            window = replace(self._windows[-1], end=time.monotonic())
        self._windows[-1] = window
        return window

    def stop(self) -> TelemetryReport:
        """Stop the child and report the whole lifetime; idempotent, never raises, never hangs."""
        if self._report is not None:
            return self._report
        self._stopped_at = time.monotonic()
        self._stopping.set()
        try:
            if self._started_at is None:
                report = analysis.lifetime_report(self._known_samples(), self._stopped_at)
            else:
                report = self._call("stop", timeout_s=self._stop_timeout_s)
        except _Exited as exc:
            report = self._failed(str(exc))
        except Exception as exc:  # a broken telemetry must not fail the measured run
            report = self._failed(f"telemetry failed: {type(exc).__name__}: {exc}")
        finally:
            self._shut_down()
        self._report = report
        return report

    # -- reports and samples ---------------------------------------------------------------

    @property
    def samples(self) -> int:
        """How many sampling ticks the child ran so far (the last count known, once it exited)."""
        with contextlib.suppress(_Exited):
            if self._exited is None and self._started_at is not None and self._report is None:
                self._samples = self._call("samples")
        return self._samples

    @property
    def windows(self) -> tuple[LoadWindow, ...]:
        with contextlib.suppress(_Exited):
            if self._exited is None and self._started_at is not None and self._report is None:
                self._windows = list(self._call("windows"))
        return tuple(self._windows)

    @property
    def exited(self) -> str | None:
        """Why the child no longer answers (``telemetry process exited: ...``), or None."""
        return self._exited

    @property
    def pid(self) -> int | None:
        """The child's PID once spawned."""
        return self._process.pid if self._process is not None else None

    def report(self) -> TelemetryReport:
        """The whole lifetime so far, as ``Telemetry.report``."""
        if self._report is not None:
            return self._report
        if self._started_at is None:
            return analysis.lifetime_report(self._known_samples(), time.monotonic())
        try:
            report: TelemetryReport = self._call("report")
        except _Exited as exc:
            return self._failed(str(exc))
        return report

    def window_report(self, window: LoadWindow | None = None) -> TelemetryReport:
        """One load window (default: the latest), as ``Telemetry.window_report``; once the child
        exited, the window's last report, or one whose figures are not measurable, saying why."""
        if not self._windows:
            raise RuntimeError("Telemetry.window_report(): no load window was marked")
        chosen = self._windows[-1] if window is None else window
        try:
            report: TelemetryReport = self._call("window_report", chosen)
        except _Exited as exc:
            known = self._window_reports.get(chosen.index)
            if known is not None:
                return known
            return replace(self._failed(str(exc)), window=(chosen.start, chosen.end))
        self._window_reports[chosen.index] = report
        return report

    def collected(self) -> Samples:
        """A copy of everything the child sampled so far (what is known here, once it exited)."""
        try:
            samples: Samples = self._call("collected")
        except _Exited:
            return self._known_samples()
        return samples

    # -- the pipe ----------------------------------------------------------------------------

    def _spawn(self) -> None:
        # a fresh interpreter on a socket pair (child_process.py says why); when this process
        # exits, the child reads EOF and stops
        self._process, conn = start_child("pytest_llmslo.telemetry.child")
        self._conn = conn
        conn.send(self._options)

    def _call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """The child's answer to one call; raises ``_Exited`` when it cannot answer."""
        if self._exited is not None:
            raise _Exited(self._exited)
        if self._conn is None:
            raise RuntimeError(f"Telemetry.{method}() needs start() first")
        limit = self._call_timeout_s if timeout_s is None else timeout_s
        with self._call_lock:
            call = _Call(next(self._ids), method, args)
            try:
                with self._send_lock:
                    self._conn.send(call)
                reply = self._await_reply(call, limit)
            except (EOFError, OSError) as exc:
                self._exit(self._death(exc))
                raise _Exited(self._exited) from None
        if reply.raised is not None:
            raise reply.raised
        return reply.value

    def _await_reply(self, call: _Call, limit: float) -> _Reply:
        assert self._conn is not None
        deadline = time.monotonic() + limit
        while (left := deadline - time.monotonic()) > 0:
            if not self._conn.poll(min(left, 0.5)):
                continue
            reply = self._conn.recv()
            # an answer to an earlier call that timed out cannot arrive: that call killed it
            if isinstance(reply, _Reply) and reply.id == call.id:
                return reply
        self._exit(f"killed after it did not answer {call.method}() within {limit:g} s")
        raise _Exited(self._exited)

    def _send_setting(self, method: str, *args: Any) -> None:
        """A setting before start() travels with it; after, it is sent now; once stopped or
        exited, it no longer matters."""
        if self._started_at is None:
            self._pending.append(_Call(-1, method, args))
        elif self._report is None:
            with contextlib.suppress(_Exited):
                self._call(method, *args)

    def _forward_pids(self) -> None:
        """Sends the server's process tree to the child when it changes, looking about once a
        second (every tick until the server has launched): a short list per message. Reading the
        tree walks /proc here, as the sampler did before, because only this process holds the
        server's ``Popen`` and the memory of its exited children."""
        sent: tuple[int, ...] | None = None
        while not self._stopping.is_set():
            try:
                pids = tuple(self._pids())
            except Exception:  # the server may be exiting while its tree is walked
                pids = ()
            if pids != sent:
                try:
                    with self._send_lock:
                        if self._conn is None or self._stopping.is_set():
                            return
                        self._conn.send(_Pids(pids))
                except (OSError, ValueError):  # the child exited: calls will say so
                    return
                sent = pids
            self._stopping.wait(self._pids_refresh_s if pids else self._interval_s)

    def _shut_down(self) -> None:
        """Joins the forwarder and the child; kills the child by PID if it does not exit."""
        self._stopping.set()
        if self._forwarder is not None:
            self._forwarder.join(timeout=self._pids_refresh_s + EXIT_WAIT_S)
        process = self._process
        if process is not None:
            process.join(timeout=EXIT_WAIT_S)
            if process.is_alive():
                process.kill()
                process.join(timeout=EXIT_WAIT_S)
        with self._send_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- when the child is gone --------------------------------------------------------------

    def _exit(self, detail: str) -> None:
        """Remember why the child no longer answers, and make sure it is gone."""
        if self._exited is None:
            self._exited = f"telemetry process exited: {detail}"
        self._stopping.set()  # the forwarder has no one to send to
        process = self._process
        if process is not None and process.is_alive():
            process.kill()
            process.join(timeout=EXIT_WAIT_S)

    def _death(self, exc: BaseException) -> str:
        process = self._process
        if process is not None:
            process.join(timeout=EXIT_WAIT_S)
            code = process.exitcode
            if code is not None and code < 0:
                with contextlib.suppress(ValueError):
                    return f"killed by {signal.Signals(-code).name}"
            if code is not None:
                return f"exit status {code}"
        return f"the pipe to it broke ({type(exc).__name__}: {exc})"

    def _require_running(self, method: str) -> None:
        if self._started_at is None or self._stopped_at is not None:
            raise RuntimeError(f"Telemetry.{method}() needs start() first and no stop()")

    def _failed(self, reason: str) -> TelemetryReport:
        return analysis.failed_report(reason, samples=self._samples, interval_s=self._interval_s)

    def _known_samples(self) -> Samples:
        return Samples(
            interval_s=self._interval_s,
            not_ours=self._not_ours,
            windows=tuple(self._windows),
            metrics_url=self._metrics_url,
            metrics_reason=self._exited or self._metrics_reason,
        )


# --- the child --------------------------------------------------------------------------------


def serve(conn: Connection, options: dict[str, Any]) -> None:
    """The child's loop: a ``Telemetry`` answering calls until stop() or the parent is gone."""
    ignore_group_signals()
    from pytest_llmslo.telemetry.sampler import Telemetry

    tree: list[int] = []
    telemetry = Telemetry(lambda: list(tree), **options)
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the parent exited without stop()
                return
            if isinstance(message, _Pids):
                tree[:] = message.pids
                continue
            reply = _answer(telemetry, message)
            try:
                conn.send(reply)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                conn.send(_Reply(message.id, raised=RuntimeError(f"{reply!r}: {exc}")))
            if message.method == "stop":
                return
    finally:
        telemetry.stop()
        conn.close()


def _answer(telemetry: Any, call: _Call) -> _Reply:
    try:
        if call.method not in _METHODS:
            raise ValueError(f"telemetry process: no call {call.method!r}")
        attribute = getattr(telemetry, call.method)
        value = attribute(*call.args) if callable(attribute) else attribute
        return _Reply(call.id, value)
    except Exception as exc:  # a misuse (a mark without start) is raised again in the parent
        return _Reply(call.id, raised=exc)
