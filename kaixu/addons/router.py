"""Step 6: model name -> deployment. Rewrites the flow's destination, swaps the client's credential for
the provider's, and encodes the body in the provider's format when it differs from the client's.

Same-format traffic keeps the client's bytes: only the URL, the credential and (for an alias or a
gateway-only field) the body's model change.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from kaixu.call import Call, get_call
from kaixu.config import ModelRoute, Policy, ProviderConfig, RouteTarget
from kaixu.formats import FormatError, droppable, embeddings, estimate_tokens, fronts, get_codec, json_type
from kaixu.formats.canonical import ChatRequest, Usage
from kaixu.formats.seeds import SeedContext, gateway13, kaixu_gate
from kaixu.gateway import Gateway
from kaixu.permission import model_refusal
from kaixu.pricing import cost_micros
from kaixu.providers import (
    ANTHROPIC_VERSION,
    UnsupportedOperation,
    auth_headers,
    endpoint_url,
    split_url,
)
from kaixu.providers.relay import RelayPlan
from kaixu.reliability.plan import Plan, Upstream
from kaixu.respond import error_response, json_response

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
# Body fields that only steer the gateway; a provider would reject them.
GATEWAY_FIELDS = ("backend",)
# The client's body headers, replaced when kaixu re-encodes the body (its length is set anew).
_BODY_HEADERS = frozenset({b"content-type", b"content-length", b"transfer-encoding", b"content-encoding"})
DEFAULT_PING_S = 10.0
ROUTED_OPERATIONS = frozenset({"chat", "embeddings", "batch_embeddings", "count_tokens"})


class RouteRefused(Exception):
    def __init__(self, status: int, message: str, type: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type, code


def _asks_for_usage(body: dict[str, Any]) -> bool:
    """The OpenAI stream asks for its usage chunk already; raises FormatError for `stream_options` that are not
    an object (kaixu would have to add `include_usage` to them)."""
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise FormatError("stream_options", f"must be an object, got {json_type(options)}")
    return isinstance(options, dict) and options.get("include_usage") is True


def _serves_hint(provider: ProviderConfig, name: str, hint: str) -> bool:
    """A provider hint names a provider kind (or a provider); the mock stands in for every kind, so the
    default policy (everything on `mock`) serves the seed's `"provider": "openai"` bodies."""
    return provider.kind in (hint, "mock") or name == hint


def candidate_targets(call: Call, route: ModelRoute) -> tuple[RouteTarget, ...]:
    """The route's targets, narrowed by what the client asked for explicitly (a backend or a provider)."""
    policy = call.policy
    backend = call.backend
    if backend is not None:
        targets = tuple(t for t in route.targets if t.provider == backend)
        if targets:
            return targets
        if backend in policy.providers:  # a provider outside the route: the model goes there as named
            key = call.caller.key
            if key is not None and key.models:  # a key limited to some models is limited to their routes too
                raise RouteRefused(
                    403, f"backend {backend!r} does not serve model {call.model!r} for key {key.name!r}",
                    "permission_error", "provider_not_allowed",
                )  # fmt: skip
            return (RouteTarget(backend, None),)
        raise RouteRefused(404, f"unknown backend {backend!r}", "invalid_request_error", "backend_not_found")
    hint = call.provider_hint
    if hint is not None:
        targets = tuple(t for t in route.targets if _serves_hint(policy.providers[t.provider], t.provider, hint))
        if not targets:
            raise RouteRefused(
                403, f"provider {hint!r} does not serve model {call.model!r} here", "permission_error",
                "provider_not_allowed",
            )  # fmt: skip
        return targets
    return route.targets


def resolve_route(call: Call) -> ModelRoute:
    model = call.model
    if model is None:
        raise RouteRefused(400, "model: a model name is required", "invalid_request_error", "invalid_model")
    policy: Policy = call.policy
    backend = call.backend
    renamed = False
    if backend is not None and backend not in policy.providers and backend in policy.models:
        model = call.model = backend  # /v1/{backend}/chat/completions naming a model, not a provider
        call.backend, renamed = None, True
    route = policy.resolve_model(model)
    if route is None:
        if call.front == gateway13.NAME:  # the seed: "403 ... provider/model not allowed"
            raise RouteRefused(
                403, f"model {model!r} is not served by this gateway", "permission_error", "model_not_allowed"
            )
        raise RouteRefused(
            404, f"model {model!r} is not served by this gateway", "invalid_request_error", "model_not_found"
        )
    # the policy step allowed the model the body names; one the path names instead must be allowed too
    denied = model_refusal(call, model) if renamed else None
    if denied is not None:
        raise RouteRefused(403, denied.message, "permission_error", denied.code)
    call.route.name = route.name
    return route


def decode_chat(call: Call) -> ChatRequest:
    """The client's chat request, canonical (raises FormatError): what translation encodes, and what the policy
    step estimates a request's size from."""
    assert call.body is not None
    body = {k: v for k, v in call.body.items() if k not in GATEWAY_FIELDS}
    return fronts.decode_request(
        call.front,
        body,
        model=call.model,
        stream=call.stream,
        default_model=call.policy.default_model,
        global_system=call.policy.front_settings(call.front).get("system"),
    )


@dataclass(frozen=True, slots=True)
class Prepared:
    """One attempt's request: the endpoint, the body (b"": the client's bytes unchanged) and the credential."""

    url: str
    body: bytes | dict[str, Any]
    key: str | None

    def content(self, original: bytes) -> bytes:
        body = self.body
        return json.dumps(body, separators=(",", ":")).encode() if isinstance(body, dict) else (body or original)


def wants_tools(call: Call) -> bool:
    """The request offers tools (OpenAI and Anthropic `tools`, Gemini `tools`/`functionDeclarations`)."""
    body = call.body or {}
    return bool(body.get("tools") or body.get("functions"))


def usable_targets(call: Call, targets: tuple[RouteTarget, ...]) -> tuple[RouteTarget, ...]:
    """The deployments that can take this request: a request with tools never goes to a provider that says
    `supports_tools: false`."""
    if not wants_tools(call):
        return targets
    providers = call.policy.providers
    return tuple(t for t in targets if providers[t.provider].supports_tools)


def reachable_targets(call: Call, route: ModelRoute, *, fallback: bool) -> tuple[RouteTarget, ...]:
    """The deployments of one model of a plan an attempt may be aimed at: the model asked for's as the client
    narrowed them (`candidate_targets`), a fallback's all; either way only those that take the request
    (`usable_targets`). What the executor aims at, and what the budget step reserves for."""
    return usable_targets(call, route.targets if fallback else candidate_targets(call, route))


def fallback_routes(call: Call, route: ModelRoute) -> tuple[ModelRoute, ...]:
    """The model asked for, then its fallbacks (`models.X.fallbacks`) the caller may call (kaixu/permission.py),
    each once, in order; an explicit backend or provider hint pins the request, so it has none."""
    if call.backend is not None or call.provider_hint is not None or not route.fallbacks:
        return (route,)
    chain = [route]
    for name in route.fallbacks:
        fallback = call.policy.resolve_model(name)
        if fallback is not None and all(fallback.name != r.name for r in chain) and model_refusal(call, name) is None:
            chain.append(fallback)
    return tuple(chain)


def upstream_headers(
    call: Call, client_fields: tuple[tuple[bytes, bytes], ...], host: str, port: int, prepared: Prepared
) -> tuple[tuple[bytes, bytes], ...]:
    """What a provider gets: the client's headers on the allowlist (`FORWARDED_HEADERS`, and the vendor ones
    only for their own vendor), the provider's host and credential, kaixu's request id."""
    assert call.route.provider is not None and call.route.format is not None
    fmt = call.route.format
    as_json = isinstance(prepared.body, dict)
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
    extra.update(auth_headers(fmt, prepared.key))
    if fmt == "anthropic" and not any(k.lower() == b"anthropic-version" for k, _ in fields):
        extra["anthropic-version"] = ANTHROPIC_VERSION
    extra.update(call.route.provider.headers)
    names = {name.lower().encode() for name in extra}
    kept = [(k, v) for k, v in fields if k.lower() not in names]
    return (*kept, *((k.encode(), v.encode()) for k, v in extra.items()))


class Router:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is not None or call.operation not in ROUTED_OPERATIONS:
            return
        try:
            route = resolve_route(call)
            chain = fallback_routes(call, route)
            start, targets = 0, usable_targets(call, candidate_targets(call, route))
            while not targets:  # none of its deployments takes tools: the first fallback that does
                start += 1
                if start == len(chain):
                    raise RouteRefused(
                        400, f"no deployment of model {call.model!r} (or of its fallbacks) supports tools",
                        "invalid_request_error", "tools_not_supported",
                    )  # fmt: skip
                route, targets = chain[start], usable_targets(call, chain[start].targets)
            target = self.gateway.deployments.pick(targets, call.policy.routing)
            install_id = flow.request.headers.get("x-kaixu-install-id")
            prepared = self.aim(call, route, target, flow.request.headers.fields, install_id, fallback=start > 0)
        except RouteRefused as refused:
            flow.response = error_response(call, refused.status, refused.message, refused.type, refused.code)
            return
        if prepared is None:  # answered locally (token estimate)
            try:
                flow.response = self._count_tokens_locally(call)
            except FormatError as exc:
                flow.response = error_response(call, 400, str(exc), "invalid_request_error", "invalid_field")
            return
        if start or chain[0].guarded or (call.stream and call.front == gateway13.NAME):
            request = flow.request
            client_fields = tuple((k, v) for k, v in request.headers.fields if k.lower() in FORWARDED_HEADERS)
            call.route.plan = Plan(chain, client_fields, request.raw_content or b"", install_id, start)
        self._rewrite(flow, call, prepared)
        call.route.routed = True

    def aim(
        self,
        call: Call,
        route: ModelRoute,
        target: RouteTarget,
        client_fields: tuple[tuple[bytes, bytes], ...],
        install_id: str | None,
        *,
        fallback: bool = False,
    ) -> Prepared | None:
        """Point the call at one deployment: its provider, model, wire format and price on `call.route` and
        `call.bill`, and the request it is sent (the client's bytes when nothing changes). The router does this
        for the first attempt, the attempt executor (kaixu/reliability/) for each next one. None: answered
        locally (token counting); RouteRefused: this deployment cannot take the request."""
        provider = call.policy.providers[target.provider]
        call.route.name = route.name
        call.route.target = target
        call.route.provider = provider
        call.route.model = upstream_model = target.model or (route.name if fallback else call.model) or ""
        call.route.format = provider.wire_format or fronts.native_format(call.front)
        call.route.operation = None
        call.canonical, call.dropped, call.strip_usage_chunk, call.embedding_request = None, [], False, None
        key = call.caller.client_key if call.caller.byok else provider.api_key
        if provider.kind != "mock" and not key:
            raise RouteRefused(
                500, f"provider {provider.name!r} has no API key configured", "server_error", "provider_key_missing"
            )
        call.bill.price = call.policy.pricing.table.lookup(provider.kind, upstream_model)
        if call.bill.price is None and call.policy.pricing.require and call.operation != "count_tokens":
            raise RouteRefused(
                409, f"model {upstream_model!r} on provider {provider.name!r} has no price and this gateway "
                "requires one (pricing.require)", "invalid_request_error", "UNPRICED_MODEL",
            )  # fmt: skip
        if fronts.is_seed(call.front):
            call.seed_context = self._seed_context(call, provider, install_id)
        try:
            body = self._upstream_body(call)
            if body is None:
                return None
            operation = call.route.operation or call.operation
            url = endpoint_url(
                provider, call.route.format, operation, upstream_model, call.stream, self.gateway.mock_url
            )
            self._account_losses(call, client_fields)
        except FormatError as exc:
            call.dropped = []  # nothing was sent, so nothing was dropped
            raise RouteRefused(400, str(exc), "invalid_request_error", "invalid_field") from exc
        except UnsupportedOperation as exc:
            raise RouteRefused(400, str(exc), "invalid_request_error", "unsupported_operation") from exc
        return Prepared(url, body, key)

    def dispatch(self, flow: http.HTTPFlow, call: Call) -> Awaitable[None] | None:
        """The request leaves (the dispatch step, after the budget): counted in the pool and against its
        deployment; a request with a plan goes to the attempt executor (a stream through the relay)."""
        self.gateway.pool.started(call)
        if call.route.target is not None:
            self.gateway.deployments.started(call.route.target)
        if call.route.plan is None:
            return None
        if call.stream:
            self._divert_to_relay(flow, call)
            return None
        executor = self.gateway.executor
        if executor is None or call.route.provider is None or call.route.provider.max_concurrent is None:
            # mitmproxy makes the first attempt, as for any request; the retries step takes over if it fails
            call.route.native_first = True
            call.route.sent_at = time.monotonic()
            return None
        return executor.answer(flow, call)  # the provider's queue is kaixu's: so is its HTTP client

    def _upstream_body(self, call: Call) -> bytes | dict[str, Any] | None:
        """The upstream body: the client's bytes when nothing changes, else a dict to serialise.

        None means the operation is answered locally (token counting for a provider without it)."""
        assert call.body is not None and call.route.model is not None and call.route.format is not None
        if call.route.format == call.front:
            rewrite_model = call.front != "gemini" and call.body.get("model") != call.route.model
            ask_usage = call.front == "openai" and call.stream and not _asks_for_usage(call.body)
            if not rewrite_model and not ask_usage and not any(field in call.body for field in GATEWAY_FIELDS):
                return b""  # keep the original bytes
            body = {k: v for k, v in call.body.items() if k not in GATEWAY_FIELDS}
            if call.front != "gemini":
                body["model"] = call.route.model
            if ask_usage:
                # Without it OpenAI streams carry no token counts; the stream step drops the extra chunk.
                body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
                call.strip_usage_chunk = True
            return body
        if call.operation == "count_tokens":
            return None
        if call.operation in ("embeddings", "batch_embeddings"):
            request = embeddings.decode_request(
                call.front, call.body, model=call.route.model, single=call.operation == "embeddings"
            )
            call.embedding_request = request
            call.route.operation = "batch_embeddings" if call.route.format == "gemini" else "embeddings"
            return embeddings.encode_request(call.route.format, request)
        if call.operation != "chat":
            raise UnsupportedOperation(
                f"{call.operation} requests cannot be translated from {call.front} to {call.route.format}"
            )
        canonical = self._decode(call)
        canonical.model = call.route.model
        call.canonical = canonical
        codec = get_codec(call.route.format)
        call.dropped = codec.dropped_fields(canonical)
        return codec.encode_request(canonical)

    @staticmethod
    def _account_losses(call: Call, client_fields: tuple[tuple[bytes, bytes], ...]) -> None:
        """Add the vendor headers the provider will not get to what is dropped; under
        `translation.unsupported: reject`, refuse the request instead of dropping anything."""
        sent = {k.lower() for k, _ in client_fields}
        call.dropped += [
            f"headers.{name}"
            for name in _REPORTED_HEADERS
            if name.encode() in sent and VENDOR_HEADERS[name.encode()] != call.route.format
        ]
        if call.dropped and call.policy.translation.unsupported == "reject":
            raise droppable.refusal(call.dropped, call.route.format or "")

    def _decode(self, call: Call) -> Any:
        return decode_chat(call)

    @staticmethod
    def _seed_context(call: Call, provider: ProviderConfig, install_id: str | None) -> SeedContext:
        assert call.body is not None
        bill = call.bill

        def price_cents(usage: Usage) -> float:  # Gateway 13's `done` event, priced when the stream ends
            micros = cost_micros(bill.price, usage)  # the price of the attempt that served it
            return 0 if micros is None else micros / 10_000

        return SeedContext(
            price_cents=price_cents,
            model=call.model,
            provider=call.provider_hint or provider.kind,
            install_id=install_id,
            request_id=call.request_id,
            include_raw=call.front == kaixu_gate.NAME and kaixu_gate.include_raw(call.body),
        )

    def _rewrite(self, flow: http.HTTPFlow, call: Call, prepared: Prepared) -> None:
        request = flow.request
        request.scheme, request.host, request.port, request.path = split_url(prepared.url)
        request.authority = ""  # origin-form upstream, whatever form the client's request line had
        request.headers.fields = upstream_headers(call, request.headers.fields, request.host, request.port, prepared)
        if isinstance(prepared.body, dict):
            request.content = prepared.content(b"")  # sets content-length

    def _divert_to_relay(self, flow: http.HTTPFlow, call: Call) -> None:
        """Send the flow, as it would go to the provider, through the relay, which runs its attempts and keeps a
        Gateway 13 client's stream alive (`ping` events) until the provider's first byte."""
        relay, loopback = self.gateway.relay, self.gateway.loopback_url
        if relay is None or loopback is None:
            return  # not running yet: the stream goes straight to the provider, one attempt
        request = flow.request
        ping_s = None
        if call.front == gateway13.NAME:
            ping_s = float(call.policy.front_settings(gateway13.NAME).get("ping_interval_s", DEFAULT_PING_S))
        path = relay.register(RelayPlan(call=call, upstream=Upstream.of(request), ping_s=ping_s))
        request.scheme, request.host, request.port, request.path = split_url(loopback + path)
        call.route.relayed = True

    def _count_tokens_locally(self, call: Call) -> http.Response:
        tokens = estimate_tokens(self._decode(call))
        body = {"totalTokens": tokens} if call.front == "gemini" else {"input_tokens": tokens}
        return json_response(call, 200, body, {"x-kaixu-estimate": "true"})
