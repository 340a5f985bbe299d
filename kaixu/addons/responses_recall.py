"""The Responses API's stored responses, on the request side: a request with `previous_response_id` gets the
conversation it continues (the stored input and output items of each earlier response, oldest first) put before
its own input, whatever provider serves it; one whose answer is to be kept (`store` not false) is marked for the
keeper step (kaixu/addons/responses_keeper.py); `GET`/`DELETE /v1/responses/{id}` and `GET .../input_items` are
answered from the store. Everything is scoped to the hash of the caller's key: another key finds nothing (404).

Runs after the body is read (the caller is known) and before the policy, rate-limit and routing steps, which then
see the whole conversation (its size is what they estimate and what the provider bills)."""

from __future__ import annotations

import json
from collections.abc import Awaitable

from mitmproxy import http

from kaixu.call import Call, Turn, get_call
from kaixu.credentials import key_hash, presented_key
from kaixu.formats import FormatError, responses
from kaixu.formats.doors import front_door
from kaixu.gateway import Gateway
from kaixu.respond import error_response, json_response
from kaixu.store.responses import Kept


def _scope(flow: http.HTTPFlow) -> str:
    """Whose stored responses a request may see: its key's (the hash; an anonymous caller's are all one's)."""
    return key_hash(presented_key(flow.request) or "")


class ResponsesRecall:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        call = get_call(flow)
        if call is None or flow.response is not None:
            return None
        if call.operation in ("stored_response", "stored_input_items"):
            return self._serve(flow, call)
        if call.operation != "chat" or not front_door(call.front).stores_answers or call.body is None:
            return None
        previous = call.body.get("previous_response_id")
        if previous is None and call.body.get("store") is False:
            return None  # nothing to continue, nothing to keep (Codex CLI)
        if self._provider_keeps(call):
            return None  # OpenAI itself continues its own responses (`keeps_responses`)
        return self._recall(flow, call, previous)

    @staticmethod
    def _provider_keeps(call: Call) -> bool:
        """Every deployment of the model is a Responses provider that keeps its own responses."""
        route = call.policy.resolve_model(call.model) if call.model else None
        providers = call.policy.providers
        return route is not None and all(providers[t.provider].keeps_responses for t in route.targets)

    def _kept(self, flow: http.HTTPFlow, call: Call) -> Kept | None:
        stores = self.gateway.stores
        if stores is None:
            flow.response = error_response(call, 503, "the store is not open yet", "api_error", "store_unavailable")
            return None
        return stores.responses

    async def _recall(self, flow: http.HTTPFlow, call: Call, previous: object) -> None:
        assert call.body is not None
        try:
            own = responses.own_input(call.body.get("input"))
        except FormatError as exc:
            flow.response = error_response(call, 400, str(exc), "invalid_request_error", "invalid_field")
            return
        scope = _scope(flow)
        if previous is not None:
            if not isinstance(previous, str):
                flow.response = error_response(call, 400, "previous_response_id: must be a string",
                                               "invalid_request_error", "invalid_field")  # fmt: skip
                return
            kept = self._kept(flow, call)
            if kept is None:
                return
            chain = await kept.chain(previous, scope)
            if chain is None:
                flow.response = error_response(call, 400, f"previous_response_id: no response with id {previous!r}",
                                               "invalid_request_error", "previous_response_not_found")  # fmt: skip
                return
            turns = [(json.loads(stored.input), json.loads(stored.response)) for stored in chain]
            body = {k: v for k, v in call.body.items() if k != "previous_response_id"}
            body["input"] = responses.history(turns) + own
            call.body = body
            call.decoded, call.input_tokens = None, None  # what was read of the body before is read again
            # the router forwards these bytes when nothing else changes, and re-reads `call.body` when it translates
            flow.request.content = json.dumps(body, separators=(",", ":")).encode()
        if call.body.get("store") is not False:
            call.turn = Turn(scope, own, previous if isinstance(previous, str) else None)

    async def _serve(self, flow: http.HTTPFlow, call: Call) -> None:
        kept = self._kept(flow, call)
        if kept is None:
            return
        response_id, scope = call.resource or "", _scope(flow)
        if flow.request.method == "DELETE":
            if await kept.delete(response_id, scope):
                flow.response = json_response(call, 200, {"id": response_id, "object": "response", "deleted": True})
                return
        else:
            stored = await kept.get(response_id, scope)
            if stored is not None:
                body = json.loads(stored.response)
                if call.operation == "stored_input_items":
                    body = responses.listed_items(json.loads(stored.input), response_id)
                flow.response = json_response(call, 200, body)
                return
        flow.response = error_response(call, 404, f"no response with id {response_id!r}", "invalid_request_error",
                                       "response_not_found")  # fmt: skip
