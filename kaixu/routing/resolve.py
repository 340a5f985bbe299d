"""Which deployments may serve a call: the model's route (and, for a model the path names instead of the body,
whether the caller may call it: kaixu/permission.py; the policy step checked the body's), the targets an
explicit backend or provider hint narrows it to, those that take the request (tools), and the fallback models
after it that the caller may call. The router step (kaixu/addons/router.py) asks for the first attempt, the
attempt executor (kaixu/reliability/executor.py) for each next one."""

from __future__ import annotations

from kaixu.call import Attempt, Call
from kaixu.config import ModelRoute, Policy, ProviderConfig, RouteTarget
from kaixu.config.policy import AGENT_KIND
from kaixu.exceptions import KaixuError
from kaixu.formats.doors import front_door
from kaixu.permission import model_refusal

#: The operations a provider serves (every other one kaixu answers itself: model lists, health).
ROUTED_OPERATIONS = frozenset({"chat", "embeddings", "batch_embeddings", "count_tokens"})


class RouteRefused(KaixuError):
    """The call may not go where it asks (the router answers it: status, type and code are always given)."""

    def __init__(self, status: int, message: str, type: str, code: str) -> None:
        super().__init__(message, status=status, type=type, code=code)
        self.message = message
        self.refused_by: Attempt | None = None
        """The deployment that refused (`kaixu.routing.aim`), with nothing prepared: the router records the
        first one on the call, so the ledger and the metrics name where the refused request was aimed."""

    @classmethod
    def of(cls, error: KaixuError) -> RouteRefused:
        """A refusal for the answer another of kaixu's errors means (its status, type and code)."""
        return cls(error.status, str(error), error.type, error.code)


def _serves_hint(provider: ProviderConfig, name: str, hint: str) -> bool:
    """A provider hint names a provider kind (or a provider); the mock stands in for every kind, so the
    default policy (everything on `mock`) serves the seed's `"provider": "openai"` bodies."""
    return provider.kind in (hint, "mock") or name == hint


def candidate_targets(call: Call, route: ModelRoute) -> tuple[RouteTarget, ...]:
    """The route's targets, narrowed by what the client asked for explicitly (a backend or a provider)."""
    policy = call.policy
    backend = call.backend
    if backend is not None:
        targets = tuple(t for t in route.targets if t.provider == backend)
        if targets:
            return targets
        if backend in policy.providers:  # a provider outside the route: the model goes there as named
            key = call.caller.key
            if key is not None and key.models:  # a key limited to some models is limited to their routes too
                raise RouteRefused(
                    403, f"backend {backend!r} does not serve model {call.model!r} for key {key.name!r}",
                    "permission_error", "provider_not_allowed",
                )  # fmt: skip
            return (RouteTarget(backend, None),)
        raise RouteRefused(404, f"unknown backend {backend!r}", "invalid_request_error", "backend_not_found")
    hint = call.provider_hint
    if hint is not None:
        targets = tuple(t for t in route.targets if _serves_hint(policy.providers[t.provider], t.provider, hint))
        if not targets:
            raise RouteRefused(
                403, f"provider {hint!r} does not serve model {call.model!r} here", "permission_error",
                "provider_not_allowed",
            )  # fmt: skip
        return targets
    return route.targets


def resolve_route(call: Call) -> ModelRoute:
    model = call.model
    if model is None:
        raise RouteRefused(400, "model: a model name is required", "invalid_request_error", "invalid_model")
    policy: Policy = call.policy
    backend = call.backend
    renamed = False
    if backend is not None and backend not in policy.providers and backend in policy.models:
        model = call.model = backend  # /v1/{backend}/chat/completions naming a model, not a provider
        call.backend, renamed = None, True
    route = policy.resolve_model(model)
    if route is None:
        status, type, code = front_door(call.front).unknown_model
        raise RouteRefused(status, f"model {model!r} is not served by this gateway", type, code)
    # the policy step allowed the model the body names; one the path names instead must be allowed too
    denied = model_refusal(call, model) if renamed else None
    if denied is not None:
        raise RouteRefused(403, denied.message, "permission_error", denied.code)
    return route


def wants_tools(call: Call) -> bool:
    """The request offers function tools (OpenAI and Anthropic `tools`, Gemini `tools`/`functionDeclarations`);
    tools by name are an agent's (`Call.agent`)."""
    body = call.body or {}
    return bool(body.get("tools") or body.get("functions")) and not (call.agent and call.agent.tools)


def usable_targets(call: Call, targets: tuple[RouteTarget, ...], *, degraded: bool = False) -> tuple[RouteTarget, ...]:
    """The deployments that can take this request. As the Intelligent AI Gateway routes: a request with a
    working directory or tools by name goes to an agent (`kind: claude-cli`), or, ``degraded`` (a fallback),
    to any deployment without them; a request with function tools never goes to an agent nor to a provider
    that says `supports_tools: false`; any other request prefers deployments that are not agents (an
    agent-only model, or a backend naming one, still serves it). An agent's own model call (`Call.parent`) never
    goes to an agent."""
    providers = call.policy.providers
    if call.agent is not None and call.parent is None:
        return targets if degraded else tuple(t for t in targets if providers[t.provider].kind == AGENT_KIND)
    apis = tuple(t for t in targets if providers[t.provider].kind != AGENT_KIND)
    if call.parent is not None:  # an agent's own model call never starts another agent
        return apis if not wants_tools(call) else tuple(t for t in apis if providers[t.provider].supports_tools)
    if not wants_tools(call):
        return apis or targets
    return tuple(t for t in apis if providers[t.provider].supports_tools)


def reachable_targets(call: Call, route: ModelRoute, *, fallback: bool) -> tuple[RouteTarget, ...]:
    """The deployments of one model of a plan an attempt may be aimed at: the model asked for's as the client
    narrowed them (`candidate_targets`), a fallback's all; either way only those that take the request
    (`usable_targets`; an agent's request degraded on a fallback). What the executor aims at, and what the
    budget step reserves for."""
    if fallback:
        return usable_targets(call, route.targets, degraded=True)
    return usable_targets(call, candidate_targets(call, route))


def fallback_routes(call: Call, route: ModelRoute) -> tuple[ModelRoute, ...]:
    """The model asked for, then its fallbacks (`models.X.fallbacks`) the caller may call (kaixu/permission.py),
    each once, in order; an explicit backend or provider hint pins the request, so it has none."""
    if call.backend is not None or call.provider_hint is not None or not route.fallbacks:
        return (route,)
    chain = [route]
    for name in route.fallbacks:
        fallback = call.policy.resolve_model(name)
        if fallback is not None and all(fallback.name != r.name for r in chain) and model_refusal(call, name) is None:
            chain.append(fallback)
    return tuple(chain)
