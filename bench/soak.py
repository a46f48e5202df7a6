"""Soak: the client's memory over a long open-loop run through pytest, sampled as it runs.

The promise under test: long runs stay bounded (records stream to requests.jsonl as they complete,
summaries do not hold every chunk time), so a one-hour soak at 100 req/s keeps the client under
500 MB. This bench runs that soak as a user would and measures it from outside:

- the server: the timing instrument (an exact streaming schedule: the first of `TOKENS` content
  chunks `TTFT_MS` after the request arrived, then `GAP_MS` apart, so streams are short), started
  here as a separate process on a free port and served from two processes: an instrument of
  several processes keeps no request log unless asked, so its own memory stays flat for an hour;
- the client: one `python -m pytest --slo spec.yaml` session, the spec generated here: the
  instrument as an `external` server, one scenario at `--rate` req/s (poisson arrivals) for
  `--minutes`, objectives `failure_rate`, `ttft_p95` and `itl_p99` so that the summary and
  verdict path runs; `--slo-progress lines`, its output to `pytest.log` in the output folder;
- the measure, every `--sample-s` seconds: VmRSS of the pytest process, the sum over its whole
  process tree (pytest and its descendants; the instrument is not among them), and the size of
  the run's requests.jsonl as it grows. At the end, the pytest process's peak RSS as the kernel
  counted it (`ru_maxrss`, which no sampling interval can miss), and the request count, failures
  and outcome from its results.json.

The tree's sum counts pages its processes share once per process: an upper bound. MB are 10^6
bytes. The output folder holds `rss.csv` (elapsed_s, client_rss_mb, tree_rss_mb,
requests_jsonl_mb; elapsed from the start of pytest, whose load begins a few seconds later),
spec.yaml, pytest.log, the instrument's log and the reports.

    python bench/soak.py [--minutes 60] [--rate 100] [--sample-s 10] [--out DIR] [--plot rss.png]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pytest_llmslo import __version__  # noqa: E402
from pytest_llmslo.environment import collect_run_info  # noqa: E402

TARGET_MB = 500.0
TTFT_MS, GAP_MS, TOKENS = 50.0, 5.0, 32  # about 0.2 s a stream: ~20 in flight at 100 req/s
SERVER_PROCESSES = 2
PROMPTS = 256
OBJECTIVES = {"failure_rate": "<= 1%", "ttft_p95": "<= 1 s", "itl_p99": "<= 500 ms"}
CHECKPOINTS_MIN = (1, 5, 15, 30, 45, 60)  # of a one-hour run; a shorter one at the same fractions
# pytest's own start (collection, probing the server) and its reports after the load; past this
# on top of the soak, it is stopped as a user would: SIGINT, which still writes the reports
OVERRUN_S = 300.0
SIGINT_GRACE_S = 60.0  # after SIGINT, before SIGKILL
MB = 1e6
SPEC = """\
version: 1
servers:
  instrument: {{backend: external, base_url: "{url}", model: timing-model}}
datasets:
  prompts: {{format: line_by_line, path: prompts.txt}}
scenarios:
  soak:
    dataset: prompts
    load: {{rate: {rate:g}, arrival: poisson, duration: {seconds:g}, max_tokens: {tokens}}}
    slo:
{objectives}
"""


@dataclass(frozen=True)
class Sample:
    """One reading while the session ran; sizes in MB."""

    elapsed_s: float
    client_rss_mb: float
    tree_rss_mb: float
    requests_jsonl_mb: float


@dataclass(frozen=True)
class Session:
    """The pytest session's end: its exit code and the kernel's count of its peak RSS."""

    pid: int
    exit_code: int | None  # None: not seen to exit
    peak_rss_mb: float
    stopped_by: str | None  # the signal this bench had to send, if any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the load runs")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, help="output folder (default: a new temporary one)")
    parser.add_argument("--plot", type=Path, help="also draw RSS over time to this PNG")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sample_s <= 0:
        parser.error("--minutes, --rate and --sample-s must be positive")
    out = args.out or Path(tempfile.mkdtemp(prefix="soak-"))
    out.mkdir(parents=True, exist_ok=True)
    seconds = args.minutes * 60
    print(f"{collect_run_info([], __version__).hardware}; {_load_average()}", flush=True)
    print(f"output in {out}", flush=True)
    started = time.monotonic()
    with running_instrument(out / "instrument.log") as url:
        write_spec(out, url, args.rate, seconds)
        samples, session = soak(out, seconds, args.sample_s)
    write_csv(out / "rss.csv", samples)
    print()
    print(
        f"{args.rate:g} req/s (poisson) for {args.minutes:g} min against the timing instrument "
        f"({TOKENS} chunks: {TTFT_MS:g} ms to the first, then {GAP_MS:g} ms apart); "
        f"a sample every {args.sample_s:g} s"
    )
    print()
    print("\n".join(table(samples, seconds, session)))
    print()
    print(outcome_line(out / "report" / "results.json", session))
    if args.plot is not None:
        print(plot(samples, args.plot))
    print(f"\ntotal time {time.monotonic() - started:.0f} s; at the end, {_load_average()}")
    return 0


# -- the server ------------------------------------------------------------------------------


@contextlib.contextmanager
def running_instrument(log_path: Path) -> Iterator[str]:
    """The timing instrument in a process group of its own while inside; its base URL."""
    command = [sys.executable, "-m", "pytest_llmslo.testing.timing_server", "--port", "0"]
    command += ["--ttft-ms", str(TTFT_MS), "--gap-ms", str(GAP_MS), "--tokens", str(TOKENS)]
    command += ["--processes", str(SERVER_PROCESSES)]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, start_new_session=True, cwd=ROOT
        )
    try:
        yield _listening_url(server, log_path)
    finally:
        _stop_instrument(server)
        if server.stdout is not None:
            server.stdout.close()


def _listening_url(server: subprocess.Popen[bytes], log_path: Path, timeout: float = 30.0) -> str:
    assert server.stdout is not None
    deadline = time.monotonic() + timeout
    # read unbuffered: a buffered readline could take in the next line too, which select then
    # never reports (the supervisor prints its serving processes' PIDs just before)
    pending = b""
    while time.monotonic() < deadline and server.poll() is None:
        ready, _, _ = select.select([server.stdout], [], [], 0.1)
        if ready:
            pending += os.read(server.stdout.fileno(), 4096)
        for line in pending.decode().split("\n")[:-1]:  # whole lines only
            if "listening on" in line:
                return line.rsplit(" ", 1)[1].strip()
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(
        f"the timing instrument did not listen within {timeout:g} s "
        f"(exit code {server.poll()}); its log {log_path} ends with:\n{tail}"
    )


def _stop_instrument(server: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM to the supervisor, which stops its serving processes by their PIDs; SIGKILL to
    them all, by PID, if it has not exited `grace_s` later."""
    if server.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.pid, signal.SIGTERM)
    try:
        server.wait(grace_s)
    except subprocess.TimeoutExpired:
        for pid in [*descendants(server.pid), server.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.wait(10)


# -- the session and its samples -------------------------------------------------------------


def write_spec(out: Path, url: str, rate: float, seconds: float) -> None:
    objectives = "\n".join(f'      {metric}: "{text}"' for metric, text in OBJECTIVES.items())
    spec = SPEC.format(url=url, rate=rate, seconds=seconds, tokens=TOKENS, objectives=objectives)
    (out / "spec.yaml").write_text(spec, encoding="utf-8")
    prompts = "".join(f"soak prompt {i}: say something short\n" for i in range(PROMPTS))
    (out / "prompts.txt").write_text(prompts, encoding="utf-8")


def soak(out: Path, seconds: float, sample_s: float) -> tuple[list[Sample], Session]:
    """Run the pytest session in `out`, sampling it every `sample_s` until it exits."""
    command = [sys.executable, "-m", "pytest", "--slo", "spec.yaml", "-q", "-p", "no:cacheprovider"]
    command += ["--slo-report", str(out / "report" / "report.md"), "--slo-progress", "lines"]
    # the settings of a developer's shell must not change the run
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSLO_")}
    samples: list[Sample] = []
    with open(out / "pytest.log", "wb") as log:
        # a session of its own: a Ctrl-C at this bench's terminal reaches it only as
        # _interrupt sends it, after the bench has stopped sampling
        pytest = subprocess.Popen(
            command, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    stopped_by = None
    ended: tuple[int, float] | None = None
    try:
        ended = _sample_until_exit(pytest, out / "report", samples, sample_s, seconds + OVERRUN_S)
        if ended is None:
            print(f"the session ran {OVERRUN_S:g} s past the soak: stopping it", flush=True)
    except KeyboardInterrupt:
        # what was sampled is kept: the table of an interrupted soak still shows its curve
        print("interrupted: stopping the session (its reports are still written)", flush=True)
    finally:
        if pytest.returncode is None:
            stopped_by, ended = _interrupt(pytest)
    exit_code, peak_mb = ended if ended is not None else (pytest.returncode, float("nan"))
    return samples, Session(pytest.pid, exit_code, peak_mb, stopped_by)


def _sample_until_exit(
    pytest: subprocess.Popen[bytes],
    report_dir: Path,
    samples: list[Sample],
    sample_s: float,
    limit_s: float,
) -> tuple[int, float] | None:
    """Add a sample to `samples` every `sample_s` until the session exits (its exit code and
    peak RSS) or has run `limit_s` (None)."""
    started = time.monotonic()
    while time.monotonic() - started <= limit_s:
        samples.append(sample(pytest.pid, report_dir, time.monotonic() - started))
        ended = _reaped(pytest, until=time.monotonic() + sample_s)
        if ended is not None:
            return ended
    return None


def _interrupt(pytest: subprocess.Popen[bytes]) -> tuple[str, tuple[int, float] | None]:
    """SIGINT, as Ctrl-C: the session stops its load and writes its reports; SIGKILL to it and
    its descendants, by PID, if it has not exited `SIGINT_GRACE_S` later. The signal that ended
    it, and its exit code and peak RSS."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pytest.pid, signal.SIGINT)
    ended = _reaped(pytest, until=time.monotonic() + SIGINT_GRACE_S)
    if ended is not None:
        return "SIGINT", ended
    for pid in [*descendants(pytest.pid), pytest.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return "SIGKILL", _reaped(pytest, until=time.monotonic() + 10)


def _reaped(process: subprocess.Popen[bytes], until: float) -> tuple[int, float] | None:
    """Wait until `until` for the process to exit; its exit code and peak RSS in MB once it has.

    Reaped with wait4 rather than Popen.wait for its resource usage: `ru_maxrss` (KiB on
    Linux) is the process's peak RSS, including a peak between two samples.
    """
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_maxrss * 1024 / MB
        if time.monotonic() >= until:
            return None
        time.sleep(min(0.2, max(0.0, until - time.monotonic())))


def sample(pid: int, report_dir: Path, elapsed_s: float) -> Sample:
    client = rss_bytes(pid)
    tree = client + sum(rss_bytes(child) for child in descendants(pid))
    return Sample(elapsed_s, client / MB, tree / MB, requests_jsonl_bytes(report_dir, pid) / MB)


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` from /proc; 0 once it has exited (or is a zombie, which has none)."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # the kernel writes kB: KiB
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from each thread's /proc children list."""
    found: list[int] = []
    waiting = [pid]
    while waiting:
        parent = waiting.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for task in tasks:
            children = _children(f"/proc/{parent}/task/{task}/children")
            found += children
            waiting += children
    return found


def _children(path: str) -> list[int]:
    try:
        with open(path, encoding="utf-8") as children:
            return [int(pid) for pid in children.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []  # the thread or its process has ended


def requests_jsonl_bytes(report_dir: Path, pid: int) -> int:
    """The size of this session's runs/<id>/requests.jsonl (its id ends in its PID); 0 before
    it exists."""
    sizes = [path.stat().st_size for path in report_dir.glob(f"runs/*-{pid}*/requests.jsonl")]
    return max(sizes, default=0)


def write_csv(path: Path, samples: Sequence[Sample]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["elapsed_s", "client_rss_mb", "tree_rss_mb", "requests_jsonl_mb"])
        for s in samples:
            writer.writerow(
                [
                    f"{s.elapsed_s:.1f}",
                    f"{s.client_rss_mb:.1f}",
                    f"{s.tree_rss_mb:.1f}",
                    f"{s.requests_jsonl_mb:.2f}",
                ]
            )


# -- the table -------------------------------------------------------------------------------


def table(samples: Sequence[Sample], seconds: float, session: Session) -> list[str]:
    """RSS at the checkpoints, the peaks, the growth over the second half, against the target."""
    lines = [
        "| at (min) | sampled at (s) | client RSS (MB) | tree RSS (MB) | requests.jsonl (MB) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for minute in CHECKPOINTS_MIN:
        at = seconds * minute / CHECKPOINTS_MIN[-1]
        s = _at(samples, at)
        cells = "- | - | - | -" if s is None else _cells(s)
        lines.append(f"| {at / 60:.3g} | {cells} |")
    peak_client = max((s.client_rss_mb for s in samples), default=float("nan"))
    peak_tree = max((s.tree_rss_mb for s in samples), default=float("nan"))
    lines.append(f"| peak (sampled) | | {peak_client:.0f} | {peak_tree:.0f} | |")
    kernel = "-" if math.isnan(session.peak_rss_mb) else f"{session.peak_rss_mb:.0f}"
    lines.append(f"| peak (kernel, pytest process) | | {kernel} | | |")
    client_growth = growth_per_10min(samples, seconds, lambda s: s.client_rss_mb)
    tree_growth = growth_per_10min(samples, seconds, lambda s: s.tree_rss_mb)
    growth = " | ".join("-" if math.isnan(g) else f"{g:+.1f}" for g in (client_growth, tree_growth))
    lines.append(f"| growth, second half (MB per 10 min) | | {growth} | |")
    # the kernel's peak is nan when the session was not seen to exit
    peak = max(peak_tree, session.peak_rss_mb) if session.peak_rss_mb > 0 else peak_tree
    verdict = "PASS" if peak < TARGET_MB else "FAIL"  # nan (nothing measured) fails too
    lines += [
        "",
        f"target: the client (its whole process tree) under {TARGET_MB:g} MB throughout: "
        f"{verdict} (peak {peak:.0f} MB: the tree's sampled peak or the pytest process's own, "
        "whichever is larger)",
    ]
    return lines


def _at(samples: Sequence[Sample], at_s: float) -> Sample | None:
    """The first sample taken at or after `at_s` (the one at 0 s is of an interpreter still
    starting); None if the session had ended before it."""
    return next((s for s in samples if s.elapsed_s >= at_s), None)


def _cells(s: Sample) -> str:
    return (
        f"{s.elapsed_s:.0f} | {s.client_rss_mb:.0f} | {s.tree_rss_mb:.0f} "
        f"| {s.requests_jsonl_mb:.1f}"
    )


def growth_per_10min(
    samples: Sequence[Sample], seconds: float, rss: Callable[[Sample], float]
) -> float:
    """Least-squares slope of `rss` over the samples of the load's second half, per 10 min."""
    half = [s for s in samples if seconds / 2 <= s.elapsed_s <= seconds]
    if len(half) < 2:
        return float("nan")
    times = np.array([s.elapsed_s for s in half])
    values = np.array([rss(s) for s in half])
    slope = np.polyfit(times, values, 1)[0]
    return float(slope) * 600


def outcome_line(results_path: Path, session: Session) -> str:
    """The session's exit code, its requests.jsonl's final size, and what its results.json says
    it measured."""
    stopped = f", stopped by {session.stopped_by}" if session.stopped_by else ""
    written = requests_jsonl_bytes(results_path.parent, session.pid) / MB
    head = f"pytest exit code {session.exit_code}{stopped}; requests.jsonl {written:.1f} MB"
    try:
        data: dict[str, Any] = json.loads(results_path.read_text(encoding="utf-8"))
        [scenario] = data["scenarios"]
    except (OSError, ValueError, KeyError) as exc:
        return f"{head}; no results.json read from {results_path} ({type(exc).__name__}: {exc})"
    summary = scenario.get("summary") or {}
    outcomes = ", ".join(
        f"{v['metric']} {v.get('outcome') or ('pass' if v['passed'] else 'fail')}"
        for v in scenario.get("verdicts", [])
    )
    return (
        f"{head}; scenario {scenario['status']}: {summary.get('requests', 0):,} measured "
        f"requests, {summary.get('failed', 0):,} failed, over "
        f"{summary.get('duration_s') or 0:.0f} s; {outcomes}"
    )


def plot(samples: Sequence[Sample], path: Path) -> str:
    """RSS over time to a PNG, with matplotlib (the `plots` extra) when it can be imported."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'pytest-llmslo[plots]')"
    fig = Figure(figsize=(10, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    minutes = [s.elapsed_s / 60 for s in samples]
    ax.plot(minutes, [s.client_rss_mb for s in samples], label="client (pytest) RSS")
    ax.plot(minutes, [s.tree_rss_mb for s in samples], label="client process tree RSS")
    ax.axhline(TARGET_MB, color="red", linestyle="--", label=f"target {TARGET_MB:g} MB")
    ax.set_xlabel("minutes since pytest started")
    ax.set_ylabel("MB")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.savefig(path, format="png")
    return f"plot written to {path}"


def _load_average() -> str:
    # the cores are shared: how busy the machine was says how much of the noise is neighbours'
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min)"


if __name__ == "__main__":
    raise SystemExit(main())
