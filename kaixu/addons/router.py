"""The router step: model name -> deployment. Picks the deployment (kaixu/routing/ resolves the model and aims the call
at it), rewrites the flow's destination, swaps the client's credential for the provider's, and encodes the
body in the provider's format when it differs from the client's; sets the attempt plan a request with
fallbacks, retries, timeouts or a queue needs.

Same-format traffic keeps the client's bytes: only the URL, the credential and (for an alias or a
gateway-only field) the body's model change.
"""

from __future__ import annotations

from mitmproxy import http

from kaixu.call import Attempt, Call, get_call
from kaixu.estimates import input_tokens
from kaixu.formats import FormatError
from kaixu.formats.doors import front_door
from kaixu.gateway import Gateway
from kaixu.providers import split_url
from kaixu.reliability.plan import Plan
from kaixu.request_facts import decode_chat
from kaixu.respond import error_response, json_response
from kaixu.routing import (
    FORWARDED_HEADERS,
    ROUTED_OPERATIONS,
    RouteRefused,
    aim,
    candidate_targets,
    fallback_routes,
    resolve_route,
    usable_targets,
)


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
                    what = "supports tools"
                    if call.parent is not None:
                        what = "is not an agent (an agent's own model call never starts another agent)"
                    elif call.agent is not None:
                        what = "runs an agent (kind: claude-cli)"
                    raise RouteRefused(
                        400, f"no deployment of model {call.model!r} (or of its fallbacks) {what}",
                        "invalid_request_error", "tools_not_supported",
                    )  # fmt: skip
                route, targets = chain[start], usable_targets(call, chain[start].targets)
            target = self.gateway.deployments.pick(targets, call.policy.routing)
            install_id = flow.request.headers.get("x-kaixu-install-id")
            attempt = aim(call, route, target, flow.request.headers.fields, install_id, self.gateway.mock_url,
                          fallback=start > 0)  # fmt: skip
        except RouteRefused as refused:
            if refused.refused_by is not None:  # the ledger and the metrics name the deployment that refused
                call.attempts.append(refused.refused_by)
            flow.response = error_response(call, refused.status, refused.message, refused.type, refused.code)
            return
        call.attempts.append(attempt)
        if attempt.prepared is None:  # answered locally (token estimate)
            try:
                flow.response = self._count_tokens_locally(call)
            except FormatError as exc:
                flow.response = error_response(call, exc.status, str(exc), exc.type, exc.code)
            return
        # a fallback first, retries, timeouts, a queue; or a stream of a door with keep-alives (through the relay)
        if start or chain[0].guarded or (call.stream and front_door(call.front).keepalive_s is not None):
            request = flow.request
            client_fields = tuple((k, v) for k, v in request.headers.fields if k.lower() in FORWARDED_HEADERS)
            call.route.plan = Plan(chain, client_fields, request.raw_content or b"", install_id, start)
        self._rewrite(flow, call, attempt)
        call.route.routed = True

    def _rewrite(self, flow: http.HTTPFlow, call: Call, attempt: Attempt) -> None:
        prepared = attempt.prepared
        assert prepared is not None
        request = flow.request
        request.scheme, request.host, request.port, request.path = split_url(prepared.url)
        request.authority = ""  # origin-form upstream, whatever form the client's request line had
        request.headers.fields = prepared.headers
        if isinstance(prepared.body, dict):
            request.content = prepared.content(b"")  # sets content-length

    def _count_tokens_locally(self, call: Call) -> http.Response:
        decode_chat(call)  # a body that is not a chat request is a 400 (FormatError), not an estimate
        tokens = input_tokens(call)
        body = {front_door(call.front).count_tokens_field: tokens}
        return json_response(call, 200, body, {"x-kaixu-estimate": "true"})
