"""Per-provider concurrency caps with a bounded queue: `providers.X.max_concurrent` and `queue_size`, the
Intelligent AI Gateway's process pool (`maxConcurrent`, `queueSize`).

A request that finds its provider full waits in a FIFO queue; a full queue refuses it at once (`QueueFull`),
and the executor moves to a fallback, or answers 503 "Process pool queue full". A waiter that is cancelled
(its client left) leaves the queue; a slot given back goes straight to the next waiter.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from kaixu.config.policy import Policy, ProviderConfig
from kaixu.exceptions import KaixuError

QUEUE_FULL = "Process pool queue full"


class QueueFull(KaixuError):
    """The provider's queue (`max_concurrent`, `queue_size`) has no room for one more request."""

    status, type, code = 503, "api_error", "queue_full"


@dataclass(slots=True)
class ProviderPool:
    max_concurrent: int
    max_queue: int
    active: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    total_queued: int = 0

    async def acquire(self) -> None:
        if self.active < self.max_concurrent and not self.waiters:
            self.active += 1
            return
        if len(self.waiters) >= self.max_queue:
            raise QueueFull(QUEUE_FULL)
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self.total_queued += 1
        try:
            await waiter  # the slot is handed over by `release`: `active` already counts it
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot and cancelled in the same turn: give it on
            else:
                self.waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active = max(0, self.active - 1)


class Pools:
    """The pools of the providers that have a cap, by provider name; kept across reloads while a provider's
    cap is unchanged (its waiters and counts stay), made anew when it changes."""

    def __init__(self) -> None:
        self._by_name: dict[str, ProviderPool] = {}

    def configure(self, policy: Policy) -> None:
        pools: dict[str, ProviderPool] = {}
        for name, provider in policy.providers.items():
            if provider.max_concurrent is None:
                continue
            pool = self._by_name.get(name)
            if pool is None or (pool.max_concurrent, pool.max_queue) != (provider.max_concurrent, provider.queue_size):
                pool = ProviderPool(provider.max_concurrent, provider.queue_size)
            pools[name] = pool
        self._by_name = pools

    def get(self, provider: ProviderConfig) -> ProviderPool | None:
        return self._by_name.get(provider.name) if provider.max_concurrent is not None else None

    def status(self) -> dict[str, int]:
        """Sums over the capped providers: active, queued, maxConcurrent, maxQueue, totalQueued."""
        pools = list(self._by_name.values())
        return {
            "active": sum(p.active for p in pools),
            "queued": sum(len(p.waiters) for p in pools),
            "maxConcurrent": sum(p.max_concurrent for p in pools),
            "maxQueue": sum(p.max_queue for p in pools),
            "totalQueued": sum(p.total_queued for p in pools),
        }
