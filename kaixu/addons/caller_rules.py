"""The caller_rules step: may the caller call the model it names, and the per-caller rules of `policies:`
(Pulse's policies): a cap on a request's tokens (refuse, or lower the requested output to fit), and shadow mode.

Why here, after the body and before the router: a rule reads the requested model and the body's size, and a
clamp must change the body in the client's own format before the router encodes it (or forwards its bytes).
Nothing a rule refuses leaves kaixu. Which models a caller may call is one rule (kaixu/permission.py: the
policies' allowed and denied models, the key's and its team's `models`), which the router applies to every
fallback too. The token caps were compiled when the policy loaded (`CallerPolicy`); a request walks them in file
order and the first enforcing refusal answers it (403, in the caller's shape).

`max_cost_per_day` is a day budget, held by the budget step (kaixu/addons/budgets.py).
"""

from __future__ import annotations

import json
import logging

from mitmproxy import http

from kaixu.call import Call, get_call
from kaixu.config.policy import CallerPolicy
from kaixu.estimates import Size
from kaixu.log import safe
from kaixu.metrics import POLICY_SHADOW_REFUSALS
from kaixu.permission import match_facts, model_refusal
from kaixu.request_facts import clamp_output
from kaixu.respond import error_response
from kaixu.routing import ROUTED_OPERATIONS

log = logging.getLogger("kaixu.policy")


def tokens_refusal(rule: CallerPolicy, size: Size) -> str:
    asked = "no maximum" if size.output is None else f"up to {size.output}"
    return (
        f"Request of about {size.total} tokens (about {size.input} of input, {asked} of output) exceeds the "
        f'limit of {rule.max_tokens_per_request} tokens per request set by policy "{rule.name}"'
    )


class CallerRules:
    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is not None:
            return
        if call.operation not in ROUTED_OPERATIONS or call.model is None:
            return
        denied = model_refusal(call, call.model, lambda rule, what: self._shadow(call, rule, what))
        if denied is not None:
            call.verdict("model access", call.model, "refused", denied.message)
            flow.response = error_response(call, 403, denied.message, "permission_error", denied.code)
            return
        if not call.policy.policies:
            return
        who = match_facts(call)
        size: Size | None = None
        clamped = False
        for rule in call.policy.policies:
            cap = rule.max_tokens_per_request
            if cap is None or not rule.applies(*who):
                continue
            refusal: str | None = None
            clamp_to: int | None = None
            if call.operation == "chat" and call.body is not None:
                size = size or Size(call, flow.request.raw_content or b"")
                clamping = rule.on_max_tokens == "clamp"
                # no maximum asked: `reject` counts the input alone; `clamp` sets one, so the cap holds anyway
                if size.total > cap or (clamping and size.output is None):
                    if clamping and size.input < cap:
                        clamp_to = cap - size.input
                    else:
                        refusal = tokens_refusal(rule, size)
            if refusal is None and clamp_to is None:
                call.verdict("policy", rule.name, "allowed", f"within {cap} tokens per request")
                continue
            if not rule.enforce:
                self._shadow(call, rule, refusal or f"would lower the requested output to {clamp_to} tokens")
                continue
            if refusal is not None:
                call.verdict("policy", rule.name, "refused", refusal)
                flow.response = error_response(call, 403, refusal, "permission_error", "policy_violation")
                return
            assert call.body is not None and size is not None and clamp_to is not None
            clamp_output(call, clamp_to)
            size.output, clamped = clamp_to, True
            call.verdict("policy", rule.name, "clamped", f"requested output lowered to {clamp_to} tokens")
        if clamped:
            # the router forwards these bytes when nothing else changes, and re-reads `call.body` when it translates
            flow.request.content = json.dumps(call.body, separators=(",", ":")).encode()

    @staticmethod
    def _shadow(call: Call, rule: CallerPolicy, what: str) -> None:
        """Shadow mode (`enforce: false`): the request goes on; a log line, the counter, the ledger's mark."""
        log.warning("request %s: policy %s (shadow mode, not enforced): %s", call.request_id, safe(rule.name),
                    safe(what))  # fmt: skip
        POLICY_SHADOW_REFUSALS.inc((rule.name,))
        call.verdict("policy", rule.name, "shadow", what)
        call.caller.shadow_refusals.append(rule.name)
        call.caller.attributes["policy_shadow"] = ",".join(call.caller.shadow_refusals)[:200]
