"""The built-in mock provider: a real HTTP server, in-process on mitmproxy's event loop, that answers in
whichever wire format it is asked (OpenAI, Anthropic, Gemini), JSON or SSE.

It exists so that the default policy serves real responses offline with no keys, through the same proxy
path as a real provider (routing, streaming, metering). Answers are deterministic: an echo of the last
user message, split into several stream events, with plausible token counts. It speaks through the
formats package, so it is also a live check that our encoders produce what the official SDKs parse.

Tools (docs/clients.md#the-mock-and-tools):
- a line of the last user message's text that starts with `mock:tool NAME {JSON arguments}` (the first such
  line wins; agents wrap the person's text in blocks of their own) is answered with that one tool call, when the
  request offers a tool of that name (otherwise the line is ignored);
- without such a line, a request with tools whose last message is the user's is answered with a call of its
  first tool, arguments `{"echo": <the text>}`;
- a turn that ends with a tool result is answered with that result's text: `tool said: <text>`.
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


TOOL_DIRECTIVE = "mock:tool "


def tool_directive(request: ChatRequest) -> tuple[str, str | None] | None:
    """The first `mock:tool NAME {JSON}` line of the last message, when it is the user's: (name, arguments as
    JSON text, or None when the request offers no tool of that name). A line whose arguments are not a JSON
    object is not a directive."""
    last = request.messages[-1] if request.messages else None
    if last is None or last.role != "user" or not request.tools:
        return None
    for part in last.parts:
        if not isinstance(part, TextPart):
            continue
        for line in part.text.splitlines():
            line = line.strip()
            if not line.startswith(TOOL_DIRECTIVE):
                continue
            name, _, rest = line[len(TOOL_DIRECTIVE) :].strip().partition(" ")
            try:
                arguments = json.loads(rest or "{}")
            except ValueError:
                continue
            if not isinstance(arguments, dict):
                continue
            offered = any(tool.name == name for tool in request.tools)
            return name, json.dumps(arguments) if offered else None
    return None


def answer(request: ChatRequest) -> ChatResponse:
    """The deterministic reply to a canonical request."""
    text = last_user_text(request)
    usage = Usage(input_tokens=estimate_tokens(request))
    last = request.messages[-1] if request.messages else None
    directive = tool_directive(request)
    if directive is None and request.tools and last is not None and last.role == "user":
        directive = request.tools[0].name, json.dumps({"echo": text})
    arguments = directive[1] if directive is not None else None
    if directive is not None and arguments is not None:
        call = ToolCall(id="call_" + uuid.uuid4().hex[:12], name=directive[0], arguments=arguments)
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


class LoopbackHandler(tornado.web.RequestHandler):
    """A handler of kaixu's loopback server (the mock, the relay, the agent providers): an API, not a web form
    (no XSRF check), without tornado's `Server` header (clients would see it as kaixu's own), and the task it
    sets in `_task` cancelled when kaixu's side hangs up (its client left: what it runs for it is stopped)."""

    _task: asyncio.Task[Any] | None = None

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    def check_xsrf_cookie(self) -> None:
        return None

    def on_connection_close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class _Handler(LoopbackHandler):
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
