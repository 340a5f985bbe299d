"""The stream step: a streamed (SSE) answer gets a stream callable when its headers arrive.

Same format: bytes pass through untouched while a decoder meters usage. Different formats: each upstream
chunk is decoded into canonical events and re-encoded for the client, event by event. The callable is
sync (mitmproxy calls it inside its protocol state machine), must never raise (an exception silently
drops that chunk) and must never return b"" mid-stream (that would end the client's response).

Every callable also counts what the client is sent (`tally`): a stream that ends without the provider's
final usage is billed from it (docs/pricing.md, "What is billed"). mitmproxy calls the callable with b""
only when the provider's body ends cleanly; a stream cut by the provider or left by its client ends in the
error hook instead, where the settle step estimates from the same counts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable

from mitmproxy import http

from kaixu.call import Call, get_call
from kaixu.estimates import estimate_usage
from kaixu.formats import StreamDecoder, StreamEncoder, fronts, gemini, get_codec
from kaixu.formats.canonical import (
    MessageEnd,
    StreamError,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallStart,
)
from kaixu.formats.doors import front_door
from kaixu.reliability.relay import ERROR_MARKER, MARKER_PREFIX, PING_MARKER
from kaixu.reliability.served import answer_headers
from kaixu.respond import add_headers
from kaixu.stream_errors import ender, once, terminal_error

log = logging.getLogger("kaixu.stream")

StreamCallable = Callable[[bytes], bytes | Iterable[bytes]]


def is_event_stream(response: http.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


Tally = Callable[[Iterable[StreamEvent]], None]


def tally(call: Call) -> Tally:
    """Counts the events of one stream into its bill: the characters of text, thinking and tool calls
    (`Bill.streamed_chars`, what an estimate bills when the provider's count never comes), the answer's text
    when the policy stores content (`Bill.streamed_text`, at most `ledger.content.max_chars`), and whether the
    provider ended the stream with its usage (`Bill.usage_final`), and the error a stream ends with (its
    provider's error event, or one kaixu could not read) for the ledger (`Delivery.relay_error`)."""
    bill, delivery = call.bill, call.delivery
    kept = bill.streamed_text
    room = call.policy.ledger.content.max_chars if kept is not None else 0

    def count(events: Iterable[StreamEvent]) -> None:
        nonlocal room
        for event in events:
            if type(event) is TextDelta:
                text = event.text
                if room > 0 and kept is not None and text:
                    kept.append(text[:room])
                    room -= len(kept[-1])
            elif type(event) is ThinkingDelta:
                text = event.text
            elif type(event) is ToolCallDelta:
                text = event.arguments
            elif type(event) is ToolCallStart:
                text = event.name
            elif type(event) is MessageEnd:
                bill.usage_final = event.usage is not None
                continue
            elif type(event) is StreamError:  # the client's stream ends in an error event: so does the ledger
                delivery.relay_error = (
                    delivery.relay_error or f"the provider's stream ended with an error: {event.message}"
                )
                continue
            else:
                continue
            bill.streamed_chars += len(text)

    return count


def meter(call: Call, decoder: StreamDecoder) -> StreamCallable:
    count = tally(call)

    def on_chunk(data: bytes) -> bytes | Iterable[bytes]:
        try:
            count(decoder.feed(data) if data else decoder.close())
            call.bill.usage = decoder.usage or call.bill.usage
        except Exception:
            log.exception("usage meter failed on request %s (the stream itself is unaffected)", call.request_id)
        return data if data else []

    return on_chunk


def _is_usage_only_chunk(event: bytes) -> bool:
    """The chunk OpenAI appends for `include_usage`: usage set, no choices."""
    if b'"usage":{' not in event and b'"usage": {' not in event:
        return False
    try:
        payload = json.loads(event.partition(b"data:")[2])
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("choices") == [] and bool(payload.get("usage"))


def _without_usage_only_chunks(data: bytes) -> bytes:
    """``data`` (complete SSE events) without the usage-only chunks, every other byte as it came: only the events
    that mention a usage object are looked at (a socket read brings a whole stream's events at once)."""
    data = data.replace(b"\r\n", b"\n") if b"\r" in data else data
    kept: list[bytes] = []
    start = 0
    while True:
        hits = [i for i in (data.find(b'"usage":{', start), data.find(b'"usage": {', start)) if i >= 0]
        if not hits:
            break
        begin = data.rfind(b"\n\n", start, min(hits))
        begin = start if begin < 0 else begin + 2
        end = data.find(b"\n\n", min(hits))
        end = len(data) if end < 0 else end + 2
        kept.append(data[start:begin] if _is_usage_only_chunk(data[begin:end]) else data[start:end])
        start = end
    kept.append(data[start:])
    return b"".join(kept)


def usage_stripping_meter(call: Call, decoder: StreamDecoder) -> StreamCallable:
    """Pass-through for an OpenAI stream where kaixu asked for the usage chunk the client did not ask for:
    meter everything, forward every complete event as it arrives except that one chunk."""
    metered = meter(call, decoder)
    held = b""

    def on_chunk(data: bytes) -> bytes | Iterable[bytes]:
        nonlocal held
        metered(data)
        if not data:
            rest, held = held, b""
            return rest if rest and not _is_usage_only_chunk(rest) else []
        buffer = held + data
        lf, crlf = buffer.rfind(b"\n\n"), buffer.rfind(b"\r\n\r\n")
        cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        complete, held = buffer[:cut], buffer[cut:]
        if not complete:
            return []
        if b'"usage":{' in complete or b'"usage": {' in complete:  # not the `"usage":null` of every chunk
            complete = _without_usage_only_chunks(complete)
        return complete or []

    return on_chunk


def untranslatable(call: Call) -> bytes:
    """A stream kaixu could not go on translating (an exception in a decoder or an encoder: a provider event of
    a shape it does not know, a bug) ends as one the provider broke: the door's terminal error event now,
    nothing after it (`Delivery.stream_broken`), and the error in the ledger. Dropping the chunk and going on
    would hand the client a clean end of an answer with a hole in it."""
    log.exception("request %s: the provider's stream could not be translated; it ends here", call.request_id)
    provider = call.served.provider.name if call.served is not None else "upstream"
    message = f"kaixu could not translate the stream from provider {provider!r}"
    call.delivery.stream_broken = True
    call.delivery.relay_error = message
    return terminal_error(call, message)


def translator(call: Call, decoder: StreamDecoder, encoder: StreamEncoder) -> StreamCallable:
    count = tally(call)
    failed = False

    def on_chunk(data: bytes) -> bytes | Iterable[bytes]:
        """Event by event: a chunk holds many (mitm.py reads a provider's body a socket read at a time), and
        what was translated before an event that could not be is still the client's."""
        nonlocal failed
        out: list[bytes] = []
        events: list[StreamEvent] = []
        index = -1
        try:
            events = decoder.feed(data) if data else decoder.close()
            for index, event in enumerate(events):  # noqa: B007 (read in the handler)
                count((event,))
                if not failed:
                    out.append(encoder.encode(event))
            if not data and not failed:
                out.append(encoder.close())
        except Exception:
            if not failed:
                failed = True
                out.append(untranslatable(call))
            with contextlib.suppress(Exception):  # the provider bills all it produced: count the rest
                count(events[index + 1 :])
        call.bill.usage = decoder.usage or call.bill.usage
        return b"".join(out) or []

    return on_chunk


def reframed(call: Call, reframer: gemini.GeminiArrayReframer) -> StreamCallable:
    """Pass-through of a Gemini SSE stream to a client that asked for Gemini's JSON array framing: every
    provider event is forwarded as an array element as soon as it is complete, and metered."""

    count = tally(call)
    failed = False

    def on_chunk(data: bytes) -> bytes | Iterable[bytes]:
        nonlocal failed
        if failed:
            return []
        out: list[bytes] = []
        try:
            for piece, events in reframer.reframe_pieces(data):  # the elements billed before one that is not
                count(events)
                out.append(piece)
        except Exception:
            failed = True
            out.append(untranslatable(call))
        call.bill.usage = reframer.usage or call.bill.usage
        return b"".join(out) or []

    return on_chunk


def relayed(call: Call, make_translate: Callable[[], StreamCallable], encoder: StreamEncoder) -> StreamCallable:
    """The relay's markers (reliability/relay.py) arrive only before the provider's first byte: render them
    as the front door's keep-alive / error events, then hand the provider's bytes to the translator, made at
    the first of them: Gateway 13's stream begins before its attempts run, and the one that wins (a fallback
    of another wire format, maybe) decides how its bytes are decoded."""
    held = b""
    started = False
    made: StreamCallable | None = None

    def translate(data: bytes) -> bytes | Iterable[bytes]:
        nonlocal made
        if made is None:
            made = make_translate()
        return made(data)

    def on_chunk(data: bytes) -> bytes | Iterable[bytes]:
        nonlocal held, started
        if started or (not data and not held):
            return translate(data)
        held += data
        out = b""
        while held.startswith(MARKER_PREFIX) or (held and MARKER_PREFIX.startswith(held[: len(MARKER_PREFIX)])):
            end = held.find(b"\n\n")
            if end < 0:
                if data:
                    return out or []  # a marker split across chunks: wait for its end
                held = b""
                break
            marker, held = held[:end], held[end + 2 :]
            out += _render_marker(call, marker, encoder)
        if held:
            started = True
            call.bill.first_token_at = call.bill.first_token_at or time.monotonic()
            rest, held = held, b""
            translated = translate(rest)
            out += translated if isinstance(translated, bytes) else b"".join(translated)
        if not data:  # end of the relay's body
            tail = translate(b"")
            out += tail if isinstance(tail, bytes) else b"".join(tail)
        return out or []

    return on_chunk


def takes_comments(call: Call) -> bool:
    """Whether the client's stream may end with kaixu's cost comment: where its door takes SSE comments
    (`FrontDoor.sse_comments`: not Gemini's) and the framing has comments (not Gemini's JSON array); those
    callers find the cost in the ledger by request id."""
    return front_door(call.front).sse_comments and not call.json_array_stream


def billed(call: Call, inner: StreamCallable) -> StreamCallable:
    """The outermost callable of every stream: notes the first byte the provider sent (time to first token)
    and, when the stream ends, prices its usage (estimated when the provider's final count never came:
    `estimate_usage`) and appends the cost as an SSE comment (`Bill.sse_comment`) where the client's parser
    skips comments (`takes_comments`)."""
    bill = call.bill
    sse = takes_comments(call)

    def on_chunk(data: bytes) -> bytes | Iterable[bytes]:
        if data and bill.first_token_at is None and not (call.delivery.relayed and call.canonical is not None):
            # a translated relayed stream's first byte may be a marker: `relayed` notes the provider's own
            bill.first_token_at = time.monotonic()
        if data:
            return inner(data)
        # The provider failed mid-answer (the relay says so): no clean close (no `[DONE]`, no `message_stop`, no
        # "ended without an answer" from a decoder), the terminal error event instead.
        out = terminal_error(call) if call.delivery.stream_broken else inner(data)
        try:
            if not bill.usage_final and call.delivery.relay_status is None:  # relay_status: no answer ever began
                estimate_usage(call)
            bill.settle(call.price)
            if not sse:
                return out
            comment = bill.sse_comment()
        except Exception:
            log.exception("pricing the stream of request %s failed (the stream itself is unaffected)", call.request_id)
            return out
        return (out if isinstance(out, bytes) else b"".join(out)) + comment

    return on_chunk


def _render_marker(call: Call, marker: bytes, encoder: StreamEncoder) -> bytes:
    try:
        if marker == PING_MARKER:
            keepalive = getattr(encoder, "keepalive", None)
            return keepalive() if keepalive is not None else b""
        if marker.startswith(ERROR_MARKER):
            detail = json.loads(marker[len(ERROR_MARKER) :])
            return encoder.encode(StreamError(message=str(detail.get("message")), type="api_error"))
    except Exception:
        log.exception("relay marker not understood on request %s", call.request_id)
    return b""


class Stream:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        response = flow.response
        if call is None or response is None or call.served is None or not call.stream:
            return
        # Errors stay buffered so `settle` can put them in the client's shape (and retry, later).
        if response.status_code >= 400 or not is_event_stream(response):
            return
        served = call.served
        if not (call.delivery.relayed and front_door(call.front).keepalive_s is not None):
            # (a relayed stream with keep-alives began before any attempt: its headers were sent then)
            add_headers(response, answer_headers(call, response.status_code))
        upstream = get_codec(served.format)
        if served.canonical is None and not call.json_array_stream:
            make = usage_stripping_meter if served.strip_usage_chunk else meter
            response.stream = billed(call, make(call, upstream.stream_decoder()))
            return
        response.headers.pop("content-length", None)
        if call.json_array_stream:  # Gemini without alt=sse; the provider was asked for SSE
            response.headers["content-type"] = "application/json; charset=UTF-8"
        else:
            response.headers["content-type"] = "text/event-stream; charset=utf-8"
        response.headers["cache-control"] = "no-cache"
        if call.canonical is None:
            reframer = gemini.GeminiArrayReframer()
            call.delivery.ender = once(reframer.fail)
            response.stream = billed(call, reframed(call, reframer))
            return
        encoder = fronts.stream_encoder(
            call.front, call.canonical, call.seed_context, json_array=call.json_array_stream
        )
        call.delivery.ender = ender(encoder, call.json_array_stream)
        if call.delivery.relayed:

            def winner() -> StreamCallable:  # the winning attempt's wire format, known at its first byte
                won = call.served
                return translator(call, get_codec(won.format if won else "openai").stream_decoder(), encoder)

            stream = relayed(call, winner, encoder)
        else:
            stream = translator(call, upstream.stream_decoder(), encoder)
        response.stream = billed(call, stream)
