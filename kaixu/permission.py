"""Who may call which model: one rule, read by the policy step (kaixu/addons/caller_rules.py) for the model a request
names, and by the router (kaixu/addons/router.py) for every model its attempt plan may reach, so a fallback
never serves what the caller may not call itself.

A model is refused by the first of:
- a `policies[]` rule that applies to the caller (`match`) and denies the model (`deny_models`) or does not
  allow it (`allow_models`): 403 `policy_violation`, in Pulse's wording for a denied model;
- the key's `models`, then its team's `models` (`teams.NAME.models`): 403 `model_not_allowed`.

A rule in shadow mode (`enforce: false`) refuses nothing; what it would refuse is handed to ``shadow`` (the
policy step logs, counts and marks it). The key's and team's lists are not read for a model the gateway does
not serve: the router answers that one (404, Kaixu Gateway 13's 403) as it always did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kaixu.call import Call
from kaixu.config.policy import CallerPolicy
from kaixu.formats.seeds import pulse


@dataclass(frozen=True, slots=True)
class Denied:
    """Why the caller may not call a model: the 403's message and code."""

    message: str
    code: str


def match_facts(call: Call) -> tuple[str | None, str | None, str | None, str | None]:
    """What `policies[].match` compares: the key's team and name, the app and project the client names."""
    key = call.caller.key
    said = call.caller.attributes.get
    return (key.team if key else None, key.name if key else None, said("app") or said("appId"),
            said("project") or said("projectId"))  # fmt: skip


def rule_refusal(rule: CallerPolicy, model: str) -> str | None:
    """What one `policies[]` rule says against `model` (whether it applies to the caller is not asked here)."""
    if rule.deny_models is not None and rule.deny_models.matches(model):
        return pulse.policy_error(model, rule.name)
    if rule.allow_models is not None and not rule.allow_models.matches(model):
        return f'Model {model} is not allowed by policy "{rule.name}"'
    return None


def model_refusal(call: Call, model: str, shadow: Callable[[CallerPolicy, str], None] | None = None) -> Denied | None:
    """Why the caller of ``call`` may not call ``model``, or None when it may (see the module docstring)."""
    policy = call.policy
    if policy.policies:
        who = match_facts(call)
        for rule in policy.policies:
            if not rule.applies(*who):
                continue
            refusal = rule_refusal(rule, model)
            if refusal is None:
                continue
            if rule.enforce:
                return Denied(refusal, "policy_violation")
            if shadow is not None:
                shadow(rule, refusal)
    key = call.caller.key
    if key is None or policy.resolve_model(model) is None:
        return None
    if not key.may_use(model):
        return Denied(f"model {model!r} is not allowed for key {key.name!r}", "model_not_allowed")
    team = policy.teams.get(key.team) if key.team else None
    if team is not None and not team.may_use(model):
        return Denied(f"model {model!r} is not allowed for team {team.name!r}", "model_not_allowed")
    return None
