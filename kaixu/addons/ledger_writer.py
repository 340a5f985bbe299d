"""Runs the request ledger (kaixu/store/ledger.py) for as long as the proxy runs: opened when the proxy
starts, flushed on a timer and once more when it stops, after the last in-flight request settled.
A store that cannot be opened does not stop the proxy: the ledger queues records and keeps trying.

Retention (`ledger.retention_days`) is enforced here too: records older than that are deleted once the store
is open and then every hour, under the policy in force at that moment (a reload that sets or changes it
applies from the next round). The deletes run in short batches (in the store's worker thread for SQLite).

The store is the policy's `store.postgres` when set (every replica writes one ledger), else `store.sqlite`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from kaixu.gateway import Gateway
from kaixu.store import Ledger, SqliteLedgerStore, postgres
from kaixu.store.ledger import AsyncLedgerStore, LedgerStore, describe

log = logging.getLogger("kaixu.ledger")

PRUNE_INTERVAL_S = 3600.0
_DAY_S = 86_400


class LedgerWriter:
    def __init__(self, gateway: Gateway, *, prune_interval_s: float = PRUNE_INTERVAL_S) -> None:
        self.gateway = gateway
        self.prune_interval_s = prune_interval_s
        """Seconds between retention rounds (an hour; tests shorten it)."""
        self._retention: asyncio.Task[None] | None = None

    def running(self) -> None:
        # Sync on purpose (an async `running` breaks mitmproxy's script reload); the work runs as a task.
        self._start = asyncio.get_running_loop().create_task(self._open(), name="kaixu-ledger-open")

    async def _open(self) -> None:
        store = self.gateway.require_policy().store
        pg = store.postgres
        backend: LedgerStore | AsyncLedgerStore
        if pg is not None:
            backend, where = postgres.PostgresLedgerStore(pg.dsn, pg.pool_size), postgres.dsn_shown(pg.dsn)
        else:
            backend, where = SqliteLedgerStore(store.sqlite), store.sqlite
        ledger = Ledger(backend, where=where)
        self.gateway.ledger = ledger
        await ledger.start()  # a store that cannot be opened yet is logged, and opened again at every flush
        self._retention = asyncio.get_running_loop().create_task(self._retain(ledger), name="kaixu-ledger-retention")

    async def prune(self, ledger: Ledger) -> int | None:
        """One retention round: deletes what the policy in force says is too old. None when nothing is to be
        kept for a limited time (`retention_days` unset) or the store failed (logged; the next round retries)."""
        days = self.gateway.require_policy().ledger.retention_days
        if days is None:
            return None
        try:
            pruned = await ledger.prune(time.time() - days * _DAY_S)
        except Exception as exc:
            log.warning("ledger retention: could not delete records older than %g days: %s", days, describe(exc))
            return None
        log.info("ledger retention: deleted %d records older than %g days", pruned, days)
        return pruned

    async def _retain(self, ledger: Ledger) -> None:
        while True:
            await self.prune(ledger)
            await asyncio.sleep(self.prune_interval_s)

    async def done(self) -> None:
        await self._start
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
        if self.gateway.ledger is not None:
            await self.gateway.ledger.stop()
