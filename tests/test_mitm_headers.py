"""`kaixu.mitm.fast_header_lookups` (`kaixu run` only) answers every `Headers` lookup as mitmproxy's own do: for
any fields (any case, repeated names, bytes that are not UTF-8) and any name asked for, as str or as bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http

from kaixu import mitm

_NAMES = st.sampled_from([b"content-length", b"Content-Length", b"CONTENT-LENGTH", b"x-a", b"X-\xc3\xa9", b"x-\xff"])
_VALUES = st.binary(max_size=8) | st.sampled_from([b"12", b"chunked", b"\xff\xfe", "é".encode()])
_ASKED = _NAMES | _NAMES.map(lambda name: name.decode("utf-8", "surrogateescape")) | st.sampled_from(["absent", b""])


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=6), _ASKED)
def test_the_fast_lookups_answer_as_mitmproxys(fields: list[tuple[bytes, bytes]], asked: str | bytes) -> None:
    headers = http.Headers(fields)
    get_all, get, contains = mitm.HEADERS_LOOKUPS
    assert mitm._headers_get_all(headers, asked) == get_all(headers, asked)
    assert mitm._headers_get(headers, asked) == get(headers, asked)
    assert mitm._headers_get(headers, asked, "default") == get(headers, asked, "default")
    assert mitm._headers_contains(headers, asked) == contains(headers, asked)


def test_a_name_that_is_neither_str_nor_bytes_fails_as_in_mitmproxy() -> None:
    headers = http.Headers([(b"a", b"1")])
    get_all, _, contains = mitm.HEADERS_LOOKUPS
    for lookup, theirs in ((mitm._headers_get_all, get_all), (mitm._headers_contains, contains)):
        with pytest.raises(TypeError):
            theirs(headers, 3)
        with pytest.raises(TypeError):
            lookup(headers, 3)
