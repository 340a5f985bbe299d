"""Runs the request ledger (kaixu/store/ledger.py) for as long as the proxy runs: opened when the proxy
starts, flushed on a timer and once more when it stops, after the last in-flight request settled."""

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
        try:
            await ledger.start()
        except Exception as exc:
            self.gateway.store_ok = False
            log.error("cannot open the store %s: %r; requests are served but not recorded", store, exc)
            return
        self.gateway.ledger = ledger
        self.gateway.store_ok = True

    async def done(self) -> None:
        await self._start
        if self.gateway.ledger is not None:
            await self.gateway.ledger.stop()
