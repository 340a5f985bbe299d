"""Which budgets and limits a request answers to, and the counter scopes that hold them.

The hierarchy is org -> team -> key, plus the end customer (named, or `customers.default`), the client IP for
requests without a key, and the day caps of the `policies[]` that match the caller. Every level that carries a
budget or a limit applies: a request is admitted only if it fits all of them, so the tightest one decides.

Scopes are the strings the counters keep (`kaixu/limits/__init__.py`): level, name, and for budgets the
period they count (`budget:key:web-app:month:2026-12`). A new period is a new scope, so nothing resets a
counter: the period's key moves on. Names a client chooses (customer ids, IPs) are bounded before they become
part of a scope.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import zoneinfo
from dataclasses import dataclass
from functools import lru_cache

from kaixu.config.policy import DEFAULT_CUSTOMER, Budget, Customer, Policy, RateLimits, VirtualKey

_PLAIN = re.compile(r"[A-Za-z0-9._@+-]{1,64}")


def scope_name(text: str) -> str:
    """A name as it goes into a scope: as is when short and plain, else a digest (a client's `user` field
    can be anything: it never reaches a Redis key or a SQLite row unbounded)."""
    if _PLAIN.fullmatch(text):
        return text
    return "h-" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


@lru_cache(maxsize=64)
def _zone(name: str) -> datetime.tzinfo:
    return datetime.UTC if name == "UTC" else zoneinfo.ZoneInfo(name)


_periods: dict[tuple[str, str], tuple[float, str, float]] = {}
"""(period, time zone) -> (start, key, end) of the period last computed: a request computes a calendar only
when a period has turned (the event loop is one thread: no lock needed)."""


def period(budget: Budget, now: float) -> tuple[str, float | None]:
    """The current period's key and when it ends (Unix seconds; None for `total`), in the budget's time zone:
    days start at midnight, weeks on Monday, months on the 1st."""
    if budget.period == "total":
        return "total", None
    known = _periods.get((budget.period, budget.timezone))
    if known is not None and known[0] <= now < known[2]:
        return known[1], known[2]
    key, start, end = _calendar(budget, now)
    _periods[(budget.period, budget.timezone)] = (start, key, end)
    return key, end


def _calendar(budget: Budget, now: float) -> tuple[str, float, float]:
    zone = _zone(budget.timezone)
    local = datetime.datetime.fromtimestamp(now, zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if budget.period == "day":
        key, start, end = local.strftime("%Y-%m-%d"), midnight, midnight.date() + datetime.timedelta(days=1)
    elif budget.period == "week":
        year, week, _ = local.isocalendar()
        start = midnight - datetime.timedelta(days=local.weekday())
        key, end = f"{year}-W{week:02d}", start.date() + datetime.timedelta(days=7)
    else:
        start = midnight.replace(day=1)
        key, end = local.strftime("%Y-%m"), (start.date() + datetime.timedelta(days=32)).replace(day=1)
    ends = datetime.datetime(end.year, end.month, end.day, tzinfo=zone)  # a DST change is the zone's business
    return key, start.timestamp(), ends.timestamp()


@dataclass(frozen=True, slots=True)
class BudgetLevel:
    """One budget a request counts against."""

    level: str
    """key | team | org | customer | policy"""
    name: str
    budget: Budget
    scope: str
    resets_at: float | None
    enforce: bool = True
    """False for a policy in shadow mode: what it would refuse is logged and counted, not refused."""


@dataclass(frozen=True, slots=True)
class RateLevel:
    """One level's rate limits (rpm, tpm, parallel requests) and the prefix of its scopes."""

    level: str
    """key | team | customer | client"""
    name: str
    limits: RateLimits
    scope: str


def customer_of(policy: Policy, customer: str | None) -> tuple[str, Customer] | None:
    """The customer entry that applies to a named end customer: its own, else `customers.default`."""
    if customer is None:
        return None
    entry = policy.customers.get(customer)
    if entry is None:
        entry = policy.customers.get(DEFAULT_CUSTOMER)
    return None if entry is None else (customer, entry)


CACHE_ENTRIES = 4096
_chains: dict[tuple[object, ...], list[tuple[str, str, Budget, bool, str]]] = {}
"""Who counts against what, by (policy digest, key, customer, matching day caps): the hierarchy walked once per
caller and policy, not per request. Emptied when full (callers past 4,096 at once are just walked again)."""


def budget_levels(
    policy: Policy,
    key: VirtualKey | None,
    customer: str | None,
    policies: list[tuple[str, Budget, bool]],
    now: float,
) -> list[BudgetLevel]:
    """Every budget the request counts against, narrowest first (the order a 402 names the first one full).
    `policies`: the (name, day budget, enforce) of the matching `policies[]` with `max_cost_per_day`."""
    cache_key = (policy.digest, key, customer, tuple(policies))
    chain = _chains.get(cache_key)
    if chain is None:
        if len(_chains) >= CACHE_ENTRIES:
            _chains.clear()
        chain = _chains[cache_key] = _budget_chain(policy, key, customer, policies)
    levels = []
    for level, name, budget, enforce, prefix in chain:
        period_key, resets_at = period(budget, now)
        levels.append(BudgetLevel(level, name, budget, prefix + period_key, resets_at, enforce))
    return levels


def _budget_chain(
    policy: Policy, key: VirtualKey | None, customer: str | None, policies: list[tuple[str, Budget, bool]]
) -> list[tuple[str, str, Budget, bool, str]]:
    found: list[tuple[str, str, Budget, bool]] = []
    team = policy.teams.get(key.team) if key is not None and key.team else None
    if key is not None and key.budget is not None:
        found.append(("key", key.name, key.budget, True))
    entry = customer_of(policy, customer)
    if entry is not None and entry[1].budget is not None:
        found.append(("customer", entry[0], entry[1].budget, True))
    if team is not None and team.budget is not None:
        found.append(("team", team.name, team.budget, True))
    org = policy.orgs.get(team.org) if team is not None and team.org else None
    if org is not None and org.budget is not None:
        found.append(("org", org.name, org.budget, True))
    for name, budget, enforce in policies:
        found.append(("policy", name, budget, enforce))
    return [
        (lv, name, budget, on, f"budget:{lv}:{scope_name(name)}:{budget.period}:") for lv, name, budget, on in found
    ]


def rate_levels(policy: Policy, key: VirtualKey | None, customer: str | None, client_ip: str | None) -> list[RateLevel]:
    """Every level whose `limits:` apply: the key, its team, the end customer; the client IP (`clients.limits`)
    only for requests without a key, as the node gateway limits by key, else by IP."""
    found: list[RateLevel] = []
    if key is not None:
        if key.limits is not None:
            found.append(RateLevel("key", key.name, key.limits, f"key:{scope_name(key.name)}"))
        team = policy.teams.get(key.team) if key.team else None
        if team is not None and team.limits is not None:
            found.append(RateLevel("team", team.name, team.limits, f"team:{scope_name(team.name)}"))
    elif policy.clients is not None and client_ip is not None:
        found.append(RateLevel("client", client_ip, policy.clients, f"client:{scope_name(client_ip)}"))
    entry = customer_of(policy, customer)
    if entry is not None and entry[1].limits is not None:
        found.append(RateLevel("customer", entry[0], entry[1].limits, f"customer:{scope_name(entry[0])}"))
    return found
