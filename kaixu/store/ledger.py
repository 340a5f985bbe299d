"""The request ledger: one record per request, queued on the hot path (a list append) and written in
batches by a background task, so no request ever waits for the disk. Flushed on a timer and at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("kaixu.ledger")

FLUSH_SECONDS = 0.5
MAX_BATCH = 1000
MAX_QUEUE = 100_000


@dataclass(slots=True)
class LedgerRecord:
    request_id: str
    ts: float
    front: str
    operation: str
    key_name: str | None
    team: str | None
    model: str | None
    provider: str | None
    upstream_model: str | None
    status: int
    stream: int
    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int | None
    latency_ms: float
    error: str | None
    attributes: str | None
    """JSON of what the client said about itself: app, build, install id, team/project ids (seed APIs)."""


class LedgerStore(Protocol):
    def open(self) -> None: ...
    def write(self, records: list[LedgerRecord]) -> None: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...


class Ledger:
    def __init__(self, store: LedgerStore) -> None:
        self.store = store
        self.ok: bool | None = None
        self._queue: list[LedgerRecord] = []
        self._task: asyncio.Task[None] | None = None
        self._dropped = 0

    async def start(self) -> None:
        await asyncio.to_thread(self.store.open)
        self.ok = True
        self._task = asyncio.get_running_loop().create_task(self._flush_forever(), name="kaixu-ledger")

    @property
    def queued(self) -> int:
        return len(self._queue)

    def record(self, record: LedgerRecord) -> None:
        """Called on the hot path: never blocks. A store that is down for long drops the oldest records."""
        if len(self._queue) >= MAX_QUEUE:
            self._queue.pop(0)
            self._dropped += 1
        self._queue.append(record)

    async def flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                await asyncio.to_thread(self.store.write, batch)
                self.ok = True
            except Exception as exc:
                self.ok = False
                self._queue[:0] = batch  # keep them for the next attempt
                log.error("ledger write failed, %d records kept for retry: %r", len(self._queue), exc)
                return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await self.flush()
        if self._dropped:
            log.warning("ledger dropped %d records while the store was unavailable", self._dropped)
        await asyncio.to_thread(self.store.close)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()
