"""Decoding OpenAI-compatible answers: a received exchange becomes one RequestRecord.

The transport (``http_client``) hands over an answer as it arrived: status, headers, the raw
body reads and the time each reached the process. This module reads them, after the answer
has ended, as the OpenAI chat or completions API: an SSE stream of chunks or one JSON object,
its text, reasoning, usage and finish reason, and the arrival time of every content-bearing
event. Nothing here touches the network or decides how load is sent (``load``).

Decoding a long stream is a generator that yields every ``STEP_EVENTS`` events, so the event
loop that runs it can stamp other streams' reads in between; ``finish`` runs one to its end.

    record = finish(decode_answer(base, exchange, config, prompt)).record

``decode_answer`` never raises: an answer too odd to read is a failed record. Which of the
decoders read an answer is ``DecodedAnswer.path``; the load engine counts them
(``LoadResult.decoded_by``), because the bulk path for vLLM-shaped streams carries half of the
client's capacity and nothing else would show it silently stopped being taken.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from itertools import accumulate, chain, repeat
from time import monotonic
from typing import Any, Literal, TypeVar, cast

from pytest_llmslo.config import LoadConfig
from pytest_llmslo.http_client import Exchange
from pytest_llmslo.records import ErrorCategory, Prompt, RequestRecord
from pytest_llmslo.redact import redact_url
from pytest_llmslo.sse import iter_events

STEP_EVENTS = 64  # events decoded between yields, so other streams keep their stamps
ERROR_BODY_CHARS = 300  # of an error answer's body, kept in the record's message

# Which decoder read an answer:
#   bulk    a chunked stream of one single-line event per chunk (vLLM's), split in bulk
#   events  any other stream, through the general SSE splitter
#   json    a non-streamed answer
#   status  nothing decoded: the HTTP status (3xx, 4xx, 5xx) decided the record
DecodePath = Literal["bulk", "events", "json", "status"]
DECODE_PATHS: tuple[DecodePath, ...] = ("bulk", "events", "json", "status")

T = TypeVar("T")
Steps = Generator[None, None, T]  # a computation that yields now and then, returning a T


def finish(steps: Steps[T]) -> T:
    """Run ``steps`` to its end without giving the event loop a turn, and return its value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(T, done.value)


@dataclass(frozen=True)
class Decoded:
    """What an answer's body says: record fields, texts, and any error in the body itself."""

    fields: dict[str, Any]  # RequestRecord fields: timestamps, texts, tokens, finish reason
    text: str = ""  # the answer (content)
    reasoning: str = ""  # reasoning text streamed apart from the answer
    response_id: str = ""
    error: str = ""  # a malformed or error event: the stream is broken
    path: DecodePath = "events"


@dataclass(frozen=True)
class DecodedAnswer:
    """The record of one exchange and which decoder read it."""

    record: RequestRecord
    path: DecodePath


def decode_answer(
    base: Mapping[str, Any], exchange: Exchange, config: LoadConfig, prompt: Prompt
) -> Steps[DecodedAnswer]:
    """The record of a finished (or failed) exchange; yields now and then in a long stream.

    ``base`` holds the record fields known before sending (``index``, ``prompt_index``,
    ``warmup``, ``scheduled_at``). Never raises: an answer too odd to read is recorded as
    ``stream_broken``.
    """
    try:
        return (yield from _read(base, exchange, config, prompt))
    except Exception as exc:  # an answer too odd to read is a failed request, not a crash
        return DecodedAnswer(_unreadable(base, exchange, exc), "events")


def is_stream(exchange: Exchange, config: LoadConfig) -> bool:
    """Whether the answer is read as SSE: streaming was asked and the server did not send JSON."""
    return config.stream and "json" not in exchange.headers.get("content-type", "")


def _read(
    base: Mapping[str, Any], exchange: Exchange, config: LoadConfig, prompt: Prompt
) -> Steps[DecodedAnswer]:
    error = exchange.error
    end_at = exchange.end_at if exchange.end_at is not None else monotonic()
    fields: dict[str, Any] = {
        **base,
        "sent_at": exchange.sent_at,
        "end_at": end_at,
        "http_status": exchange.status or None,
    }
    status = exchange.status
    if error is None and not 200 <= status < 300:
        category, message = status_error(exchange)
        record = RequestRecord(**fields, error=category, error_message=message)
        return DecodedAnswer(record, "status")
    chat = config.api == "chat"
    if is_stream(exchange, config):
        parsed = yield from decode_stream(exchange, chat)
    else:
        parsed = decode_json(exchange, chat)
    fields.update(parsed.fields)
    extra: dict[str, Any] = {}
    if parsed.response_id:
        extra["response_id"] = parsed.response_id
    if parsed.reasoning:
        extra["reasoning_text"] = parsed.reasoning
    if error is not None:
        record = RequestRecord(
            **fields, extra=extra, error=ErrorCategory(error.kind), error_message=str(error)
        )
    elif parsed.error:
        record = RequestRecord(
            **fields, extra=extra, error=ErrorCategory.STREAM_BROKEN, error_message=parsed.error
        )
    elif not parsed.text and not parsed.reasoning:
        record = RequestRecord(
            **fields,
            extra=extra,
            error=ErrorCategory.EMPTY_OUTPUT,
            error_message=(
                f"HTTP {status} answer carried no generated text "
                f"(finish_reason={fields.get('finish_reason')!r})"
            ),
        )
    else:
        if fields.get("input_tokens") is None and prompt.input_tokens is not None:
            fields["input_tokens"] = prompt.input_tokens
        if fields.get("reasoning_tokens") is None and not parsed.reasoning:
            fields["reasoning_tokens"] = 0
        record = RequestRecord(**fields, extra=extra)
    return DecodedAnswer(record, parsed.path)


def status_error(exchange: Exchange) -> tuple[ErrorCategory, str]:
    """The category and message of a complete answer whose status is not 2xx.

    A redirect is not followed (the numbers would be the redirect's, not the server's): its
    message names where it points, so the base URL can be fixed. 505 is a server that does not
    speak HTTP/1.1, the only version this client speaks.
    """
    status = exchange.status
    headers = exchange.headers
    if 300 <= status < 400:
        location = headers.get("location", "")
        where = f" to {redact_url(location)!r}" if location else " (no Location header)"
        return ErrorCategory.HTTP_REDIRECT, (
            f"HTTP {status} redirect{where}: redirects are not followed, since the time measured "
            "would include the extra round trip; set the server's base_url (or "
            "--slo-server-url) to the address the server redirects to"
        )
    if status == 505:
        return ErrorCategory.UNSUPPORTED_PROTOCOL, (
            "HTTP 505 HTTP Version Not Supported: the server does not accept HTTP/1.1 and speaks "
            "HTTP/2 only; this client speaks HTTP/1.1: serve HTTP/1.1 as well (or put an "
            "HTTP/1.1 proxy in front of it)"
        )
    category = ErrorCategory.HTTP_5XX if status >= 500 else ErrorCategory.HTTP_4XX
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return category, f"HTTP {status} (body {encoding}-compressed, not shown)"
    text = exchange.body[:2000].decode("utf-8", "replace")
    return category, f"HTTP {status}: {text[:ERROR_BODY_CHARS]}"


# Fast paths for what makes up almost all of a stream.
#
# A chunk whose delta is nothing but content, with a null finish reason, gives its text to a
# regex instead of the JSON decoder. Quotes inside JSON strings are escaped, so the pattern
# only matches the object's own structure; the brace right after the text rules out reasoning
# and tool calls in the same delta, and no bracket may come between it and the null finish
# reason, so both belong to the same choice. Usage and errors come in chunks of their own.
_STRING = rb'"([^"\\]*(?:\\.[^"\\]*)*)"'
_PLAIN_CHAT = re.compile(rb'"delta":\{"content":' + _STRING + rb'\}[^{}\[\]]*"finish_reason":null')
_PLAIN_TEXT = re.compile(
    rb'"choices":\[\{"index":0,"text":' + _STRING + rb'[^{}\[\]]*"finish_reason":null'
)
# A chunked body whose every frame holds one whole single-line `data:` event (what vLLM and
# most servers send) is split on the frame ends at once, with no per-frame decoding.
_FRAME_END = b"\n\n\r\n"  # an event's blank line, then the frame's CRLF
_DATA_LINE = b"\r\ndata: "


class _StreamState:
    """What a stream's events add up to, fed in order."""

    __slots__ = (
        "chat",
        "content_times",
        "error",
        "finish_reason",
        "first_chunk_at",
        "reasoning_only",
        "reasonings",
        "response_id",
        "texts",
        "usage",
    )

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.first_chunk_at: float | None = None
        self.content_times: list[float] = []
        self.texts: list[bytes | str] = []  # bytes: a JSON string body from the fast path
        self.reasonings: list[str] = []
        # positions in content_times of events with reasoning and no answer text; the fast
        # paths carry answer text only, so they never add to it
        self.reasoning_only: list[int] = []
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.response_id = ""
        self.error = ""

    def event(self, at: float, data: bytes) -> bool:
        """Take one event through the JSON decoder; False when the stream is broken."""
        if data == b"[DONE]":
            return True
        try:
            chunk = json.loads(data)
        except ValueError:
            self.error = f"malformed SSE data: {data[:200]!r}"
            return False
        if not isinstance(chunk, dict):
            self.error = f"unexpected SSE data: {data[:200]!r}"
            return False
        if chunk.get("error"):
            error = json.dumps(chunk["error"])[:ERROR_BODY_CHARS]
            self.error = f"server error event: {error}"
            return False
        if not self.response_id and chunk.get("id"):
            self.response_id = str(chunk["id"])
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or ()
        if not choices:
            return True
        choice = choices[0]
        if self.chat:
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
        else:
            text = choice.get("text") or ""
            reasoning = ""
        if text or reasoning:
            if not text:
                self.reasoning_only.append(len(self.content_times))
            self.content_times.append(at)
            if text:
                self.texts.append(text)
            if reasoning:
                self.reasonings.append(reasoning)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return True

    def decoded(self, path: DecodePath) -> Decoded:
        texts = self.texts
        if all(isinstance(t, bytes) for t in texts):
            joined = b"".join(cast(list[bytes], texts))
            output = joined.decode("utf-8") if b"\\" not in joined else _strings(texts)
        else:
            output = _strings(texts)
        times = self.content_times
        first_answer = 0
        for position in self.reasoning_only:
            if position != first_answer:
                break
            first_answer += 1
        fields: dict[str, Any] = {
            "first_chunk_at": self.first_chunk_at,
            "first_content_at": times[0] if times else None,
            "first_answer_at": times[first_answer] if first_answer < len(times) else None,
            "content_times": tuple(times),
            "finish_reason": self.finish_reason,
            "output_text": output,
        }
        fields.update(usage_fields(self.usage))
        reasoning = "".join(self.reasonings)
        return Decoded(fields, output, reasoning, self.response_id, self.error, path)


def _strings(texts: list[bytes | str]) -> str:
    return "".join(
        t if isinstance(t, str) else json.loads(b'"' + t + b'"') if b"\\" in t else t.decode()
        for t in texts
    )


def decode_stream(exchange: Exchange, chat: bool) -> Steps[Decoded]:
    """The events of a streamed answer (chat or completions chunks), each stamped with its read.

    An event's time is that of the read that completed it. What arrived before a failure is
    decoded too, so a broken stream keeps its content times.
    """
    state = _StreamState(chat)
    if exchange.chunked and (yield from _bulk_stream(exchange, state)):
        return state.decoded("bulk")
    state = _StreamState(chat)
    plain = (_PLAIN_CHAT if chat else _PLAIN_TEXT).search
    body, ends = exchange.decoded()
    times = exchange.times
    last_piece = len(ends) - 1
    piece = 0
    for count, (end, data, _name) in enumerate(iter_events(body), 1):
        if count % STEP_EVENTS == 0:
            yield
        # events come in body order, so the read that completed each one only moves forward
        while piece < last_piece and ends[piece] < end:
            piece += 1
        at = times[piece]
        if state.first_chunk_at is None:
            state.first_chunk_at = at
        else:
            match = plain(data)
            if match is not None:
                text = match.group(1)
                if text:
                    state.content_times.append(at)
                    state.texts.append(text)
                continue
        if not state.event(at, data):
            break
    return state.decoded("events")


def _bulk_stream(exchange: Exchange, state: _StreamState) -> Steps[bool]:
    """Read a stream of one single-line event per frame with bulk operations; False if not one.

    The reader followed the framing as it arrived and counted the frames. If splitting on
    frame ends gives as many segments, and every segment holds exactly the one line break of
    its size line followed by ``data: ``, then each segment is one frame holding one event.
    """
    pieces = exchange.pieces
    raw = b"".join(pieces)
    segments = raw.split(_FRAME_END)
    tail = segments.pop()
    count = len(segments)
    if not count or count != exchange.frames or (tail and not tail.startswith(b"0\r\n")):
        return False
    if (
        raw.count(b"\n") != 4 * count + tail.count(b"\n")
        or raw.count(b"\r") != 2 * count + tail.count(b"\r")
        or raw.count(_DATA_LINE) != count
    ):
        return False
    # an event arrived with the read that held the last byte of its frame end
    completed = []
    previous = 0
    for end in accumulate(map(len, pieces)):
        completed.append(raw.count(_FRAME_END, max(previous - 3, 0), end))
        previous = end
    event_times = list(chain.from_iterable(map(repeat, exchange.times, completed)))
    if len(event_times) != count:
        return False
    state.first_chunk_at = event_times[0]
    plain = (_PLAIN_CHAT if state.chat else _PLAIN_TEXT).search
    content_times = state.content_times
    texts = state.texts
    events = zip(event_times, segments, map(plain, segments), strict=True)
    for index, (at, segment, match) in enumerate(events, 1):
        if index % STEP_EVENTS == 0:
            yield
        if match is not None:
            text = match.group(1)
            if text:
                content_times.append(at)
                texts.append(text)
        elif not state.event(at, segment[segment.index(_DATA_LINE) + len(_DATA_LINE) :]):
            break
    return True


def decode_json(exchange: Exchange, chat: bool) -> Decoded:
    """A non-streamed answer: every timestamp is the time its body ended."""
    at = exchange.end_at
    fields: dict[str, Any] = {"first_chunk_at": at}
    try:
        answer = json.loads(exchange.body)
    except ValueError:
        if exchange.error is not None:
            return Decoded(fields, path="json")
        return Decoded(fields, error=f"malformed JSON answer: {exchange.body[:200]!r}", path="json")
    if not isinstance(answer, dict):
        return Decoded(
            fields, error=f"unexpected JSON answer: {exchange.body[:200]!r}", path="json"
        )
    choices = answer.get("choices") or ()
    text = reasoning = ""
    if choices:
        choice = choices[0]
        if chat:
            message = choice.get("message") or {}
            text = message.get("content") or ""
            reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
        else:
            text = choice.get("text") or ""
        fields["finish_reason"] = choice.get("finish_reason")
    if text or reasoning:
        fields["first_content_at"] = at
        fields["content_times"] = (at,)
    if text:
        fields["first_answer_at"] = at
    fields["output_text"] = text
    fields.update(usage_fields(answer.get("usage")))
    return Decoded(fields, text, reasoning, str(answer.get("id") or ""), path="json")


def usage_fields(usage: Any) -> dict[str, Any]:
    """Record fields from an answer's ``usage`` object; nothing for a missing or odd one."""
    fields: dict[str, Any] = {}
    if not isinstance(usage, dict):
        return fields
    completion = usage.get("completion_tokens")
    prompt = usage.get("prompt_tokens")
    if isinstance(completion, int):
        fields["output_tokens"] = completion
        fields["token_source"] = "usage"
    if isinstance(prompt, int):
        fields["input_tokens"] = prompt
    # OpenAI's and vLLM's split of completion_tokens; transformers serve sends none
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
        fields["reasoning_tokens"] = details["reasoning_tokens"]
    return fields


def _unreadable(base: Mapping[str, Any], exchange: Exchange, exc: Exception) -> RequestRecord:
    return RequestRecord(
        **base,
        sent_at=exchange.sent_at,
        end_at=exchange.end_at if exchange.end_at is not None else monotonic(),
        http_status=exchange.status or None,
        error=ErrorCategory.STREAM_BROKEN,
        error_message=f"unreadable answer ({type(exc).__name__}: {exc})",
    )
