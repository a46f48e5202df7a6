"""Signals to a pytest run with a server the plugin started: every report, and no process, left.

The server is the timing instrument launched through the plugin's own `ManagedServer` machinery
(a conftest swaps it in for the vLLM launcher), with a child process like vLLM's engine and,
when asked, one that ignores SIGTERM: a server that is slow to stop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmslo import record_log
from pytest_llmslo.servers.process import ProcessInfo, process_tree, still_running
from pytest_llmslo.testing.timing_server import serve_timing_server

pytest_plugins = ["pytester"]

CONFTEST = '''
import json, os, sys
from pathlib import Path

import pytest_llmslo.runner
from pytest_llmslo.servers.process import ManagedServer

HERE = str(Path.cwd())
ROOT = """
import json, os, subprocess, sys
port, here = sys.argv[1], sys.argv[2]
sleep = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_%s); time.sleep(600)"
children = [subprocess.Popen([sys.executable, "-c", sleep % "DFL"])]  # like vLLM's engine
if os.environ.get("STUBBORN"):
    children.append(subprocess.Popen([sys.executable, "-c", sleep % "IGN"]))
with open(os.path.join(here, "server-pids.json"), "w") as out:
    json.dump([os.getpid()] + [c.pid for c in children], out)
from pytest_llmslo.testing.timing_server import main
main(["--port", port, "--ttft-ms", "20", "--gap-ms", "5", "--tokens", "8",
      "--log", os.path.join(here, "served.jsonl")])
"""


class Instrument(ManagedServer):
    backend = "instrument"

    def command(self, port):
        return [sys.executable, "-c", ROOT, str(port), HERE]


pytest_llmslo.runner.make_server = lambda config, log_dir: Instrument(config, log_dir=log_dir)
'''

SPEC = """
servers:
  svc: {backend: vllm, model: timing-model, stop_timeout: %(stop_timeout)s, env: %(env)s}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
scenarios:
  endless: {dataset: lines, load: {parallel: 2, requests: 100000}, slo: {failure_rate: "<= 1%%"}}
  never: {dataset: lines, load: {parallel: 2, requests: 2}, slo: {failure_rate: "<= 1%%"}}
"""


class Run:
    """`pytest --slo` in a subprocess, with the server's processes once its load is under way."""

    def __init__(self, pytester: pytest.Pytester, *, stubborn: bool = False) -> None:
        pytester.makeconftest(CONFTEST)
        pytester.makefile(".txt", prompts="hello\n")
        spec = pytester.path / "signals.yaml"
        env = "{STUBBORN: '1'}" if stubborn else "{}"
        # slow to stop: without a second signal, the stop would wait ten minutes
        spec.write_text(SPEC % {"stop_timeout": 600 if stubborn else 20, "env": env})
        self.path = pytester.path
        self.results = pytester.path / "llmslo-results"
        self.proc = pytester.popen(
            [sys.executable, "-m", "pytest", "--slo", str(spec), "-p", "no:cacheprovider"],
            stdin=subprocess.DEVNULL,
        )
        self.tree: list[ProcessInfo] = []

    def wait_for_load(self) -> list[ProcessInfo]:
        """Until the server answered a few requests; then every process under pytest (the
        server's tree and its watchdog) and those the server reported."""
        served = self.path / "served.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            if served.exists() and len(served.read_text().splitlines()) >= 5:
                break
            time.sleep(0.1)
        assert self.proc.poll() is None, self.output()
        pids = json.loads((self.path / "server-pids.json").read_text())
        tree = process_tree(self.proc.pid)[1:]
        self.tree = tree + [p for p in process_tree(pids[0]) if p not in tree]
        assert {p.pid for p in self.tree} >= set(pids)
        return self.tree

    def output(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        out, err = self.proc.communicate()
        return (out or b"").decode() + (err or b"").decode()

    def finish(self, timeout: float) -> str:
        out, err = self.proc.communicate(timeout=timeout)
        return (out or b"").decode() + (err or b"").decode()

    def cleanup(self) -> None:
        """Kill what a failing test left behind."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
        for info in self.tree:
            if still_running(info):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(info.pid, signal.SIGKILL)


@pytest.fixture
def run(pytester: pytest.Pytester) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def start(**kw: bool) -> Run:
        runs.append(Run(pytester, **kw))
        return runs[-1]

    yield start
    for started in runs:
        started.cleanup()


def report_files(results: Path, run: str = "endless[svc]") -> tuple[dict[str, Any], list[str]]:
    """results.json and the lines of requests.jsonl, after checking report.md is there too."""
    assert run in (results / "report.md").read_text()
    data = json.loads((results / "results.json").read_text())
    return data, (results / "requests.jsonl").read_text().splitlines()


def assert_all_gone(tree: list[ProcessInfo]) -> None:
    alive = [p.pid for p in tree if still_running(p)]
    assert alive == [], f"processes still running after the run: {alive}"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_keeps_the_measurements_writes_every_report_and_leaves_no_process(
    run: Callable[..., Run], sig: signal.Signals
) -> None:
    """Ctrl-C, CI cancelling the job (SIGTERM) and a closed terminal (SIGHUP) alike."""
    started = run()
    tree = started.wait_for_load()
    started.proc.send_signal(sig)
    output = started.finish(timeout=120)
    assert started.proc.returncode == pytest.ExitCode.INTERRUPTED, output
    data, requests = report_files(started.results)
    [scenario] = data["scenarios"]  # the second scenario never started
    assert scenario["scenario"] == "endless" and scenario["interrupted"] == sig.name
    assert scenario["summary"]["succeeded"] > 0
    assert len(requests) >= scenario["summary"]["succeeded"]
    assert_all_gone(tree)


def test_a_killed_session_leaves_every_finished_request_on_disk(run: Callable[..., Run]) -> None:
    """SIGKILL leaves no chance to write a report: requests.jsonl, written as requests finish,
    holds what was served until a second before; the watchdog and the telemetry process see
    their parent gone and leave nothing running."""
    started = run()
    tree = started.wait_for_load()
    served = len((started.path / "served.jsonl").read_text().splitlines())
    time.sleep(2 * record_log.FLUSH_S + 0.5)  # every request served by then is flushed
    started.proc.kill()
    started.proc.communicate(timeout=30)
    [log] = (started.results / "runs").glob("*/requests.jsonl")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) >= served > 0 and {r["scenario"] for r in rows} == {"endless"}
    assert len({r["index"] for r in rows}) == len(rows)  # each request once
    assert not (started.results / "report.md").exists()  # no report: the data survived alone
    deadline = time.monotonic() + 30  # the watchdog polls its parent; the server stops in turn
    while any(still_running(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert_all_gone(tree)


def test_a_second_ctrl_c_while_a_slow_server_stops_kills_it_and_keeps_the_reports(
    run: Callable[..., Run],
) -> None:
    started = run(stubborn=True)
    tree = started.wait_for_load()
    started.proc.send_signal(signal.SIGINT)
    # the reports are written before any server is stopped ...
    latest = started.results / "requests.jsonl"
    deadline = time.monotonic() + 120
    while not latest.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert latest.exists(), started.output()
    # ... and this server takes its time: its child ignores SIGTERM (stop_timeout 600 s)
    assert any(still_running(p) for p in tree)
    started.proc.send_signal(signal.SIGINT)
    output = started.finish(timeout=120)
    assert started.proc.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "Traceback" not in output
    data, requests = report_files(started.results)
    [scenario] = data["scenarios"]
    assert scenario["interrupted"] == "SIGINT" and scenario["summary"]["succeeded"] > 0
    assert requests
    assert_all_gone(tree)


HAND_WRITTEN = """
import os
from pytest_llmslo import Endpoint


def test_a_long_run(llmslo_run):
    endpoint = Endpoint(os.environ["INSTRUMENT_URL"], "timing-model", "external")
    llmslo_run(endpoint, ["hello"], {"parallel": 2, "requests": 100000, "max_tokens": 8})
    open("went-on-after-the-run", "w").close()


def test_after_it():
    open("went-on-to-the-next-test", "w").close()
"""


def test_a_signal_during_a_hand_written_run_ends_the_session(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_timing_server(ttft_ms=20, gap_ms=5, tokens=8) as instrument:
        monkeypatch.setenv("INSTRUMENT_URL", instrument.base_url)
        pytester.makepyfile(test_hand=HAND_WRITTEN)
        proc = pytester.popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_hand.py"],
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while len(instrument.fetch_log()) < 5 and time.monotonic() < deadline:
                assert proc.poll() is None
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out.decode()
    assert not (pytester.path / "went-on-after-the-run").exists()
    assert not (pytester.path / "went-on-to-the-next-test").exists()
    # the part of the run that was measured is reported, as a spec scenario's would be
    data, requests = report_files(pytester.path / "llmslo-results", "test_a_long_run[external]")
    [run] = data["scenarios"]
    assert (run["scenario"], run["server"]) == ("test_a_long_run", "external")
    assert run["interrupted"] == "SIGTERM" and run["status"] == "FAIL"
    assert run["summary"]["succeeded"] > 0 and requests
