"""What a call's attempts mean for its answer: the headers that say how it was served. Read by the stream and
settle steps."""

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
