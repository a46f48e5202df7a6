"""The load engine against the timing instrument over real sockets: bodies, errors, loops, stops."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_llmslo import interrupts
from pytest_llmslo.config import LoadConfig
from pytest_llmslo.http_client import parse_base_url
from pytest_llmslo.load import LoadResult, request_body, run_load
from pytest_llmslo.records import Endpoint, ErrorCategory, Prompt
from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server

TTFT_MS = 30.0
GAP_MS = 2.0
TOKENS = 5
PROMPTS = [Prompt(index=i, text=f"question {i}") for i in range(3)]


@pytest.fixture(scope="module")
def instrument() -> Iterator[TimingServerProcess]:
    with serve_timing_server(ttft_ms=TTFT_MS, gap_ms=GAP_MS, tokens=TOKENS) as server:
        yield server


def _run(
    server: TimingServerProcess, backend: str = "external", **config: Any
) -> tuple[LoadResult, dict[str, dict[str, Any]]]:
    config.setdefault("parallel", 2)
    config.setdefault("requests", 2)
    config.setdefault("max_tokens", None)
    result = run_load(server.endpoint(backend), PROMPTS, LoadConfig(**config))
    log = {entry["id"]: entry for entry in server.fetch_log(clear=True)}
    return result, log


@pytest.mark.parametrize("api", ["chat", "completions"])
@pytest.mark.parametrize("stream", [True, False])
def test_every_api_and_mode_records_timing_and_usage(
    instrument: TimingServerProcess, api: str, stream: bool
) -> None:
    result, log = _run(instrument, api=api, stream=stream, requests=4)
    assert [r.index for r in result.records] == [0, 1, 2, 3]
    for record in result.records:
        assert record.ok, record.error_message
        entry = log[record.extra["response_id"]]
        assert entry["path"] == ("/v1/chat/completions" if api == "chat" else "/v1/completions")
        assert record.output_text == "".join(f" t{i}" for i in range(TOKENS))
        assert (record.output_tokens, record.token_source) == (TOKENS, "usage")
        assert record.input_tokens == 7
        assert record.http_status == 200
        assert record.first_content_at is not None and record.first_chunk_at is not None
        ttft = record.first_content_at - record.sent_at
        assert ttft >= TTFT_MS / 1000 * 0.95
        assert record.sent_at <= record.first_chunk_at <= record.first_content_at <= record.end_at
        if stream:
            assert len(record.content_times) == TOKENS
            assert record.finish_reason == "length"
        else:
            assert record.content_times == (record.end_at,)
            assert record.first_chunk_at == record.first_content_at == record.end_at
    assert result.window_start == min(r.sent_at for r in result.records)
    assert result.window_end == max(r.end_at for r in result.records)
    assert result.interrupted is None


@pytest.mark.parametrize(
    ("api", "stream", "fault", "path"),
    [
        ("chat", True, None, "bulk"),
        ("completions", True, None, "bulk"),
        ("chat", False, None, "json"),
        ("chat", True, "http_500", "status"),
    ],
)
def test_the_run_counts_which_decoder_read_each_answer(
    instrument: TimingServerProcess, api: str, stream: bool, fault: str | None, path: str
) -> None:
    # the instrument frames its streams as vLLM does: one event per chunk, read in bulk
    extra_body = {"x_fault": fault} if fault else {}
    result, _ = _run(instrument, api=api, stream=stream, requests=3, extra_body=extra_body)
    assert result.decoded_by == {path: 3}


def test_ttft_is_the_first_content_not_the_role_chunk(instrument: TimingServerProcess) -> None:
    result, log = _run(instrument, extra_body={"x_ttft_ms": 150})
    for record in result.records:
        assert record.first_chunk_at is not None and record.first_content_at is not None
        assert record.first_chunk_at < record.first_content_at  # the role chunk comes first
        assert record.first_content_at - record.sent_at >= 0.145
        entry = log[record.extra["response_id"]]
        # the engine saw each content chunk after the server wrote it, on the same clock
        for seen, sent_ns in zip(record.content_times, entry["content_ns"], strict=True):
            assert seen >= sent_ns / 1e9


def test_body_fields_and_headers(instrument: TimingServerProcess) -> None:
    endpoint = Endpoint(base_url=instrument.base_url, model="timing-model", backend="vllm")
    endpoint = replace(endpoint, api_key="secret")
    config = LoadConfig(
        parallel=1,
        requests=1,
        max_tokens=4,
        min_tokens=2,
        ignore_eos=True,
        temperature=0.5,
        top_p=0.9,
        stop=("END",),
        request_seed=True,
        seed=11,
        extra_body={"x_gap_ms": 0, "top_k": 3},
        headers={"X-Trace": "abc"},
    )
    result = run_load(endpoint, PROMPTS, config)
    (entry,) = instrument.fetch_log(clear=True)
    assert result.records[0].ok
    assert entry["body"] == {
        "model": "timing-model",
        "messages": [{"role": "user", "content": "question 0"}],
        "max_tokens": 4,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 11,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "min_tokens": 2,
        "x_gap_ms": 0,
        "top_k": 3,
    }
    assert entry["headers"]["authorization"] == "Bearer secret"
    assert entry["headers"]["x-trace"] == "abc"
    assert entry["headers"]["accept"] == "text/event-stream"
    assert entry["headers"]["accept-encoding"] == "identity"  # a compressor would be timed


def test_vllm_only_fields_go_to_vllm_only() -> None:
    config = LoadConfig(ignore_eos=True, min_tokens=3, stream=False)
    prompt = Prompt(
        index=0, messages=({"role": "system", "content": "s"}, {"role": "user", "content": "u"})
    )
    hf = request_body(Endpoint("http://h:1", "m", "hf"), prompt, config)
    assert "ignore_eos" not in hf and "min_tokens" not in hf
    assert "stream_options" not in hf and "seed" not in hf
    assert hf["messages"] == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    completions = request_body(
        Endpoint("http://h:1", "m", "vllm"), prompt, replace(config, api="completions")
    )
    assert completions["prompt"] == "s\nu"
    assert completions["ignore_eos"] is True and completions["min_tokens"] == 3


@pytest.mark.parametrize(
    ("fault", "stream", "category", "message"),
    [
        ("http_500", True, ErrorCategory.HTTP_5XX, 'HTTP 500: {"error": {"message": "injected'),
        ("http_400", False, ErrorCategory.HTTP_4XX, "HTTP 400: "),
        ("http_429", True, ErrorCategory.HTTP_4XX, "HTTP 429: "),
        ("drop_mid_stream", True, ErrorCategory.STREAM_BROKEN, "closed the connection after"),
        ("close", True, ErrorCategory.STREAM_BROKEN, "closed the connection before the response"),
        ("empty", True, ErrorCategory.EMPTY_OUTPUT, "no generated text"),
        ("empty", False, ErrorCategory.EMPTY_OUTPUT, "no generated text"),
        ("bad_json", True, ErrorCategory.STREAM_BROKEN, "malformed SSE data"),
        ("error_event", True, ErrorCategory.STREAM_BROKEN, "server error event"),
    ],
)
def test_error_categories_against_injected_faults(
    instrument: TimingServerProcess,
    fault: str,
    stream: bool,
    category: ErrorCategory,
    message: str,
) -> None:
    result, _ = _run(instrument, stream=stream, extra_body={"x_fault": fault})
    assert len(result.records) == 2
    for record in result.records:
        assert record.error == category, record.error_message
        assert message in record.error_message
        assert record.end_at >= record.sent_at
    if fault == "drop_mid_stream":
        # what arrived before the drop is kept
        assert all(len(r.content_times) == TOKENS // 2 for r in result.records)


def test_a_failure_does_not_spoil_the_connection_for_the_next_request(
    instrument: TimingServerProcess,
) -> None:
    prompts = [Prompt(index=0, text="a"), Prompt(index=1, text="b")]
    config = LoadConfig(parallel=1, requests=4, max_tokens=None, extra_body={"x_gap_ms": 0})
    faulty = replace(config, extra_body={"x_fault": "drop_mid_stream"})
    assert all(not r.ok for r in run_load(instrument.endpoint(), prompts, faulty).records)
    assert all(r.ok for r in run_load(instrument.endpoint(), prompts, config).records)
    instrument.fetch_log(clear=True)


def test_read_timeout_is_the_longest_silence(instrument: TimingServerProcess) -> None:
    # the server stays silent for good: only the timeout ends these requests (how soon after
    # read_timeout it fires is measured by bench/timing_accuracy.py)
    result, _ = _run(instrument, read_timeout=0.3, extra_body={"x_fault": "stall"})
    for record in result.records:
        assert record.error == ErrorCategory.TIMEOUT
        assert "read timeout" in record.error_message
        assert record.first_chunk_at is not None  # the role chunk came before the silence
        assert record.end_at - record.sent_at >= 0.29


def test_total_timeout_bounds_a_slow_but_steady_answer(instrument: TimingServerProcess) -> None:
    result, _ = _run(
        instrument, read_timeout=5, total_timeout=0.4, extra_body={"x_gap_ms": 100, "x_tokens": 50}
    )
    for record in result.records:
        assert record.error == ErrorCategory.TIMEOUT
        assert "total timeout" in record.error_message
        assert 2 <= len(record.content_times) < 50  # chunks kept coming; the answer was cut
        assert record.end_at - record.sent_at >= 0.39


def test_connect_error_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = Endpoint(base_url=f"http://127.0.0.1:{port}", model="m", backend="external")
    result = run_load(endpoint, PROMPTS, LoadConfig(parallel=2, requests=3))
    assert len(result.records) == 3
    assert {r.error for r in result.records} == {ErrorCategory.CONNECT}
    assert f"cannot connect to 127.0.0.1:{port}" in result.records[0].error_message


def test_https_to_a_plain_server_times_out_in_the_handshake(
    instrument: TimingServerProcess,
) -> None:
    endpoint = Endpoint(base_url=f"https://127.0.0.1:{instrument.port}", model="m", backend="x")
    config = LoadConfig(parallel=1, requests=1, connect_timeout=0.3)
    record = run_load(endpoint, PROMPTS, config).records[0]
    assert record.error == ErrorCategory.TIMEOUT
    assert "connect to 127.0.0.1" in record.error_message and "timed out" in record.error_message


def test_https_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted through the default context
    with serve_timing_server(
        ttft_ms=5, gap_ms=1, tokens=3, tls_cert=str(cert), tls_key=str(key)
    ) as server:
        assert server.base_url.startswith("https://")
        config = LoadConfig(parallel=2, requests=4, max_tokens=None)
        result = run_load(server.endpoint(), PROMPTS, config)
        assert all(r.ok and len(r.content_times) == 3 for r in result.records)
        assert len(server.fetch_log()) == 4
    monkeypatch.delenv("SSL_CERT_FILE")
    with serve_timing_server(tls_cert=str(cert), tls_key=str(key)) as server:
        record = run_load(server.endpoint(), PROMPTS, LoadConfig(requests=1)).records[0]
        assert record.error == ErrorCategory.CONNECT  # an untrusted certificate
        assert "CERTIFICATE_VERIFY_FAILED" in record.error_message


def test_tokens_are_counted_when_the_server_sends_no_usage(
    instrument: TimingServerProcess,
) -> None:
    def count(text: str) -> int:
        return len(text.split())

    endpoint = instrument.endpoint()
    prompts = [Prompt(index=0, text="one two three", input_tokens=None)]
    config = LoadConfig(parallel=1, requests=1, max_tokens=None, extra_body={"x_no_usage": True})
    counted = run_load(endpoint, prompts, config, count_tokens=count).records[0]
    assert (counted.output_tokens, counted.token_source, counted.input_tokens) == (
        TOKENS,
        "tokenizer",
        3,
    )
    known = [Prompt(index=0, text="one two three", input_tokens=42)]
    uncounted = run_load(endpoint, known, config).records[0]
    assert (uncounted.output_tokens, uncounted.token_source, uncounted.input_tokens) == (
        None,
        None,
        42,
    )
    instrument.fetch_log(clear=True)


REASONING = 3  # of the instrument's TOKENS, the first ones are reasoning


@pytest.mark.parametrize("stream", [True, False])
def test_reasoning_is_timed_and_counted_apart_from_the_answer(
    instrument: TimingServerProcess, stream: bool
) -> None:
    result, log = _run(instrument, stream=stream, extra_body={"x_reasoning": REASONING})
    for record in result.records:
        assert record.ok, record.error_message
        assert record.extra["reasoning_text"] == "".join(f" t{i}" for i in range(REASONING))
        assert record.output_text == "".join(f" t{i}" for i in range(REASONING, TOKENS))
        # usage's completion_tokens_details splits completion_tokens
        assert (record.output_tokens, record.reasoning_tokens, record.answer_tokens) == (
            TOKENS,
            REASONING,
            TOKENS - REASONING,
        )
        assert record.first_answer_at is not None and record.first_content_at is not None
        if stream:
            # TTFT still counts the first reasoning chunk; the answer starts after it
            assert record.first_content_at == record.content_times[0]
            assert record.first_answer_at == record.content_times[REASONING]
            written = log[record.extra["response_id"]]["content_ns"][REASONING] / 1e9
            assert record.first_answer_at >= written
        else:
            assert record.first_answer_at == record.first_content_at == record.end_at


def test_without_usage_reasoning_and_answer_are_counted_apart(
    instrument: TimingServerProcess,
) -> None:
    def count(text: str) -> int:
        return len(text.split())

    # include_usage false: the instrument, like vLLM, then sends no usage
    config = LoadConfig(
        parallel=1,
        requests=1,
        max_tokens=None,
        include_usage=False,
        extra_body={"x_reasoning": REASONING},
    )
    record = run_load(instrument.endpoint(), PROMPTS, config, count_tokens=count).records[0]
    (entry,) = instrument.fetch_log(clear=True)
    assert "stream_options" not in entry["body"]
    assert record.token_source == "tokenizer"
    assert (record.output_tokens, record.reasoning_tokens, record.answer_tokens) == (
        TOKENS,
        REASONING,
        TOKENS - REASONING,
    )


def test_an_answer_without_reasoning_has_zero_reasoning_tokens(
    instrument: TimingServerProcess,
) -> None:
    result, _ = _run(instrument)
    for record in result.records:
        assert record.reasoning_tokens == 0 and record.answer_tokens == TOKENS
        assert record.first_answer_at == record.first_content_at


def test_closed_loop_counts_warmup_first_and_prompts_cycle(
    instrument: TimingServerProcess,
) -> None:
    result, log = _run(instrument, parallel=3, requests=7, warmup=2)
    warmup = [r for r in result.records if r.warmup]
    measured = [r for r in result.records if not r.warmup]
    assert len(warmup) == 2 and len(measured) == 7
    assert [r.index for r in result.records] == list(range(9))
    assert [r.prompt_index for r in measured] == [0, 1, 2, 0, 1, 2, 0]
    assert max(r.end_at for r in warmup) <= min(r.sent_at for r in measured)
    assert result.window_start == min(r.sent_at for r in measured)
    assert all(r.scheduled_at is None for r in result.records)
    assert len(log) == 9
    # never more than `parallel` requests in flight
    events = sorted([(r.sent_at, 1) for r in measured] + [(r.end_at, -1) for r in measured])
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    assert peak == 3


def test_open_loop_follows_the_schedule_and_records_dispatch_lag(
    instrument: TimingServerProcess,
) -> None:
    result, _ = _run(instrument, parallel=None, rate=40.0, arrival="constant", requests=8, warmup=0)
    records = result.records
    assert len(records) == 8 and all(r.ok for r in records)
    scheduled = [r.scheduled_at for r in records]
    assert all(s is not None for s in scheduled)
    gaps = [b - a for a, b in itertools.pairwise(scheduled)]  # type: ignore[operator]
    assert gaps == pytest.approx([0.025] * 7, abs=1e-6)
    lags = [r.dispatch_lag for r in records]
    # never sent before its time; how late is measured by bench/timing_accuracy.py
    assert all(lag is not None and lag >= -0.001 for lag in lags)


def test_open_loop_with_a_cap_shows_the_saturated_client_as_dispatch_lag(
    instrument: TimingServerProcess,
) -> None:
    result, _ = _run(
        instrument,
        parallel=1,
        rate=100.0,
        arrival="constant",
        requests=4,
        extra_body={"x_ttft_ms": 60, "x_tokens": 1},
    )
    lags = [r.dispatch_lag or 0.0 for r in result.records]
    # each request takes 60 ms but arrivals come every 10 ms: the queue grows by about 50 ms
    assert lags[-1] > 0.1
    assert lags == sorted(lags)


def test_open_loop_is_reproducible_for_a_seed(instrument: TimingServerProcess) -> None:
    def offsets(seed: int) -> list[float]:
        result, _ = _run(instrument, parallel=None, rate=200.0, requests=6, seed=seed)
        first = result.records[0].scheduled_at
        assert first is not None
        return [round((r.scheduled_at or 0) - first, 9) for r in result.records]

    assert offsets(3) == offsets(3)
    assert offsets(3) != offsets(4)


def test_duration_stops_dispatching(instrument: TimingServerProcess) -> None:
    result, _ = _run(
        instrument, requests=None, duration=0.5, parallel=2, extra_body={"x_ttft_ms": 100}
    )
    measured = result.measured
    # users went on sending after their first request, and each request takes >= 100 ms (how
    # many fit into the duration is measured by bench/timing_accuracy.py)
    assert 2 < len(measured) <= 14
    assert all(r.ok for r in measured)
    assert max(r.sent_at for r in measured) - result.window_start < 0.5


def test_should_stop_cancels_in_flight_and_keeps_every_record(
    instrument: TimingServerProcess,
) -> None:
    started = time.monotonic()

    def should_stop() -> str | None:
        return "server died" if time.monotonic() - started > 0.4 else None

    endpoint = instrument.endpoint()
    config = LoadConfig(parallel=3, requests=1000, max_tokens=None, extra_body={"x_ttft_ms": 150})
    result = run_load(endpoint, PROMPTS, config, should_stop=should_stop)
    assert result.interrupted == "server died"
    done = [r for r in result.records if r.ok]
    cancelled = [r for r in result.records if not r.ok]
    assert len(done) >= 3
    assert len(cancelled) == 3
    for record in cancelled:
        assert record.error == ErrorCategory.STREAM_BROKEN
        assert record.error_message.startswith("cancelled: server died")
    assert sorted(r.index for r in result.records) == list(range(len(result.records)))
    instrument.fetch_log(clear=True)


@pytest.fixture
def clean_interrupts() -> Iterator[None]:
    """Signals a test sends itself are forgotten after it (the count decides what a second does)."""
    interrupts.reset()
    yield
    interrupts.reset()


@pytest.mark.usefixtures("clean_interrupts")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_returns_what_was_collected(
    instrument: TimingServerProcess, sig: signal.Signals
) -> None:
    config = LoadConfig(parallel=2, requests=1000, max_tokens=None, extra_body={"x_ttft_ms": 100})
    handlers = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    timer = threading.Timer(0.35, os.kill, (os.getpid(), sig))
    timer.start()
    try:
        result = run_load(instrument.endpoint(), PROMPTS, config)
    finally:
        timer.cancel()
    assert result.interrupted == sig.name
    assert any(r.ok for r in result.records)
    assert any(r.error_message.startswith(f"cancelled: {sig.name}") for r in result.records)
    # the handlers from before the run are back
    assert {s: signal.getsignal(s) for s in interrupts.SIGNALS} == handlers
    instrument.fetch_log(clear=True)


LOAD_SCRIPT = """
import json, sys
from pytest_llmslo.config import LoadConfig
from pytest_llmslo.load import run_load
from pytest_llmslo.records import Endpoint, Prompt
endpoint = Endpoint(sys.argv[1], "timing-model", "external")
config = LoadConfig(parallel=2, requests=100000, max_tokens=None, extra_body={"x_ttft_ms": 20})
print("loading", flush=True)
result = run_load(endpoint, [Prompt(index=0, text="hi")], config)
print(json.dumps({"interrupted": result.interrupted, "ok": sum(r.ok for r in result.records)}))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_ends_a_load_outside_pytest_too(
    instrument: TimingServerProcess, sig: signal.Signals
) -> None:
    """A script using the engine gets the records back; the signal's default would kill it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOAD_SCRIPT, instrument.base_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "loading"
        time.sleep(0.5)  # a few requests in
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["interrupted"] == sig.name and result["ok"] > 0
    instrument.fetch_log(clear=True)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:8000", r"is not an http\(s\) URL"),
        ("ftp://h:1", r"is not an http\(s\) URL"),
        ("http://h:port", "has a bad port"),
    ],
)
def test_bad_base_url(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_base_url(url)


def test_base_url_prefix_and_v1_suffix() -> None:
    origin = parse_base_url("https://user@api.example.org/proxy/v1/")
    assert (origin.scheme, origin.host, origin.port, origin.path_prefix) == (
        "https",
        "api.example.org",
        443,
        "/proxy",
    )
    assert origin.host_header == "api.example.org"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"parallel": 0}, "load.parallel must be >= 1"),
        ({"rate": -1.0}, "load.rate must be a positive"),
        ({"duration": 0.0}, "load.duration must be > 0"),
        ({"read_timeout": 0.0}, "load.read_timeout must be > 0"),
        ({"headers": {"X": "a\r\nb"}}, "contains a line break"),
    ],
)
def test_bad_load_config_says_what_to_fix(change: dict[str, Any], message: str) -> None:
    endpoint = Endpoint("http://127.0.0.1:9", "m", "external")
    with pytest.raises(ValueError, match=message):
        run_load(endpoint, PROMPTS, LoadConfig(requests=1, **change))


def test_no_prompts_is_an_error() -> None:
    with pytest.raises(ValueError, match="no prompts to send"):
        run_load(Endpoint("http://127.0.0.1:9", "m", "external"), [], LoadConfig())
