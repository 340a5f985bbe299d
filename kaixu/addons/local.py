"""Endpoints kaixu answers itself for an authenticated caller: the model list (in the shape of the SDK
asking: `FrontDoor.model_list`; only the models the caller may call, kaixu/permission.py) and a door's own
token check (kAIxu Gate's `GET /v1/health`)."""

from __future__ import annotations

from mitmproxy import http

from kaixu.call import Call, get_call
from kaixu.formats.doors import front_door
from kaixu.gateway import Gateway
from kaixu.permission import model_refusal
from kaixu.respond import error_response, json_response


class Local:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is not None:
            return
        if call.operation == "models":
            flow.response = self.models(call)
        elif call.operation == "model":
            flow.response = self.model(call)
        elif call.operation == "health":
            health = front_door(call.front).health_body
            if health is not None:
                policy = call.policy
                key_configured = any(p.has_key for p in policy.providers.values())
                body = health(key_configured, bool(policy.keys), policy.anonymous)
                flow.response = json_response(call, 200, body)

    def models(self, call: Call) -> http.Response:
        """The models the caller may call: the one permission rule (key, team and `policies[]`) that routing reads,
        so the list never offers a model the caller then gets a 403 for."""
        names = [m for m in call.policy.listed_models() if model_refusal(call, m) is None]
        entries = [self._entry(call, m) for m in names]
        return json_response(call, 200, front_door(call.front).model_list(entries, names, call.policy.default_model))

    def model(self, call: Call) -> http.Response:
        """One model, in the same shape as an entry of the list; 404 for one the caller may not use."""
        name = call.model or ""
        if name not in call.policy.models or model_refusal(call, name) is not None:
            return error_response(call, 404, f"model {name!r} is not served by this gateway", "not_found_error",
                                  "model_not_found")  # fmt: skip
        return json_response(call, 200, self._entry(call, name))

    def _entry(self, call: Call, name: str) -> dict[str, object]:
        """A model as the SDK asking describes one."""
        return front_door(call.front).model_entry(name, int(self.gateway.started_at), self._owner(call, name))

    @staticmethod
    def _owner(call: Call, model: str) -> str:
        route = call.policy.models.get(model)
        return route.targets[0].provider if route else "kaixu"
