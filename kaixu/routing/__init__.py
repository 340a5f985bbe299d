"""Routing: a model name to the deployments that may serve it (`resolve.py`), and a call aimed at one of them,
with the request that deployment is sent (`aim.py`). Used by the router step for the first attempt and by the
attempt executor (kaixu/reliability/executor.py) for the next ones. Deployment health and the strategies that
pick among deployments are kaixu/reliability/health.py."""

from __future__ import annotations

from kaixu.routing.aim import FORWARDED_HEADERS, aim
from kaixu.routing.resolve import (
    ROUTED_OPERATIONS,
    RouteRefused,
    candidate_targets,
    fallback_routes,
    reachable_targets,
    resolve_route,
    usable_targets,
)

__all__ = [
    "FORWARDED_HEADERS",
    "ROUTED_OPERATIONS",
    "RouteRefused",
    "aim",
    "candidate_targets",
    "fallback_routes",
    "reachable_targets",
    "resolve_route",
    "usable_targets",
]
