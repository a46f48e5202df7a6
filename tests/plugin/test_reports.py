"""What a real session writes and prints: no credential anywhere, nothing lost to an unwritable
folder or to a second session writing into the same one.

The service is the project's timing instrument (as an `external` server, or launched as if it
were vLLM); a managed server whose start fails shows its command line and log without a model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llmslo.servers import process
from pytest_llmslo.servers.vllm import VLLMServer
from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server

pytest_plugins = ["pytester"]

CANARY = "CANARY-d41d8cd9"
# every place a credential can be given; each value is distinct so a leak says where it came from
PLANTED = {
    "api_key_env": f"{CANARY}-apikey",
    "url": f"{CANARY}-urlpass",
    "header": f"{CANARY}-header",
    "cookie": f"{CANARY}-cookie",
    "body": f"{CANARY}-body",
    "args": f"{CANARY}-args",
    "extra_args": f"{CANARY}-extra",
    "env": f"{CANARY}-env",
}

SPEC = f"""
servers:
  svc:
    backend: external
    base_url: "http://canary-user:{PLANTED["url"]}@${{INSTRUMENT_HOSTPORT}}"
    model: timing
    api_key_env: CANARY_KEY
  local:
    backend: vllm
    model: /no/such/model
    startup_timeout: 30
    args: {{api_key: "{PLANTED["args"]}", max_model_len: 64}}
    extra_args: ["--hf-token", "{PLANTED["extra_args"]}"]
    env: {{HF_TOKEN: "{PLANTED["env"]}"}}
datasets:
  lines: {{format: line_by_line, path: prompts.txt}}
scenarios:
  chat:
    servers: [svc, local]
    dataset: lines
    load:
      parallel: 1
      requests: 2
      max_tokens: 4
      headers: {{X-Gateway-Key: "{PLANTED["header"]}", Cookie: "sid={PLANTED["cookie"]}"}}
      extra_body: {{password: "{PLANTED["body"]}"}}
    slo: {{failure_rate: "<= 0%", ttft_p95: "<= 5 s"}}
"""


@pytest.fixture(scope="module")
def instrument() -> Iterator[TimingServerProcess]:
    with serve_timing_server(ttft_ms=5, gap_ms=1, tokens=4) as server:
        yield server


@pytest.fixture
def env(instrument: TimingServerProcess, monkeypatch: pytest.MonkeyPatch) -> TimingServerProcess:
    monkeypatch.setenv("INSTRUMENT_URL", instrument.base_url)
    # these tests check the plugin's mechanics on a handful of requests, too few for a
    # percentile's interval to decide: their inconclusive objectives pass (with a warning)
    monkeypatch.setenv("LLMSLO_INCONCLUSIVE", "pass")
    monkeypatch.setenv("INSTRUMENT_HOSTPORT", instrument.base_url.removeprefix("http://"))
    monkeypatch.setenv("CANARY_KEY", PLANTED["api_key_env"])
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return instrument


@pytest.fixture
def failing_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's real command line, run by a stand-in that prints its arguments (as vLLM does with
    its non-default ones) and exits at once: a start failure in milliseconds, no model needed."""
    real = VLLMServer.command

    def command(self: VLLMServer, port: int) -> list[str]:
        args = real(self, port)[3:]  # past `python -m vllm.entrypoints.openai.api_server`
        code = "import sys; print('non-default args:', sys.argv[1:]); sys.exit(3)"
        return [sys.executable, "-c", code, *args]

    monkeypatch.setattr(VLLMServer, "command", command)
    monkeypatch.setattr(process, "missing_modules", lambda modules: [])


def files_under(root: Path, *, skip: set[Path]) -> dict[Path, str]:
    return {
        p: p.read_text(encoding="utf-8", errors="replace")
        for p in sorted(root.rglob("*"))
        if p.is_file() and p not in skip
    }


def leaks(texts: dict[str, str]) -> dict[str, list[str]]:
    found = {
        where: sorted(name for name, value in PLANTED.items() if value in text)
        for where, text in texts.items()
    }
    return {where: names for where, names in found.items() if names}


def test_no_planted_credential_reaches_any_output_file_or_the_terminal(
    pytester: pytest.Pytester,
    env: TimingServerProcess,
    failing_vllm: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    summary = pytester.path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makefile(".txt", prompts="hello there\nwhat is a token?\n")
    spec = pytester.path / "canary.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    env.fetch_log(clear=True)

    result = pytester.runpytest("--slo", str(spec), "--junitxml=junit.xml", "-rA")

    # the external server passed, the managed one failed to start, showing its command and log
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str() + result.stderr.str()
    assert "did not start" in out and "--api-key '***'" in out and "--hf-token '***'" in out
    assert "non-default args:" in out  # the log tail is shown, scrubbed
    outputs = files_under(pytester.path, skip={spec})
    assert summary in outputs and pytester.path / "junit.xml" in outputs
    report_dir = pytester.path / "llmslo-results"
    assert report_dir / "results.json" in outputs and report_dir / "requests.jsonl" in outputs
    assert list((report_dir / "logs").glob("server-local*.log")), "the server's log was kept"
    texts = {str(p.relative_to(pytester.path)): t for p, t in outputs.items()}
    texts["terminal"] = out
    assert leaks(texts) == {}
    # what is hidden is still named, so a reader knows a credential was there
    data = json.loads((report_dir / "results.json").read_text())
    svc = next(s for s in data["scenarios"] if s["server"] == "svc")
    assert svc["load"]["headers"] == {"X-Gateway-Key": "***", "Cookie": "***"}
    assert svc["endpoint"]["api_key"] == "***"
    # only displays are redacted: the server received the real key and headers
    sent = env.fetch_log()
    assert sent and all(
        e["headers"]["authorization"] == f"Bearer {PLANTED['api_key_env']}"
        and e["headers"]["x-gateway-key"] == PLANTED["header"]
        for e in sent
    )


def test_server_url_user_info_is_hidden_in_the_header_and_reports(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    pytester.makefile(".txt", prompts="hello\n")
    spec = pytester.makefile(
        ".yaml",
        svc="""
servers:
  svc: {backend: vllm, model: /no/such/model}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
scenarios:
  s: {dataset: lines, load: {parallel: 1, requests: 2}, slo: {failure_rate: "<= 0%"}}
""",
    )
    url = env.base_url.replace("http://", f"http://user:{PLANTED['url']}@")
    result = pytester.runpytest(
        "--slo", str(spec), "--slo-server-url", url, "--slo-api-key-env", "CANARY_KEY"
    )
    out = result.stdout.str() + result.stderr.str()
    assert "server_url=http://***@127.0.0.1:" in out
    texts = {str(p): t for p, t in files_under(pytester.path, skip=set()).items()}
    texts["terminal"] = out
    assert leaks(texts) == {}


def test_an_unwritable_report_folder_costs_the_files_not_the_servers_or_verdicts(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    # a managed "vLLM" that really starts: the timing instrument on the port it is given
    def command(self: VLLMServer, port: int) -> list[str]:
        return [sys.executable, "-m", "pytest_llmslo.testing.timing_server", "--port", str(port)]

    monkeypatch.setattr(VLLMServer, "command", command)
    monkeypatch.setattr(process, "missing_modules", lambda modules: [])
    pytester.makefile(".txt", prompts="hello\n")
    spec = pytester.makefile(
        ".yaml",
        svc=f"""
servers:
  svc: {{backend: vllm, model: "{tiny_model_dir}", startup_timeout: 60}}
datasets:
  lines: {{format: line_by_line, path: prompts.txt}}
scenarios:
  s:
    dataset: lines
    load: {{parallel: 1, requests: 2, max_tokens: 4, extra_body: {{x_ttft_ms: 1, x_gap_ms: 1}}}}
    slo: {{failures: "<= 0"}}
""",
    )
    result = pytester.runpytest("--slo", str(spec), "--slo-report", "/proc/llmslo-nowhere/r.md")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*s[[]svc[]] — PASS*",
            "WARNING llmslo: server logs go to *: /proc/llmslo-nowhere/logs cannot be written*",
            "WARNING llmslo: could not write /proc/llmslo-nowhere/r.md*",
            "WARNING llmslo: could not write /proc/llmslo-nowhere/results.json*",
        ]
    )


def wait_for_slow_session(instrument: TimingServerProcess, proc: subprocess.Popen[bytes]) -> None:
    """Until the slow session's first scenario is answered: it has started, and its second
    scenario (10 s to its first token) is on its way."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if any(e["body"].get("x_ttft_ms") == 2 for e in instrument.fetch_log()):
            return
        time.sleep(0.1)
    raise AssertionError("the slow session did not start")


def test_two_sessions_in_one_folder_keep_both_runs_and_the_later_one_warns(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    pytester.makefile(".txt", prompts="hello\n")
    slow = pytester.makefile(
        ".yaml",
        slow="""
servers:
  svc: {backend: external, base_url: "${INSTRUMENT_URL}", model: timing}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
scenarios:
  started:
    dataset: lines
    load: {parallel: 1, requests: 1, max_tokens: 4, extra_body: {x_ttft_ms: 2}}
    slo: {failure_rate: "<= 0%"}
  slow:
    dataset: lines
    load: {parallel: 1, requests: 1, max_tokens: 4, extra_body: {x_ttft_ms: 10000}}
    slo: {failure_rate: "<= 0%"}
""",
    )
    quick = pytester.makefile(
        ".yml",
        quick="""
servers:
  svc: {backend: external, base_url: "${INSTRUMENT_URL}", model: timing}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
scenarios:
  quick:
    dataset: lines
    load: {parallel: 1, requests: 1, max_tokens: 4, extra_body: {x_ttft_ms: 1}}
    slo: {failure_rate: "<= 0%"}
""",
    )
    env.fetch_log(clear=True)
    # the slow session starts first and finishes last: the quick one writes in between
    proc = pytester.popen(
        [sys.executable, "-m", "pytest", "--slo", str(slow), "-p", "no:cacheprovider"],
        stdin=subprocess.DEVNULL,
    )
    report_dir = pytester.path / "llmslo-results"
    try:
        wait_for_slow_session(env, proc)
        # the quick session runs while the slow one waits for its answer
        quick_result = pytester.runpytest("--slo", str(quick))
        assert proc.poll() is None, "the slow session ended before the quick one wrote"
    finally:
        out, _ = proc.communicate(timeout=120)
    quick_result.assert_outcomes(passed=1)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "WARNING llmslo: another session (run " in text
    runs = {
        p.name: [s["scenario"] for s in json.loads((p / "results.json").read_text())["scenarios"]]
        for p in (report_dir / "runs").iterdir()
    }
    assert sorted(runs.values()) == [["quick"], ["started", "slow"]]
    latest = json.loads((report_dir / "results.json").read_text())
    assert runs[latest["run"]["id"]] == ["started", "slow"]


def test_max_requests_caps_a_duration_only_scenario_and_the_report_says_so(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    pytester.makefile(".txt", prompts="hello\n")
    spec = pytester.makefile(
        ".yaml",
        svc="""
servers:
  svc: {backend: external, base_url: "${INSTRUMENT_URL}", model: timing}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
scenarios:
  soak: {dataset: lines, load: {parallel: 2, duration: 120, max_tokens: 4}, slo: {failures: "<= 0"}}
""",
    )
    result = pytester.runpytest("--slo", str(spec), "--slo-max-requests", "3")
    result.assert_outcomes(passed=1)
    report_dir = pytester.path / "llmslo-results"
    [scenario] = json.loads((report_dir / "results.json").read_text())["scenarios"]
    assert scenario["summary"]["requests"] == 3
    assert (scenario["load"]["requests"], scenario["load"]["duration"]) == (3, 120.0)
    assert scenario["spec_load"]["requests"] is None
    markdown = (report_dir / "report.md").read_text()
    assert "load: parallel 2, 3 requests, 120 s" in markdown
    assert (
        "requests capped at 3 by --slo-max-requests (the 120 s duration still applies)" in markdown
    )


def test_a_value_json_cannot_hold_costs_no_report_file(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    pytester.makefile(".txt", prompts="hello\n")
    spec = pytester.makefile(
        ".yaml",
        svc="""
servers:
  svc: {backend: external, base_url: "${INSTRUMENT_URL}", model: timing}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
scenarios:
  dated:
    dataset: lines
    load: {parallel: 1, requests: 1, max_tokens: 4, extra_body: {not_before: 2024-01-01}}
    slo: {failure_rate: "<= 0%"}
""",
    )
    result = pytester.runpytest("--slo", str(spec))
    assert "WARNING" not in result.stdout.str()
    report_dir = pytester.path / "llmslo-results"
    assert (report_dir / "report.md").read_text().startswith("# LLM SLO report")
    assert (report_dir / "requests.jsonl").exists()
    data = json.loads((report_dir / "results.json").read_text())
    [scenario] = data["scenarios"]
    assert scenario["load"]["extra_body"] == {"not_before": "2024-01-01"}
    assert [v["metric"] for v in scenario["verdicts"]] == ["failure_rate"]
