"""The telemetry child's entry point: ``python -m pytest_llmslo.telemetry.child FD``.

`process.TelemetryProcess` starts it with one end of a socket pair as FD; the first message is
the sampler's options, then calls until stop() or end of file (the parent is gone).
"""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection

from pytest_llmslo.telemetry.process import serve


def main(argv: list[str]) -> None:
    conn = Connection(int(argv[1]))
    try:
        options = conn.recv()
    except (EOFError, OSError):  # the parent went away before it said anything
        return
    serve(conn, options)


if __name__ == "__main__":
    main(sys.argv)
