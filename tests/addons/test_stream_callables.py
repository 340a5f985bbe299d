"""The stream callables mitmproxy calls per upstream chunk: whatever the chunk boundaries, the client gets
exactly the events it should, and usage is metered."""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from kaixu.addons.stream import translator, usage_stripping_meter
from kaixu.call import Call
from kaixu.config import parse_policy
from kaixu.formats import get_codec
from kaixu.formats.canonical import ChatRequest
from kaixu.stream_errors import ender

POLICY = parse_policy("providers: {mock: {kind: mock}}\n")


def chunk(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


DELTAS = [
    chunk(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": t}}],
            "usage": None,
        }
    )
    for t in ("Hel", "lo", " you")
]
USAGE = chunk(
    {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
)
STREAM = b"".join(DELTAS) + USAGE + b"data: [DONE]\n\n"


def run(stream: bytes, cuts: list[int]) -> tuple[bytes, Call]:
    call = Call(request_id="r", policy=POLICY)
    on_chunk = usage_stripping_meter(call, get_codec("openai").stream_decoder())
    out = b""
    bounds = [0, *sorted(set(cuts)), len(stream)]
    for start, end in itertools.pairwise(bounds):
        if end > start:
            result = on_chunk(stream[start:end])
            out += result if isinstance(result, bytes) else b"".join(result)
    final = on_chunk(b"")
    out += final if isinstance(final, bytes) else b"".join(final)
    return out, call


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12))
def test_usage_chunk_is_dropped_whatever_the_chunking(cuts: list[int]) -> None:
    out, call = run(STREAM, cuts)
    assert out == b"".join(DELTAS) + b"data: [DONE]\n\n"
    assert call.bill.usage is not None and call.bill.usage.output_tokens == 3 and call.bill.usage.input_tokens == 7


def test_crlf_streams_are_not_held_back() -> None:
    crlf = STREAM.replace(b"\n\n", b"\r\n\r\n")
    call = Call(request_id="r", policy=POLICY)
    on_chunk = usage_stripping_meter(call, get_codec("openai").stream_decoder())
    first = on_chunk(crlf[: len(DELTAS[0]) + 2])
    assert first, "a complete CRLF event must be forwarded at once"


BROKEN = [*DELTAS[:2], DELTAS[2].replace(b'"content":" you"', b'"content":5'), *DELTAS[2:]]
"""A provider stream whose third event kaixu cannot bill (its text is a number), then one more good event."""


@given(st.lists(st.integers(min_value=1, max_value=len(b"".join(BROKEN)) - 1), max_size=6))
def test_a_translated_stream_keeps_what_came_before_an_event_it_cannot_translate(cuts: list[int]) -> None:
    # mitm.py hands the stream step a socket read at a time, so one chunk holds many events, the bad one among them:
    # the client still gets the events before it, then the error event, then nothing (whatever the chunking)
    stream = b"".join(BROKEN)
    call = Call(request_id="r", policy=POLICY, front="anthropic")
    request = ChatRequest(model="m", stream=True)
    encoder = get_codec("anthropic").stream_encoder(request)
    call.delivery.ender = ender(encoder, False)  # as the stream step sets it
    on_chunk = translator(call, get_codec("openai").stream_decoder(), encoder)
    out = b""
    for start, end in itertools.pairwise([0, *sorted(set(cuts)), len(stream)]):
        if end > start:
            result = on_chunk(stream[start:end])
            out += result if isinstance(result, bytes) else b"".join(result)
    text = out.decode()
    assert '"text":"Hel"' in text and '"text":"lo"' in text, text
    assert text.count("event: error") == 1 and " you" not in text and text.rstrip().endswith("}"), text
    assert call.delivery.stream_broken and call.bill.streamed_chars >= len("Hello")
