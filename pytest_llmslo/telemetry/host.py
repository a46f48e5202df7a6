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


def process_tree(root: int, proc: str = PROC) -> list[int]:
    """``root`` and all its live descendants (``root`` first)."""
    tree = _tree_from_children_files(root, proc)
    return tree if tree is not None else _tree_from_stat_scan(root, proc)


def _tree_from_children_files(root: int, proc: str) -> list[int] | None:
    """Walk /proc/<pid>/task/<tid>/children: cheap, but needs CONFIG_PROC_CHILDREN."""
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            tasks = os.listdir(os.path.join(proc, str(pid), "task"))
        except OSError:
            if pid == root:
                return [root]
            continue  # exited while walked
        tree.append(pid)
        for tid in tasks:
            try:
                with open(os.path.join(proc, str(pid), "task", tid, "children")) as f:
                    todo.extend(int(child) for child in f.read().split())
            except FileNotFoundError:
                if not os.path.isdir(os.path.join(proc, str(pid), "task", tid)):
                    continue  # the thread exited
                return None  # the kernel lacks the children files
            except OSError:
                continue
    return tree


def _tree_from_stat_scan(root: int, proc: str) -> list[int]:
    """Read every process's parent id from /proc/<pid>/stat and walk down from ``root``."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir(proc)
    except OSError:
        return [root]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "stat"), encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name in parentheses may contain spaces, so split after its last `)`.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree
