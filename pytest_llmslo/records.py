"""Plain data that crosses module boundaries: one request's outcome and its error categories.

Every timestamp is seconds on ``time.monotonic()`` (CLOCK_MONOTONIC on Linux), the same clock the
timing instrument logs with ``time.monotonic_ns()``, so client and server times compare directly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

TokenSource = Literal["usage", "tokenizer"]


class ErrorCategory(str, enum.Enum):
    """Why a request failed; a request never raises, its failure is one of these."""

    CONNECT = "connect"  # could not open a connection (refused, DNS, TLS)
    TIMEOUT = "timeout"  # connect, read or total timeout elapsed
    HTTP_4XX = "http_4xx"  # server rejected the request
    HTTP_5XX = "http_5xx"  # server failed the request
    STREAM_BROKEN = "stream_broken"  # connection dropped or malformed SSE mid-response
    EMPTY_OUTPUT = "empty_output"  # a 200 answer that carried no generated text

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
    input_tokens: int | None = None
    output_tokens: int | None = None
    token_source: TokenSource | None = None  # where the token counts came from
    finish_reason: str | None = None
    http_status: int | None = None
    error: ErrorCategory | None = None
    error_message: str = ""
    output_text: str = ""
    server: str = ""  # name of the server in the spec (empty outside a spec run)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def dispatch_lag(self) -> float | None:
        """Seconds between the scheduled and the actual send (open loop only)."""
        if self.scheduled_at is None:
            return None
        return self.sent_at - self.scheduled_at
