"""Aiming a call at one deployment: an `Attempt` (kaixu/call.py) with its provider, upstream model, wire format
and price, and the request that deployment is sent (`Prepared`: its URL, body and headers). The router step
aims the first attempt, the attempt executor (kaixu/reliability/) each next one.

Same-format traffic keeps the client's bytes: only the URL, the credential and (for an alias or a gateway-only
field) the body's model change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from kaixu.agents.claude_cli import AgentRefused, plan_run
from kaixu.agents.grants import call_token
from kaixu.call import Attempt, Call, Prepared
from kaixu.config import ModelRoute, ProviderConfig, RouteTarget
from kaixu.formats import FormatError, droppable, embeddings, fronts, get_codec, json_type
from kaixu.formats.canonical import Usage
from kaixu.formats.doors import front_door
from kaixu.formats.seeds import SeedContext
from kaixu.pricing import Price, Rates, cents, cost_micros
from kaixu.providers import ANTHROPIC_VERSION, UnsupportedOperation, auth_headers, endpoint_url, split_url
from kaixu.request_facts import decode_chat, stripped_fields
from kaixu.routing.resolve import RouteRefused

if TYPE_CHECKING:
    from kaixu.formats.canonical import ChatRequest
    from kaixu.formats.embeddings import EmbeddingRequest

#: The client headers a provider gets (lower-case). Everything else is dropped: credentials (kaixu sends the
#: provider's own), cookies, proxy credentials, forwarding and client-IP headers. docs/compatibility.md lists it.
FORWARDED_HEADERS = frozenset(
    {
        b"content-type",
        b"content-length",
        b"transfer-encoding",
        b"accept",
        b"user-agent",
        b"anthropic-version",
        b"anthropic-beta",
        b"openai-beta",
        b"idempotency-key",
        b"traceparent",
        b"tracestate",
        b"x-request-id",
    }
)
#: Headers only their own vendor's API reads: a provider of another format never gets them. The beta ones
#: switch features on, so losing them is reported (`x-kaixu-dropped`), as `headers.NAME`.
VENDOR_HEADERS = {b"anthropic-version": "anthropic", b"anthropic-beta": "anthropic", b"openai-beta": "openai"}
_REPORTED_HEADERS = ("anthropic-beta", "openai-beta")
# The client's body headers, replaced when kaixu re-encodes the body (its length is set anew).
_BODY_HEADERS = frozenset({b"content-type", b"content-length", b"transfer-encoding", b"content-encoding"})


def _asks_for_usage(body: dict[str, Any]) -> bool:
    """The OpenAI stream asks for its usage chunk already; raises FormatError for `stream_options` that are not
    an object (kaixu would have to add `include_usage` to them)."""
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise FormatError("stream_options", f"must be an object, got {json_type(options)}")
    return isinstance(options, dict) and options.get("include_usage") is True


def aim(
    call: Call,
    route: ModelRoute,
    target: RouteTarget,
    client_fields: tuple[tuple[bytes, bytes], ...],
    install_id: str | None,
    mock_url: str | None,
    *,
    fallback: bool = False,
) -> Attempt:
    """The call aimed at one deployment: its provider, model, wire format and price, and the request it is sent
    (the client's bytes when nothing changes; `Attempt.prepared` None: answered locally, token counting). A
    value: the call is not changed, its caller adds it to `call.attempts`. The router does this for the first
    attempt, the attempt executor (kaixu/reliability/) for each next one. RouteRefused: this deployment cannot
    take the request. ``mock_url``: the in-process mock provider's base URL (`Gateway.mock_url`)."""
    provider = call.policy.providers[target.provider]
    upstream_model = target.model or (route.name if fallback else call.model) or ""
    wire = provider.wire_format or fronts.native_format(call.front)
    key = call.caller.client_key if call.caller.byok else provider.api_key
    price = None
    seed_context = None
    try:
        if provider.agent is not None:
            key, price = _agent_attempt(call, provider)
        if not (key if call.caller.byok or provider.agent is not None else provider.has_key):
            raise RouteRefused(
                500, f"provider {provider.name!r} has no API key configured", "server_error", "provider_key_missing"
            )
        if price is None:
            price = call.policy.pricing.table.lookup(provider.kind, upstream_model)
        if price is None and call.policy.pricing.require and call.operation != "count_tokens":
            raise RouteRefused(
                409, f"model {upstream_model!r} on provider {provider.name!r} has no price and this gateway "
                "requires one (pricing.require)", "invalid_request_error", "UNPRICED_MODEL",
            )  # fmt: skip
        seed_context = _seed_context(call, provider, install_id, price) if fronts.is_seed(call.front) else None
        try:
            upstream = _upstream_body(call, upstream_model, wire)
            if upstream.body is None:
                return Attempt(route.name, target, provider, upstream_model, wire, upstream.operation, price, None,
                               seed_context=seed_context)  # fmt: skip
            operation = upstream.operation or call.operation
            url = endpoint_url(provider, wire, operation, upstream_model, call.stream, mock_url)
            dropped = _account_losses(call, upstream.dropped, wire, client_fields)
        except (FormatError, UnsupportedOperation) as exc:  # the answer each means: 400 with its code
            raise RouteRefused.of(exc) from exc
    except RouteRefused as refused:
        refused.refused_by = Attempt(route.name, target, provider, upstream_model, wire, None, price, None,
                                     seed_context=seed_context)  # fmt: skip
        raise
    _, host, port, _ = split_url(url)
    headers = _upstream_headers(call, provider, wire, client_fields, host, port, upstream.body, key)
    prepared = Prepared(url, upstream.body, headers)
    return Attempt(
        route.name, target, provider, upstream_model, wire, upstream.operation, price, prepared,
        canonical=upstream.canonical, dropped=dropped, seed_context=seed_context,
        embedding_request=upstream.embedding_request, strip_usage_chunk=upstream.strip_usage_chunk,
    )  # fmt: skip


AGENT_PRICE = Price(
    "claude-cli/*", Rates(Fraction(0), Fraction(0)), source="kaixu: an agent's cost is its model calls'"
)
"""An agent attempt's own tokens are free: what it costs is what its model calls cost, each priced as it is made
and summed into the request's bill (kaixu/agents/grants.py)."""


def _agent_attempt(call: Call, provider: ProviderConfig) -> tuple[str, Price]:
    """An attempt on an agent provider: the credential kaixu's loopback server knows the call by, and its price;
    RouteRefused when the request asks for a folder or a tool the policy does not allow it."""
    if call.operation != "chat":
        raise UnsupportedOperation(f"agent provider {provider.name!r} serves chat requests only")
    try:
        plan_run(call, provider)
    except AgentRefused as exc:
        raise RouteRefused(400, str(exc), exc.type, exc.code) from exc
    return call_token(call), AGENT_PRICE


@dataclass(slots=True)
class _Upstream:
    """What `_upstream_body` decides: the body (None: answered locally) and the translation state behind it."""

    body: bytes | dict[str, Any] | None
    operation: str | None = None
    canonical: ChatRequest | None = None
    dropped: tuple[str, ...] = ()
    embedding_request: EmbeddingRequest | None = None
    strip_usage_chunk: bool = False


def _upstream_body(call: Call, model: str, wire: str) -> _Upstream:
    """The upstream body: the client's bytes when nothing changes, else a dict to serialise.

    A body of None means the operation is answered locally (token counting for a provider without it)."""
    assert call.body is not None
    if wire == call.front:
        door = front_door(call.front)
        rewrite_model = door.model_in_body and call.body.get("model") != model
        ask_usage = door.stream_usage_option and call.stream and not _asks_for_usage(call.body)
        dropped = stripped_fields(call)
        if not rewrite_model and not ask_usage and not any(field in call.body for field in dropped):
            return _Upstream(b"")  # keep the original bytes
        body = {k: v for k, v in call.body.items() if k not in dropped}
        if door.model_in_body:
            body["model"] = model
        if ask_usage:
            # Without it OpenAI streams carry no token counts; the stream step drops the extra chunk.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return _Upstream(body, strip_usage_chunk=ask_usage)
    if call.operation == "count_tokens":
        return _Upstream(None)
    if call.operation in ("embeddings", "batch_embeddings"):
        request = embeddings.decode_request(call.front, call.body, model=model, single=call.operation == "embeddings")
        operation = "batch_embeddings" if wire == "gemini" else "embeddings"
        return _Upstream(embeddings.encode_request(wire, request), operation, embedding_request=request)
    if call.operation != "chat":
        raise UnsupportedOperation(f"{call.operation} requests cannot be translated from {call.front} to {wire}")
    canonical = dataclasses.replace(decode_chat(call), model=model)  # the call's own stays as the client sent it
    codec = get_codec(wire)
    dropped = tuple(codec.dropped_fields(canonical))
    return _Upstream(codec.encode_request(canonical), canonical=canonical, dropped=dropped)


def _account_losses(
    call: Call, dropped: tuple[str, ...], wire: str, client_fields: tuple[tuple[bytes, bytes], ...]
) -> tuple[str, ...]:
    """What is dropped: ``dropped`` and the vendor headers the provider will not get; under
    `translation.unsupported: reject`, refuse the request instead of dropping anything."""
    sent = {k.lower() for k, _ in client_fields}
    dropped += tuple(
        f"headers.{name}"
        for name in _REPORTED_HEADERS
        if name.encode() in sent and VENDOR_HEADERS[name.encode()] != wire
    )
    if dropped and call.policy.translation.unsupported == "reject":
        raise droppable.refusal(dropped, wire)
    return dropped


def _seed_context(call: Call, provider: ProviderConfig, install_id: str | None, price: Price | None) -> SeedContext:
    assert call.body is not None
    include_raw = front_door(call.front).include_raw

    def price_cents(usage: Usage) -> float:  # Gateway 13's `done` event, priced when the stream ends
        micros = cost_micros(price, usage)  # the price of the attempt that serves it
        return 0 if micros is None else cents(micros)

    return SeedContext(
        price_cents=price_cents,
        model=call.model,
        provider=call.provider_hint or provider.kind,
        install_id=install_id,
        request_id=call.request_id,
        include_raw=include_raw is not None and include_raw(call.body),
    )


def _upstream_headers(
    call: Call,
    provider: ProviderConfig,
    fmt: str,
    client_fields: tuple[tuple[bytes, bytes], ...],
    host: str,
    port: int,
    body: bytes | dict[str, Any],
    key: str | None,
) -> tuple[tuple[bytes, bytes], ...]:
    """What the provider gets: the client's headers on the allowlist (`FORWARDED_HEADERS`, and the vendor ones
    only for their own vendor), the provider's host and credential, kaixu's request id."""
    as_json = isinstance(body, dict)
    fields = [
        (k, v)
        for k, v in client_fields
        if k.lower() in FORWARDED_HEADERS
        and VENDOR_HEADERS.get(k.lower(), fmt) == fmt
        and not (as_json and k.lower() in _BODY_HEADERS)
    ]
    extra: dict[str, str] = {
        "host": host if port in (80, 443) else f"{host}:{port}",
        "accept-encoding": "identity",  # we read usage from bodies; stream callables see raw bytes
        "x-request-id": call.request_id,  # the provider's logs line up with kaixu's; the mock quotes it
    }
    if as_json:
        extra["content-type"] = "application/json"
    extra.update(auth_headers(fmt, key))
    if fmt == "anthropic" and not any(k.lower() == b"anthropic-version" for k, _ in fields):
        extra["anthropic-version"] = ANTHROPIC_VERSION
    extra.update(provider.headers)
    names = {name.lower().encode() for name in extra}
    kept = [(k, v) for k, v in fields if k.lower() not in names]
    return (*kept, *((k.encode(), v.encode()) for k, v in extra.items()))
