"""The plugin as users drive it: specs collected, objectives as tests, reports, options.

The service under test is the project's timing instrument (a real HTTP server with exact timing
and injectable faults) reached as an `external` backend, so these runs take seconds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def instrument() -> Iterator[TimingServerProcess]:
    with serve_timing_server(ttft_ms=20, gap_ms=2, tokens=8) as server:
        yield server


@pytest.fixture
def env(instrument: TimingServerProcess, monkeypatch: pytest.MonkeyPatch) -> TimingServerProcess:
    monkeypatch.setenv("INSTRUMENT_URL", instrument.base_url)
    # these tests check the plugin's mechanics on a handful of requests, too few for a
    # percentile's interval to decide: their inconclusive objectives pass (with a warning)
    monkeypatch.setenv("LLMSLO_INCONCLUSIVE", "pass")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return instrument


SPEC = """
servers:
  svc: {backend: external, base_url: "${INSTRUMENT_URL}", model: timing}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
scenarios:
  chat-c2:
    dataset: lines
    load: {parallel: 2, requests: 6, max_tokens: 8}
    slo:
      ttft_p95: "%(ttft)s"
      failure_rate: "<= 1%%"
      output_throughput: ">= 1 tok/s"
"""


def write_spec(pytester: pytest.Pytester, ttft: str = "<= 2 s", name: str = "svc.yaml") -> Path:
    pytester.makefile(".txt", prompts="hello there\nwhat is a token?\n你好\n")
    spec = pytester.path / name
    spec.write_text(SPEC % {"ttft": ttft}, encoding="utf-8")
    return spec


def test_help_lists_the_option_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "*LLM inference-service SLO testing*",
            "*--slo=*",
            "*--slo-report=*",
            "*--slo-server-url=*",
            "*--slo-max-requests=*",
        ]
    )


def test_passing_spec_runs_each_objective_as_a_test(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    spec = write_spec(pytester)
    result = pytester.runpytest("--slo", str(spec), "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*svc.yaml::chat-c2::svc::ttft_p95 PASSED*",
            "*llmslo report*",
            "*# LLM SLO report*",
        ]
    )
    report = pytester.path / "llmslo-results" / "report.md"
    text = report.read_text()
    assert "chat-c2[svc] — PASS" in text and "| ttft_p95 |" in text
    data = json.loads((report.parent / "results.json").read_text())
    assert data["schema"] == "pytest-llmslo/results/v4"
    scenario = data["scenarios"][0]
    assert scenario["summary"]["requests"] == 6 and scenario["status"] == "PASS"
    lines = (report.parent / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 6
    assert all(json.loads(line)["first_content_at"] is not None for line in lines)


def test_broken_objective_fails_exactly_that_item(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    spec = write_spec(pytester, ttft="<= 0.001 ms")
    result = pytester.runpytest("--slo", str(spec))
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*chat-c2[[]svc[]] on external*",
            "*ttft_p95 = * ms [[]*[]], objective <= 0.001 ms: missed by*n=6*",
            "*requests: 6 measured, 6 ok, 0 failed*",
            "FAILED *svc.yaml::chat-c2::svc::ttft_p95*",
        ]
    )


def test_select_one_objective_with_k(pytester: pytest.Pytester, env: TimingServerProcess) -> None:
    spec = write_spec(pytester)
    result = pytester.runpytest("--slo", str(spec), "-k", "failure_rate")
    result.assert_outcomes(passed=1, deselected=2)


def test_spec_collected_automatically_by_name(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    write_spec(pytester, name="svc.slo.yaml")
    result = pytester.runpytest()
    result.assert_outcomes(passed=3)


def test_server_faults_are_reported_with_examples(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    pytester.makefile(".txt", prompts="hello\n")
    spec = pytester.makefile(
        ".yaml",
        svc=SPEC.replace("max_tokens: 8}", "max_tokens: 8, extra_body: {x_fault: http_500}}")
        % {"ttft": "<= 2 s"},
    )
    result = pytester.runpytest("--slo", str(spec))
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "*failure_rate = 100*% [[]*[]], objective <= 1%*",
            "*http_5xx x6: *500*",
            "*not measurable*",
        ]
    )


def test_junit_properties_and_github_summary(
    pytester: pytest.Pytester, env: TimingServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    spec = write_spec(pytester)
    result = pytester.runpytest("--slo", str(spec), "--junitxml=out.xml")
    result.assert_outcomes(passed=3)
    root = ET.parse(pytester.path / "out.xml").getroot()
    case = next(c for c in root.iter("testcase") if "ttft_p95" in (c.get("name") or ""))
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["slo_objective"] == "<= 2 s"
    assert props["slo_passed"] == "true"
    assert float(props["slo_measured"] or "nan") > 0
    assert "chat-c2[svc]" in (props["slo_report"] or "")
    assert "# LLM SLO report" in summary.read_text()


def test_an_inconclusive_objective_fails_by_default_saying_so_first_with_its_interval(
    pytester: pytest.Pytester, env: TimingServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMSLO_INCONCLUSIVE")
    spec = write_spec(pytester)  # 6 requests bound no p95 from above
    result = pytester.runpytest("--slo", str(spec), "-k", "ttft_p95", "--junitxml=out.xml")
    result.assert_outcomes(failed=1, deselected=2)
    result.stdout.fnmatch_lines(
        [
            "INCONCLUSIVE (inconclusive: fail)",
            "*ttft_p95 = * ms [[]*, inf[]], objective <= 2 s: INCONCLUSIVE*n=6*",
        ]
    )
    root = ET.parse(pytester.path / "out.xml").getroot()
    case = next(c for c in root.iter("testcase") if "ttft_p95" in (c.get("name") or ""))
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["slo_outcome"] == "inconclusive" and props["slo_passed"] == "false"
    assert float(props["slo_interval_low"] or "nan") > 0
    assert props["slo_interval_high"] == "inf"


def test_an_inconclusive_objective_under_the_pass_policy_passes_with_a_warning(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    spec = write_spec(pytester)
    result = pytester.runpytest("--slo", str(spec), "-k", "ttft_p95", "--slo-inconclusive=pass")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*SLOInconclusiveWarning: ttft_p95 = * ms [[]*, inf[]]*"])


def test_a_bad_confidence_on_the_command_line_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--slo-confidence", "1.5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--slo-confidence: expected a confidence level between*1.5*"])


def test_spec_errors_are_collection_errors_naming_file_and_line(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    spec = write_spec(pytester)
    spec.write_text(spec.read_text().replace("parallel: 2", "paralel: 2"))
    result = pytester.runpytest("--slo", str(spec))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        ["*svc.yaml:9: scenarios.chat-c2.load.paralel: unknown key*Did you mean 'parallel'?*"]
    )


def test_missing_spec_path_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--slo", "nope.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--slo path not found: nope.yaml*"])


def test_header_shows_resolved_settings_and_their_sources(
    pytester: pytest.Pytester, env: TimingServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(pytester)
    pytester.makeini("[pytest]\nslo_report = out/r.md\n")
    monkeypatch.setenv("LLMSLO_MAX_REQUESTS", "2")
    result = pytester.runpytest("--slo", str(spec), "-k", "failure_rate", "--slo-confidence", "90%")
    result.stdout.fnmatch_lines(
        [
            "llmslo: * report=out/r.md * max_requests=2 confidence=0.9 inconclusive=pass",
            "llmslo settings: slo_confidence from --slo-confidence, slo_inconclusive from "
            "$LLMSLO_INCONCLUSIVE, slo_max_requests from $LLMSLO_MAX_REQUESTS, "
            "slo_paths from --slo, slo_report from ini slo_report",
        ]
    )
    data = json.loads((pytester.path / "out" / "results.json").read_text())
    assert data["scenarios"][0]["summary"]["requests"] == 2


def test_server_url_option_replaces_the_specs_servers(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    pytester.makefile(".txt", prompts="hello\n")
    spec = pytester.makefile(
        ".yaml",
        svc="""
servers:
  vllm: {backend: vllm, model: /no/such/model}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
scenarios:
  s:
    dataset: lines
    load: {parallel: 1, requests: 2}
    slo: {failure_rate: "<= 0%"}
""",
    )
    result = pytester.runpytest("--slo", str(spec), "--slo-server-url", env.base_url)
    result.assert_outcomes(passed=1)


def test_server_process_objectives_on_an_external_server_are_not_measurable_from_collection(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    # the readiness probe of a running service took ~40 ms: as a start-up time it passed
    pytester.makefile(".txt", prompts="hello\n")
    spec = pytester.makefile(
        ".yaml",
        svc="""
servers:
  vllm: {backend: vllm, model: /no/such/model}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
scenarios:
  s:
    dataset: lines
    load: {parallel: 1, requests: 2}
    slo:
      startup_time: "<= 10 min"
      host_memory_peak: "<= 1 TiB"
      gpu_memory_peak: "<= 1 TiB"
      failure_rate: "<= 0%"
""",
    )
    result = pytester.runpytest("--slo", str(spec), "--slo-server-url", env.base_url)
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*startup_time = not measurable: server 'vllm' (--slo-server-url) was not started "
            "by this run*",
            "*host_memory_peak = not measurable*",
            "*gpu_memory_peak = not measurable*",
        ]
    )
    data = json.loads((pytester.path / "llmslo-results" / "results.json").read_text())
    verdicts = {v["metric"]: v for v in data["scenarios"][0]["verdicts"]}
    assert verdicts["startup_time"]["passed"] is False
    assert verdicts["startup_time"]["measured"] is None


def test_xdist_is_refused_with_advice(pytester: pytest.Pytester, env: TimingServerProcess) -> None:
    spec = write_spec(pytester)
    refused = pytester.runpytest_subprocess("--slo", str(spec), "-n", "2")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*cannot run under pytest-xdist*without -n*"])
    # found by name on the workers rather than given with --slo: refused as well
    write_spec(pytester, name="found.slo.yaml")
    found = pytester.runpytest_subprocess("-n", "2", "-p", "no:randomly")
    assert found.ret != pytest.ExitCode.OK
    found.stdout.fnmatch_lines(["*cannot run under pytest-xdist*"])
    assert not (pytester.path / "llmslo-results").exists()


def test_hand_written_test_with_fixtures_and_marker(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    pytester.makepyfile(f"""
        import pytest
        from pytest_llmslo import Endpoint

        ENDPOINT = Endpoint({env.base_url!r}, "timing", "external")

        @pytest.mark.slo(ttft_p95="<= 2 s", failure_rate="<= 1%")
        def test_meets(llmslo_run, llmslo_assert):
            run = llmslo_run(ENDPOINT, ["hi", "there"], {{"parallel": 2, "requests": 4}})
            assert run.summary.succeeded == 4
            llmslo_assert(run)

        def test_misses(llmslo_run, llmslo_assert):
            run = llmslo_run(ENDPOINT, ["hi"], {{"parallel": 1, "requests": 2}})
            llmslo_assert(run, {{"ttft_p95": "<= 0.001 ms"}})
    """)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*AssertionError: ttft_p95 = * ms [[]*[]], objective <= 0.001 ms*"]
    )


def test_hand_written_runs_appear_in_report_md_results_json_and_junit(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    pytester.makepyfile(f"""
        import pytest
        from pytest_llmslo import Endpoint

        ENDPOINT = Endpoint({env.base_url!r}, "timing", "external")

        @pytest.mark.slo(ttft_p95="<= 2 s")
        def test_marked(llmslo_run, llmslo_assert):
            llmslo_assert(llmslo_run(ENDPOINT, ["hi"], {{"parallel": 2, "requests": 4}}))

        def test_asserted_twice(llmslo_run, llmslo_assert):
            first = llmslo_run(ENDPOINT, ["hi"], {{"parallel": 1, "requests": 2}})
            second = llmslo_run(ENDPOINT, ["hi"], {{"parallel": 1, "requests": 3}})
            llmslo_assert(first, {{"failure_rate": "<= 0%"}})
            llmslo_assert(second, {{"ttft_p95": "<= 0.001 ms"}})
    """)
    result = pytester.runpytest("--junitxml=out.xml")
    result.assert_outcomes(passed=1, failed=1)
    results = pytester.path / "llmslo-results"
    data = json.loads((results / "results.json").read_text())
    runs = {(s["scenario"], s["server"]): s for s in data["scenarios"]}
    assert list(runs) == [
        ("test_marked", "external"),
        ("test_asserted_twice", "external"),
        ("test_asserted_twice-2", "external"),
    ]
    marked = runs["test_marked", "external"]
    assert marked["spec"].endswith(
        "test_hand_written_runs_appear_in_report_md_results_json_and_junit.py::test_marked"
    )
    assert marked["status"] == "PASS" and marked["summary"]["succeeded"] == 4
    assert [v["metric"] for v in marked["verdicts"]] == ["ttft_p95"]
    # each run reports the objectives its test asserted
    assert runs["test_asserted_twice", "external"]["status"] == "PASS"
    missed = runs["test_asserted_twice-2", "external"]
    assert missed["status"] == "FAIL" and missed["verdicts"][0]["objective"] == "<= 0.001 ms"
    report = (results / "report.md").read_text()
    assert "### test_marked[external] — PASS" in report
    assert "### test_asserted_twice-2[external] — FAIL" in report
    assert len((results / "requests.jsonl").read_text().splitlines()) == 4 + 2 + 3
    result.stdout.fnmatch_lines(["*llmslo report*", "*scenarios: 2 of 3 passed every objective*"])

    root = ET.parse(pytester.path / "out.xml").getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    marked_props = [(p.get("name"), p.get("value")) for p in cases["test_marked"].iter("property")]
    assert ("slo_objective", "<= 2 s") in marked_props and ("slo_passed", "true") in marked_props
    assert any(n == "slo_report" and "test_marked[external]" in (v or "") for n, v in marked_props)
    twice = [(p.get("name"), p.get("value")) for p in cases["test_asserted_twice"].iter("property")]
    assert [v for n, v in twice if n == "slo_passed"] == ["true", "false"]


def test_no_slo_options_leaves_normal_runs_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    assert True\n")
    pytester.makefile(".yaml", config="a: 1\n")  # not a spec: no --slo and not *.slo.yaml
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "llmslo-results").exists()


def test_servers_are_grouped_and_stopped_once_no_remaining_test_needs_them(
    pytester: pytest.Pytester, env: TimingServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_llmslo.session import SloSession

    events: list[tuple[str, str]] = []
    run, stop = SloSession.result, SloSession.stop_server

    def result(self: SloSession, spec: Any, scenario: str, server: str) -> Any:
        if (str(spec.path), scenario, server) not in self.results:
            events.append(("run", f"{scenario}[{server}]"))
        return run(self, spec, scenario, server)

    def stop_server(self: SloSession, spec_path: str, name: str) -> None:
        events.append(("stop", name))
        stop(self, spec_path, name)

    monkeypatch.setattr(SloSession, "result", result)
    monkeypatch.setattr(SloSession, "stop_server", stop_server)
    pytester.makefile(".txt", prompts="hello\n")
    spec = pytester.makefile(
        ".yaml",
        two="""
servers:
  a: {backend: external, base_url: "${INSTRUMENT_URL}", model: timing}
  b: {backend: external, base_url: "${INSTRUMENT_URL}", model: timing}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
defaults:
  load: {parallel: 1, requests: 2}
  slo: {failure_rate: "<= 0%"}
scenarios:
  first: {dataset: lines, servers: [a, b]}
  second: {dataset: lines, servers: [a, b]}
""",
    )
    result_ = pytester.runpytest("--slo", str(spec), "-v")
    result_.assert_outcomes(passed=4)
    # the spec interleaves the servers; tests run server by server, each stopped after its last
    result_.stdout.fnmatch_lines(
        [
            "*first::a::failure_rate PASSED*",
            "*second::a::failure_rate PASSED*",
            "*first::b::failure_rate PASSED*",
            "*second::b::failure_rate PASSED*",
        ]
    )
    assert [e for e in events if e[0] == "stop"][:2] == [("stop", "a"), ("stop", "b")]
    stop_a = events.index(("stop", "a"))
    assert all(e[1].endswith("[a]") for e in events[:stop_a] if e[0] == "run")
    assert all(e[1].endswith("[b]") for e in events[stop_a:] if e[0] == "run")


def test_ctrl_c_stops_the_run_and_keeps_what_was_measured(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    pytester.makefile(".txt", prompts="hello\n")
    spec = pytester.makefile(
        ".yaml",
        long="""
servers:
  svc: {backend: external, base_url: "${INSTRUMENT_URL}", model: timing}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
scenarios:
  endless: {dataset: lines, load: {parallel: 2, requests: 100000}, slo: {failure_rate: "<= 1%"}}
  never: {dataset: lines, load: {parallel: 2, requests: 2}, slo: {failure_rate: "<= 1%"}}
""",
    )
    proc = pytester.popen(
        [sys.executable, "-m", "pytest", "--slo", str(spec), "-p", "no:cacheprovider"],
        stdin=subprocess.DEVNULL,
    )
    results = pytester.path / "llmslo-results" / "results.json"
    time.sleep(4)  # long enough for the load to be under way
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    data = json.loads(results.read_text())
    [scenario] = data["scenarios"]  # the second scenario never started
    assert scenario["scenario"] == "endless" and scenario["interrupted"] == "SIGINT"
    assert scenario["summary"]["succeeded"] > 0


# --- test ids that pytest can take back ----------------------------------------------------------

IDS = [
    "svc.yaml::chat-c2::svc::ttft_p95",
    "svc.yaml::chat-c2::svc::failure_rate",
    "svc.yaml::chat-c2::svc::output_throughput",
]


def test_ids_name_spec_scenario_server_and_objective(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    spec = write_spec(pytester)
    listed = pytester.runpytest("--slo", str(spec), "--collect-only", "-q")
    assert [line for line in listed.outlines if "::" in line] == IDS


def test_last_failed_reruns_only_the_failed_objective(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    spec = write_spec(pytester, ttft="<= 0.001 ms")
    pytester.runpytest("--slo", str(spec)).assert_outcomes(passed=2, failed=1)
    again = pytester.runpytest("--slo", str(spec), "--lf", "-v")
    again.assert_outcomes(failed=1, deselected=2)
    again.stdout.fnmatch_lines(["run-last-failure: rerun previous 1 failure*", f"{IDS[0]} FAILED*"])


@pytest.mark.parametrize(
    ("args", "ran"),
    [
        ([IDS[1]], [IDS[1]]),  # the spec named as a test path is collected as a spec
        (["--slo", "svc.yaml", IDS[1]], [IDS[1]]),  # the id narrows --slo's spec
        (["svc.yaml::chat-c2::svc"], IDS),  # a scenario on one server
    ],
)
def test_an_id_copied_from_the_output_runs_those_tests(
    pytester: pytest.Pytester, env: TimingServerProcess, args: list[str], ran: list[str]
) -> None:
    write_spec(pytester)
    result = pytester.runpytest(*args, "-v")
    result.assert_outcomes(passed=len(ran))
    result.stdout.fnmatch_lines([f"{test_id} PASSED*" for test_id in ran], consecutive=True)


def test_deselect_takes_an_id_from_the_output(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    spec = write_spec(pytester)
    result = pytester.runpytest("--slo", str(spec), "--deselect", IDS[0])
    result.assert_outcomes(passed=2, deselected=1)


def test_junit_names_keep_the_id_whole(pytester: pytest.Pytester, env: TimingServerProcess) -> None:
    spec = write_spec(pytester)
    pytester.runpytest("--slo", str(spec), "--junitxml=out.xml").assert_outcomes(passed=3)
    root = ET.parse(pytester.path / "out.xml").getroot()
    names = [(case.get("classname"), case.get("name")) for case in root.iter("testcase")]
    assert names == [
        ("svc.yaml.chat-c2.svc", "ttft_p95"),
        ("svc.yaml.chat-c2.svc", "failure_rate"),
        ("svc.yaml.chat-c2.svc", "output_throughput"),
    ]


# --- specs from the ini file or the environment join the collection ------------------------------

FAILING_UNIT_TEST = "def test_unit():\n    assert False\n"


def test_specs_from_the_ini_file_join_the_test_paths_instead_of_replacing_them(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    write_spec(pytester)
    pytester.makepyfile(test_unit=FAILING_UNIT_TEST)
    pytester.makeini("[pytest]\nslo_paths = svc.yaml\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=3, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_specs_from_the_environment_join_the_test_paths_instead_of_replacing_them(
    pytester: pytest.Pytester, env: TimingServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(pytester)
    pytester.makepyfile(test_unit=FAILING_UNIT_TEST)
    monkeypatch.setenv("LLMSLO_SPECS", str(spec))
    result = pytester.runpytest()
    result.assert_outcomes(passed=3, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_test_path_inside_a_configured_spec_selects_from_it(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    write_spec(pytester)
    pytester.makepyfile(test_unit=FAILING_UNIT_TEST)
    pytester.makeini("[pytest]\nslo_paths = svc.yaml\n")
    pytester.runpytest(IDS[1]).assert_outcomes(passed=1)


def test_slo_on_the_command_line_runs_the_specs_alone_unless_test_paths_are_given(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    spec = write_spec(pytester)
    pytester.makepyfile(test_unit=FAILING_UNIT_TEST)
    pytester.runpytest("--slo", str(spec)).assert_outcomes(passed=3)
    pytester.runpytest("--slo", str(spec), "test_unit.py").assert_outcomes(passed=3, failed=1)


# --- --slo paths that can yield no spec ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--slo", "empty"],
            "*--slo empty: the directory holds no spec (no .yaml or .yml file under it)",
        ),
        (
            ["--slo", "notes.txt"],
            "*--slo notes.txt: not a spec: spec files are YAML files ending in .yaml or .yml",
        ),
        (
            ["--slo", "svc.yaml::chat-c2"],
            "*--slo svc.yaml::chat-c2: --slo takes a spec file or directory; to run one test, "
            "give its id as a test path: pytest 'svc.yaml::chat-c2'",
        ),
        (
            ["--slo-server-url", "http://127.0.0.1:99999"],
            "*--slo-server-url: 'http://127.0.0.1:99999' has no valid port: ports are 1-65535;*",
        ),
    ],
)
def test_options_that_can_run_nothing_are_usage_errors_saying_why(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    (pytester.path / "empty").mkdir()
    pytester.makefile(".txt", notes="hello\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_missing_spec_path_names_where_it_was_configured(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMSLO_SPECS", "gone.yaml")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*$LLMSLO_SPECS path not found: gone.yaml*"])


# --- dataset files are read at collection --------------------------------------------------------


def test_a_broken_dataset_is_a_collection_error_before_any_server_starts(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    spec = write_spec(pytester)
    (pytester.path / "prompts.txt").write_bytes("café\n".encode("latin-1"))
    env.fetch_log(clear=True)
    result = pytester.runpytest("--slo", str(spec))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "svc.yaml:5: datasets.lines: the file is not UTF-8 text (invalid continuation byte "
            "at byte 3) (prompts.txt). Re-encode the file as UTF-8.",
        ]
    )
    assert env.fetch_log() == []


def test_the_run_sends_the_prompts_read_at_collection(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    spec = write_spec(pytester)
    pytester.makeconftest(
        """
        def pytest_collection_finish(session):
            (session.config.rootpath / "prompts.txt").write_text("rewritten\\n", encoding="utf-8")
        """
    )
    env.fetch_log(clear=True)
    pytester.runpytest("--slo", str(spec)).assert_outcomes(passed=3)
    sent = {entry["body"]["messages"][-1]["content"] for entry in env.fetch_log(clear=True)}
    assert sent == {"hello there", "what is a token?", "你好"}
