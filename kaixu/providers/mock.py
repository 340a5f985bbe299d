"""The built-in mock provider: a real HTTP server, in-process on mitmproxy's event loop, that answers in
whichever wire format it is asked (OpenAI, Anthropic, Gemini), JSON or SSE.

It exists so that the default policy serves real responses offline with no keys, through the same proxy
path as a real provider (routing, streaming, metering). Answers are deterministic: an echo of the last
user message, split into several stream events, with plausible token counts. It speaks through the
formats package, so it is also a live check that our encoders produce what the official SDKs parse.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from kaixu.formats import FormatError, embeddings, estimate_tokens, get_codec
from kaixu.formats.canonical import (
    ChatRequest,
    ChatResponse,
    Message,
    MessageEnd,
    MessageStart,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from kaixu.formats.doors import GEMINI_ACTIONS

STREAM_EVENTS = 5
_GEMINI_PATH = re.compile(r"^/v1beta/models/(?P<model>[^/:]+):(?P<action>[A-Za-z]+)$")


def last_user_text(request: ChatRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "tool":
            return "tool said: " + " ".join(p.text for p in message.parts if isinstance(p, TextPart))
        if message.role == "user":
            return " ".join(p.text if isinstance(p, TextPart) else "[image]" for p in message.parts)
    return ""


def answer(request: ChatRequest) -> ChatResponse:
    """The deterministic reply to a canonical request."""
    text = last_user_text(request)
    usage = Usage(input_tokens=estimate_tokens(request))
    last = request.messages[-1] if request.messages else None
    if request.tools and last is not None and last.role == "user":
        arguments = json.dumps({"echo": text})
        call = ToolCall(id="call_" + uuid.uuid4().hex[:12], name=request.tools[0].name, arguments=arguments)
        usage.output_tokens = max(1, len(arguments) // 4)
        message = Message(role="assistant", parts=[], tool_calls=[call])
        finish = "tool_calls"
    else:
        reply = text if text.startswith("tool said: ") else "echo: " + text
        if request.response_format is not None and request.response_format.type != "text":
            reply = json.dumps({"echo": text})
        words = reply.split(" ")
        finish = "stop"
        if request.max_tokens is not None and len(words) > request.max_tokens:
            words, finish = words[: request.max_tokens], "length"
            reply = " ".join(words)
        usage.output_tokens = len(words) + 1
        message = Message(role="assistant", parts=[TextPart(reply)], tool_calls=[])
    return ChatResponse(
        id="mock-" + uuid.uuid4().hex[:16],
        model=request.model,
        created=int(time.time()),
        message=message,
        finish_reason=finish,  # type: ignore[arg-type]
        stop_sequence=None,
        usage=usage,
    )


def stream_events(response: ChatResponse, pieces: int = STREAM_EVENTS) -> list[StreamEvent]:
    events: list[StreamEvent] = [MessageStart(id=response.id, model=response.model)]
    text = "".join(p.text for p in response.message.parts if isinstance(p, TextPart))
    if text:
        size = max(1, -(-len(text) // pieces))
        events.extend(TextDelta(text[i : i + size]) for i in range(0, len(text), size))
    for index, call in enumerate(response.message.tool_calls):
        events.append(ToolCallStart(index=index, id=call.id, name=call.name))
        half = len(call.arguments) // 2
        events.append(ToolCallDelta(index=index, arguments=call.arguments[:half]))
        events.append(ToolCallDelta(index=index, arguments=call.arguments[half:]))
    events.append(MessageEnd(finish_reason=response.finish_reason, usage=response.usage))
    return events


def embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()  # json.loads lets lone surrogates in
    return [round(b / 255 * 2 - 1, 6) for b in digest[:8]]


class _Handler(tornado.web.RequestHandler):
    def set_default_headers(self) -> None:
        # tornado names itself in every answer, which clients would see as kaixu's own `Server` header
        self.clear_header("Server")

    def check_xsrf_cookie(self) -> None:  # an API, not a web form
        return None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # an exception in the mock is still a provider's JSON error, never tornado's HTML page
        self.clear()
        self.clear_header("Server")
        self._json(status_code, {"error": {"message": "mock provider error", "type": "api_error"}})

    def _json(self, status: int, body: Any) -> None:
        request_id = self.request.headers.get("x-request-id")  # the call's id: kaixu sends it to every provider
        if status >= 400 and request_id and isinstance(body, dict):
            body["request_id"] = request_id  # like kaixu's own errors (kaixu/respond.py)
        self.set_status(status)
        self.set_header("content-type", "application/json")
        self.finish(json.dumps(body))

    def get(self, path: str) -> None:
        if path in ("/v1/models", "/v1beta/models"):
            self._json(200, {"object": "list", "data": [{"id": "mock", "object": "model", "owned_by": "kaixu"}]})
        else:
            self._json(404, {"error": {"message": f"no such mock endpoint {path}", "type": "not_found_error"}})

    async def post(self, path: str) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            self._json(400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
            return
        wire, operation, model, stream = _route(path, body)
        if wire is None:
            self._json(404, {"error": {"message": f"no such mock endpoint {path}", "type": "not_found_error"}})
            return
        codec = get_codec(wire)
        if operation == "embeddings":
            try:
                self._json(200, _embeddings(wire, body, model, single=path.endswith(":embedContent")))
            except FormatError as exc:
                self._json(400, codec.error_body(400, str(exc), "invalid_request_error"))
            return
        try:
            request = codec.decode_request(body, model=model, stream=stream)
        except FormatError as exc:
            self._json(400, codec.error_body(400, str(exc), "invalid_request_error"))
            return
        if operation == "count_tokens":
            tokens = estimate_tokens(request)
            self._json(200, {"totalTokens": tokens} if wire == "gemini" else {"input_tokens": tokens})
            return
        response = answer(request)
        if not request.stream:
            self._json(200, codec.encode_response(response))
            return
        self.set_header("content-type", "text/event-stream")
        self.set_header("cache-control", "no-cache")
        encoder = codec.stream_encoder(request)
        for event in stream_events(response):
            chunk = encoder.encode(event)
            if chunk:
                self.write(chunk)
                await self.flush()
        tail = encoder.close()
        if tail:
            self.write(tail)
        self.finish()


def _route(path: str, body: dict[str, Any]) -> tuple[str | None, str, str | None, bool | None]:
    if path == "/v1/chat/completions":
        return "openai", "chat", None, None
    if path == "/v1/responses":
        return "responses", "chat", None, None
    if path == "/v1/responses/input_tokens":
        return "responses", "count_tokens", None, False
    if path == "/v1/embeddings":
        return "openai", "embeddings", body.get("model"), False
    if path == "/v1/messages":
        return "anthropic", "chat", None, None
    if path == "/v1/messages/count_tokens":
        return "anthropic", "count_tokens", None, False
    match = _GEMINI_PATH.match(path)
    if match:
        action = match["action"]
        operation = GEMINI_ACTIONS.get(action, "")
        if operation == "batch_embeddings":  # the mock answers both embedding actions in one place
            operation = "embeddings"
        if operation:
            return "gemini", operation, match["model"], action == "streamGenerateContent"
    return None, "", None, None


def _embeddings(wire: str, body: dict[str, Any], model: str | None, single: bool) -> dict[str, Any]:
    request = embeddings.decode_request(wire, body, model=model or "mock", single=single)
    tokens = sum(max(1, len(text) // 4) for text in request.inputs)
    vectors = [embedding(text) for text in request.inputs]
    answer = embeddings.EmbeddingResponse(request.model, vectors, Usage(input_tokens=tokens))
    return embeddings.encode_response(wire, answer, request)


MOCK_ROUTE = (r"(/.*)", _Handler)


class LoopbackServer:
    """kaixu's own HTTP server on an ephemeral loopback port, on mitmproxy's event loop: it hosts the mock
    provider and the stream relay (reliability/relay.py). Routes are matched in order; the mock's catch-all
    comes last."""

    def __init__(self, routes: list[Any]) -> None:
        self.routes = routes
        self._server: tornado.httpserver.HTTPServer | None = None
        self.url: str | None = None

    def start(self) -> str:
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        port = sockets[0].getsockname()[1]
        app = tornado.web.Application(self.routes)
        self._server = tornado.httpserver.HTTPServer(app)
        self._server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await asyncio.wait_for(self._server.close_all_connections(), 5)
            self._server = None
