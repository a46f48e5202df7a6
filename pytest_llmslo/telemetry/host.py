"""Resident memory of a process tree, read from /proc (Linux)."""

from __future__ import annotations

import os
from collections.abc import Iterable

PROC = "/proc"


def rss_unavailable_reason(proc: str = PROC) -> str | None:
    """Why host RSS cannot be read here, or None when it can."""
    if not os.path.isfile(os.path.join(proc, "self", "status")):
        return f"host memory is not measurable: {proc}/self/status is missing (Linux /proc needed)"
    return None


def process_rss(pid: int, proc: str = PROC) -> int | None:
    """VmRSS of one process in bytes; None when it has exited or is a zombie without memory."""
    try:
        with open(os.path.join(proc, str(pid), "status"), encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    # "VmRSS:     123456 kB"; the kernel always reports kB here.
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def tree_rss(pids: Iterable[int], proc: str = PROC) -> int | None:
    """Sum of VmRSS over ``pids`` in bytes; None when none of them could be read.

    Pages shared between processes (forked workers, shared memory segments) count once per
    process, so this is an upper bound of the tree's footprint, which is what a ceiling needs.
    """
    readable = [rss for pid in set(pids) if (rss := process_rss(pid, proc)) is not None]
    return sum(readable) if readable else None
