"""Step 2: which front door did the client knock on? Sets the call's front door (its wire format and
error shape), operation, model and stream flag.

The body is parsed once here (JSON); nothing is translated yet: when the provider speaks the client's
format, the router forwards the original bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from kaixu.addons.respond import error_response
from kaixu.call import Call, get_call
from kaixu.formats import FormatError, json_type
from kaixu.formats.seeds import gateway13, pulse

# Client self-description headers (Kaixu Gateway 13 asks every app to send them) -> ledger attribute names.
_ATTRIBUTE_HEADERS = (("x-kaixu-app", "app"), ("x-kaixu-build", "build"), ("x-kaixu-install-id", "install_id"))


@dataclass(frozen=True, slots=True)
class Door:
    front: str
    operation: str
    methods: tuple[str, ...]
    needs_body: bool
    stream: bool | None = None
    """Fixed by the path (seed APIs, Gemini); None = the body's `stream` field decides."""


_POST_CHAT = ("POST",)
_EXACT: dict[str, Door] = {
    # OpenAI
    "/v1/chat/completions": Door("openai", "chat", _POST_CHAT, True),
    "/v1/embeddings": Door("openai", "embeddings", ("POST",), True),
    "/v1/models": Door("openai", "models", ("GET",), False),
    # Anthropic
    "/v1/messages": Door("anthropic", "chat", _POST_CHAT, True),
    "/v1/messages/count_tokens": Door("anthropic", "count_tokens", ("POST",), True),
    # Gemini (the model is in the path: see _GEMINI_PATH)
    "/v1beta/models": Door("gemini", "models", ("GET",), False),
    "/v1alpha/models": Door("gemini", "models", ("GET",), False),
    # kAIxu Gate (seed 001)
    "/v1/generate": Door("kaixu_gate", "chat", _POST_CHAT, True, stream=False),
    "/v1/stream": Door("kaixu_gate", "chat", _POST_CHAT, True, stream=True),
    "/v1/health": Door("kaixu_gate", "health", ("GET",), False),
    # Kaixu Gateway 13 (seed 000)
    "/.netlify/functions/gateway-chat": Door("gateway13", "chat", _POST_CHAT, True, stream=False),
    "/.netlify/functions/gateway-stream": Door("gateway13", "chat", _POST_CHAT, True, stream=True),
    # Pulse (seed 003)
    "/api/ai/request": Door("pulse", "chat", _POST_CHAT, True, stream=False),
}
_GEMINI_ACTIONS = {
    "generateContent": "chat",
    "streamGenerateContent": "chat",
    "countTokens": "count_tokens",
    "embedContent": "embeddings",
    "batchEmbedContents": "batch_embeddings",
}
# google-genai calls /v1beta/...; newer releases default to /v1/...; both are the same API.
_GEMINI_PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/(?P<model>[^/:]+):(?P<action>[A-Za-z]+)$")
# GET one model: /v1/models/{id} (OpenAI, Anthropic; Gemini under /v1beta too), answered by addons/local.py.
_MODEL_PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/(?P<model>[^/:]+)$")
# Intelligent AI Gateway (seed 002): an explicit backend (a provider, or a model alias) in the path.
_BACKEND_PATH = re.compile(r"^/v1/(?P<backend>[A-Za-z0-9_.@-]+)/chat/completions$")


def front_for_path(path: str) -> str:
    """The error shape to use for a path, even one kaixu does not serve."""
    door = _EXACT.get(path)
    if door is not None:
        return door.front
    if path.startswith(("/v1beta/", "/v1alpha/")) or _GEMINI_PATH.match(path):
        return "gemini"
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/.netlify/functions/"):
        return "gateway13"
    if path.startswith("/api/ai/"):
        return "pulse"
    return "openai"


def _models_front(request: http.Request) -> str:
    headers = request.headers
    if "x-goog-api-key" in headers or "x-goog-api-client" in headers or "key=" in request.path:
        return "gemini"
    if "anthropic-version" in headers:
        return "anthropic"
    return "openai"


def _door_for(call: Call, path: str) -> Door | None:
    door = _EXACT.get(path)
    if door is not None:
        return door
    match = _GEMINI_PATH.match(path)
    if match and match["action"] in _GEMINI_ACTIONS:
        call.model = match["model"]
        return Door(
            "gemini", _GEMINI_ACTIONS[match["action"]], ("POST",), True, match["action"] == "streamGenerateContent"
        )
    match = _MODEL_PATH.match(path)
    if match:
        call.model = match["model"]
        return Door("gemini" if path.startswith(("/v1beta/", "/v1alpha/")) else "openai", "model", ("GET",), False)
    match = _BACKEND_PATH.match(path)
    if match:
        call.backend = match["backend"]
        return _EXACT["/v1/chat/completions"]
    return None


class Dialect:
    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is not None:
            return
        request = flow.request
        path = request.path.partition("?")[0]
        door = _door_for(call, path)
        if door is None:
            call.front = front_for_path(path)
            flow.response = error_response(
                call, 404, f"no such endpoint: {request.method} {path}", "not_found_error", "unknown_endpoint"
            )
            return
        call.front, call.operation = door.front, door.operation
        if door.operation in ("models", "model") and path.startswith("/v1/"):
            call.front = _models_front(request)  # shared by three SDKs: answer in the shape of the one asking
        if request.method not in door.methods:
            flow.response = error_response(
                call,
                405,
                f"method {request.method} is not allowed on {path}; use {', '.join(door.methods)}",
                "invalid_request_error",
                "method_not_allowed",
                {"allow": ", ".join(door.methods)},
            )
            return
        if not door.needs_body:
            return
        if door.front == "gemini" and door.stream and "alt=sse" not in request.path:
            flow.response = error_response(
                call, 400, "alt: kaixu streams Gemini answers as server-sent events; call "
                ":streamGenerateContent?alt=sse (as the google-genai SDK does)", "invalid_request_error",
                "invalid_field",
            )  # fmt: skip
            return
        body = self._parse_body(flow, call)
        if body is None:
            return
        call.body = body
        headers = request.headers
        for header, name in _ATTRIBUTE_HEADERS:
            if header in headers:
                call.attributes[name] = headers[header][:200]
        problem = self._read_request_fields(call, door, body)
        if problem is not None:
            flow.response = error_response(call, 400, problem, "invalid_request_error", "invalid_field")

    @staticmethod
    def _read_request_fields(call: Call, door: Door, body: dict[str, Any]) -> str | None:
        """Model, stream flag and routing hints; returns what is wrong, naming the field."""
        if call.model is None:  # Gemini has it in the path
            model = body.get("model")
            if model is None:
                model = call.policy.default_model
            if not isinstance(model, str) or not model:
                return "model: a model name (string) is required"
            call.model = model
        if door.stream is not None:
            call.stream = door.stream
        else:
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                return "stream: must be true or false"
            call.stream = stream
        backend = body.get("backend")
        if backend is not None:
            if not isinstance(backend, str) or not backend:
                return "backend: must be a backend name (string)"
            call.backend = call.backend or backend
        if call.front == pulse.NAME:
            call.attributes.update({k: str(v)[:200] for k, v in pulse.attribution(body).items() if v})
        if call.front == gateway13.NAME:
            try:
                call.provider_hint = gateway13.provider_hint(body)
            except FormatError as exc:
                return str(exc)
        return None

    @staticmethod
    def _parse_body(flow: http.HTTPFlow, call: Call) -> dict[str, Any] | None:
        raw = flow.request.raw_content or b""
        if flow.request.headers.get("content-encoding"):
            raw = flow.request.get_content(strict=False) or b""
        if not raw.strip():
            flow.response = error_response(
                call, 400, "the request body is empty; send a JSON object", "invalid_request_error", "empty_body"
            )
            return None
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            flow.response = error_response(
                call, 400, f"the request body is not valid JSON: {exc}", "invalid_request_error", "invalid_json"
            )
            return None
        if not isinstance(body, dict):
            flow.response = error_response(
                call,
                400,
                f"the request body must be a JSON object, got {json_type(body)}",
                "invalid_request_error",
                "invalid_json",
            )
            return None
        return body
