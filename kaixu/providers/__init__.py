"""Upstreams: where each provider kind serves each operation, and how it wants to be authenticated.

The request/response bodies are the formats package's business; this module only knows URLs and headers.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import quote, urlsplit

from kaixu.config import ProviderConfig
from kaixu.exceptions import KaixuError
from kaixu.formats.doors import GEMINI_ACTION_FOR

ANTHROPIC_VERSION = "2023-06-01"
AGENT_PATH = "/_kaixu/agent/"
"""Where kaixu's loopback server runs an agent provider's requests (kaixu/agents/claude_cli.py): its chat
completions endpoint is `AGENT_PATH + <provider name> + /v1/chat/completions`."""

_OPENAI_PATHS = {"chat": "/chat/completions", "embeddings": "/embeddings", "models": "/models"}
_RESPONSES_PATHS = {"chat": "/responses", "count_tokens": "/responses/input_tokens", "models": "/models"}
_ANTHROPIC_PATHS = {
    "chat": "/v1/messages",
    "count_tokens": "/v1/messages/count_tokens",
    "models": "/v1/models",
}


class UnsupportedOperation(KaixuError):
    """This provider kind has no endpoint for the operation."""

    status, type, code = 400, "invalid_request_error", "unsupported_operation"


def base_url(provider: ProviderConfig, wire: str, mock_url: str | None) -> str:
    """The provider's root URL; for OpenAI-compatible providers it includes the /v1 prefix, as in their SDKs."""
    if provider.kind == "mock":
        if mock_url is None:
            raise RuntimeError("the mock provider is not running")
        return mock_url + "/v1" if wire in ("openai", "responses") else mock_url
    if provider.agent is not None:  # served by kaixu's loopback server, in the OpenAI format
        if mock_url is None:
            raise RuntimeError("kaixu's loopback server is not running")
        return mock_url + AGENT_PATH + quote(provider.name, safe="") + "/v1"
    return provider.base_url


def endpoint_url(
    provider: ProviderConfig, wire: str, operation: str, model: str, stream: bool, mock_url: str | None
) -> str:
    root = base_url(provider, wire, mock_url)
    if wire == "openai":
        path = _OPENAI_PATHS.get(operation)
    elif wire == "responses":
        path = _RESPONSES_PATHS.get(operation)
    elif wire == "anthropic":
        path = _ANTHROPIC_PATHS.get(operation)
    elif wire == "gemini":
        action = GEMINI_ACTION_FOR.get(operation)
        name = quote(model, safe="")  # a model name never steers the path: `/`, `?`, `..` stay inside it
        if action is None:
            path = None
        elif operation == "chat" and stream:
            path = f"/v1beta/models/{name}:streamGenerateContent?alt=sse"
        else:
            path = f"/v1beta/models/{name}:{action}"
    else:
        path = None
    if path is None:
        raise UnsupportedOperation(f"{wire} providers have no {operation} endpoint")
    return root + path


def auth_headers(wire: str, key: str | None) -> dict[str, str]:
    """The provider's own credential header(s) for a key (none for a keyless local provider)."""
    if not key:
        return {}
    if wire == "anthropic":
        return {"x-api-key": key}
    if wire == "gemini":
        return {"x-goog-api-key": key}
    return {"authorization": f"Bearer {key}"}


@lru_cache(maxsize=4096)
def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of an endpoint URL, parsed once per distinct URL: setting these
    on a request costs a third of assigning `request.url`, which parses the URL on every request."""
    parts = urlsplit(url)
    scheme = parts.scheme or "http"
    port = parts.port or (443 if scheme == "https" else 80)
    path = parts.path + ("?" + parts.query if parts.query else "")
    return scheme, parts.hostname or "", port, path or "/"
