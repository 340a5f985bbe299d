"""Each deployment's health, and the choice among a model's deployments (issue 12, first part).

A deployment is a route target: a provider of the policy and the model name it serves (`models.X.route[]`).
Every forwarded request is counted against its deployment: in flight while it runs, then its outcome and
latency (`Deployments.finished`, from the settle step). A circuit breaker per deployment takes one that fails
`failures` times within `window_s` out of the choice for `cooldown_s`, then lets one request through as a
probe (half-open): a success closes it, a failure opens it again. Failures are what a healthy provider
would not answer: 429, 5xx, a connection refused or dropped, a timeout (kaixu's 502/504); a client's 4xx
is not the deployment's fault.

The choice among the deployments left is the policy's strategy (`routing.strategy`), picked when the policy
loads: `weighted` (the route's weights, at random), `least_busy` (fewest in flight), `lowest_latency`
(smallest moving average; a deployment never measured is tried first), `cheapest` (lowest price of its
model). When every deployment is cooling down, all are candidates again: a request is better tried than
refused.

State is per process (each replica learns on its own) and lives only in memory.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from kaixu.config.policy import RouteTarget, RoutingPolicy

State = Literal["closed", "open", "half_open"]
LATENCY_WEIGHT = 0.2
"""Weight of the newest latency in the moving average."""


@dataclass(slots=True)
class Deployment:
    provider: str
    model: str | None
    in_flight: int = 0
    latency_s: float | None = None
    failures: deque[float] = field(default_factory=deque)
    state: State = "closed"
    opened_at: float = 0.0
    probing: bool = False
    served: int = 0
    failed: int = 0

    def available(self, now: float, cooldown_s: float) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open" and now - self.opened_at >= cooldown_s:
            self.state = "half_open"
        return self.state == "half_open" and not self.probing

    def public(self) -> dict[str, object]:
        return {
            "provider": self.provider, "model": self.model, "state": self.state, "in_flight": self.in_flight,
            "latency_ms": None if self.latency_s is None else round(self.latency_s * 1000, 3),
            "recent_failures": len(self.failures), "served": self.served, "failed": self.failed,
        }  # fmt: skip


Key = tuple[str, str | None]
Picker = Callable[[Sequence[RouteTarget], Sequence[Deployment]], RouteTarget]


class Deployments:
    """Every deployment this process has sent requests to, by (provider, model)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._by_key: dict[Key, Deployment] = {}

    def get(self, target: RouteTarget) -> Deployment:
        key = (target.provider, target.model)
        found = self._by_key.get(key)
        if found is None:
            found = self._by_key[key] = Deployment(target.provider, target.model)
        return found

    def pick(self, targets: tuple[RouteTarget, ...], routing: RoutingPolicy) -> RouteTarget:
        """The deployment this request goes to (and, when it is half-open, its probe)."""
        if len(targets) == 1 and routing.breaker_failures is None:
            return targets[0]
        now = self.clock()
        deployments = [self.get(t) for t in targets]
        up = [(t, d) for t, d in zip(targets, deployments, strict=True) if d.available(now, routing.cooldown_s)]
        if not up:  # all cooling down: try one anyway
            up = list(zip(targets, deployments, strict=True))
        chosen = PICKERS[routing.strategy]([t for t, _ in up], [d for _, d in up]) if len(up) > 1 else up[0][0]
        deployment = self.get(chosen)
        if deployment.state == "half_open":
            deployment.probing = True
        return chosen

    def usable(self, target: RouteTarget, routing: RoutingPolicy) -> bool:
        """Whether its breaker lets a request through now (closed, or half-open without a probe)."""
        return self.get(target).available(self.clock(), routing.cooldown_s)

    def started(self, target: RouteTarget) -> None:
        self.get(target).in_flight += 1

    def released(self, target: RouteTarget) -> None:
        """A request counted against the deployment that never reached it (kaixu's own queue refused it): out
        of its in-flight count, no outcome (a half-open deployment may be probed by the next one)."""
        deployment = self.get(target)
        deployment.in_flight = max(0, deployment.in_flight - 1)
        deployment.probing = False

    def finished(self, target: RouteTarget, failed: bool, latency_s: float, routing: RoutingPolicy) -> None:
        deployment = self.get(target)
        deployment.in_flight = max(0, deployment.in_flight - 1)
        now = self.clock()
        was_probe, deployment.probing = deployment.probing, False
        if failed:
            deployment.failed += 1
            failures = deployment.failures
            failures.append(now)
            while failures and failures[0] <= now - routing.window_s:
                failures.popleft()
            limit = routing.breaker_failures
            if was_probe or (limit is not None and len(failures) >= limit):
                deployment.state, deployment.opened_at = "open", now
            return
        deployment.served += 1
        previous = deployment.latency_s
        deployment.latency_s = latency_s if previous is None else previous + LATENCY_WEIGHT * (latency_s - previous)
        if deployment.state != "closed":
            deployment.state = "closed"
            deployment.failures.clear()

    def public(self) -> list[dict[str, object]]:
        return [d.public() for d in self._by_key.values()]


def _weighted(targets: Sequence[RouteTarget], deployments: Sequence[Deployment]) -> RouteTarget:
    return random.choices(list(targets), weights=[t.weight for t in targets])[0]


def _least_busy(targets: Sequence[RouteTarget], deployments: Sequence[Deployment]) -> RouteTarget:
    fewest = min(d.in_flight for d in deployments)
    return _weighted([t for t, d in zip(targets, deployments, strict=True) if d.in_flight == fewest], deployments)


def _lowest_latency(targets: Sequence[RouteTarget], deployments: Sequence[Deployment]) -> RouteTarget:
    def latency(i: int) -> float:
        measured = deployments[i].latency_s
        return -1.0 if measured is None else measured  # never measured: tried first

    return targets[min(range(len(targets)), key=latency)]


def _cheapest(targets: Sequence[RouteTarget], deployments: Sequence[Deployment]) -> RouteTarget:
    """The target with the lowest `RouteTarget.cost_rank` (its price, set when the policy loads)."""
    return min(targets, key=lambda t: t.cost_rank)


PICKERS: dict[str, Picker] = {
    "weighted": _weighted,
    "least_busy": _least_busy,
    "lowest_latency": _lowest_latency,
    "cheapest": _cheapest,
}
