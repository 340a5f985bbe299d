"""Step 2: which front door did the client knock on? From the request head alone (path, method, headers):
the call's front door (its wire format and error shape), operation, a model named in the path, the stream
flag a path fixes, and client attribution headers. The body waits until the caller is known (addons/body.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mitmproxy import http

from kaixu.call import Call, get_call
from kaixu.log import safe
from kaixu.respond import error_response

# Client self-description headers (Kaixu Gateway 13 asks every app to send them) -> ledger attribute names.
#: What a client may say about itself, for the ledger and `/api/costs?group_by=` (never for access decisions).
_ATTRIBUTE_HEADERS = (
    ("x-kaixu-app", "app"),
    ("x-kaixu-build", "build"),
    ("x-kaixu-install-id", "install_id"),
    ("x-kaixu-customer", "customer"),
    ("x-kaixu-user", "user"),
    ("x-kaixu-team", "team"),
    ("x-kaixu-project", "project"),
    ("x-kaixu-client", "client"),
)


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


#: Model names: printable, no whitespace, no URL syntax a provider path could be steered with. `/` is allowed
#: (OpenAI-compatible servers name models `org/model`); it is percent-encoded wherever a name enters a URL.
MAX_MODEL_CHARS = 256
_MODEL_FORBIDDEN = re.compile(r"[\s?#%\\]|\.\.|^/|/$")


def model_name_problem(name: str) -> str | None:
    """What is wrong with a client's model name, or None: checked before any routing."""
    if not name:
        return "model: a model name is required"
    if len(name) > MAX_MODEL_CHARS:
        return f"model: a model name has at most {MAX_MODEL_CHARS} characters"
    if not name.isprintable() or _MODEL_FORBIDDEN.search(name):
        return (
            f"model: {safe(name, 80)!r} is not a valid model name "
            "(no spaces, control characters, '?', '#', '%', '\\' or '..')"
        )
    return None


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
    """Runs on the request head: the body is neither read nor parsed before the caller is authenticated."""

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is not None or call.operation == "local":
            return  # ("local" without an answer yet: kaixu's own endpoint answered once its body is read, admin.py)
        request = flow.request
        path = request.path.partition("?")[0]
        door = _door_for(call, path)
        if door is None:
            call.front = front_for_path(path)
            flow.response = error_response(
                call, 404, f"no such endpoint: {request.method} {safe(path)}", "not_found_error", "unknown_endpoint"
            )
            return
        call.door = door
        call.front, call.operation = door.front, door.operation
        if door.operation in ("models", "model") and path.startswith("/v1/"):
            call.front = _models_front(request)  # shared by three SDKs: answer in the shape of the one asking
        if request.method not in door.methods:
            flow.response = error_response(
                call,
                405,
                f"method {safe(request.method, 20)} is not allowed on {path}; use {', '.join(door.methods)}",
                "invalid_request_error",
                "method_not_allowed",
                {"allow": ", ".join(door.methods)},
            )
            return
        if door.stream is not None:
            call.stream = door.stream
        if call.model is not None:  # from the path (Gemini, GET one model)
            problem = model_name_problem(call.model)
            if problem is not None:
                flow.response = error_response(call, 400, problem, "invalid_request_error", "invalid_model")
                return
        if door.front == "gemini" and door.stream and "alt=sse" not in request.path:
            call.json_array_stream = True  # what Google streams without alt=sse
        headers = request.headers
        for header, name in _ATTRIBUTE_HEADERS:
            if header in headers:
                problem = call.caller.say(name, headers[header], header)
                if problem is not None:
                    flow.response = error_response(call, 400, problem, "invalid_request_error", "invalid_header")
                    return
