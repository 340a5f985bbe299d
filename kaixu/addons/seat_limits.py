"""Seats (Kaixu Gateway 13's device binding, docs/keys.md#seats): a key or an end customer with `seats: N` is used
from at most N installs, each naming itself with `x-kaixu-install-id`.

Why here: after the body step, so the end customer a client names (the body's `user`, `x-kaixu-customer`, Pulse's
`userId`: `end_customer()`) is known, and before the policy and router steps, so a refused request costs nothing.

The hot path never queries the store for a known install: admitted (scope, install) pairs are kept in the process,
and a background task polls `seats_version` every second, rereading the revoked installs only when it moved, so
a revocation (`kaixu seats revoke`, from any process or replica) stops an install everywhere within 2 seconds.
Only an install this process has not seen costs a store round trip (async, never on the event loop's thread).
Fails closed: when the store cannot be claimed in, or its version has not been read for 5 seconds, a request that
needs a seat gets a 503 (cached installs included: a revocation could not be seen).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import NamedTuple

from mitmproxy import http

from kaixu.call import Call, get_call
from kaixu.config import Policy
from kaixu.gateway import Gateway
from kaixu.limits.levels import customer_of
from kaixu.log import Outage, safe
from kaixu.request_facts import end_customer
from kaixu.respond import error_response
from kaixu.store.ledger import describe
from kaixu.store.seats import INSTALL_ID, INSTALL_ID_RULE, Claim, Pair, SeatStore, customer_scope, key_scope

log = logging.getLogger("kaixu.seats")

HEADER = "x-kaixu-install-id"
REFRESH_S = 1.0
STALE_AFTER_S = 5.0
MAX_REFUSED_CACHED = 10_000
"""Installs refused for want of a seat, kept so that a retrying install costs no store query; bounded."""


class Binding(NamedTuple):
    """One seat limit that applies to a request: the key's or the end customer's (a tuple: made per request)."""

    scope: str
    limit: int
    holder: str
    """How answers name it: 'this key', 'this customer'."""


def bindings(call: Call) -> list[Binding]:
    """The seat limits of a request: `keys[].seats` (whatever the key's origin) and the end customer's
    (`customers.NAME.seats`, else `customers.default.seats` for a customer not named). The end customer is the
    key's, else the one the client names, else its end user (`end_customer`, as budgets and limits count it)."""
    found: list[Binding] = []
    key = call.caller.key
    if key is not None and key.seats is not None:
        found.append(Binding(key_scope(key.name), key.seats, "this key"))
    if call.policy.customers:
        entry = customer_of(call.policy, end_customer(call))
        if entry is not None and entry[1].seats is not None:
            found.append(Binding(customer_scope(entry[0]), entry[1].seats, "this customer"))
    return found


@dataclass(slots=True)
class SeatCache:
    """What one store's seats are known to be in this process. `admitted` grows with claims; `revoked` is the
    store's as last read, and `generation` counts the reads that changed it, so a claim that raced a revocation
    is not cached after it."""

    store: SeatStore
    admitted: set[Pair] = field(default_factory=set)
    revoked: set[Pair] = field(default_factory=set)
    full: dict[Pair, tuple[int, int]] = field(default_factory=dict)
    """Installs refused for want of a seat: (limit, generation) they were refused at; asked again when
    either moved (a revocation frees a seat; a reload may raise the limit)."""
    version: int | None = None
    generation: int = 0
    polled_at: float = float("-inf")
    """`time.monotonic()` of the last successful read of the version."""
    seen: set[Pair] = field(default_factory=set)
    """Admitted pairs used since the last poll: their last_seen is written then, in one batch."""

    def fresh(self, now: float) -> bool:
        return now - self.polled_at <= STALE_AFTER_S


class Seats:
    def __init__(self, gateway: Gateway, *, refresh_s: float = REFRESH_S) -> None:
        self.gateway = gateway
        self.refresh_s = refresh_s
        self._cache: SeatCache | None = None
        self._claims: dict[tuple[Pair, int], asyncio.Future[Claim]] = {}
        self._task: asyncio.Task[None] | None = None
        self._outage = Outage("seat store", log, level=logging.WARNING)
        self._warned_no_store = False

    # -- which store -----------------------------------------------------------------------------------------

    def cache(self) -> SeatCache | None:
        """The cache of the seat store chosen when the policy (re)loaded (`Gateway.stores`, kaixu/store/stores.py):
        a new one when a reload named another store; None when the policy keeps no durable store (`:memory:`)."""
        stores = self.gateway.stores
        store = stores.seats if stores is not None else None
        if store is None:
            return None
        if self._cache is None or self._cache.store is not store:
            self._cache = SeatCache(store)
        return self._cache

    # -- the request hook --------------------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        call = get_call(flow)
        if call is None or flow.response is not None:
            return None
        needed = bindings(call)
        if not needed:
            return None
        install = flow.request.headers.get(HEADER)
        if not install:
            message = f"{needed[0].holder} requires an {HEADER} header (a stable id of the app's install)"
            flow.response = error_response(call, 400, message, "invalid_request_error", "install_id_required")
            return None
        if not INSTALL_ID.fullmatch(install):
            message = f"{HEADER}: {INSTALL_ID_RULE}"
            flow.response = error_response(call, 400, message, "invalid_request_error", "invalid_install_id")
            return None
        cache = self.cache()
        if cache is None:
            if not self._warned_no_store:
                log.warning("seats need a durable store: store.sqlite is :memory:; requests bound to seats get a 503")
                self._warned_no_store = True
            flow.response = self._unavailable(call)
            return None
        unknown: list[Binding] = []
        if cache.fresh(time.monotonic()):
            for binding in needed:
                pair = (binding.scope, install)
                if pair in cache.revoked:
                    flow.response = self._revoked(call, binding)
                    return None
                if pair in cache.admitted:
                    cache.seen.add(pair)
                    continue
                if cache.full.get(pair) == (binding.limit, cache.generation):
                    flow.response = self._full(call, binding)
                    return None
                unknown.append(binding)
        else:
            unknown = needed  # a revocation could not have been seen: ask the store
        return self._claim_all(flow, call, cache, install, unknown) if unknown else None

    async def _claim_all(
        self, flow: http.HTTPFlow, call: Call, cache: SeatCache, install: str, needed: list[Binding]
    ) -> None:
        for binding in needed:
            pair = (binding.scope, install)
            generation = cache.generation
            try:
                result = await self._claim(cache, pair, binding.limit)
            except Exception as exc:
                self._outage.failed(f"cannot claim a seat: {describe(exc)}", "refused_requests")
                flow.response = self._unavailable(call)
                return
            if result == "revoked":
                cache.revoked.add(pair)
                flow.response = self._revoked(call, binding)
                return
            if result == "full":
                if len(cache.full) >= MAX_REFUSED_CACHED:  # many made-up installs: forget, do not grow
                    cache.full.clear()
                cache.full[pair] = (binding.limit, generation)
                log.info("%s: no seat left for a new install (seats: %d)", safe(binding.scope), binding.limit)
                flow.response = self._full(call, binding)
                return
            if cache.generation == generation:  # else a revocation was read meanwhile: ask again next time
                cache.admitted.add(pair)
                cache.full.pop(pair, None)

    def _claim(self, cache: SeatCache, pair: Pair, limit: int) -> Awaitable[Claim]:
        """One store round trip per (install, limit) however many requests of a new install arrive together
        (shielded: a client that leaves does not cancel the claim the others wait on)."""
        pending = self._claims.get((pair, limit))
        if pending is None:
            pending = asyncio.ensure_future(cache.store.claim(pair[0], pair[1], limit, time.time()))
            self._claims[(pair, limit)] = pending
            pending.add_done_callback(lambda _: self._claims.pop((pair, limit), None))
        return asyncio.shield(pending)

    @staticmethod
    def _revoked(call: Call, binding: Binding) -> http.Response:
        message = f"this install ({HEADER}) was revoked for {binding.holder}"
        return error_response(call, 403, message, "permission_error", "install_revoked")

    @staticmethod
    def _full(call: Call, binding: Binding) -> http.Response:
        message = (
            f"{binding.holder} is in use on {binding.limit} installs already, its limit (seats: {binding.limit}); "
            "an install must be revoked before another one can use it"
        )
        return error_response(call, 403, message, "permission_error", "seat_limit_reached")

    @staticmethod
    def _unavailable(call: Call) -> http.Response:
        message = "kaixu cannot read its seat store right now; retry shortly"
        return error_response(call, 503, message, "api_error", "seat_store_unavailable", {"retry-after": "1"})

    # -- the poll ------------------------------------------------------------------------------------------------

    def running(self) -> None:
        # Sync on purpose (like StoreKeys.running): the work runs as a task.
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kaixu-seats")

    async def _run(self) -> None:
        while True:
            policy = self.gateway.policy
            # polled once the policy sets seats, or once a request needed one (a store key's own `seats`)
            uses = policy is not None and (self._cache is not None or _uses_seats(policy))
            cache = self.cache() if uses else None
            if cache is not None:
                await self.poll(cache)
            await asyncio.sleep(self.refresh_s)

    async def poll(self, cache: SeatCache) -> None:
        """One read of the version (and of the revoked installs when it moved), then last_seen of the installs
        used since the last poll. The version is read first: a revocation made in between is read next time."""
        try:
            version = await cache.store.version()
            if version != cache.version:
                revoked = await cache.store.revoked()
                cache.generation += 1
                cache.revoked = revoked
                cache.admitted -= revoked
                cache.full.clear()
                cache.version = version
            seen, cache.seen = cache.seen, set()
            await cache.store.touch(seen, time.time())
        except Exception as exc:
            self._outage.failed(f"cannot read it: {describe(exc)}")
            return
        self._outage.recovered()
        cache.polled_at = time.monotonic()

    async def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            cache = self._cache
            if cache is not None and cache.seen:
                with contextlib.suppress(Exception):
                    await cache.store.touch(cache.seen, time.time())


def _uses_seats(policy: Policy) -> bool:
    """Whether the policy sets a seat limit: then the store is polled from the start."""
    return any(k.seats is not None for k in policy.keys.values()) or any(
        c.seats is not None for c in policy.customers.values()
    )
