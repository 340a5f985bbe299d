"""Step 6: model name -> deployment. Rewrites the flow's destination, swaps the client's credential for
the provider's, and encodes the body in the provider's format when it differs from the client's.

Same-format traffic keeps the client's bytes: only the URL, the credential and (for an alias) the model
name change.
"""

from __future__ import annotations

import json
import random
from typing import Any

from mitmproxy import http

from kaixu.addons.auth import CREDENTIAL_HEADERS
from kaixu.addons.respond import error_response, json_response
from kaixu.call import Call, get_call
from kaixu.config import ModelRoute, RouteTarget
from kaixu.formats import FormatError, estimate_tokens, get_codec
from kaixu.gateway import Gateway
from kaixu.providers import ANTHROPIC_VERSION, UnsupportedOperation, auth_headers, endpoint_url

_HOP_HEADERS = ("accept-encoding", "content-length", "host")


def pick_target(route: ModelRoute) -> RouteTarget:
    targets = route.targets
    if len(targets) == 1:
        return targets[0]
    return random.choices(targets, weights=[t.weight for t in targets])[0]


class Router:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is not None:
            return
        if call.operation == "models":
            flow.response = self._models(call)
            return
        assert call.model is not None
        route = call.policy.resolve_model(call.model)
        if route is None:
            flow.response = error_response(
                call,
                404,
                f"model {call.model!r} is not served by this gateway",
                "invalid_request_error",
                "model_not_found",
            )
            return
        if call.key is not None and not call.key.may_use(call.model):
            flow.response = error_response(
                call,
                403,
                f"model {call.model!r} is not allowed for key {call.key.name!r}",
                "permission_error",
                "model_not_allowed",
            )
            return
        target = pick_target(route)
        provider = call.policy.providers[target.provider]
        call.provider = provider
        call.upstream_model = target.model or call.model
        call.upstream_format = provider.wire_format or call.front
        key = call.client_key if call.byok else provider.api_key
        if provider.kind != "mock" and not key:
            flow.response = error_response(
                call,
                500,
                f"provider {provider.name!r} has no API key configured",
                "server_error",
                "provider_key_missing",
            )
            return
        try:
            body = self._upstream_body(call)
            if body is None:  # answered locally (token estimate)
                flow.response = self._count_tokens_locally(call)
                return
            url = endpoint_url(
                provider,
                call.upstream_format,
                call.operation,
                call.upstream_model,
                call.stream,
                self.gateway.mock_url,
            )
        except FormatError as exc:
            flow.response = error_response(call, 400, str(exc), "invalid_request_error", "unsupported_field")
            return
        except UnsupportedOperation as exc:
            flow.response = error_response(call, 400, str(exc), "invalid_request_error", "unsupported_operation")
            return
        self._rewrite(flow, call, url, body, key)

    def _upstream_body(self, call: Call) -> bytes | dict[str, Any] | None:
        """The upstream body: the client's bytes when nothing changes, else a dict to serialise.

        None means the operation is answered locally (token counting for a provider without it)."""
        assert call.body is not None and call.upstream_model is not None and call.upstream_format is not None
        if call.upstream_format == call.front:
            if call.front == "gemini" or call.body.get("model") == call.upstream_model:
                return b""  # keep the original bytes
            return {**call.body, "model": call.upstream_model}
        if call.operation == "count_tokens":
            return None
        if call.operation != "chat":
            raise UnsupportedOperation(
                f"{call.operation} requests cannot be translated from {call.front} to {call.upstream_format}"
            )
        canonical = get_codec(call.front).decode_request(call.body, model=call.model, stream=call.stream)
        canonical.model = call.upstream_model
        call.canonical = canonical
        return get_codec(call.upstream_format).encode_request(canonical)

    def _rewrite(
        self, flow: http.HTTPFlow, call: Call, url: str, body: bytes | dict[str, Any], key: str | None
    ) -> None:
        request = flow.request
        request.url = url
        headers = request.headers
        for name in CREDENTIAL_HEADERS:
            if name in headers:
                del headers[name]
        headers["accept-encoding"] = "identity"  # we read usage from bodies; stream callables see raw bytes
        assert call.provider is not None and call.upstream_format is not None
        headers.update(auth_headers(call.upstream_format, key))
        if call.upstream_format == "anthropic" and "anthropic-version" not in headers:
            headers["anthropic-version"] = ANTHROPIC_VERSION
        if call.provider.headers:
            headers.update(call.provider.headers)
        if isinstance(body, dict):
            request.content = json.dumps(body, separators=(",", ":")).encode()
            headers["content-type"] = "application/json"
            headers.pop("content-encoding", None)

    def _models(self, call: Call) -> http.Response:
        names = [m for m in call.policy.listed_models() if call.key is None or call.key.may_use(m)]
        if call.front == "gemini":
            models = [
                {"name": f"models/{m}", "displayName": m, "supportedGenerationMethods": ["generateContent"]}
                for m in names
            ]
            return json_response(call, 200, {"models": models})
        if call.front == "anthropic":
            since = "1970-01-01T00:00:00Z"
            listing = [{"type": "model", "id": m, "display_name": m, "created_at": since} for m in names]
            first, last = (names[0], names[-1]) if names else (None, None)
            return json_response(call, 200, {"data": listing, "has_more": False, "first_id": first, "last_id": last})
        created = int(self.gateway.started_at)
        data: list[dict[str, object]] = [
            {"id": m, "object": "model", "created": created, "owned_by": self._owner(call, m)} for m in names
        ]
        return json_response(call, 200, {"object": "list", "data": data})

    @staticmethod
    def _owner(call: Call, model: str) -> str:
        route = call.policy.models.get(model)
        return route.targets[0].provider if route else "kaixu"

    @staticmethod
    def _count_tokens_locally(call: Call) -> http.Response:
        assert call.body is not None
        canonical = get_codec(call.front).decode_request(call.body, model=call.model, stream=False)
        tokens = estimate_tokens(canonical)
        body = {"totalTokens": tokens} if call.front == "gemini" else {"input_tokens": tokens}
        return json_response(call, 200, body, {"x-kaixu-estimate": "true"})
