"""Step 4: may the caller call the model it names, and the per-caller rules of `policies:` (Pulse's policies): a
cap on a request's tokens (refuse, or lower the requested output to fit), and shadow mode.

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
from typing import Any

from mitmproxy import http

from kaixu.addons.router import ROUTED_OPERATIONS, decode_chat
from kaixu.call import Call, get_call
from kaixu.config.policy import CallerPolicy
from kaixu.formats import FormatError, estimate_tokens, json_type
from kaixu.log import safe
from kaixu.metrics import POLICY_SHADOW_REFUSALS
from kaixu.permission import match_facts, model_refusal
from kaixu.respond import error_response

log = logging.getLogger("kaixu.policy")


def _config(parents: tuple[str, ...], *names: str) -> tuple[tuple[str, str], ...]:
    """Each of `names` under each of `parents`: Gemini's REST API reads camelCase and snake_case alike."""
    return tuple((parent, name) for parent in parents for name in names)


_GEMINI = ("generationConfig", "generation_config")
_GATE = ("generationConfig", "config")  # kAIxu Gate's alias of generationConfig (its keys go to Gemini's codec)

#: Where each front door's body asks for a maximum of output tokens (every spelling a provider reads), in the
#: order a clamp prefers them.
OUTPUT_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "openai": (("max_completion_tokens",), ("max_tokens",)),
    "anthropic": (("max_tokens",),),
    "gemini": _config(_GEMINI, "maxOutputTokens", "max_output_tokens"),
    "kaixu_gate": _config(_GATE, "maxOutputTokens", "max_output_tokens"),
    "gateway13": (("max_tokens",),),
    "pulse": (("maxTokens",),),
}
#: Where a body asks for several answers to one request, each generated and billed as output: OpenAI's `n`
#: (and `best_of`, which OpenAI-compatible servers such as vLLM take), Gemini's `candidateCount`. Anthropic's
#: and the other seeds' bodies have none (the seeds' requests are rebuilt, so nothing else reaches a provider).
ANSWER_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "openai": (("n",), ("best_of",)),
    "gemini": _config(_GEMINI, "candidateCount", "candidate_count"),
    "kaixu_gate": _config(_GATE, "candidateCount", "candidate_count"),
}


class Size:
    """A request's size in tokens, estimated once however many rules ask: the input (the canonical request's
    `estimate_tokens`, or bytes / 4 when it cannot be decoded) and the output the client asked for."""

    def __init__(self, call: Call, raw: bytes) -> None:
        assert call.body is not None
        try:
            request = decode_chat(call)
        except FormatError:  # the router refuses it with the reason; the size is only an upper bound here
            self.input, self.output = (len(raw) + 3) // 4, requested_output(call.front, call.body)
        else:
            self.input, self.output = estimate_tokens(request), request.max_tokens
            if self.output is None:
                self.output = requested_output(call.front, call.body)

    @property
    def total(self) -> int:
        return self.input + (self.output or 0)


def _field(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = body
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    return value


def _ints(body: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> list[int]:
    return [v for path in paths if isinstance(v := _field(body, path), int) and not isinstance(v, bool)]


def requested_output(front: str, body: dict[str, Any]) -> int | None:
    """The most output tokens the body asks for, per answer (the largest, if it spells the limit twice)."""
    return max(_ints(body, OUTPUT_FIELDS.get(front, ())), default=None)


def requested_answers(front: str, body: dict[str, Any]) -> int:
    """How many answers the body asks for (1 unless it says `n`, `candidateCount`...): each costs its output."""
    return max(_ints(body, ANSWER_FIELDS.get(front, ())), default=1)


def output_limit_problem(front: str, body: dict[str, Any]) -> str | None:
    """What is wrong with a chat body's output limits and answer counts, naming the field, or None: each must
    be a positive integer. Why refused, not forwarded: OpenAI-compatible servers (llama.cpp, Ollama) read a
    `max_tokens` of -1 as no limit at all, and a count kaixu cannot read is a cost it cannot bound."""
    for path in (*OUTPUT_FIELDS.get(front, ()), *ANSWER_FIELDS.get(front, ())):
        value = _field(body, path)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            small = isinstance(value, int) and not isinstance(value, bool) and value > -(10**9)
            shown = str(value) if small else json_type(value)
            return f"{'.'.join(path)}: must be a positive integer, got {shown}"
    return None


def clamp_output(front: str, body: dict[str, Any], limit: int) -> None:
    """Lower every output-token field the body sets above `limit` to `limit`; a body that sets none gets the
    door's own field (under a parent object it already has, so no other setting moves)."""
    paths = OUTPUT_FIELDS.get(front, ())
    present = [path for path in paths if _field(body, path) is not None]
    if not present:
        chosen = next((p for p in paths if len(p) == 1 or isinstance(body.get(p[0]), dict)), paths[0])
        present = [chosen]
    for path in present:
        parent = body
        for name in path[:-1]:
            if not isinstance(parent.get(name), dict):
                parent[name] = {}
            parent = parent[name]
        value = parent.get(path[-1])
        if not isinstance(value, int) or isinstance(value, bool) or value > limit:
            parent[path[-1]] = limit


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
                continue
            if not rule.enforce:
                self._shadow(call, rule, refusal or f"would lower the requested output to {clamp_to} tokens")
                continue
            if refusal is not None:
                flow.response = error_response(call, 403, refusal, "permission_error", "policy_violation")
                return
            assert call.body is not None and size is not None and clamp_to is not None
            clamp_output(call.front, call.body, clamp_to)
            size.output, clamped = clamp_to, True
        if clamped:
            # the router forwards these bytes when nothing else changes, and re-reads `call.body` when it translates
            flow.request.content = json.dumps(call.body, separators=(",", ":")).encode()

    @staticmethod
    def _shadow(call: Call, rule: CallerPolicy, what: str) -> None:
        """Shadow mode (`enforce: false`): the request goes on; a log line, the counter, the ledger's mark."""
        log.warning("request %s: policy %s (shadow mode, not enforced): %s", call.request_id, safe(rule.name),
                    safe(what))  # fmt: skip
        POLICY_SHADOW_REFUSALS.inc((rule.name,))
        call.caller.shadow_refusals.append(rule.name)
        call.caller.attributes["policy_shadow"] = ",".join(call.caller.shadow_refusals)[:200]
