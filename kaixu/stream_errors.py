"""How a client's stream ends when the provider broke it after it had begun: the terminal error event in the
client's own format (every SDK raises on it; without it the client would see a clean end of a truncated
answer). The stream step ends the streams it translates or re-frames (`ender`); kaixu/mitm.py asks for the
event of a stream mitmproxy forwarded itself (`broken_stream_event`, handed over by the errors step)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from mitmproxy import http

from kaixu.call import Call, call_for_request
from kaixu.formats import StreamEncoder, fronts
from kaixu.formats.canonical import StreamError
from kaixu.request_facts import decode_chat

log = logging.getLogger("kaixu.stream")


def terminal_error(call: Call, message: str | None = None) -> bytes:
    """The event that ends a stream the provider broke after it had begun, in the client's own format: an
    OpenAI error chunk, an Anthropic `error` event, a Gemini error (and, in Gemini's JSON-array framing, the
    array's end), Gateway 13's and kAIxu Gate's `error` events. Every SDK raises on it; without it the client
    would see a clean end of a truncated answer. A translated or re-framed stream ends through its own encoder
    (`Delivery.ender`, which knows what it has sent); a pass-through one gets a fresh encoder of its format."""
    message = message or call.delivery.relay_error or "the provider's stream broke"
    try:
        if call.delivery.ender is not None:
            return call.delivery.ender(message)
        request = call.canonical or decode_chat(call)
        return ender(fronts.stream_encoder(call.front, request, call.seed_context), False)(message)
    except Exception:
        log.exception("the terminal error event of request %s could not be encoded", call.request_id)
        return b""


def ender(encoder: StreamEncoder, json_array: bool) -> Callable[[str], bytes]:
    """How a stream ends with an error through the encoder that has been encoding it (`Delivery.ender`): its error
    event, and in Gemini's JSON-array framing the array's end."""

    def end(message: str) -> bytes:
        out = encoder.encode(StreamError(message=message, type="api_error"))
        return out + encoder.close() if json_array else out  # the array's `]`; never another format's close

    return once(end)


def once(end: Callable[[str], bytes]) -> Callable[[str], bytes]:
    """A stream's ender that ends it once: a stream kaixu could not translate may then be broken by its
    provider too (a second terminal event, or a second `]` of a JSON array, would be garbage)."""
    ended = False

    def end_once(message: str) -> bytes:
        nonlocal ended
        if ended:
            return b""
        ended = True
        return end(message)

    return end_once


def broken_stream_event(request: http.Request | None, reason: str) -> bytes | None:
    """The terminal event for a stream mitmproxy forwarded itself that the provider broke after it began
    (kaixu/mitm.py writes it before closing the client's connection). None for a request that is not a kaixu
    stream."""
    call = call_for_request(request)
    served = call.served if call is not None else None
    if call is None or not call.stream or served is None:
        return None
    if call.client_disconnected:
        return None
    return terminal_error(call, message=f"stream from provider {served.provider.name!r} broke: {reason}")
