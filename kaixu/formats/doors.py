"""The front doors: which API a client speaks, known from the request head alone (its path, method and, for
the paths several SDKs share, its headers). The door step (kaixu/addons/dialect.py) reads it before the caller
is authenticated, so nothing here looks at a body.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Door:
    front: str
    operation: str
    methods: tuple[str, ...]
    needs_body: bool
    stream: bool | None = None
    """Fixed by the path (seed APIs, Gemini); None = the body's `stream` field decides."""


_POST_CHAT = ("POST",)
#: The doors found by their exact path.
PATHS: dict[str, Door] = {
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


class Found(NamedTuple):
    """The door a path names, and what the path itself says: a model (Gemini, GET one model) or a backend."""

    door: Door
    model: str | None = None
    backend: str | None = None


def door_for_path(path: str) -> Found | None:
    """The door of a path (without its query), or None when kaixu serves no such endpoint."""
    door = PATHS.get(path)
    if door is not None:
        return Found(door)
    match = _GEMINI_PATH.match(path)
    if match and match["action"] in _GEMINI_ACTIONS:
        stream = match["action"] == "streamGenerateContent"
        return Found(Door("gemini", _GEMINI_ACTIONS[match["action"]], ("POST",), True, stream), match["model"])
    match = _MODEL_PATH.match(path)
    if match:
        front = "gemini" if path.startswith(("/v1beta/", "/v1alpha/")) else "openai"
        return Found(Door(front, "model", ("GET",), False), match["model"])
    match = _BACKEND_PATH.match(path)
    if match:
        return Found(PATHS["/v1/chat/completions"], backend=match["backend"])
    return None


def front_for_path(path: str) -> str:
    """The error shape to use for a path, even one kaixu does not serve."""
    door = PATHS.get(path)
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


def models_front(headers: Container[str], path: str) -> str:
    """Whose model list a `/v1/models` request asks for (three SDKs share the path): answered in its shape."""
    if "x-goog-api-key" in headers or "x-goog-api-client" in headers or "key=" in path:
        return "gemini"
    if "anthropic-version" in headers:
        return "anthropic"
    return "openai"
