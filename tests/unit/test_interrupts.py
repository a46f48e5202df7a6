"""The one owner of SIGINT, SIGTERM and SIGHUP: what a first and a second signal do where."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from pytest_llmslo import interrupts
from pytest_llmslo.interrupts import Interrupted


@pytest.fixture(autouse=True)
def clean_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fresh signal state; hard stops only record that they ran (no real group is killed)."""
    ran: list[str] = []
    monkeypatch.setattr(interrupts, "_hard_stops", [lambda: ran.append("hard stop")])
    interrupts.reset()
    yield ran
    interrupts.reset()


def deliver(sig: signal.Signals) -> None:
    """What the interpreter does when `sig` arrives and the module's handler is installed."""
    interrupts._handle(sig, None)


def test_a_signal_outside_any_shield_raises_at_once_with_its_name() -> None:
    with pytest.raises(Interrupted) as info:
        deliver(signal.SIGTERM)
    assert info.value.signal_name == "SIGTERM"
    assert isinstance(info.value, KeyboardInterrupt)  # pytest ends the session as for Ctrl-C


def test_a_shield_holds_a_signal_until_the_outermost_one_ends() -> None:
    with pytest.raises(Interrupted) as info:
        with interrupts.shielded():
            with interrupts.shielded():
                deliver(signal.SIGHUP)
            finished_inner = True  # the inner end does not raise: the outer section goes on
        raise AssertionError("not reached")  # pragma: no cover
    assert finished_inner
    assert info.value.signal_name == "SIGHUP"
    assert interrupts.take_pending() is None  # raised once, not again


def test_a_shield_that_does_not_deliver_leaves_the_signal_to_its_caller() -> None:
    with interrupts.shielded(deliver=False):
        deliver(signal.SIGINT)
    assert interrupts.take_pending() == "SIGINT"
    assert interrupts.take_pending() is None


def test_a_shield_ending_with_an_error_lets_the_error_go_on_and_keeps_the_signal() -> None:
    with pytest.raises(ValueError), interrupts.shielded():
        deliver(signal.SIGTERM)
        raise ValueError("a fault during the section")
    assert interrupts.take_pending() == "SIGTERM"


def test_an_interruptible_section_inside_a_shield_raises_at_once() -> None:
    with interrupts.shielded(deliver=False):
        with pytest.raises(Interrupted), interrupts.interruptible():
            deliver(signal.SIGTERM)
        # and a signal held before such a section starts is raised as it starts
        deliver(signal.SIGINT)
        with pytest.raises(Interrupted) as info, interrupts.interruptible():
            raise AssertionError("not reached")  # pragma: no cover
    assert info.value.signal_name == "SIGINT"


def test_a_listener_hears_every_signal_and_nothing_is_raised_outside_a_shield() -> None:
    heard: list[str] = []
    stop_listening = interrupts.listen(heard.append)
    try:
        deliver(signal.SIGINT)
        deliver(signal.SIGTERM)
    finally:
        stop_listening()
    assert heard == ["SIGINT", "SIGTERM"]
    with pytest.raises(Interrupted):
        deliver(signal.SIGHUP)  # nobody listens any more
    assert heard == ["SIGINT", "SIGTERM"]


def test_a_listener_inside_a_shield_stops_its_work_and_the_shield_raises_after() -> None:
    heard: list[str] = []
    with pytest.raises(Interrupted) as info, interrupts.shielded():
        stop_listening = interrupts.listen(heard.append)
        try:
            deliver(signal.SIGTERM)
        finally:
            stop_listening()
    assert heard == ["SIGTERM"]
    assert info.value.signal_name == "SIGTERM"


def test_only_a_second_signal_runs_the_hard_stops(clean_state: list[str]) -> None:
    with interrupts.shielded(deliver=False):
        deliver(signal.SIGINT)
        assert clean_state == [] and not interrupts.urgent()
        deliver(signal.SIGINT)
        assert clean_state == ["hard stop"] and interrupts.urgent()
    assert interrupts.received() == 2


def test_a_failing_hard_stop_does_not_keep_the_others_from_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise OSError("no such process group")

    monkeypatch.setattr(interrupts, "_hard_stops", [broken, lambda: ran.append("second")])
    with interrupts.shielded(deliver=False):
        deliver(signal.SIGTERM)
        deliver(signal.SIGTERM)
    assert ran == ["second"]


def test_shields_of_other_threads_neither_hold_nor_raise() -> None:
    # the handler runs in the main thread; a shield elsewhere must not raise a held signal in
    # a thread that never saw it, nor take it from the main thread
    raised: list[BaseException] = []

    def work() -> None:
        try:
            with interrupts.shielded():
                pass
        except BaseException as exc:  # pragma: no cover (the failure being tested for)
            raised.append(exc)

    with interrupts.shielded(deliver=False):
        deliver(signal.SIGTERM)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert raised == []
    assert interrupts.take_pending() == "SIGTERM"


def test_install_leaves_an_ignored_signal_ignored_and_restore_puts_handlers_back() -> None:
    before = {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup: hangups are not meant to stop it
    try:
        restore = interrupts.install()
        assert signal.getsignal(signal.SIGINT) is interrupts._handle
        assert signal.getsignal(signal.SIGTERM) is interrupts._handle
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        interrupts.install()()  # a second install changes nothing, nor does its restore
        assert signal.getsignal(signal.SIGTERM) is interrupts._handle
        restore()  # the first one's restore puts the originals back
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_real_signal_reaches_the_handler_the_plugin_installed() -> None:
    # pytest's own run has the plugin loaded: its handlers are in place now
    assert interrupts.installed()
    with pytest.raises(Interrupted) as info, interrupts.shielded():
        signal.raise_signal(signal.SIGTERM)
    assert info.value.signal_name == "SIGTERM"
