"""Kills a server's process tree when the process that started it dies, however it dies.

`ManagedServer` starts one watchdog per server, in its own session, holding the read end of a
pipe whose only write end stays in the plugin's process. The kernel closes that end when the
plugin's process ends, SIGKILL and the OOM killer included, and the watchdog's read then returns
end-of-file: it signals the server's process group, and where /proc exists also the descendants
that left the group, SIGTERM then SIGKILL after the grace. A byte on the pipe before it closes
means the plugin stopped the server itself: nothing to do.

PR_SET_PDEATHSIG would reach the server's first process only (vLLM's engine runs in a child)
and exists on Linux alone; a pipe works on every POSIX system.

Run as a script with the standard library alone (no import of this package, which would cost
the time and memory of httpx and more, per server):

    python watchdog.py FD PGID GRACE_SECONDS
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

PROC = Path("/proc")
DISARM = b"x"  # written by the plugin when it stopped the server itself


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgid, start time) of a running process from /proc, or None."""
    try:
        data = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X", "x"):
        return None
    return int(fields[1]), int(fields[2]), int(fields[19])


def descendants(root: int) -> list[tuple[int, int]]:
    """(pid, start time) of every running descendant of `root`; empty without /proc."""
    try:
        entries = [int(e) for e in os.listdir(PROC) if e.isdigit()]
    except OSError:
        return []
    children: dict[int, list[tuple[int, int]]] = {}
    for pid in entries:
        info = _stat(pid)
        if info is not None:
            children.setdefault(info[0], []).append((pid, info[2]))
    found: list[tuple[int, int]] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child[0])
    return found


def _kill(pgid: int, others: list[tuple[int, int]], sig: signal.Signals) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, sig)
    for pid, started in others:
        info = _stat(pid)
        if info is not None and info[2] == started:  # not a later process reusing the pid
            with contextlib.suppress(OSError):
                os.kill(pid, sig)


def _alive(pgid: int, others: list[tuple[int, int]]) -> bool:
    """Whether anything of the tree still runs: /proc where it exists (zombies, which nobody
    may reap soon, left out), else any process in the group."""
    if any((info := _stat(pid)) is not None and info[2] == started for pid, started in others):
        return True
    try:
        entries = [int(e) for e in os.listdir(PROC) if e.isdigit()]
    except OSError:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            pass
        return True
    return any((info := _stat(pid)) is not None and info[1] == pgid for pid in entries)


def kill_tree(pgid: int, grace: float) -> None:
    """SIGTERM to the group (the root's pid) and its escaped descendants, SIGKILL after `grace`."""
    # read before signalling: a descendant that left the group is found through its parents,
    # which the signal may end first
    others = descendants(pgid)
    _kill(pgid, others, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pgid, others):
        time.sleep(0.1)
    others += [p for p in descendants(pgid) if p not in others]
    _kill(pgid, others, signal.SIGKILL)


def watch(fd: int, pgid: int, grace: float) -> bool:
    """Block until the pipe closes; kill the tree unless the plugin disarmed first. Returns
    whether it killed."""
    disarmed = False
    while True:
        try:
            data = os.read(fd, 64)
        except InterruptedError:
            continue
        if not data:
            break
        disarmed = disarmed or DISARM in data
    if disarmed:
        return False
    kill_tree(pgid, grace)
    return True


def main(argv: list[str]) -> int:
    # the terminal's Ctrl-C and hangup are for the plugin, which stops its servers itself; a
    # watchdog that died with it could not do its one job
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    fd, pgid, grace = int(argv[1]), int(argv[2]), float(argv[3])
    watch(fd, pgid, grace)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
