"""The attempt plan: which models a request may be served by, in order, what each attempt did, and what a
failure leads to.

A failure is one of three things:
- *retried*: the statuses of `retries.on_status` (429, 5xx by default), connection errors and timeouts: the
  same model is tried again (on another deployment when it has one) after a backoff, while attempts last;
- *a reason to fall back*: retries spent, or a client error the policy names (`fallback_on`: a prompt too
  long for the context window, a content-filter refusal), moves to the next model of `models.X.fallbacks`;
- *final*: any other 4xx is the client's own fault, answered as it is.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

from kaixu.config.policy import FallbackReason, ModelRoute, RetryPolicy
from kaixu.reliability.upstream import REQUEST_DROP

if TYPE_CHECKING:
    from collections.abc import Iterable

    from mitmproxy import http

Verdict = Literal["retry", "fallback", "final"]

#: What providers say when a prompt does not fit (OpenAI `context_length_exceeded`, Anthropic "prompt is too
#: long", Gemini "exceeds the maximum number of tokens").
_CONTEXT_MARKERS = ("context_length_exceeded", "context window", "prompt is too long", "maximum context length",
                    "exceeds the maximum number of tokens", "too many tokens")  # fmt: skip
#: ... and when their content filter refuses one.
_CONTENT_MARKERS = ("content_policy", "content_filter", "content management policy", "safety", "blocked")


@dataclass(slots=True)
class Upstream:
    """One attempt's request, ready for the executor's HTTP client."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes

    @classmethod
    def of(cls, request: http.Request) -> Upstream:
        """The request mitmproxy would send (the router has aimed it): the first attempt of a plan."""
        return cls(request.method, request.url, str_headers(request.headers.fields), request.raw_content or b"")


def str_headers(fields: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Header fields as text, without those the HTTP client sets itself (`REQUEST_DROP`)."""
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in fields
        if name.decode("latin-1").lower() not in REQUEST_DROP
    ]


@dataclass(frozen=True, slots=True)
class Plan:
    """Set by the router step on a request that needs the executor (`ModelRoute.guarded`, a fallback first, a
    Gateway 13 stream)."""

    routes: tuple[ModelRoute, ...]
    """The model asked for, then its fallbacks."""
    client_fields: tuple[tuple[bytes, bytes], ...]
    """The client's headers on the forwarding allowlist, for the requests of later attempts."""
    client_body: bytes
    """The client's body as it came (what a same-format attempt sends when nothing in it changes)."""
    install_id: str | None = None
    start: int = 0
    """The route of the first attempt: 0, or a fallback's when no deployment of the model asked for can take
    the request (tools)."""


@dataclass(slots=True)
class Tried:
    """One try, as the answer's `x-kaixu-attempts` and the ledger's `attempts` show it."""

    provider: str
    model: str
    status: int
    ms: float
    error: str | None = None

    def header_item(self) -> str:
        """An RFC 8941 list member: `"provider/model";status=503;ms=12.5`."""
        return f'"{self.provider}/{header_safe(self.model)}";status={self.status};ms={self.ms:.1f}'

    def public(self) -> dict[str, object]:
        found: dict[str, object] = {"provider": self.provider, "model": self.model, "status": self.status,
                                    "ms": round(self.ms, 1)}  # fmt: skip
        if self.error:
            found["error"] = self.error
        return found


@dataclass(slots=True)
class Attempts:
    """Every attempt of one request, and whether a fallback model served it (`degraded`)."""

    tried: list[Tried] = field(default_factory=list)
    degraded: bool = False
    started: float = field(default_factory=time.monotonic)

    def add(self, provider: str, model: str, status: int, since: float, error: str | None = None) -> Tried:
        attempt = Tried(provider, model, status, (time.monotonic() - since) * 1000, error)
        self.tried.append(attempt)
        return attempt

    def header(self) -> str:
        return ", ".join(a.header_item() for a in self.tried)

    def ledger(self) -> str | None:
        return json.dumps([a.public() for a in self.tried], separators=(",", ":")) if self.tried else None


def header_safe(name: str) -> str:
    """A model name inside an RFC 8941 string: printable ASCII without `"` and `\\` (the rest percent-encoded)."""
    return (
        name
        if name.isascii() and name.isprintable() and '"' not in name and "\\" not in name
        else quote(name, safe="/:._-@+")
    )


def verdict(
    status: int, body: bytes, retries: RetryPolicy, fallback_on: frozenset[FallbackReason], *, transport: bool = False
) -> Verdict:
    """What an attempt's failure leads to. ``transport``: kaixu's own 502/504 for a provider that could not be
    reached or went silent, always retried; a 429 or 5xx outside `on_status` is not retried but still falls
    back."""
    if transport or status in retries.on_status:
        return "retry"
    if status == 429 or status >= 500:
        return "fallback"
    if fallback_on and 400 <= status < 500:
        text = body[:4096].decode("utf-8", "replace").lower()
        if "context_window" in fallback_on and any(m in text for m in _CONTEXT_MARKERS):
            return "fallback"
        if "content_policy" in fallback_on and any(m in text for m in _CONTENT_MARKERS):
            return "fallback"
    return "final"


def retry_after_s(value: str | None, ms: str | None = None) -> float | None:
    """How long the provider asks to wait: `retry-after-ms` (OpenAI's, milliseconds) when it is readable, else
    `Retry-After` (seconds, or an HTTP date); None when absent or unreadable."""
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_s(retries: RetryPolicy, retry: int, retry_after: float | None, rng: random.Random | None = None) -> float:
    """The wait before retry number ``retry`` (1 for the first): `base_ms` doubled each time up to `max_ms`,
    a random point below it with full jitter; never less than the provider's `Retry-After`, capped at
    `max_ms` too (a provider that asks for longer is not waited for beyond the policy's patience)."""
    cap = retries.max_ms / 1000
    ceiling = min(cap, retries.base_ms / 1000 * (2 ** (retry - 1)))
    wait = (rng or random).uniform(0, ceiling) if retries.jitter else ceiling
    if retry_after is not None:
        wait = max(wait, min(retry_after, cap))
    return wait
