"""A client worker's entry point: ``python -m pytest_llmslo.worker_child FD``.

`workers.run_load_spread` starts it with one end of a socket pair as FD; the first message is
its `workers.WorkerJob`, then `workers.serve_worker` runs it and streams its records back.
"""

from __future__ import annotations

import contextlib
import sys
from multiprocessing.connection import Connection

from pytest_llmslo.child_process import ignore_group_signals


def main(argv: list[str]) -> None:
    # before the engine's imports: a Ctrl-C while they load must not end the worker either
    ignore_group_signals()
    from pytest_llmslo.workers import serve_worker

    conn = Connection(int(argv[1]))
    try:
        job = conn.recv()
    except (EOFError, OSError):  # the parent went away before it said anything
        return
    try:
        serve_worker(conn, job)
    finally:
        with contextlib.suppress(OSError):
            conn.close()


if __name__ == "__main__":
    main(sys.argv)
