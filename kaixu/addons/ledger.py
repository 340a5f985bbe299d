"""Runs the request ledger (kaixu/store/ledger.py) for as long as the proxy runs: opened when the proxy
starts, flushed on a timer and once more when it stops, after the last in-flight request settled.
A store that cannot be opened does not stop the proxy: the ledger queues records and keeps trying."""

from __future__ import annotations

import asyncio
import logging

from kaixu.gateway import Gateway
from kaixu.store import Ledger, SqliteLedgerStore

log = logging.getLogger("kaixu.ledger")


class LedgerWriter:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def running(self) -> None:
        # Sync on purpose (an async `running` breaks mitmproxy's script reload); the work runs as a task.
        self._start = asyncio.get_running_loop().create_task(self._open(), name="kaixu-ledger-open")

    async def _open(self) -> None:
        store = self.gateway.require_policy().store
        ledger = Ledger(SqliteLedgerStore(store.get("sqlite", ":memory:")))
        self.gateway.ledger = ledger
        await ledger.start()
        if not ledger.ok:
            log.error(
                "cannot open the store %s: %s; requests are served, their records kept in memory until it opens",
                store, ledger.last_error,
            )  # fmt: skip

    async def done(self) -> None:
        await self._start
        if self.gateway.ledger is not None:
            await self.gateway.ledger.stop()
