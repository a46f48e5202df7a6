"""SSE splitting: events out of a body, each with the offset where its blank line ends.

The decoder stamps an event with the read that holds that offset (tests/unit/test_decode.py).
"""

from __future__ import annotations

from pytest_llmslo.sse import iter_events


def test_an_event_ends_where_its_blank_line_ends() -> None:
    body = b"data: hel" + b"lo\n" + b"\n"
    assert list(iter_events(body)) == [(len(body), b"hello", "")]


def test_several_events_in_one_body_and_an_unterminated_last_one() -> None:
    body = b"data: a\n\ndata: b\n\ndata: c"
    # the last event's blank line never came: the server closed after it, so it ends the body
    assert list(iter_events(body)) == [(9, b"a", ""), (18, b"b", ""), (25, b"c", "")]


def test_done_comments_and_keepalives() -> None:
    body = b": keepalive\n\ndata: {}\n\n:ping\n\ndata: [DONE]\n\n"
    assert [data for _, data, _ in iter_events(body)] == [b"{}", b"[DONE]"]


def test_crlf_and_cr_line_endings_and_a_crlf_split_between_reads() -> None:
    pieces = [b"data: a\r\n\r", b"\ndata: b\r\r", b"data: c\r\n", b"\r\n"]
    # `a` ends after the whole CRLF (offset 11, in the second read), not at its CR (offset 10)
    assert list(iter_events(b"".join(pieces))) == [(11, b"a", ""), (20, b"b", ""), (31, b"c", "")]


def test_multiline_data_event_name_and_field_without_space() -> None:
    body = b"event: delta\ndata: one\ndata:two\nid: 3\nretry: 10\n\n"
    assert list(iter_events(body)) == [(len(body), b"one\ntwo", "delta")]


def test_blank_lines_alone_dispatch_nothing() -> None:
    assert list(iter_events(b"\n\n\n\n")) == []
    assert list(iter_events(b"\r\n\r\n")) == []
