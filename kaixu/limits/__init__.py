"""The counter interface of the rate_limits step (limits and budgets): what every backend keeps, and what it promises.

Budgets are reserved before a request is forwarded and settled to the real cost after the answer; rate limits
count requests and tokens in windows; concurrency limits hold slots. Three backends keep the same contract and
pass the same test suite (`tests/limits/test_counters.py`): `kaixu.limits.memory_counters.MemoryCounters` (one process,
settled spend persisted to SQLite), `kaixu.limits.sqlite_counters.SqliteCounters` (one file, shared by the kaixu
processes of one machine) and `kaixu.limits.redis_counters.RedisCounters` (shared by replicas).

Scopes are opaque strings the caller builds, one per budget or limit and period, e.g.
`key:web-app:month:2026-12`: a counter never parses them, so a new period starts with a new scope and the
backends need no calendar. Money is integer micro-dollars, as everywhere in kaixu.

The guarantee: a reservation is admitted only when, on every scope it names, `spent + reserved + amount <=
cap`, checked and recorded in one atomic step, all scopes or none. So however many requests and processes
race, a cap is never overspent except by a settled cost larger than its reservation.

Used by the rate-limit and budget steps (kaixu/addons/rate_limits.py, kaixu/addons/budgets.py) through the process's
`Governor` (kaixu/limits/governor.py); docs/limits.md.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kaixu.exceptions import KaixuError

SETTLED_MEMORY_S = 300.0
"""How long a settled reservation's id is remembered, so that a repeated settle does not count twice. A repeat
is a call retried after the server applied it, within seconds; kept longer, every request's id of that period
stays (a day held the ids of a day's requests: memory that grew with the traffic, never levelling off)."""


class CountersUnavailable(KaixuError):
    """The backend cannot answer (Redis unreachable or timed out, the SQLite file locked too long or unreadable).
    A typed error so that the caller can fail closed (503 with `Retry-After`) or open, as the policy says,
    instead of guessing from a driver's exception."""

    status, type, code = 503, "api_error", "counters_unavailable"


@dataclass(frozen=True, slots=True)
class Reservation:
    """Budget held for one request on every scope it names, until settled, released or expired."""

    id: str
    scopes: tuple[str, ...]
    amount_micros: int
    expires_at: float
    """Unix time (seconds) after which the backend stops counting it: a crashed process cannot hold budget."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation was not admitted: the first scope (in the order given) whose cap it would pass.
    Carries what a 402 body shows (spent, cap); `reserved` is what other requests in flight hold."""

    scope: str
    cap_micros: int
    spent_micros: int
    reserved_micros: int
    amount_micros: int


@dataclass(frozen=True, slots=True)
class WindowHit:
    """The answer of a window count: what the `X-RateLimit-*` and `x-ratelimit-*` headers and a 429 need."""

    allowed: bool
    limit: int
    remaining: int
    """What is left in the window after this hit (0 when refused at the limit)."""
    reset_ms: int
    """Milliseconds until the window ends and the count starts again (`Retry-After` when refused)."""


@dataclass(frozen=True, slots=True)
class Slot:
    """One of a scope's concurrency slots, held by one request in flight until released or expired."""

    id: str
    scope: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Window:
    """One window a request is counted in: `amount` 1 for a request, a request's tokens after its answer, or 0
    to ask only whether anything is left (tpm before the answer)."""

    scope: str
    window_s: int
    limit: int
    amount: int = 1


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of `admit`: every window's state and the slots taken, or what refused (nothing is counted
    and no slot is taken then)."""

    hits: tuple[WindowHit, ...]
    """One per window asked, in order: after counting when admitted, as it stands when refused."""
    slots: tuple[Slot, ...]
    refused: int | None = None
    """None: admitted. Else the index of the first refusal: a window (0..len(windows)-1) or a slot
    (len(windows) + its index)."""


@runtime_checkable
class Counters(Protocol):
    """What limits and budgets need from shared state. Every method is one atomic operation on the backend
    (one SQLite transaction, one Redis script call) and never blocks the event loop; a backend that cannot
    answer raises `CountersUnavailable`."""

    async def reserve(
        self, scopes: Sequence[str], amount_micros: int, caps: Sequence[int], ttl_s: float
    ) -> Reservation | Refusal:
        """Holds `amount_micros` on every scope (`caps[i]` is the cap of `scopes[i]`), or on none: admitted
        only if `spent + reserved + amount <= cap` on each. Expired reservations are not counted. `ttl_s`
        should be longer than the upstream timeout, so a live request's reservation never lapses."""
        ...

    async def settle(self, reservation: Reservation, actual_micros: int) -> bool:
        """Replaces the reservation by the real cost on every scope. The cost is counted even when the
        reservation has expired meanwhile (the money was spent), and only once: a second settle of the same
        reservation is a no-op and returns False."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Gives the reservation back without spending (the request failed before any cost); a no-op when
        it was already settled, released or expired."""
        ...

    async def spent(self, scope: str) -> int:
        """Settled spend on the scope, in micro-dollars (0 for a scope never used)."""
        ...

    async def reserved(self, scope: str) -> int:
        """What live (unexpired) reservations hold on the scope, in micro-dollars."""
        ...

    async def hit(self, scope: str, window_s: int, limit: int, amount: int = 1, *, force: bool = False) -> WindowHit:
        """Counts `amount` (1 for a request, n for tokens) in the current fixed window of `window_s` seconds
        (windows aligned on the Unix epoch, so every process agrees on them): allowed, and counted, only if
        `count + amount <= limit`; a refused hit is not counted, so a client refused does not lock itself out.
        `amount=0` asks whether anything is left (allowed when `count < limit`) without counting.
        `force=True` counts even past the limit (tokens already spent upstream) and reports what is left."""
        ...

    async def acquire_slot(self, scope: str, limit: int, ttl_s: float) -> Slot | None:
        """Takes one of the scope's `limit` slots, or returns None when all are held. A slot not released
        within `ttl_s` is freed by the backend, so a crashed process does not hold it forever."""
        ...

    async def release_slot(self, slot: Slot) -> None:
        """Frees the slot; a no-op when already released or expired."""
        ...

    async def held_slots(self, scope: str) -> int:
        """Slots held now (unexpired) on the scope."""
        ...

    async def admit(self, windows: Sequence[Window], slots: Sequence[tuple[str, int]], ttl_s: float) -> Admission:
        """A request's rate limits in one atomic operation (one round trip on Redis): admitted only if every
        window allows it (`hit`'s rule) and every `(scope, limit)` has a free slot; then every window is counted
        and a slot of each is taken, else nothing is."""
        ...

    async def end(
        self,
        settle: Sequence[tuple[Reservation, int]],
        release: Sequence[Reservation],
        slots: Sequence[Slot],
        windows: Sequence[Window],
    ) -> None:
        """A request's end in one operation: `settle` each reservation to its cost (as `settle`), `release`
        others, free `slots`, and count `windows` even past their limit (tokens spent: `hit(force=True)`)."""
        ...

    async def close(self) -> None:
        """Lets the connection go; the state stays in the backend."""
        ...


_PROCESS = secrets.token_hex(8)
_SERIAL = itertools.count()


def new_id() -> str:
    """An id for a reservation or a slot, unique across processes and replicas: a random prefix drawn once per
    process and a counter (a random id each time costs a system call, about 15 µs on a loaded machine)."""
    return f"{_PROCESS}{next(_SERIAL):x}"


def check_reservation(scopes: Sequence[str], amount_micros: int, caps: Sequence[int], ttl_s: float) -> None:
    """The arguments every backend refuses the same way: a mistake of the caller, not a refusal of budget."""
    if not scopes:
        raise ValueError("a reservation names at least one scope")
    if len(scopes) != len(caps):
        raise ValueError(f"{len(scopes)} scopes but {len(caps)} caps")
    if len(set(scopes)) != len(scopes):
        raise ValueError("a scope is named twice")
    if amount_micros < 0 or any(cap < 0 for cap in caps):
        raise ValueError("amounts and caps are not negative")
    if ttl_s <= 0:
        raise ValueError("a reservation needs a positive ttl")


def check_window(window_s: int, limit: int, amount: int) -> None:
    if window_s <= 0 or limit < 0 or amount < 0:
        raise ValueError("a window is positive, a limit and an amount are not negative")


def window_answer(count_before: int, limit: int, amount: int, force: bool, now_ms: int, window_s: int) -> WindowHit:
    """The one rule for a window hit, shared by the backends that compute it in Python."""
    window_ms = window_s * 1000
    reset_ms = window_ms - now_ms % window_ms
    allowed = count_before < limit if amount == 0 else count_before + amount <= limit
    count = count_before + amount if (allowed or force) else count_before
    return WindowHit(allowed, limit, max(0, limit - count), reset_ms)


__all__ = ["Admission", "Counters", "CountersUnavailable", "Refusal", "Reservation", "Slot", "Window", "WindowHit"]
