"""A Python child process over a socket pair, started by PID and stopped by PID.

A fresh interpreter (``python -m MODULE FD``), not a fork (the parent runs threads whose locks a
forked child would inherit held) and not multiprocessing's spawn: that imports the ``__main__``
script again in the child (running an unguarded script's top level twice) and starts a
resource-tracker process that outlives a signalled run by a moment. One socket pair carries
length-prefixed pickled messages (a ``multiprocessing`` ``Connection``); the child's end lives in
the child only, so when either side exits the other reads end of file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import site
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

# The signals a terminal sends to its whole process group: the parent decides when to stop.
GROUP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class Child:
    """A started child as its parent waits for it, stops it and reads its status."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()  # negative: the signal that ended it

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)

    def kill(self) -> None:
        if self.is_alive():
            self._popen.kill()  # by its PID, which Popen holds

    def describe_exit(self) -> str:
        """How it ended, for a message: ``exit status 1``, ``killed by SIGKILL``, or ``still
        running``."""
        code = self.exitcode
        if code is None:
            return "still running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"


def start_child(module: str) -> tuple[Child, Connection]:
    """``python -m module FD`` with FD its end of a new socket pair; the parent's end returned."""
    ours, theirs = socket.socketpair()
    try:
        popen = subprocess.Popen(
            [sys.executable, "-m", module, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env=_child_env(),
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()  # the child's end lives in the child only: its exit reads as EOF
    return Child(popen), Connection(ours.detach())


def _child_env() -> dict[str, str] | None:
    """The environment for a child that must import this package: a script that found it by
    adding its folder to sys.path (not installed) gets that folder on the child's PYTHONPATH,
    after what is there; an installed package needs nothing (None: this environment)."""
    root = Path(__file__).resolve().parent.parent
    installed = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if root in installed:
        return None  # never ahead of the standard library: a site folder may shadow it
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(root)) if p)
    return env


def ignore_group_signals() -> None:
    """In a child: a terminal's Ctrl-C reaches the whole process group, but the parent decides."""
    for name in GROUP_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
