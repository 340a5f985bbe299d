"""A request's governance record (`Call.governance`): the holds it has on the shared counters (a budget
reservation, parallel-request slots, the tpm windows its tokens go into) and the rate-limit windows its
headers show. Written by the rate-limit and budget steps, ended by `Governor.finish` (governor.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kaixu.limits import Reservation, Slot, WindowHit


@dataclass(slots=True, eq=False)
class Governance:
    """A request's holds on shared counters (the `Call`'s governance record), and what its headers show."""

    reservation: Reservation | None = None
    shadow_reservations: list[Reservation] = field(default_factory=list)
    """The holds of policies in shadow mode, one each so none refuses (settled like the other)."""
    slots: list[Slot] = field(default_factory=list)
    token_scopes: list[tuple[str, int]] = field(default_factory=list)
    """(scope, tpm): the windows this request's tokens are counted into when its usage is known."""
    requests: WindowHit | None = None
    """The tightest requests-per-minute window (fewest remaining): the `X-RateLimit-*` headers."""
    tokens: WindowHit | None = None
    watched: list[tuple[str, int, str, str, str]] = field(default_factory=list)
    """(scope, cap, level, name, period) of the enforced budgets, when the policy asks for soft alerts."""
    uncounted: bool = False
    """The counters could not answer and `store.redis.fail: open` let the request through uncounted."""
    headers_sent: bool = False

    @property
    def holds(self) -> bool:
        return bool(self.reservation or self.shadow_reservations or self.slots or self.token_scopes)

    def rate_headers(self) -> dict[str, str]:
        """The node gateway's `X-RateLimit-*` and OpenAI's `x-ratelimit-*` for the tightest windows."""
        headers: dict[str, str] = {}
        requests, tokens = self.requests, self.tokens
        if requests is not None:
            headers["X-RateLimit-Limit"] = str(requests.limit)
            headers["X-RateLimit-Remaining"] = str(requests.remaining)
            headers["X-RateLimit-Reset-Ms"] = str(requests.reset_ms)
            headers["x-ratelimit-limit-requests"] = str(requests.limit)
            headers["x-ratelimit-remaining-requests"] = str(requests.remaining)
            headers["x-ratelimit-reset-requests"] = openai_duration(requests.reset_ms)
        if tokens is not None:
            headers["x-ratelimit-limit-tokens"] = str(tokens.limit)
            headers["x-ratelimit-remaining-tokens"] = str(tokens.remaining)
            headers["x-ratelimit-reset-tokens"] = openai_duration(tokens.reset_ms)
        return headers


def openai_duration(ms: int) -> str:
    """OpenAI's spelling of a reset time: `120ms`, `1.5s`, `6m0s`, `1h2m3s`."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"
