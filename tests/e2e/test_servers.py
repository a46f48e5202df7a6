"""Real vLLM (CPU build) and real `transformers serve` on the tiny model: serve, fail, stop."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_llmslo.config import ServerConfig
from pytest_llmslo.servers import (
    PortInUseError,
    Server,
    ServerStartError,
    make_server,
    process_tree,
)
from pytest_llmslo.servers.process import ProcessInfo, read_process, still_running

ConfigFactory = Callable[..., ServerConfig]

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.e2e


def stream_text(endpoint_url: str, path: str, body: dict[str, Any]) -> tuple[str, int]:
    """POST a streaming request; return the generated text and the number of SSE events."""
    text, events = [], 0
    payload = {**body, "stream": True, "max_tokens": 12}
    with (
        httpx.Client(timeout=120, trust_env=False) as client,
        client.stream("POST", endpoint_url + path, json=payload) as response,
    ):
        assert response.status_code == 200, response.read().decode()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            events += 1
            for choice in json.loads(line[len("data:") :])["choices"]:
                text.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return "".join(text), events


def check_streams(server: Server) -> None:
    endpoint = server.endpoint
    assert endpoint is not None
    chat, chat_events = stream_text(
        endpoint.base_url,
        "/v1/chat/completions",
        {"model": endpoint.model, "messages": [{"role": "user", "content": "你好, explain"}]},
    )
    assert chat.strip(), "the chat stream carried no text"
    assert chat_events >= 2
    completion, _ = stream_text(
        endpoint.base_url,
        "/v1/completions",
        {"model": endpoint.model, "prompt": "the quick brown fox"},
    )
    assert completion.strip(), "the completion stream carried no text"


def test_vllm_serves_streams(vllm_server: Server, tiny_model_dir: Path) -> None:
    endpoint = vllm_server.endpoint
    assert endpoint is not None
    assert endpoint.backend == "vllm" and endpoint.has_metrics
    assert endpoint.model == str(tiny_model_dir)  # as listed by /v1/models
    assert endpoint.version and endpoint.startup_seconds and endpoint.startup_seconds > 1
    pids = vllm_server.pids()
    assert pids[0] == endpoint.pid
    assert len(pids) >= 2, "the engine core runs in a child process"
    assert "Application startup complete" in Path(endpoint.log_path or "").read_text()
    check_streams(vllm_server)
    metrics = httpx.get(endpoint.base_url + "/metrics", timeout=10, trust_env=False)
    assert "vllm:" in metrics.text


def test_hf_serves_streams(hf_server: Server, tiny_model_dir: Path) -> None:
    endpoint = hf_server.endpoint
    assert endpoint is not None
    assert endpoint.backend == "hf" and not endpoint.has_metrics
    assert endpoint.model == str(tiny_model_dir)
    assert hf_server.pids()[0] == endpoint.pid
    check_streams(hf_server)


def test_hf_stop_leaves_no_process(
    tiny_model_dir: Path, tmp_path: Path, tiny_hf_config: ConfigFactory
) -> None:
    server = make_server(tiny_hf_config(tiny_model_dir, name="hf-stop"), log_dir=tmp_path)
    try:
        server.start()
        tree = snapshot(server.pids())
        assert tree
    finally:
        server.stop()
    assert_gone(tree)
    assert not server.is_alive() and server.pids() == []


def snapshot(pids: list[int]) -> list[ProcessInfo]:
    return [info for pid in pids if (info := read_process(pid)) is not None]


def assert_gone(tree: list[ProcessInfo]) -> None:
    alive = [p.pid for p in tree if still_running(p)]
    assert alive == [], f"still running: {alive}"


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_bad_model_path_fails_with_log_tail(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    missing = tmp_path / "no-such-model"
    make: ConfigFactory = request.getfixturevalue(f"tiny_{backend}_config")
    server = make_server(make(missing, name=f"{backend}-bad-path"), log_dir=tmp_path)
    with pytest.raises(ServerStartError) as info:
        server.start()
    message = str(info.value)
    # the exit ended the start, not the startup_timeout ("not ready after ... s")
    assert "before it was ready" in message and "exited with code" in message
    assert "not ready after" not in message
    assert "last lines of the server log" in message
    assert str(missing) in message.split("last lines of the server log", 1)[1]
    assert server.pids() == []


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_crash_during_start_fails_with_log_tail(
    backend: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    tiny_vllm_config: ConfigFactory,
    tiny_hf_config: ConfigFactory,
) -> None:
    if backend == "vllm":
        # passes argument parsing, then fails validating the model's context length
        config = tiny_vllm_config(tiny_model_dir, name="vllm-crash", args={"max_model_len": 10**6})
        expected = "max_model_len"
    else:
        # starts, then fails loading the model
        config = tiny_hf_config(
            tiny_model_dir, name="hf-crash", args={"attn_implementation": "no_such_attention"}
        )
        expected = "no_such_attention"
    server = make_server(config, log_dir=tmp_path)
    with pytest.raises(ServerStartError) as info:
        server.start()
    tail = str(info.value).split("last lines of the server log", 1)[-1]
    assert expected in tail
    assert server.pids() == []


def test_busy_port_is_refused(
    tiny_model_dir: Path,
    tmp_path: Path,
    tiny_vllm_config: ConfigFactory,
    tiny_hf_config: ConfigFactory,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        for make in (tiny_vllm_config, tiny_hf_config):
            server = make_server(make(tiny_model_dir, port=port), log_dir=tmp_path)
            with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
                server.start()
            # refused before anything was launched: no process, no log
            assert server.pids() == []
            assert not list(tmp_path.iterdir())


INTERRUPTED_RUN = textwrap.dedent(
    """
    import json
    from pathlib import Path
    from pytest_llmslo.config import ServerConfig
    from pytest_llmslo.servers import make_server
    fields = json.loads({config!r})
    fields["extra_args"] = tuple(fields["extra_args"])
    server = make_server(ServerConfig(**fields), log_dir=Path({logs!r}))
    server.start()
    print("ready", flush=True)
    import time
    time.sleep(600)
    """
)


@pytest.mark.parametrize(
    ("backend", "sig", "when"),
    [
        ("vllm", signal.SIGTERM, "starting"),
        ("hf", signal.SIGINT, "ready"),
        ("vllm", signal.SIGKILL, "ready"),
    ],
    ids=["vllm-SIGTERM-while-starting", "hf-SIGINT-when-ready", "vllm-SIGKILL-when-ready"],
)
def test_interrupted_run_leaves_no_server(
    backend: str,
    sig: signal.Signals,
    when: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A test process stopped by a signal (CI cancel, Ctrl-C) takes its servers with it; one
    killed outright (SIGKILL, the OOM killer) too: its watchdog stops vLLM's whole tree, the
    engine child included, within the grace period."""
    make: ConfigFactory = request.getfixturevalue(f"tiny_{backend}_config")
    config = make(tiny_model_dir, name=f"{backend}-interrupted")
    script = INTERRUPTED_RUN.format(
        config=json.dumps(dataclasses.asdict(config)), logs=str(tmp_path)
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so a failing test can still clean up everything it made
    )
    tree: list[ProcessInfo] = []
    try:
        if when == "ready":
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        else:
            # vLLM spawns its engine core early; interrupt while it loads the model
            deadline = time.monotonic() + 300
            while len(process_tree(proc.pid)) < 4 and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.2)
        tree = process_tree(proc.pid)
        assert len(tree) >= 2, "the server was started"
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert proc.returncode != 0
        if sig == signal.SIGKILL:  # nothing ran in the process: the watchdog does it after
            deadline = time.monotonic() + config.stop_timeout + 30
            while any(still_running(p) for p in tree) and time.monotonic() < deadline:
                time.sleep(0.2)
        assert_gone(tree)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for info in tree:
            if still_running(info):
                info_kill(info)
        if proc.stdout is not None:
            proc.stdout.close()


def info_kill(info: ProcessInfo) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGKILL)


def test_ci_cancelling_a_spec_run_leaves_every_report_and_no_process(
    tiny_model_dir: Path, pytester: pytest.Pytester
) -> None:
    """SIGTERM, as CI sends when a job is cancelled, during the load of a spec run on vLLM: the
    measurements so far are kept, every report is written, and vLLM's tree (its engine child
    included) and its watchdog are gone when pytest exits."""
    pytester.makefile(".txt", prompts="hello there\nwhat is a token?\n")
    spec = pytester.makefile(
        ".yaml",
        cancelled=f"""
servers:
  vllm:
    backend: vllm
    model: "{tiny_model_dir}"
    args: {{enforce_eager: true, max_model_len: 4096}}
    startup_timeout: 600
datasets:
  lines: {{format: line_by_line, path: prompts.txt}}
scenarios:
  endless:
    dataset: lines
    load: {{parallel: 2, requests: 100000, max_tokens: 16}}
    slo: {{failure_rate: "<= 1%"}}
""",
    )
    proc = pytester.popen(
        [sys.executable, "-m", "pytest", "--slo", str(spec), "-p", "no:cacheprovider"],
        stdin=subprocess.DEVNULL,
    )
    tree: list[ProcessInfo] = []
    try:
        # under way once vLLM has logged a few answered requests
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            logs = list(pytester.path.glob("llmslo-results/**/server-vllm*.log"))
            if logs and logs[0].read_text(errors="replace").count("POST /v1/chat") >= 5:
                break
            time.sleep(0.5)
        assert proc.poll() is None, "pytest ended before the load was under way"
        tree = process_tree(proc.pid)[1:]
        assert len(tree) >= 3, "vLLM, its engine child and the watchdog"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == pytest.ExitCode.INTERRUPTED, out.decode(errors="replace")
        results = pytester.path / "llmslo-results"
        assert "endless[vllm]" in (results / "report.md").read_text()
        [scenario] = json.loads((results / "results.json").read_text())["scenarios"]
        assert scenario["interrupted"] == "SIGTERM" and scenario["summary"]["succeeded"] > 0
        assert (results / "requests.jsonl").read_text().splitlines()
        assert_gone(tree)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for info in tree:
            if still_running(info):
                info_kill(info)
