"""The budgets step: budgets. Before a request leaves, an upper bound of its cost is reserved on every budget it counts
against (key, end customer, team, org, the day caps of matching policies: `kaixu/limits/levels.py`), all or
none, in one atomic operation; after the answer the reservation is settled to the real cost, or released when
nothing was spent (`Governor.finish`). So however many requests and replicas race, a budget is overspent by at
most one request's cost above its reservation, and that only when the bound below was wrong.

The bound: input tokens (the request's one estimate, `kaixu/estimates.py` `input_tokens`, which the policy step's
token caps compare too) plus the output the client asked for (at most the model's
`max_output_tokens` when its price entry has one; that, or `DEFAULT_MAX_OUTPUT`, when it set none) times the
answers it asks for (`n`, `candidateCount`: each is generated and billed), output priced at the higher of the
output and reasoning rates, input at the higher of the input and cache-write rates. A model without a price
cannot be bounded: it is admitted only one request at a time per budget (a slot), and reserves nothing (the
router already refused it under `pricing.require`). The body step refused output limits the bound cannot
read (`max_tokens: -1`...).

Over budget: 402 when it is spent (settled spend plus this bound passes the cap), with the level, the cap, what
is spent and when the period resets, in the caller's shape (Kaixu Gateway 13's own `{error, scope, month}` body
at its door); 429 `budget_in_flight` with `Retry-After: 1` when it is only held by requests in flight, which
settle in a moment (402 means spent: a client does not retry it). Policies in shadow mode (`enforce: false`)
hold their own reservation, which never refuses: what it would have refused is logged and counted.

Why after the router: the bound needs the price of what is served (`call.price`), which the router looks
up; the request leaves in the dispatch step after this one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from mitmproxy import http

from kaixu.call import Call, get_call
from kaixu.estimates import input_tokens as estimated_input
from kaixu.formats.canonical import Usage
from kaixu.formats.doors import front_door
from kaixu.formats.seeds import MonthRollup
from kaixu.gateway import Gateway
from kaixu.limits import CountersUnavailable, Refusal, Reservation
from kaixu.limits.governor import TTL_MARGIN_S, Governor, eagerly, unavailable
from kaixu.limits.levels import BudgetLevel, budget_levels
from kaixu.log import safe
from kaixu.metrics import GOVERNANCE_REFUSALS, POLICY_SHADOW_REFUSALS
from kaixu.permission import match_facts
from kaixu.pricing import Price, cost_micros, usd
from kaixu.pricing import cents as to_cents
from kaixu.request_facts import end_customer, requested_answers, requested_output
from kaixu.respond import error_json, json_response
from kaixu.routing import reachable_targets

log = logging.getLogger("kaixu.budgets")

DEFAULT_MAX_OUTPUT = 32_768
"""Output tokens reserved for a request that sets no maximum: above what most models answer by default."""


def plan_prices(call: Call) -> list[Price]:
    """The prices of every deployment the request's attempt plan may be served by (an unpriced one adds none:
    its cost cannot be bounded): the plan holds only models the caller may call, and of each model the
    deployments an attempt may be aimed at (the executor's `reachable_targets`)."""
    plan = call.route.plan
    if plan is None:
        return []
    policy = call.policy
    prices = []
    for index, route in enumerate(plan.routes):
        for target in reachable_targets(call, route, fallback=index > 0):
            model = target.model or (route.name if index else call.model) or ""
            found = policy.pricing.table.lookup(policy.providers[target.provider].kind, model)
            if found is not None:
                prices.append(found)
    return prices


def upper_bound(call: Call, price: Price, raw: bytes) -> int:
    """The most this request can cost, in micro-dollars (see the module docstring)."""
    body = call.body or {}
    input_tokens = estimated_input(call, raw)
    canonical = call.canonical
    output = canonical.max_tokens if canonical is not None else requested_output(call.front, body)
    if call.operation != "chat":
        output = 0
    else:
        cap = price.max_output_tokens  # the model's own limit, when its price entry says it
        output = (cap or DEFAULT_MAX_OUTPUT) if output is None else min(output, cap or output)
        output *= requested_answers(call.front, body)  # `n`, `candidateCount`: each answer is billed
    rates = price.rates_for(input_tokens)
    reasoning = (
        output if rates.reasoning is not None and rates.output is not None and rates.reasoning > rates.output else 0
    )
    written = input_tokens if rates.cache_write_5m is not None and rates.cache_write_5m > rates.input else 0
    usage = Usage(input_tokens=input_tokens, output_tokens=output, cache_creation_input_tokens=written,
                  reasoning_tokens=reasoning)  # fmt: skip
    bound = cost_micros(price, usage)
    return 0 if bound is None else bound


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class Budgets:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def request(self, flow: http.HTTPFlow) -> object:
        call = get_call(flow)
        if call is None or flow.response is not None or not call.route.routed or call.operation == "count_tokens":
            return None
        policy = call.policy
        key = call.caller.key
        day_caps = [
            (rule.name, rule.max_cost_per_day, rule.enforce)
            for rule in policy.policies
            if rule.max_cost_per_day is not None and rule.applies(*match_facts(call))
        ]
        if not day_caps and (key is None or (key.budget is None and not key.team)) and not policy.customers:
            return None  # the cheap exit: nothing this request could count against
        levels = budget_levels(policy, key, end_customer(call), day_caps, time.time())
        if not levels:
            return None
        return eagerly(self.gateway.governor, self._reserve(flow, call, levels))

    async def _reserve(self, flow: http.HTTPFlow, call: Call, levels: list[BudgetLevel]) -> None:
        await self._hold(flow, call, levels)
        if flow.response is not None:
            call.route.routed = False  # refused here: nothing left kaixu, the answer is kaixu's own (not settled)

    async def _hold(self, flow: http.HTTPFlow, call: Call, levels: list[BudgetLevel]) -> None:
        governor = await self.gateway.governor_ready()
        if governor is None:
            unavailable(flow, call, None, None)
            return
        price = call.price
        raw = flow.request.raw_content or b""
        amount = 0 if price is None else upper_bound(call, price, raw)
        if call.route.plan is not None:  # a retry or a fallback may be served by a dearer deployment
            amount = max([amount, *(upper_bound(call, p, raw) for p in plan_prices(call))])
        ttl = call.policy.upstream_timeout_s + TTL_MARGIN_S
        enforced = [level for level in levels if level.enforce]
        shadow = [level for level in levels if not level.enforce]
        governance = call.governance
        try:
            if price is None and not await self._one_at_a_time(call, governor, levels, ttl):
                self._refuse_unpriced(flow, call)
                return
            if enforced:
                held = await governor.counters.reserve(
                    [lv.scope for lv in enforced], amount, [lv.budget.usd_micros for lv in enforced], ttl
                )
                if isinstance(held, Refusal):  # what it holds (unpriced slots) goes back at its end, as always
                    await self._refuse(flow, call, governor, enforced, held)
                    return
                governance.reservation = held
                for level in enforced:
                    cap = f"{usd(level.budget.usd_micros)} per {level.budget.period}"
                    call.verdict(
                        "budget", f"{level.level} {level.name}", "reserved", f"{usd(amount)} USD held of {cap}"
                    )
                if call.policy.alerts.budget_percent is not None:
                    governance.watched = [
                        (lv.scope, lv.budget.usd_micros, lv.level, lv.name, lv.budget.period) for lv in enforced
                    ]
            if shadow:
                await self._shadow(call, governor, shadow, amount, ttl)
            if call.seed_context is not None and front_door(call.front).month_rollup:
                await self._month(call, governor, levels)
        except CountersUnavailable as e:
            unavailable(flow, call, governor, e)

    async def _one_at_a_time(self, call: Call, governor: Governor, levels: list[BudgetLevel], ttl: float) -> bool:
        """An unpriced model: one request in flight per budget (`unpriced:` slots, freed at its end)."""
        for level in levels:
            if not level.enforce:
                continue
            slot = await governor.counters.acquire_slot(f"unpriced:{level.scope}", 1, ttl)
            if slot is None:
                return False
            call.governance.slots.append(slot)
        return True

    async def _shadow(self, call: Call, governor: Governor, levels: list[BudgetLevel], amount: int, ttl: float) -> None:
        """Each policy in shadow mode reserves alone, so its verdict is its own and never refuses."""
        for level in levels:
            held = await governor.counters.reserve([level.scope], amount, [level.budget.usd_micros], ttl)
            if isinstance(held, Reservation):
                call.governance.shadow_reservations.append(held)
                call.verdict("budget", f"{level.level} {level.name}", "shadow", f"within its {level.budget.period} cap")
                continue
            call.verdict("budget", f"{level.level} {level.name}", "shadow", "would refuse: its cap is spent")
            log.warning("request %s: policy %s (shadow mode, not enforced): its day cap of %s USD is spent",
                        call.request_id, safe(level.name), usd(level.budget.usd_micros))  # fmt: skip
            POLICY_SHADOW_REFUSALS.inc((level.name,))
            call.caller.shadow_refusals.append(level.name)
            call.caller.attributes["policy_shadow"] = ",".join(call.caller.shadow_refusals)[:200]

    async def _month(self, call: Call, governor: Governor, levels: list[BudgetLevel]) -> None:
        """The `month` object of a door that shows it (`FrontDoor.month_rollup`: Kaixu Gateway 13's), from the key's
        and the customer's monthly budgets."""
        assert call.seed_context is not None
        cents: dict[str, tuple[float, float]] = {}
        for level in levels:
            if level.level in ("key", "customer") and level.budget.period == "month":
                spent = await governor.counters.spent(level.scope)
                cents[level.level] = (to_cents(level.budget.usd_micros), to_cents(spent))
        key_cap, key_spent = cents.get("key", (0, 0))
        customer_cap, customer_spent = cents.get("customer", (key_cap, key_spent))
        month = MonthRollup(customer_cap_cents=customer_cap, customer_spent_cents=customer_spent,
                            key_cap_cents=key_cap, key_spent_cents=key_spent)  # fmt: skip
        # the month is the admitted attempt's, shown with its answer (a later attempt is aimed without it)
        served = call.served
        assert served is not None and served.seed_context is not None
        call.attempts[-1] = replace(served, seed_context=replace(served.seed_context, month=month))

    @staticmethod
    def _refuse_unpriced(flow: http.HTTPFlow, call: Call) -> None:
        GOVERNANCE_REFUSALS.inc(("unpriced_in_flight",))
        model = call.served.model if call.served is not None else None
        message = (
            f"model {model!r} has no price, so its cost cannot be bounded: a budget admits one such "
            "request at a time, and one is in flight; retry when it ends"
        )
        body = error_json(call.front, call.request_id, 429, message, "rate_limit_error", "unpriced_in_flight")
        flow.response = json_response(call, 429, body, {"retry-after": "1"})

    async def _refuse(
        self, flow: http.HTTPFlow, call: Call, governor: Governor, enforced: list[BudgetLevel], refusal: Refusal
    ) -> None:
        """402 when a budget is spent: what it has spent leaves no room for this request. Else the budget is only
        held by requests in flight, which settle in a moment to what they really cost (usually far less than
        they hold): 429 with a short Retry-After, unless a later level is spent (the reservation, all or none,
        stopped at the first level over its cap)."""
        at = next(i for i, lv in enumerate(enforced) if lv.scope == refusal.scope)
        level = enforced[at]
        shown = (
            f"{usd(refusal.spent_micros)} USD spent, {usd(refusal.amount_micros)} asked, cap {usd(refusal.cap_micros)}"
        )
        call.verdict("budget", f"{level.level} {level.name}", "refused", shown)
        if refusal.spent_micros + refusal.amount_micros > refusal.cap_micros:
            self._answer(flow, call, enforced[at], refusal, in_flight=False)
            return
        for level in enforced[at + 1 :]:
            spent = await governor.counters.spent(level.scope)
            if spent + refusal.amount_micros > level.budget.usd_micros:
                reserved = await governor.counters.reserved(level.scope)
                spent_refusal = Refusal(level.scope, level.budget.usd_micros, spent, reserved, refusal.amount_micros)
                self._answer(flow, call, level, spent_refusal, in_flight=False)
                return
        self._answer(flow, call, enforced[at], refusal, in_flight=True)

    @staticmethod
    def _answer(flow: http.HTTPFlow, call: Call, level: BudgetLevel, refusal: Refusal, *, in_flight: bool) -> None:
        """The refusal, in the caller's shape, with a `budget` object whose `reason` says which: `spent` (402)
        or `in_flight` (429, `Retry-After: 1`: not a rate limit, the budget is held by requests in flight)."""
        GOVERNANCE_REFUSALS.inc(("budget_in_flight" if in_flight else "budget",))
        spent, cap = refusal.spent_micros + refusal.reserved_micros, refusal.cap_micros
        period = "in total" if level.budget.period == "total" else f"this {level.budget.period}"
        held = f"{usd(refusal.reserved_micros)} held by requests in flight"
        asked = f"this request may cost up to {usd(refusal.amount_micros)} USD"
        if in_flight:
            message = (
                f"budget held by requests in flight: {level.level} {level.name!r} has spent "
                f"{usd(refusal.spent_micros)} of {usd(cap)} USD {period} and {held}; {asked}: retry in 1 s, "
                "when they have settled"
            )
        else:
            message = (
                f"budget exhausted: {level.level} {level.name!r} has spent {usd(refusal.spent_micros)} of "
                f"{usd(cap)} USD {period}"
                + (f" ({held})" if refusal.reserved_micros else "")
                + (f"; {asked}" if refusal.spent_micros < cap else "")
                + (f"; it resets at {_iso(level.resets_at)}" if level.resets_at is not None else "")
            )
        detail: dict[str, Any] = {
            "reason": "in_flight" if in_flight else "spent",
            "level": level.level,
            "name": level.name,
            "period": level.budget.period,
            "cap_usd": usd(cap),
            "spent_usd": usd(refusal.spent_micros),
            "reserved_usd": usd(refusal.reserved_micros),
            "request_reserve_usd": usd(refusal.amount_micros),
            "resets_at": _iso(level.resets_at),
        }
        body: dict[str, Any]
        if in_flight:
            body = error_json(call.front, call.request_id, 429, message, "rate_limit_error", "budget_in_flight")
            body["budget"] = detail
            flow.response = json_response(call, 429, body, {"retry-after": "1"})
            return
        door = front_door(call.front)
        if door.budget_body is not None:  # the door's own 402 (Gateway 13's `{error, scope, month}`)
            month = call.seed_context.month if call.seed_context is not None else None
            body = door.budget_body(level.level, cap, spent, month)
            body["budget"] = detail
            body["request_id"] = call.request_id
        else:  # each vendor's 402 type, in the door's error shape
            body = error_json(call.front, call.request_id, 402, message, door.quota_error_type, "budget_exceeded")
            body["budget"] = detail
        flow.response = json_response(call, 402, body)
