"""The one owner of SIGINT, SIGTERM and SIGHUP: stop, keep what was measured, write the reports.

Ctrl-C, a CI runner cancelling the job and a terminal going away mean the same to a run. The
first signal
- stops a load in progress: the load engine listens, cancels what is in flight and returns the
  records it has;
- is held while a shielded section runs (finishing a scenario, writing the reports, stopping a
  server) and raised as `Interrupted` when the outermost one ends, so nothing half-done is lost;
- anywhere else raises `Interrupted` at once (a KeyboardInterrupt, so pytest ends the session the
  way it does for Ctrl-C and still calls its finishing hooks).
Every later signal does the same and also runs the hard stops at once (SIGKILL to every server's
process group): whoever signals twice wants out now, and no server may outlive the run.

The handler takes no lock and does no I/O but kill(2): Python runs it in the main thread between
two bytecodes, so a lock held by the code it interrupted would never be released. The real work
(stopping servers, waiting for them) happens on the main path, which asks `urgent()`.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import Any

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

Listener = Callable[[str], None]


class Interrupted(KeyboardInterrupt):
    """The run was told to stop by a signal; `signal_name` says which (SIGINT, SIGTERM, SIGHUP)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


# Module state, touched by the handler: only single operations that the interpreter does
# atomically between bytecodes (list append, dict item), no locks.
_received: list[str] = []  # every signal since reset(), in order
_pending: list[str] = []  # a signal held by a shield, not yet raised (at most one)
_shields: list[bool] = []  # innermost last: True shields, False lets a signal through
_listeners: dict[int, Listener] = {}
_hard_stops: list[Callable[[], None]] = []
_tokens = itertools.count()


def _handle(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    _received.append(name)
    if len(_received) > 1:
        for hard_stop in tuple(_hard_stops):
            # a failing hard stop must not keep the others from running
            with contextlib.suppress(Exception):
                hard_stop()
    listeners = tuple(_listeners.values())
    for listener in listeners:
        with contextlib.suppress(Exception):
            listener(name)
    if _shields and _shields[-1]:
        if not _pending:
            _pending.append(name)
        return
    if listeners:
        return
    raise Interrupted(name)


def install() -> Callable[[], None]:
    """Handle the three signals here; returns the function that puts the previous handlers back.

    Only the main thread may set handlers: elsewhere this changes nothing. An ignored signal
    stays ignored (a run under `nohup` keeps going when the terminal closes).
    """
    if not _on_main_thread():
        return lambda: None
    previous: dict[signal.Signals, Any] = {}
    for sig in SIGNALS:
        current = signal.getsignal(sig)
        if current is signal.SIG_IGN or current is _handle:
            continue
        try:
            signal.signal(sig, _handle)
        except ValueError:  # an embedded interpreter that forbids it
            continue
        previous[sig] = current

    def restore() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is _handle and handler is not None:
                with contextlib.suppress(ValueError):
                    signal.signal(sig, handler)

    return restore


def installed() -> bool:
    """Whether SIGINT reaches this module's handler now."""
    return signal.getsignal(signal.SIGINT) is _handle


def reset() -> None:
    """Forget every signal received so far (a new pytest session starts clean)."""
    _received.clear()
    _pending.clear()


def received() -> int:
    """How many signals arrived since the last reset()."""
    return len(_received)


def urgent() -> bool:
    """A second signal arrived: skip every grace period and kill."""
    return len(_received) > 1


def take_pending() -> str | None:
    """The signal a shield held and nobody raised yet, now taken; None if there is none."""
    if not _pending:
        return None
    return _pending.pop()


def postpone(signal_name: str) -> None:
    """Hold `signal_name` to be raised when the current shielded section ends (a caller that
    caught `Interrupted` to keep a record, but still means to stop)."""
    if not _pending:
        _pending.append(signal_name)


def add_hard_stop(stop: Callable[[], None]) -> None:
    """Run `stop` from the handler on every signal after the first; it must be quick, take no
    lock and do no I/O but kill(2)."""
    if stop not in _hard_stops:
        _hard_stops.append(stop)


def listen(listener: Listener) -> Callable[[], None]:
    """Call `listener(signal_name)` on every signal until the returned function is called.

    The listener runs inside the signal handler: it may only set a flag or hand the work to an
    event loop (`loop.call_soon_threadsafe`). Where the handlers are not installed yet (the load
    engine used without pytest), they are installed until then.
    """
    token = next(_tokens)
    _listeners[token] = listener
    restore = install() if not installed() else (lambda: None)

    def stop_listening() -> None:
        _listeners.pop(token, None)
        restore()

    return stop_listening


class shielded:
    """A section a signal must not cut short: the signal is held and raised when the outermost
    shield ends (not when `deliver` is False: the caller then asks `take_pending()`). When the
    section ends with an exception, that exception goes on and the signal stays held."""

    def __init__(self, *, deliver: bool = True) -> None:
        self.deliver = deliver
        self.active = False

    def __enter__(self) -> None:
        self.active = _on_main_thread()
        if self.active:
            _shields.append(True)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.active:
            return
        _shields.pop()
        if kind is None and self.deliver and not (_shields and _shields[-1]):
            _raise_pending()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Inside a shield, a section a signal may end at once (nothing measured yet to keep)."""
    if not _on_main_thread():
        yield
        return
    _raise_pending()
    _shields.append(False)
    try:
        yield
    finally:
        _shields.pop()


def _on_main_thread() -> bool:
    # signal handlers run in the main thread only: shields of other threads would hold signals
    # that thread can never see, and raise them where nobody expects it
    return threading.current_thread() is threading.main_thread()


def _raise_pending() -> None:
    name = take_pending()
    if name is not None:
        raise Interrupted(name)
