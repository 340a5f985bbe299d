"""Step 2: which front door did the client knock on? Sets the call's wire format, operation and model.

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


@dataclass(frozen=True, slots=True)
class Door:
    front: str
    operation: str
    methods: tuple[str, ...]
    needs_body: bool


_EXACT: dict[str, Door] = {
    "/v1/chat/completions": Door("openai", "chat", ("POST",), True),
    "/v1/embeddings": Door("openai", "embeddings", ("POST",), True),
    "/v1/models": Door("openai", "models", ("GET",), False),
    "/v1/messages": Door("anthropic", "chat", ("POST",), True),
    "/v1/messages/count_tokens": Door("anthropic", "count_tokens", ("POST",), True),
    "/v1beta/models": Door("gemini", "models", ("GET",), False),
}
_GEMINI_ACTIONS = {
    "generateContent": "chat",
    "streamGenerateContent": "chat",
    "countTokens": "count_tokens",
    "embedContent": "embeddings",
}
# google-genai calls /v1beta/...; newer releases default to /v1/...; both are the same API.
_GEMINI_PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/(?P<model>[^/:]+):(?P<action>[A-Za-z]+)$")


def front_for_path(path: str) -> str:
    """The error shape to use for a path, even one kaixu does not serve."""
    if path.startswith(("/v1beta/", "/v1alpha/")) or _GEMINI_PATH.match(path):
        return "gemini"
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "openai"


def _models_front(request: http.Request) -> str:
    headers = request.headers
    if "x-goog-api-key" in headers or "x-goog-api-client" in headers or "key=" in request.path:
        return "gemini"
    if "anthropic-version" in headers:
        return "anthropic"
    return "openai"


class Dialect:
    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is not None:
            return
        request = flow.request
        path, _, _query = request.path.partition("?")
        door = _EXACT.get(path)
        if door is None:
            match = _GEMINI_PATH.match(path)
            if match and match["action"] in _GEMINI_ACTIONS:
                door = Door("gemini", _GEMINI_ACTIONS[match["action"]], ("POST",), True)
                call.model = match["model"]
                call.stream = match["action"] == "streamGenerateContent"
        if door is None:
            call.front = front_for_path(path)
            flow.response = error_response(
                call, 404, f"no such endpoint: {request.method} {path}", "not_found_error", "unknown_endpoint"
            )
            return
        call.front, call.operation = door.front, door.operation
        if path == "/v1/models":  # shared by three SDKs: answer in the shape of the one asking
            call.front = _models_front(request)
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
        if door.needs_body:
            body = self._parse_body(flow, call)
            if body is None:
                return
            call.body = body
            if call.front != "gemini":
                model = body.get("model")
                if model is None:
                    model = call.policy.default_model
                if not isinstance(model, str) or not model:
                    flow.response = error_response(
                        call,
                        400,
                        "model: a model name (string) is required",
                        "invalid_request_error",
                        "missing_model",
                    )
                    return
                call.model = model
                stream = body.get("stream", False)
                if not isinstance(stream, bool):
                    flow.response = error_response(
                        call, 400, "stream: must be true or false", "invalid_request_error", "invalid_type"
                    )
                    return
                call.stream = stream

    @staticmethod
    def _parse_body(flow: http.HTTPFlow, call: Call) -> dict[str, Any] | None:
        raw = flow.request.raw_content or b""
        if flow.request.headers.get("content-encoding"):
            raw = flow.request.get_content(strict=False) or b""
        if not raw.strip():
            flow.response = error_response(
                call,
                400,
                "the request body is empty; send a JSON object",
                "invalid_request_error",
                "empty_body",
            )
            return None
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            flow.response = error_response(
                call,
                400,
                f"the request body is not valid JSON: {exc}",
                "invalid_request_error",
                "invalid_json",
            )
            return None
        if not isinstance(body, dict):
            flow.response = error_response(
                call,
                400,
                f"the request body must be a JSON object, not {type(body).__name__}",
                "invalid_request_error",
                "invalid_json",
            )
            return None
        return body
