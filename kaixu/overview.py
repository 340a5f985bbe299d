"""What the policy in force and this process's counters say, as the admin API's `/api/models`, `/api/policy` and
`/api/budgets` answer them (docs/admin-api.md): the web console's Models, Client setup, Spend and Policy pages read
them. Secrets stay in: a provider is shown by its name, kind and whether it has a key, never the key; keys by name."""

from __future__ import annotations

import time
from typing import Any

from kaixu.config import Policy
from kaixu.config.policy import DEFAULT_CUSTOMER, Budget, RateLimits, VirtualKey
from kaixu.gateway import Gateway
from kaixu.limits import CountersUnavailable
from kaixu.limits.levels import BudgetLevel, budget_levels
from kaixu.pricing import rate_fields, usd
from kaixu.store.queries import iso, money_json


def models_json(policy: Policy, gateway: Gateway) -> dict[str, Any]:
    """Each model of the policy: its deployments (provider, upstream model, weight, price per 1M tokens, and the
    breaker and counters this process keeps for it), fallbacks and retries; the provider queues."""
    health = {(d["provider"], d["model"]): d for d in gateway.deployments.public()}
    models = []
    for name, route in policy.models.items():
        targets = []
        for target in route.targets:
            provider = policy.providers.get(target.provider)
            upstream = target.model or name
            price = policy.pricing.table.lookup(provider.kind, upstream) if provider is not None else None
            seen = health.get((target.provider, target.model))
            served, failed = (int(seen["served"]), int(seen["failed"])) if seen else (0, 0)  # type: ignore[call-overload]
            targets.append({
                "provider": target.provider,
                "provider_kind": provider.kind if provider is not None else None,
                "model": upstream,
                "weight": target.weight,
                "price_per_mtok_usd": None if price is None else {
                    field: float(rate) for field, rate in rate_fields(price.rates).items()
                },
                "breaker": seen["state"] if seen else "closed",
                "in_flight": seen["in_flight"] if seen else 0,
                "latency_ms": seen["latency_ms"] if seen else None,
                "recent_failures": seen["recent_failures"] if seen else 0,
                "served": served,
                "failed": failed,
                "error_rate": round(failed / (served + failed), 4) if served + failed else None,
            })  # fmt: skip
        models.append({
            "name": name,
            "glob": any(c in name for c in "*?["),
            "deployments": targets,
            "fallbacks": list(route.fallbacks),
            "retries": route.retries.attempts,
        })  # fmt: skip
    return {
        "default_model": policy.default_model,
        "models": models,
        "providers": [{"name": n, "kind": p.kind, "key_configured": p.has_key} for n, p in policy.providers.items()],
        "queues": gateway.reliability.executor.pools.status(),
        "breaker": {"failures": policy.routing.breaker_failures, "window_s": policy.routing.window_s,
                    "cooldown_s": policy.routing.cooldown_s},
    }  # fmt: skip


def _budget(budget: Budget | None) -> dict[str, Any] | None:
    if budget is None:
        return None
    return {"usd": usd(budget.usd_micros), "usd_number": budget.usd_micros / 1_000_000, "period": budget.period,
            "timezone": budget.timezone}  # fmt: skip


def _limits(limits: RateLimits | None) -> dict[str, Any] | None:
    return None if limits is None else {"rpm": limits.rpm, "tpm": limits.tpm, "max_parallel": limits.max_parallel}


def policy_json(policy: Policy, gateway: Gateway) -> dict[str, Any]:
    """The policy in force: where it is, its digest, when it was loaded and the last reload's error, what
    `kaixu check` warns about, and the keys, teams and customers it names (by name, with their budgets and
    limits: never a hash)."""
    return {
        "path": gateway.policy_path,
        "digest": policy.digest,
        "generation": gateway.generation,
        "loaded": iso(gateway.loaded_at),
        "last_reload_error": gateway.last_reload_error,
        "warnings": list(policy.warnings),
        "admin_keys": sorted(set(policy.admin_keys.values())),
        "content_logging": policy.ledger.content.enabled,
        "keys": [
            {
                "name": key.name,
                "team": key.team,
                "customer": key.customer,
                "models": list(key.models),
                "budget": _budget(key.budget),
                "limits": _limits(key.limits),
                "seats": key.seats,
                "expires": key.expires.isoformat() if key.expires else None,
            }
            for key in policy.keys.values()
        ],
        "teams": [
            {"name": t.name, "budget": _budget(t.budget), "limits": _limits(t.limits)} for t in policy.teams.values()
        ],
        "customers": [
            {"name": c.name, "budget": _budget(c.budget), "limits": _limits(c.limits), "seats": c.seats}
            for c in policy.customers.values()
        ],
    }


async def budgets_json(policy: Policy, gateway: Gateway) -> dict[str, Any]:
    """Every budget of the policy's and the store's keys, their teams and orgs, and the named customers: the
    current period's settled spend, what requests in flight hold (`reserved`), what is left, and when it resets,
    read from the counters (one `spent` and one `reserved` per budget). `customers.default` applies to each
    customer apart and is not listed; nor are `policies[]` day caps."""
    now = time.time()
    keys: list[VirtualKey] = list(policy.keys.values())
    snapshot = gateway.key_snapshot
    if snapshot is not None:
        keys += [stored.virtual() for stored in snapshot.keys.values() if stored.state(now) == "active"]
    levels: dict[str, BudgetLevel] = {}
    for key in keys:
        for level in budget_levels(policy, key, None, [], now):
            levels.setdefault(level.scope, level)
    for name in policy.customers:
        if name != DEFAULT_CUSTOMER:
            for level in budget_levels(policy, None, name, [], now):
                levels.setdefault(level.scope, level)
    governor = await gateway.governor_ready()
    shown = []
    for level in levels.values():
        spent = reserved = None
        if governor is not None:
            try:
                spent = await governor.counters.spent(level.scope)
                reserved = await governor.counters.reserved(level.scope)
            except CountersUnavailable:
                governor = None
        cap = level.budget.usd_micros
        left = None if spent is None or reserved is None else max(0, cap - spent - reserved)
        shown.append({
            "level": level.level, "name": level.name, "period": level.budget.period, "timezone": level.budget.timezone,
            **money_json("cap", cap), **money_json("spent", spent), **money_json("reserved", reserved),
            **money_json("left", left), "resets": iso(level.resets_at), "enforced": level.enforce,
        })  # fmt: skip
    return {"counters": None if governor is None else governor.kind, "budgets": shown}
