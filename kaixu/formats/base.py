"""The codec interface every wire format implements.

A codec is used in both directions: as the *front door* (decode the client's
request, encode our response/stream for it) and as the *provider* side (encode the
upstream request, decode its response/stream). Stream translation runs inside
mitmproxy's synchronous stream callable, so decoders and encoders are plain
stateful objects fed one chunk/event at a time, never async and never buffering
the whole answer.
"""

from __future__ import annotations

from typing import Any, Protocol

from .canonical import ChatRequest, ChatResponse, StreamEvent, Usage


class StreamDecoder(Protocol):
    """Provider SSE bytes in, canonical events out."""

    usage: Usage | None  # latest cumulative usage seen (metering on pass-through)

    def feed(self, chunk: bytes) -> list[StreamEvent]: ...

    def close(self) -> list[StreamEvent]:
        """End of the upstream body: flush, and report a truncated stream as ``StreamError``."""
        ...


class StreamEncoder(Protocol):
    """Canonical events in, client SSE bytes out (``b""`` when there is nothing to send)."""

    def encode(self, event: StreamEvent) -> bytes: ...

    def close(self) -> bytes:
        """Trailer after the last event, e.g. ``data: [DONE]`` for OpenAI."""
        ...


class Codec(Protocol):
    name: str

    def decode_request(
        self, body: dict[str, Any], *, model: str | None = None, stream: bool | None = None
    ) -> ChatRequest:
        """Front door -> canonical. ``model``/``stream`` override the body (Gemini has them in the URL)."""
        ...

    def encode_request(self, req: ChatRequest) -> dict[str, Any]:
        """Canonical -> provider body (Gemini: body only; model and stream live in the URL)."""
        ...

    def dropped_fields(self, req: ChatRequest) -> list[str]:
        """What ``encode_request(req)`` leaves out, as the client spells it (``context_management``,
        ``messages[3].content[0].cache_control``): fields ``droppable`` allows to lose. Raises
        ``UnsupportedFeature`` as ``encode_request`` does for a field that may not be lost."""
        ...

    def decode_response(self, body: dict[str, Any]) -> ChatResponse: ...

    def encode_response(self, resp: ChatResponse) -> dict[str, Any]: ...

    def stream_decoder(self) -> StreamDecoder: ...

    def stream_encoder(self, req: ChatRequest) -> StreamEncoder: ...

    def usage_from_response(self, body: dict[str, Any]) -> Usage | None:
        """Usage of a non-streamed response without decoding the rest (pass-through metering). None when the
        answer reports no usage at all: a missing count is not a count of zero (the settle step estimates)."""
        ...

    def error_body(self, status: int, message: str, type: str, code: str | None = None) -> dict[str, Any]:
        """This format's error JSON, for errors the gateway itself answers."""
        ...

    def decode_error(self, status: int, body: bytes) -> tuple[str, str]:
        """``(message, type)`` from a provider error body; never raises, whatever the bytes."""
        ...
