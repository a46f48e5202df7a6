"""The plugin's side of progress (`--slo-progress`): pytest's terminal, reached past its capture.

The session runs scenarios inside a test's call, where pytest captures the output; a progress
line is written with the capture suspended, as pytest's own live logging does, so it reaches the
terminal and never a test's captured output.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pytest_llmslo.progress import AnsiLine, LinesProgress, LiveProgress, Progress


def progress_mode(config: pytest.Config, wanted: str) -> str:
    """What `--slo-progress` (`wanted`) means for this run: live, lines or off.

    auto: one live line on a terminal; one line per scenario with `-q` (the person asked for
    less) or when the output is not a terminal (CI logs keep every rewrite of a live line).
    """
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is None or wanted == "off":  # -p no:terminal: nothing to write on
        return "off"
    if wanted != "auto":
        return wanted
    if config.get_verbosity() < 0 or not terminal.isatty():
        return "lines"
    return "live"


def terminal_progress(config: pytest.Config, wanted: str) -> Progress:
    """The progress display for this run, writing on pytest's terminal."""
    mode = progress_mode(config, wanted)
    if mode == "off":
        return Progress()
    terminal: Any = config.pluginmanager.get_plugin("terminalreporter")
    uncaptured = _uncaptured(config)
    if mode == "lines":

        def write_line(text: str) -> None:
            with uncaptured():
                terminal.write_line(text)

        return LinesProgress(write_line)

    def write(text: str) -> None:
        with uncaptured():
            terminal.write(text, flush=True)

    def begin() -> bool:
        # a line of its own; pytest starts its next output on a new line (as after live logs)
        went_down = bool(terminal.currentfspath)
        with uncaptured():
            terminal.ensure_newline()
        return went_down

    return LiveProgress(AnsiLine(write, lambda: config.get_terminal_writer().fullwidth, begin))


def _uncaptured(config: pytest.Config) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """A context in which writes reach the terminal past pytest's capture, one at a time."""
    capture: Any = config.pluginmanager.get_plugin("capturemanager")
    lock = threading.Lock()  # the live line's thread and side-by-side loads' threads

    @contextlib.contextmanager
    def uncaptured() -> Iterator[None]:
        with lock:
            if capture is None:
                yield
                return
            with capture.global_and_fixture_disabled():
                yield

    return uncaptured
