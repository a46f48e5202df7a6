"""Server-sent events: split a received body into events, each with the offset where it ends.

The load engine keeps the raw bytes of every socket read with the time it arrived and parses
them only after the response has ended, so the per-read work on the hot path is a timestamp and
an append. The decoder (`decode.py`) stamps each event with the time of the read that completed
it (the read carrying its terminating blank line), found from the event's end offset.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n)")


def iter_events(body: bytes) -> Iterator[tuple[int, bytes, str]]:
    """Events in ``body`` as ``(end offset, data, event name)``; comments and bare fields skipped.

    The end offset is where the event's terminating blank line ends. Line endings may be CRLF,
    LF or CR (the SSE grammar allows all three). An event left unterminated when the body ended
    is still returned, with the body length as its end: a server that closes right after its
    last ``data:`` line has sent it.
    """
    if b"\r" not in body:
        yield from _iter_lf(body)
        return
    data: list[bytes] = []
    name = ""
    end = 0
    for match in _LINE.finditer(body):
        line = match.group(1)
        end = match.end()
        if not line:
            if data:
                yield end, b"\n".join(data), name
            data = []
            name = ""
            continue
        field, value = _field(line)
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    tail = body[end:]
    if tail:
        field, value = _field(tail)
        if field == b"data":
            data.append(value)
    if data:
        yield len(body), b"\n".join(data), name


def _iter_lf(body: bytes) -> Iterator[tuple[int, bytes, str]]:
    # the common case (vLLM, transformers, most proxies): LF only, so bytes.split does the work
    pos = 0
    blocks = body.split(b"\n\n")
    last = len(blocks) - 1
    for i, block in enumerate(blocks):
        pos += len(block)
        end = pos + 2 if i < last else pos
        pos = end
        if not block.strip(b"\n"):
            continue
        if block.startswith(b"data: ") and b"\n" not in block:
            yield min(end, len(body)), block[6:], ""
            continue
        data: list[bytes] = []
        name = ""
        for line in block.split(b"\n"):
            field, value = _field(line)
            if field == b"data":
                data.append(value)
            elif field == b"event":
                name = value.decode("utf-8", "replace")
        if data:
            yield min(end, len(body)), b"\n".join(data), name


def _field(line: bytes) -> tuple[bytes, bytes]:
    if line.startswith(b":"):
        return b"", b""  # a comment: keepalives look like this
    field, sep, value = line.partition(b":")
    if sep and value.startswith(b" "):
        value = value[1:]
    return field, value
