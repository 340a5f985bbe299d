"""What a call's attempts mean for its answer: the headers that say how it was served, and how long the first
attempt may wait when mitmproxy makes it itself. Read by the stream, settle, retries and errors steps."""

from __future__ import annotations

import time

from kaixu.call import Call
from kaixu.reliability.plan import header_safe


def answer_headers(call: Call, status: int) -> dict[str, str]:
    """What the answer says about how it was served: `x-kaixu-served-by` (provider/model), `x-kaixu-attempts`
    (each attempt's provider/model, status and milliseconds; one for a request forwarded once) and
    `x-kaixu-degraded: true` when a fallback model served it."""
    attempt = call.served
    if attempt is None:
        return {}
    served = f"{attempt.provider.name}/{header_safe(attempt.model or '-')}"
    attempts = call.route.attempts
    if attempts is None or not attempts.tried:
        ms = (time.monotonic() - call.started) * 1000
        headers = {"x-kaixu-served-by": served, "x-kaixu-attempts": f'"{served}";status={status};ms={ms:.1f}'}
    else:
        headers = {"x-kaixu-served-by": served, "x-kaixu-attempts": attempts.header()}
        if attempts.degraded:
            headers["x-kaixu-degraded"] = "true"
    return headers


def first_attempt_timeout(call: Call) -> float:
    """How long the first attempt of a request may wait for its answer's head when mitmproxy makes it itself:
    its model's `ttfb_s` or `total_s` (the smaller), else `limits.upstream_timeout_s`."""
    total = call.policy.upstream_timeout_s
    plan = call.route.plan
    if plan is None:
        return total
    timeouts = plan.routes[plan.start].timeouts
    if timeouts is None:
        return total
    total = timeouts.total_s or total
    return min(timeouts.ttfb_s or total, total)
