"""The counters of budgets and rate limits: opened as the proxy starts, closed (settles flushed) as it stops.

The backend is chosen once, from the `store:` of the policy the proxy starts with (`open_governor`); a later
reload that changes `store:` takes effect at the next start, as for the ledger (a warning says so)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from kaixu.config.policy import StoreConfig
from kaixu.gateway import Gateway
from kaixu.limits import CountersUnavailable
from kaixu.limits.governor import Governor, open_governor
from kaixu.log import safe

log = logging.getLogger("kaixu.limits")


class CounterBackend:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._store: StoreConfig | None = None

    def running(self) -> None:
        # Sync on purpose (an async `running` breaks mitmproxy's script reload); the work runs as a task.
        store = self.gateway.require_policy().store
        self._store = store
        if self.gateway.worker is not None and store.redis is None and store.counters != "shared":
            # Workers are replicas: per-process counters would let each spend a whole budget.
            log.info("--workers: budgets and rate limits are counted in the shared SQLite file (store.counters: "
                     "shared)")  # fmt: skip
            store = dataclasses.replace(store, counters="shared")
        self.gateway.governor_opening = asyncio.get_running_loop().create_task(self._open(store))

    async def _open(self, store: StoreConfig) -> Governor | None:
        """None when the counters cannot be opened at all: requests with a budget or limit are then refused
        (503), never counted nowhere."""
        try:
            governor = await open_governor(store)
        except CountersUnavailable as e:
            if store.redis is None:
                log.error("the counters cannot be opened (requests with a budget or limit are refused until a "
                          "restart): %s", e)  # fmt: skip
                self.gateway.counters_error = safe(e)
                return None
            # Redis down at start: requests with a budget or limit are refused (or let through, fail: open)
            # until it answers; the client reconnects by itself.
            governor = await open_governor(store, check=False)
            governor.unavailable(e, None)
        self.gateway.governor = governor
        return governor

    def configure(self, updated: set[str]) -> None:
        policy = self.gateway.policy
        if self._store is not None and policy is not None and policy.store != self._store:
            log.warning("store: changed in the policy; budgets and limits keep their counters until a restart")

    async def done(self) -> None:
        opening = self.gateway.governor_opening
        if opening is not None:
            governor = await opening
            if governor is not None:
                await governor.close()
