"""The rate_limits step: requests and tokens per minute and requests in flight, per key, team, end customer,
or client IP for a request without a key (`kaixu/limits/levels.py`); over a limit -> 429 with `Retry-After`.

Why before the router: these limits need no price or route, and a refused request should cost kaixu as
little as possible (no translation, no body encoding). The budget, which needs the route's price, is the
step after the router (`kaixu/addons/budgets.py`).

How each limit counts (kaixu/limits, one atomic operation each, shared by every replica on Redis):
- rpm: the request is counted in the current minute's window, and refused without being counted when full;
- tpm: the request is admitted while the minute's window has tokens left; its real tokens are counted when
  its usage is known (`Governor.finish`), so the window can pass its limit by the last request's tokens;
- max_parallel: a slot is held until the answer ends (or lapses after the upstream timeout, if a process dies).
Every window and slot of every level is one `admit`, all or nothing: a request refused by one level is
counted in none.

Every answer to a caller with a limit carries the node gateway's `X-RateLimit-*` and OpenAI's `x-ratelimit-*`
headers for the tightest window.
"""

from __future__ import annotations

import math

from mitmproxy import http

from kaixu.call import Call, get_call
from kaixu.gateway import Gateway
from kaixu.limits import CountersUnavailable, Window
from kaixu.limits.governor import MINUTE_S, TTL_MARGIN_S, eagerly, tighter, unavailable
from kaixu.limits.levels import RateLevel, rate_levels
from kaixu.metrics import GOVERNANCE_REFUSALS
from kaixu.request_facts import end_customer
from kaixu.respond import add_headers, error_response
from kaixu.routing import ROUTED_OPERATIONS


def _who(level: RateLevel) -> str:
    return "this client address" if level.level == "client" else f"{level.level} {level.name!r}"


def _level(level: RateLevel) -> str:
    """The level as the ledger's verdicts name it (`key demo`, `team growth`), like the budgets'."""
    return "client address" if level.level == "client" else f"{level.level} {level.name}"


class RateLimits:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def request(self, flow: http.HTTPFlow) -> object:
        call = get_call(flow)
        if call is None or flow.response is not None or call.operation not in ROUTED_OPERATIONS:
            return None
        key = call.caller.key
        policy = call.policy
        if key is None and policy.clients is None and not policy.customers:
            return None  # nothing to count (the cheap exit of a policy without limits)
        if key is not None and key.limits is None and not policy.customers:
            team = policy.teams.get(key.team) if key.team else None
            if team is None or team.limits is None:
                return None
        peer = flow.client_conn.peername
        levels = rate_levels(policy, key, end_customer(call), peer[0] if peer else None)
        if not levels:
            return None
        return eagerly(self.gateway.governor, self._admit(flow, call, levels))

    async def _admit(self, flow: http.HTTPFlow, call: Call, levels: list[RateLevel]) -> None:
        governor = await self.gateway.governor_ready()
        if governor is None:
            unavailable(flow, call, None, None)
            return
        windows: list[Window] = []
        counted: list[tuple[RateLevel, str]] = []
        slots: list[tuple[str, int]] = []
        capped: list[RateLevel] = []
        for level in levels:
            limits = level.limits
            if limits.rpm is not None:
                windows.append(Window(f"{level.scope}:rpm", MINUTE_S, limits.rpm))
                counted.append((level, "rpm"))
            if limits.tpm is not None:  # asks only whether tokens are left: the answer's tokens count at its end
                windows.append(Window(f"{level.scope}:tpm", MINUTE_S, limits.tpm, 0))
                counted.append((level, "tpm"))
            if limits.max_parallel is not None:
                slots.append((f"{level.scope}:parallel", limits.max_parallel))
                capped.append(level)
        ttl = call.policy.upstream_timeout_s + TTL_MARGIN_S
        try:
            answer = await governor.counters.admit(windows, slots, ttl)
        except CountersUnavailable as e:
            unavailable(flow, call, governor, e)
            return
        governance = call.governance
        for hit, (_, kind) in zip(answer.hits, counted, strict=True):
            if kind == "rpm":
                governance.requests = tighter(governance.requests, hit)
            else:
                governance.tokens = tighter(governance.tokens, hit)
        refused = answer.refused
        if refused is None:
            for level in levels:
                limits = level.limits
                named = (("rpm", limits.rpm), ("tpm", limits.tpm), ("in flight", limits.max_parallel))
                shown = ", ".join(f"{value} {name}" for name, value in named if value is not None)
                call.verdict("rate limit", _level(level), "counted", shown)
            governance.slots = list(answer.slots)
            tpm = [w for w, (_, kind) in zip(windows, counted, strict=True) if kind == "tpm"]
            governance.token_scopes = [(w.scope, w.limit) for w in tpm]
        elif refused < len(windows):
            level, kind = counted[refused]
            limit = level.limits.rpm if kind == "rpm" else level.limits.tpm
            what = f"{limit} requests per minute" if kind == "rpm" else f"{limit} tokens per minute"
            self._refuse(flow, call, what, level, answer.hits[refused].reset_ms, kind)
        else:
            level = capped[refused - len(windows)]
            self._refuse(flow, call, f"{level.limits.max_parallel} requests in flight at once", level, 1000, "parallel")

    @staticmethod
    def _refuse(flow: http.HTTPFlow, call: Call, what: str, level: RateLevel, reset_ms: int, reason: str) -> None:
        retry = max(1, math.ceil(reset_ms / 1000))
        GOVERNANCE_REFUSALS.inc((reason,))
        message = f"rate limit reached: {what} for {_who(level)}; retry in {retry} s"
        call.verdict("rate limit", _level(level), "refused", message)
        headers = {"retry-after": str(retry), **call.governance.rate_headers()}
        call.governance.headers_sent = True
        flow.response = error_response(call, 429, message, "rate_limit_error", "rate_limit_exceeded", headers)

    # The headers, on every answer to a caller with a limit: the provider's (in responseheaders, before a stream
    # starts) or kaixu's own (a refusal of a later step, in response).

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._headers(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._headers(flow)

    @staticmethod
    def _headers(flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is None:
            return
        governance = call.governance
        if governance.headers_sent or (governance.requests is None and governance.tokens is None):
            return
        governance.headers_sent = True
        add_headers(flow.response, governance.rate_headers())
