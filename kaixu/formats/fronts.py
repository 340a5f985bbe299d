"""Front doors: which codec speaks to a client, and through which wire format its requests travel.

A front door is either a provider API (openai, anthropic, gemini: the same codec works both ways) or a
seed API (kaixu_gate, gateway13, pulse: front-door-only codecs that need a `SeedContext` for facts only
the gateway knows). Addons call these functions instead of branching on the kind of front door; the other facts
of a door are its entry in doors.py.
"""

from __future__ import annotations

from typing import Any

from . import gemini, get_codec, responses
from .base import StreamEncoder
from .canonical import ChatRequest, ChatResponse
from .doors import DOORS
from .seeds import SEED_CODECS, SeedContext
from .seeds import kaixu_gate as _kaixu_gate

PROVIDER_FORMATS = ("openai", "anthropic", "gemini", "responses")


def is_seed(front: str) -> bool:
    return front in SEED_CODECS


def native_format(front: str) -> str:
    """The provider wire format a front door is closest to (its own for a provider API; `FrontDoor.native_format`
    for a seed): used when the provider answers in any format (the mock), so the request still takes the same
    path as to a real provider."""
    door = DOORS.get(front)
    return (door.native_format or front) if door is not None else front


def decode_request(
    front: str,
    body: dict[str, Any],
    *,
    model: str | None,
    stream: bool,
    default_model: str | None = None,
    global_system: str | None = None,
) -> ChatRequest:
    if front == _kaixu_gate.NAME:
        return _kaixu_gate.decode_request(
            body, model=model, stream=stream, default_model=default_model, global_system=global_system
        )
    if front in SEED_CODECS:
        return SEED_CODECS[front].decode_request(body, model=model, stream=stream)
    return get_codec(front).decode_request(body, model=model, stream=stream)


def encode_response(
    front: str, response: ChatResponse, context: SeedContext | None, request: ChatRequest | None = None
) -> dict[str, Any]:
    """``request``: the client's, canonical: thinking reaches the client only if it asked to see it
    (``ChatRequest.shows_thinking``; the stream encoders apply the same rule)."""
    if request is not None and not request.shows_thinking():
        response = response.without_thinking()
    if front in SEED_CODECS:
        return SEED_CODECS[front].encode_response(response, context=context)
    if front == responses.NAME:  # a response object repeats its request's settings
        return responses.encode_response(response, request)
    return get_codec(front).encode_response(response)


def stream_encoder(
    front: str, request: ChatRequest, context: SeedContext | None, *, json_array: bool = False
) -> StreamEncoder:
    """``json_array``: Gemini's framing without ``alt=sse`` (the only front door that has two)."""
    if front in SEED_CODECS:
        return SEED_CODECS[front].stream_encoder(request, context=context)
    if json_array and front == "gemini":
        return gemini.CODEC.stream_encoder(request, framing="json_array")
    return get_codec(front).stream_encoder(request)


def error_body(front: str, status: int, message: str, type: str, code: str | None = None) -> dict[str, Any]:
    """Error JSON in the front door's shape (OpenAI's for anything unknown: the de-facto default)."""
    if front in SEED_CODECS:
        return SEED_CODECS[front].error_body(status, message, type, code)
    return get_codec(front if front in PROVIDER_FORMATS else "openai").error_body(status, message, type, code)
