"""Decoding answers: chunked framing, SSE and JSON bodies, the fast paths, the stamps kept."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from pathlib import Path

import pytest

from pytest_llmslo.config import ApiKind, LoadConfig
from pytest_llmslo.decode import DecodedAnswer, decode_answer, decode_stream, finish
from pytest_llmslo.http_client import Exchange
from pytest_llmslo.records import ErrorCategory, Prompt, RequestRecord

DATA = Path(__file__).resolve().parent / "data"


# -- chunked framing, decoded after the end --------------------------------------------------


def _frame(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _chunk(content: str | None = None, finish: str | None = None, **extra: object) -> bytes:
    delta = {} if content is None else {"content": content}
    chunk: dict[str, object] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    chunk.update(extra)
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _stream(events: list[bytes]) -> bytes:
    return HEAD + b"".join(_frame(e) for e in events) + b"0\r\n\r\n"


def _feed(raw: bytes, cuts: list[int]) -> Exchange:
    loop = asyncio.new_event_loop()
    try:
        exchange = Exchange(loop.create_future(), 0.0)
        bounds = [0, *sorted(cuts), len(raw)]
        for i, (start, end) in enumerate(itertools.pairwise(bounds)):
            if end > start:
                exchange.feed(float(i + 1), raw[start:end])
        assert exchange.finished, exchange.error
        return exchange
    finally:
        loop.close()


def _decode(exchange: Exchange, api: ApiKind = "chat") -> DecodedAnswer:
    base = {"index": 0, "prompt_index": 0, "warmup": False, "scheduled_at": None}
    return finish(decode_answer(base, exchange, LoadConfig(api=api), Prompt(index=0, text="q")))


def _record(exchange: Exchange, api: ApiKind = "chat") -> RequestRecord:
    return _decode(exchange, api).record


EVENTS = [
    _chunk(""),
    *(_chunk(f" t{i}") for i in range(5)),
    _chunk(None, "length"),
    b'data: {"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n',
    b"data: [DONE]\n\n",
]


@pytest.mark.parametrize("seed", range(12))
def test_any_split_of_a_chunked_stream_gives_the_same_record(seed: int) -> None:
    raw = _stream(EVENTS)
    rng = random.Random(seed)
    cuts = rng.sample(range(1, len(raw)), rng.randint(1, 40))
    record = _record(_feed(raw, cuts))
    whole = _record(_feed(raw, []))
    assert record.ok, record.error_message
    assert record.output_text == whole.output_text == " t0 t1 t2 t3 t4"
    assert (record.output_tokens, record.input_tokens, record.token_source) == (5, 3, "usage")
    assert record.finish_reason == "length"
    assert len(record.content_times) == 5
    assert list(record.content_times) == sorted(record.content_times)
    assert record.first_chunk_at is not None and record.first_content_at is not None
    assert record.first_chunk_at <= record.first_content_at


def test_times_belong_to_the_read_that_completed_each_event() -> None:
    frames = [_frame(e) for e in EVENTS]
    raw_events = HEAD + b"".join(frames) + b"0\r\n\r\n"
    # one read per frame, the head with the first frame
    cuts = []
    pos = len(HEAD) + len(frames[0])
    for frame in frames[1:]:
        cuts.append(pos)
        pos += len(frame)
    record = _record(_feed(raw_events, cuts))
    assert record.first_chunk_at == 1.0  # the role chunk came with the head
    assert record.content_times == (2.0, 3.0, 4.0, 5.0, 6.0)


def test_event_split_over_two_frames_is_still_one_event() -> None:
    event = _chunk("split")
    raw = HEAD + _frame(_chunk("")) + _frame(event[:30]) + _frame(event[30:]) + b"0\r\n\r\n"
    record = _record(_feed(raw, [len(HEAD) + 40, len(raw) - 5]))  # last read: terminator
    assert record.output_text == "split"
    assert record.content_times == (2.0,)


def test_chunk_extensions_and_trailers_are_accepted() -> None:
    payload = _chunk("x")
    raw = HEAD + b"%x;name=value\r\n%s\r\n" % (len(payload), payload) + b"0\r\nX-T: 1\r\n\r\n"
    exchange = _feed(raw, [len(raw) - 3])
    assert _record(exchange).output_text == "x"


@pytest.mark.parametrize(
    "content", ['he said "hi"', "back\\slash", "tab\tand\nnewline", "中文 ü", "", '}{"delta":']
)
def test_content_fast_path_agrees_with_the_json_decoder(content: str) -> None:
    events = [_chunk(""), _chunk(content), _chunk(content, "stop")]
    record = _record(_feed(_stream(events), []))
    assert record.output_text == content * 2
    assert record.finish_reason == "stop"


def test_chunks_that_are_not_plain_content_take_the_decoder() -> None:
    events = [
        _chunk(""),
        b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"think"},'
        b'"finish_reason":null}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":"a","reasoning_content":"b"},'
        b'"finish_reason":null}]}\n\n',
        _chunk(" end", "stop"),
    ]
    record = _record(_feed(_stream(events), []))
    assert record.output_text == "a end"
    assert record.extra["reasoning_text"] == "thinkb"
    assert len(record.content_times) == 3
    assert record.finish_reason == "stop"


def test_completions_stream() -> None:
    def text(t: str, finish: str | None = None) -> bytes:
        choice = {"index": 0, "text": t, "logprobs": None, "finish_reason": finish}
        body = {"id": "cmpl-1", "object": "text_completion", "choices": [choice]}
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    record = _record(_feed(_stream([text("a"), text("b"), text("", "length")]), []), "completions")
    assert record.output_text == "ab"
    assert len(record.content_times) == 2
    assert record.extra["response_id"] == "cmpl-1"


def test_content_length_and_read_until_close_bodies() -> None:
    body = json.dumps({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]})
    raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body.encode(),
    )
    exchange = _feed(raw, [10, len(raw) - 5])
    assert exchange.keep_alive
    assert json.loads(exchange.body) == json.loads(body)
    loop = asyncio.new_event_loop()
    try:
        until_close = Exchange(loop.create_future(), 0.0)
        until_close.feed(1.0, b"HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        until_close.feed(2.0, _chunk("x"))
        assert not until_close.finished
        until_close.connection_lost()
        assert until_close.finished and until_close.error is None
        assert not until_close.keep_alive
    finally:
        loop.close()


def test_malformed_chunk_size_breaks_the_stream() -> None:
    loop = asyncio.new_event_loop()
    try:
        exchange = Exchange(loop.create_future(), 0.0)
        exchange.feed(1.0, HEAD + b"zz\r\ndata: x\n\n\r\n")
        assert exchange.finished
        assert exchange.error is not None and exchange.error.kind == "stream_broken"
        assert "malformed chunk size" in str(exchange.error)
    finally:
        loop.close()


def test_an_answer_of_the_wrong_shape_is_a_failed_request_not_a_crash() -> None:
    events = [_chunk(""), b'data: {"choices": ["not an object"]}\n\n']
    record = _record(_feed(_stream(events), []))
    assert record.error == ErrorCategory.STREAM_BROKEN
    assert record.error_message.startswith("unreadable answer (AttributeError")


def test_bulk_path_takes_one_event_per_frame_and_declines_anything_else() -> None:
    def bulk(raw: bytes) -> bool:
        return finish(decode_stream(_feed(raw, [len(HEAD) + 7]), chat=True)).path == "bulk"

    assert bulk(_stream(EVENTS))
    event = _chunk("split")
    split = HEAD + _frame(event[:30]) + _frame(event[30:]) + b"0\r\n\r\n"
    assert not bulk(split)
    two_in_one = HEAD + _frame(_chunk("a") + _chunk("b")) + b"0\r\n\r\n"
    assert not bulk(two_in_one)
    assert _record(_feed(two_in_one, [])).output_text == "ab"
    multiline = HEAD + _frame(b"data: {\ndata: }\n\n") + b"0\r\n\r\n"
    assert not bulk(multiline)
    crlf = HEAD + _frame(_chunk("x").replace(b"\n\n", b"\r\n\r\n")) + b"0\r\n\r\n"
    assert not bulk(crlf)
    assert _record(_feed(crlf, [])).output_text == "x"


# -- what vLLM sends: the bulk path must keep taking it ----------------------------------------


def _unchunked(raw: bytes) -> bytes:
    """The same answer with its chunked framing removed: only the general path can read it."""
    head = raw.partition(b"\r\n\r\n")[0].split(b"\r\n")
    body = _feed(raw, []).body
    lines = [line for line in head if not line.lower().startswith(b"transfer-encoding")]
    lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize("api", ["chat", "completions"])
@pytest.mark.parametrize("seed", range(6))
def test_vllms_streams_as_captured_are_read_by_the_bulk_path(api: ApiKind, seed: int) -> None:
    # byte for byte what vLLM 0.32 (CPU build) sent the engine's request (capture_vllm_stream.py);
    # if this fails, vLLM-shaped streams are decoded at about half the rate the bulk path reads
    raw = (DATA / f"vllm_{api}_stream.http").read_bytes()
    rng = random.Random(seed)
    decoded = _decode(_feed(raw, rng.sample(range(1, len(raw)), rng.randint(1, 30))), api)
    assert decoded.path == "bulk"
    record = decoded.record
    assert record.ok, record.error_message
    prompt_tokens = 26 if api == "chat" else 18  # the chat template adds its markers
    assert (record.output_tokens, record.input_tokens) == (12, prompt_tokens)
    assert record.token_source == "usage"
    assert len(record.content_times) == 12 and record.finish_reason == "length"
    assert list(record.content_times) == sorted(record.content_times)
    # the general path reads the same events to the same record
    whole = _decode(_feed(raw, []), api)
    general = _decode(_feed(_unchunked(raw), []), api)
    assert (whole.path, general.path) == ("bulk", "events")
    assert whole.record == general.record
    assert whole.record.output_text == record.output_text


# -- answers that are not 2xx ------------------------------------------------------------------


def _answer(status_line: bytes, *headers: bytes, body: bytes = b"") -> Exchange:
    head = [status_line, *headers, b"content-length: %d" % len(body)]
    return _feed(b"\r\n".join(head) + b"\r\n\r\n" + body, [])


def test_a_redirect_is_its_own_category_and_names_where_it_points() -> None:
    exchange = _answer(
        b"HTTP/1.1 307 Temporary Redirect",
        b"Location: https://user:pw@api.example.org/v1/chat/completions",
    )
    decoded = _decode(exchange)
    assert decoded.path == "status"
    assert decoded.record.error == ErrorCategory.HTTP_REDIRECT
    message = decoded.record.error_message
    assert message.startswith("HTTP 307 redirect to 'https://***@api.example.org/v1/chat/")
    assert "pw" not in message
    assert "set the server's base_url (or --slo-server-url) to the address" in message
    bare = _decode(_answer(b"HTTP/1.1 301 Moved Permanently")).record
    assert bare.error == ErrorCategory.HTTP_REDIRECT
    assert "(no Location header)" in bare.error_message


def test_505_says_the_server_does_not_speak_http_1_1() -> None:
    record = _record(_answer(b"HTTP/1.1 505 HTTP Version Not Supported"))
    assert record.error == ErrorCategory.UNSUPPORTED_PROTOCOL
    assert "speaks HTTP/2 only; this client speaks HTTP/1.1" in record.error_message


def test_a_compressed_error_body_keeps_its_status_and_is_not_shown() -> None:
    record = _record(
        _answer(b"HTTP/1.1 502 Bad Gateway", b"Content-Encoding: gzip", body=b"\x1f\x8b\x08\x00")
    )
    assert record.error == ErrorCategory.HTTP_5XX
    assert record.error_message == "HTTP 502 (body gzip-compressed, not shown)"
