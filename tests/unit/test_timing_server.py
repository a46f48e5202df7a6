"""The timing instrument served from several processes on one port."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def stream_one(server: TimingServerProcess) -> None:
    # a new connection each time, so the kernel picks a serving process each time
    request = urllib.request.Request(
        f"{server.base_url}/v1/chat/completions",
        data=json.dumps({"model": "timing-model", "stream": True, "messages": []}).encode(),
        headers={"content-type": "application/json", "connection": "close"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert b"data: [DONE]" in answer.read()


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_two_processes_serve_one_port_share_a_log_and_stop_together() -> None:
    with serve_timing_server(ttft_ms=1, gap_ms=1, tokens=3, processes=2) as server:
        pids = (server.pid, *server.serving_pids)
        assert len(server.serving_pids) == 2 and all(alive(pid) for pid in pids)
        sent = 0
        while sent < 200:  # until both processes have answered (the kernel hashes connections)
            stream_one(server)
            sent += 1
            prefixes = {entry["id"].split("-")[1] for entry in server.fetch_log()}
            if prefixes == {"p0", "p1"}:
                break
        assert prefixes == {"p0", "p1"}
        assert wait_for(lambda: len(server.fetch_log()) == sent)
        log = server.fetch_log(clear=True)
        assert len({entry["id"] for entry in log}) == sent  # ids stay unique across processes
        assert [e["received_ns"] for e in log] == sorted(e["received_ns"] for e in log)
        assert all(len(entry["content_ns"]) == 3 for entry in log)
        assert server.fetch_log() == []
        # a process's own /log would hold only its part: it refuses, naming the way that works
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server.base_url}/log", timeout=10)
        assert refused.value.code == 409 and b"--log file" in refused.value.read()
    assert not any(alive(pid) for pid in pids)


def test_a_serving_process_that_dies_takes_the_others_down_with_the_supervisor() -> None:
    with serve_timing_server(ttft_ms=1, gap_ms=1, tokens=2, processes=2) as server:
        first, second = server.serving_pids
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: not alive(server.pid) and not alive(second))
        assert "serving process" in Path(server.log_path).read_text()


@pytest.mark.parametrize("processes", [1, 2])
def test_a_metrics_file_is_served_at_metrics_by_every_process(processes: int) -> None:
    page = Path(__file__).parent / "data" / "vllm_metrics.txt"
    with serve_timing_server(tokens=2, processes=processes, metrics_file=str(page)) as server:
        for _ in range(6):  # new connections: the kernel spreads them over the processes
            with urllib.request.urlopen(f"{server.base_url}/metrics", timeout=10) as answer:
                assert answer.read() == page.read_bytes()
    with serve_timing_server(tokens=2) as bare, pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{bare.base_url}/metrics", timeout=10)
    missing.value.close()
    assert missing.value.code == 404  # an instrument without a page has no /metrics, as HF
