"""The shortcuts `kaixu run` takes through mitmproxy's bookkeeping (kaixu/mitm.py) answer as mitmproxy does:
`fast_header_lookups` for any header fields (any case, repeated names, bytes that are not UTF-8) and any name
asked for, as str or as bytes; `cached_hook_arguments` for every hook mitmproxy has; `plain_task_names` names a
task as mitmproxy does outside a test."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import hooks, http
from mitmproxy.options import Options

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


def test_the_cached_hook_arguments_are_mitmproxys_for_every_hook() -> None:
    assert len(hooks.all_hooks) > 20
    for hook_class in hooks.all_hooks.values():
        hook = object.__new__(hook_class)
        values = {field.name: object() for field in dataclasses.fields(hook_class)}
        for name, value in values.items():
            object.__setattr__(hook, name, value)
        assert mitm._hook_args(hook) == mitm.HOOK_ARGS(hook) == list(values.values()), hook_class
        assert mitm._hook_args(hook) == mitm.HOOK_ARGS(hook), "asked again (the names now cached)"


async def test_a_task_is_named_as_mitmproxy_names_it_outside_a_test() -> None:
    started = asyncio.create_task(asyncio.sleep(0))
    mitm._task_debug_info(started, name="handle_hook(request)", client=("127.0.0.1", 5))
    assert started.get_name() == "handle_hook(request)"
    assert started.client == ("127.0.0.1", 5)  # type: ignore[attr-defined]
    assert isinstance(started.created, float)  # type: ignore[attr-defined]
    await started


_CHANGES = st.lists(
    st.tuples(st.sampled_from(["set", "delete", "insert", "assign", "add"]), _NAMES, _VALUES), max_size=5
)


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=6), _CHANGES, _ASKED)
def test_the_lookups_follow_every_change_of_the_headers(
    fields: list[tuple[bytes, bytes]], changes: list[tuple[str, bytes, bytes]], asked: str | bytes
) -> None:
    # `_headers_index` is kept with the `fields` tuple it was read from: a lookup after any change answers for the
    # fields as they are now
    headers = http.Headers(fields)
    get_all, get, contains = mitm.HEADERS_LOOKUPS
    for change, name, value in changes:
        mitm._headers_get(headers, asked)  # an index is kept before the change
        if change == "set":
            headers[name] = value
        elif change == "delete" and mitm._headers_contains(headers, name):
            del headers[name]
        elif change == "insert":
            headers.insert(0, name, value)
        elif change == "assign":
            headers.fields = ((name, value), *headers.fields[1:])
        elif change == "add":
            headers.add(name, value)
        assert mitm._headers_get_all(headers, asked) == get_all(headers, asked)
        assert mitm._headers_get(headers, asked) == get(headers, asked)
        assert mitm._headers_contains(headers, asked) == contains(headers, asked)


def test_an_option_reads_as_mitmproxy_reads_it_and_a_list_is_still_a_copy() -> None:
    options = Options()
    options.update(ignore_hosts=["a.example"], mode=["reverse:http://127.0.0.1:1"])
    for option in options._options.values():
        assert mitm._option_current(option) == mitm.OPTION_CURRENT(option), option.name
    listed = options._options["ignore_hosts"]
    assert mitm._option_current(listed) is not listed.value, "a caller could change the option's list in place"
