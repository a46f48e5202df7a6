"""Chunk stamps under concurrency: each taken after the server wrote its chunk, none lost.

How close each stamp comes to the server's write is the machine's business, not behaviour:
`bench/timing_accuracy.py` measures it (lag percentiles, TTFT and E2E against the schedule).
"""

from __future__ import annotations

from pytest_llmslo.config import LoadConfig
from pytest_llmslo.load import run_load
from pytest_llmslo.records import Prompt
from pytest_llmslo.testing.timing_server import serve_timing_server

STREAMS = 64
TTFT_MS = 200.0
GAP_MS = 20.0
TOKENS = 20


def test_every_chunk_of_64_concurrent_streams_is_stamped_after_the_server_wrote_it() -> None:
    prompts = [Prompt(index=i, text=f"stream {i}") for i in range(STREAMS)]
    config = LoadConfig(parallel=STREAMS, requests=STREAMS, max_tokens=TOKENS)
    with serve_timing_server(ttft_ms=TTFT_MS, gap_ms=GAP_MS, tokens=TOKENS) as server:
        result = run_load(server.endpoint(), prompts, config)
        log = {entry["id"]: entry for entry in server.fetch_log(clear=True)}
    assert len(result.measured) == STREAMS
    for record in result.measured:
        assert record.ok, record.error_message
        assert record.first_chunk_at is not None and record.first_content_at is not None
        written = log[record.extra["response_id"]]
        assert len(record.content_times) == len(written["content_ns"]) == TOKENS
        # the i-th content chunk the engine saw is the i-th one the server wrote, stamped on the
        # same clock after the write: a stamp before it would mean clocks differ
        for seen, sent_ns in zip(record.content_times, written["content_ns"], strict=True):
            assert seen >= sent_ns / 1e9
        assert list(record.content_times) == sorted(record.content_times)
        # TTFT is the first content (written TTFT_MS after the request arrived), not the
        # role chunk that the server writes at once
        assert record.first_content_at == record.content_times[0]
        assert record.first_chunk_at < record.first_content_at
        assert record.first_chunk_at >= written["events_ns"][0] / 1e9
        # (less 1 ms: the server's timer may round a little early)
        assert record.first_content_at - record.sent_at >= TTFT_MS / 1e3 - 1e-3
        assert record.end_at >= record.content_times[-1]
