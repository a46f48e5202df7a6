"""Plain data that crosses module boundaries: one request's outcome and its error categories.

Every timestamp is seconds on ``time.monotonic()`` (CLOCK_MONOTONIC on Linux), the same clock the
timing instrument logs with ``time.monotonic_ns()``, so client and server times compare directly.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pytest_llmslo.redact import REDACTED, redact_url

TokenSource = Literal["usage", "tokenizer"]
SLIM_KEY = "slim"  # in `extra` of a record whose chunk times and text were dropped (`slim()`)
# The `extra` of every slim record: one dict shared by all (a dict each would cost more than the
# rest of a slim record); records are frozen, and nothing writes to a record's `extra`.
_SLIM: dict[str, Any] = {SLIM_KEY: True}
_SLIM_REASONED: dict[str, Any] = {SLIM_KEY: True, "reasoning_text": "(in requests.jsonl)"}


class ErrorCategory(str, enum.Enum):
    """Why a request failed; a request never raises, its failure is one of these."""

    CONNECT = "connect"  # could not open a connection (refused, DNS, TLS)
    TIMEOUT = "timeout"  # connect, read or total timeout elapsed
    HTTP_REDIRECT = "http_redirect"  # a 3xx: not followed; the base URL needs fixing
    HTTP_4XX = "http_4xx"  # server rejected the request
    HTTP_5XX = "http_5xx"  # server failed the request
    STREAM_BROKEN = "stream_broken"  # connection dropped or malformed SSE mid-response
    EMPTY_OUTPUT = "empty_output"  # a 200 answer that carried no generated text
    RESPONSE_TOO_LARGE = "response_too_large"  # over load.max_response_bytes: cut off
    # an answer this HTTP/1.1 client does not read: HTTP/2 only, a compressed body, not HTTP
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What happened to one request, with raw timestamps; metrics derive everything from these."""

    index: int  # position in the run, warmup included
    prompt_index: int  # which prompt of the dataset was sent
    warmup: bool  # warmup requests are excluded from every metric
    sent_at: float  # just before the request bytes were written
    end_at: float  # last byte of the response, or the moment the failure was seen
    scheduled_at: float | None = None  # open loop: when the arrival schedule wanted it sent
    first_chunk_at: float | None = None  # first SSE event of any kind (role-only chunks count)
    first_content_at: float | None = None  # first event carrying non-empty generated text
    content_times: tuple[float, ...] = ()  # arrival of every content-bearing event, in order
    # first event carrying answer text (content, not reasoning): first_content_at unless the
    # stream reasons first; None when only reasoning arrived
    first_answer_at: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    # of output_tokens, those spent reasoning: usage's completion_tokens_details.reasoning_tokens,
    # else the reasoning text counted with the model's tokenizer; 0 when no reasoning was streamed
    reasoning_tokens: int | None = None
    token_source: TokenSource | None = None  # where the token counts came from
    finish_reason: str | None = None
    http_status: int | None = None
    error: ErrorCategory | None = None
    error_message: str = ""
    output_text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    round: int = 1  # which round of the scenario sent it (`verdicts.rounds`), from 1
    # the largest gap between content chunks, kept by `slim()` when it drops content_times
    itl_max: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def slimmed(self) -> bool:
        return self.extra.get(SLIM_KEY) is True

    def slim(self) -> RequestRecord:
        """This record without what only requests.jsonl needs: the chunk times (their largest
        gap is kept, for a per-request ITL objective), the text, the response id and the
        reasoning text (a marker says there was some). A long run keeps this form in memory
        once the full record is written out (record_log.py)."""
        gaps = [b - a for a, b in itertools.pairwise(self.content_times)]
        return replace(
            self,
            content_times=(),
            output_text="",
            extra=_SLIM_REASONED if self.extra.get("reasoning_text") else _SLIM,
            itl_max=max(gaps) if gaps else None,
        )

    @property
    def answer_tokens(self) -> int | None:
        """Output tokens that are not reasoning: the answer, with any markers and end token."""
        if self.output_tokens is None or self.reasoning_tokens is None:
            return None
        return max(self.output_tokens - self.reasoning_tokens, 0)

    @property
    def dispatch_lag(self) -> float | None:
        """Seconds between the scheduled and the actual send (open loop only)."""
        if self.scheduled_at is None:
            return None
        return self.sent_at - self.scheduled_at


@dataclass(frozen=True, slots=True)
class Prompt:
    """One request's input: plain text (completions, or a single user turn) or chat messages."""

    index: int  # position in the dataset after filtering and sampling
    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    input_tokens: int | None = None  # known length with the model's tokenizer, when counted

    def as_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.text or ""}]

    def as_text(self) -> str:
        if self.text is not None:
            return self.text
        return "\n".join(m.get("content", "") for m in self.messages or ())


@dataclass(frozen=True, slots=True, repr=False)
class Endpoint:
    """A reachable OpenAI-compatible server, started by us or already running.

    Its repr hides the API key and any user-info of the URL: endpoints end up in messages.
    """

    base_url: str  # scheme://host:port, without the /v1 suffix
    model: str  # the model name to send in request bodies
    backend: str  # vllm | hf | external
    api_key: str | None = None
    pid: int | None = None  # root of the managed process tree; None when not ours
    startup_seconds: float | None = None
    log_path: str | None = None
    version: str | None = None  # backend package version, when known
    has_metrics: bool = False  # serves Prometheus text at /metrics

    def __repr__(self) -> str:
        key = REDACTED if self.api_key else None
        return (
            f"Endpoint(base_url={redact_url(self.base_url)!r}, model={self.model!r}, "
            f"backend={self.backend!r}, api_key={key!r}, pid={self.pid!r}, "
            f"startup_seconds={self.startup_seconds!r}, log_path={self.log_path!r}, "
            f"version={self.version!r}, has_metrics={self.has_metrics!r})"
        )
