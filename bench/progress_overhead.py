"""Progress overhead: the engine's chunk-stamp lag with the live progress line off and on.

The timing instrument streams 20 content chunks per request (first 200 ms after the request
arrived, then 20 ms apart) to many closed-loop users, as in bench/timing_accuracy.py; lag is the
engine's stamp of a chunk minus the server's monotonic clock just before it wrote it. Each
repetition runs the same load twice, once with no progress and once with `LiveProgress`
drawing its line (to /dev/null, at its usual twice a second) from its own thread, in alternating
order so that drift of the machine falls on both alike. The table gives, per setting, the median
over repetitions of each lag percentile and its spread (min-max).

    python bench/progress_overhead.py [--streams 256] [--repeats 5] [--per-stream 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "bench"):  # the package, and the sibling bench it reuses
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from timing_accuracy import TOKENS, pinned_instrument  # noqa: E402

from pytest_llmslo.config import LoadConfig  # noqa: E402
from pytest_llmslo.load import run_load  # noqa: E402
from pytest_llmslo.progress import AnsiLine, LiveProgress, LoadProgress  # noqa: E402
from pytest_llmslo.records import Prompt  # noqa: E402
from pytest_llmslo.testing.timing_server import TimingServerProcess  # noqa: E402

PERCENTILES = (50, 99, 99.9)
SETTINGS = ("off", "live")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=256, help="concurrent streams")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each setting")
    parser.add_argument(
        "--per-stream", type=int, default=8, help="measured requests per stream and run"
    )
    args = parser.parse_args(argv)
    lags: dict[str, list[list[float]]] = {setting: [] for setting in SETTINGS}
    writes: list[str] = []
    with open(os.devnull, "w", encoding="utf-8") as sink, pinned_instrument() as server:

        def write(text: str) -> None:
            writes.append(text)
            sink.write(text)
            sink.flush()

        stamp_lags(server, args.streams, 1, None)  # a first run warms the instrument and the client
        for repeat in range(args.repeats):
            order = SETTINGS if repeat % 2 == 0 else SETTINGS[::-1]
            for setting in order:
                live = (
                    LiveProgress(AnsiLine(write, lambda: 120, lambda: True))
                    if setting == "live"
                    else None
                )
                try:
                    lag = stamp_lags(server, args.streams, args.per_stream, live)
                finally:
                    if live is not None:
                        live.close()
                lags[setting].append([float(np.percentile(lag, p)) for p in PERCENTILES])
    print(
        f"{args.streams} streams x {args.per_stream} requests x {TOKENS} chunks, "
        f"{args.repeats} repeats; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {len(writes)} writes of the live line"
    )
    header = f"{'chunk stamp lag (ms)':<24}" + "".join(f"{s:>26}" for s in SETTINGS)
    print(header)
    print("-" * len(header))
    for i, p in enumerate(PERCENTILES):
        cells = []
        for setting in SETTINGS:
            values = [run[i] for run in lags[setting]]
            cells.append(f"{statistics.median(values):>8.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"{'p' + format(p, 'g'):<24}" + "".join(f"{c:>26}" for c in cells))
    return 0


def stamp_lags(
    server: TimingServerProcess, streams: int, per_stream: int, live: LiveProgress | None
) -> np.ndarray:
    """Chunk-stamp lags in ms of one closed-loop run at `streams` users, `per_stream` measured
    requests each after one warmup request each."""
    prompts = [Prompt(index=i, text=f"stream {i}") for i in range(streams)]
    config = LoadConfig(
        parallel=streams, requests=per_stream * streams, warmup=streams, max_tokens=TOKENS
    )
    counters = live.load("bench::timing") if live is not None else LoadProgress("bench::timing")
    result = run_load(server.endpoint(), prompts, config, progress=counters)
    if live is not None:
        live.load_ended(counters)
    log = {entry["id"]: entry for entry in server.fetch_log(clear=True)}
    lags: list[float] = []
    for record in result.measured:
        if not record.ok:
            raise RuntimeError(f"request {record.index} failed: {record.error_message}")
        sent = log[record.extra["response_id"]]["content_ns"]
        lags.extend(seen - ns / 1e9 for seen, ns in zip(record.content_times, sent, strict=True))
    return np.array(lags) * 1e3


if __name__ == "__main__":
    raise SystemExit(main())
