from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaixu.formats.errors import FormatError
from kaixu.formats.sse import SSEEvent, SSEParser, encode_sse


def parse_all(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events = [e for chunk in chunks for e in parser.feed(chunk)]
    return events + parser.flush()


def test_basic_events_with_names_and_lf() -> None:
    raw = b'event: message_start\ndata: {"a":1}\n\ndata: {"b":2}\n\n'
    assert parse_all([raw]) == [SSEEvent("message_start", '{"a":1}'), SSEEvent(None, '{"b":2}')]


def test_crlf_and_lone_cr_line_endings() -> None:
    raw = b"data: one\r\n\r\ndata: two\r\rdata: three\n\n"
    assert [e.data for e in parse_all([raw])] == ["one", "two", "three"]


def test_crlf_split_between_chunks() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n\r") == []
    assert parser.feed(b"\n") == [SSEEvent(None, "x")]


def test_multiline_data_comments_and_unknown_fields() -> None:
    raw = b": keep-alive\n\nid: 7\nretry: 10\ndata: line1\ndata:line2\ndata\n\n"
    assert parse_all([raw]) == [SSEEvent(None, "line1\nline2\n")]


def test_comment_only_and_event_without_data_are_skipped() -> None:
    assert parse_all([b": ping\n\nevent: ping\n\n\n\n"]) == []


def test_utf8_split_inside_a_character() -> None:
    raw = 'data: {"t":"你好 👋"}\n\n'.encode()
    cut = raw.index("好".encode()) + 1  # inside the 3-byte sequence
    parser = SSEParser()
    assert parser.feed(raw[:cut]) == []
    assert parser.feed(raw[cut:]) == [SSEEvent(None, '{"t":"你好 👋"}')]


def test_flush_delivers_an_unterminated_last_event() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: [DONE]") == []
    assert parser.flush() == [SSEEvent(None, "[DONE]")]
    assert parser.flush() == []


def test_oversized_event_is_refused() -> None:
    parser = SSEParser(max_event_bytes=64)
    with pytest.raises(FormatError) as err:
        parser.feed(b"data: " + b"x" * 100)
    assert err.value.field == "stream"


def test_encode_sse() -> None:
    assert encode_sse('{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_sse("x", "ping") == b"event: ping\ndata: x\n\n"
    assert encode_sse("a\nb") == b"data: a\ndata: b\n\n"
    assert parse_all([encode_sse("a\nb", "e")]) == [SSEEvent("e", "a\nb")]


_field_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=30)
_events = st.lists(
    st.tuples(st.one_of(st.none(), st.text("abcdefgh_", min_size=1, max_size=12)), _field_text),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(events=_events, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20), crlf=st.booleans())
def test_chunking_invariance(events: list[tuple[str | None, str]], cuts: list[int], crlf: bool) -> None:
    """However the bytes are cut, the parser yields the same events as for one chunk."""
    raw = b"".join(encode_sse(data, name) for name, data in events)
    if crlf:
        raw = raw.replace(b"\n", b"\r\n")
    points = sorted({c % (len(raw) + 1) for c in cuts})
    chunks = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    expected = [SSEEvent(name, data) for name, data in events]
    assert parse_all(chunks) == expected
    assert parse_all([raw]) == expected
