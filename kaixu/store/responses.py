"""Stored responses of the Responses API (`store` not false): what a follow-up's `previous_response_id` continues,
and what `GET`/`DELETE /v1/responses/{id}` read, each scoped to the hash of the key that made it (another key
finds nothing). Kept in the policy's store: the SQLite file (`store.sqlite`; a process-local dict for
`:memory:`), or PostgreSQL when `store.postgres` is set, so every replica continues every conversation.

`Kept` is what the steps use: a write is handed to a task (SQLite in a worker thread, PostgreSQL through asyncpg)
and never awaited by the request that made it, but it is readable at once: until it is written, a read finds it
among the writes in flight (a client's follow-up may come before the write lands).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from kaixu.store import postgres
from kaixu.store.connect import WAL_NORMAL, open_sqlite

log = logging.getLogger("kaixu.store")

#: How many earlier responses a `previous_response_id` chain may go back (a cycle cannot form: ids are new).
MAX_CHAIN = 1000
#: How often expired responses are deleted (seconds).
PRUNE_EVERY_S = 3600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY, scope TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL, previous_id TEXT, input TEXT NOT NULL, response TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_expires ON responses (expires);
"""
_COLUMNS = "id, scope, created, expires, previous_id, input, response"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    scope: str
    """The hash of the key that made it (`kaixu/credentials.py: key_hash`): only that key reads it."""
    created: float
    expires: float
    previous_id: str | None
    input: str
    """The request's own input items (JSON array; `previous_response_id`'s history not repeated)."""
    response: str
    """The response object the client got (JSON)."""


class ResponseStore(Protocol):
    async def put(self, stored: StoredResponse) -> None: ...

    async def get(self, response_id: str, scope: str, now: float) -> StoredResponse | None: ...

    async def delete(self, response_id: str, scope: str) -> bool: ...

    async def prune(self, now: float) -> int: ...

    async def close(self) -> None: ...


class MemoryResponseStore:
    """`store.sqlite: :memory:`: one process keeps them, until it stops."""

    def __init__(self) -> None:
        self._rows: dict[str, StoredResponse] = {}

    async def put(self, stored: StoredResponse) -> None:
        self._rows[stored.id] = stored

    async def get(self, response_id: str, scope: str, now: float) -> StoredResponse | None:
        found = self._rows.get(response_id)
        return found if found is not None and found.scope == scope and found.expires > now else None

    async def delete(self, response_id: str, scope: str) -> bool:
        found = self._rows.get(response_id)
        if found is None or found.scope != scope:
            return False
        del self._rows[response_id]
        return True

    async def prune(self, now: float) -> int:
        gone = [k for k, v in self._rows.items() if v.expires <= now]
        for key in gone:
            del self._rows[key]
        return len(gone)

    async def close(self) -> None:
        return None


class SqliteResponseStore:
    """The `responses` table of the policy's SQLite file; sqlite3 blocks, so every call runs in a worker thread."""

    def __init__(self, path: str, *, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                db = open_sqlite(self.path, timeout_s=self.busy_timeout_s, pragmas=WAL_NORMAL, check_same_thread=False)
                db.executescript(SCHEMA.replace("DOUBLE PRECISION", "REAL"))
                self._db = db
            yield self._db

    def _put(self, stored: StoredResponse) -> None:
        with self._connection() as db, db:
            db.execute(f"INSERT OR REPLACE INTO responses ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (stored.id, stored.scope, stored.created, stored.expires, stored.previous_id, stored.input,
                        stored.response))  # fmt: skip

    def _get(self, response_id: str, scope: str, now: float) -> StoredResponse | None:
        with self._connection() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM responses WHERE id = ? AND scope = ? AND expires > ?",
                             (response_id, scope, now)).fetchone()  # fmt: skip
        return StoredResponse(*row) if row is not None else None

    def _delete(self, response_id: str, scope: str) -> bool:
        with self._connection() as db, db:
            return db.execute("DELETE FROM responses WHERE id = ? AND scope = ?", (response_id, scope)).rowcount > 0

    def _prune(self, now: float) -> int:
        with self._connection() as db, db:
            return db.execute("DELETE FROM responses WHERE expires <= ?", (now,)).rowcount

    async def put(self, stored: StoredResponse) -> None:
        await asyncio.to_thread(self._put, stored)

    async def get(self, response_id: str, scope: str, now: float) -> StoredResponse | None:
        return await asyncio.to_thread(self._get, response_id, scope, now)

    async def delete(self, response_id: str, scope: str) -> bool:
        return await asyncio.to_thread(self._delete, response_id, scope)

    async def prune(self, now: float) -> int:
        return await asyncio.to_thread(self._prune, now)

    async def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class PostgresResponseStore:
    """The `responses` table in PostgreSQL, through the process's asyncpg pool (kaixu/store/postgres.py)."""

    def __init__(self, dsn: str, pool_size: int) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._ready = False

    async def _connection_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await postgres.open_pool(self.dsn, self.pool_size)
        pool = self._pool
        if not self._ready:
            async with pool.acquire() as connection:
                await postgres.in_schema_lock(connection, SCHEMA)
            self._ready = True
        return pool

    async def put(self, stored: StoredResponse) -> None:
        pool = await self._connection_pool()
        await pool.execute(
            f"INSERT INTO responses ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET "
            "scope = $2, created = $3, expires = $4, previous_id = $5, input = $6, response = $7",
            stored.id, stored.scope, stored.created, stored.expires, stored.previous_id, stored.input,
            stored.response,
        )  # fmt: skip

    async def get(self, response_id: str, scope: str, now: float) -> StoredResponse | None:
        pool = await self._connection_pool()
        row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM responses WHERE id = $1 AND scope = $2 AND expires > $3",
                                  response_id, scope, now)  # fmt: skip
        return StoredResponse(*row) if row is not None else None

    async def delete(self, response_id: str, scope: str) -> bool:
        pool = await self._connection_pool()
        status = await pool.execute("DELETE FROM responses WHERE id = $1 AND scope = $2", response_id, scope)
        return bool(status.endswith(" 1"))

    async def prune(self, now: float) -> int:
        pool = await self._connection_pool()
        status = await pool.execute("DELETE FROM responses WHERE expires <= $1", now)
        return int(status.rpartition(" ")[2] or 0)

    async def close(self) -> None:
        pool, self._pool, self._ready = self._pool, None, False
        if pool is not None:
            await postgres.close_pool(pool)


class Kept:
    """The stored responses as the steps use them: writes in the background, readable at once."""

    def __init__(self, store: ResponseStore) -> None:
        self.store = store
        self._in_flight: dict[str, StoredResponse] = {}
        self._deleted: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pruned_at = time.time()

    def keep(self, stored: StoredResponse) -> None:
        """Store it without waiting (a task; readable from now on). Must run on the event loop."""
        self._in_flight[stored.id] = stored
        self._deleted.discard(stored.id)
        self._spawn(self._write(stored))
        if stored.created - self._pruned_at > PRUNE_EVERY_S:
            self._pruned_at = stored.created
            self._spawn(self._prune(stored.created))

    async def get(self, response_id: str, scope: str) -> StoredResponse | None:
        now = time.time()
        if response_id in self._deleted:
            return None
        pending = self._in_flight.get(response_id)
        if pending is not None:
            return pending if pending.scope == scope and pending.expires > now else None
        return await self.store.get(response_id, scope, now)

    async def chain(self, response_id: str, scope: str) -> list[StoredResponse] | None:
        """The response and those it continues, oldest first; None when it is not (or no longer) there."""
        out: list[StoredResponse] = []
        next_id: str | None = response_id
        while next_id is not None and len(out) < MAX_CHAIN:
            found = await self.get(next_id, scope)
            if found is None:
                return None if not out else out[::-1]  # an expired ancestor: the rest of the history still counts
            out.append(found)
            next_id = found.previous_id
        return out[::-1]

    async def delete(self, response_id: str, scope: str) -> bool:
        pending = self._in_flight.get(response_id)
        if pending is not None and pending.scope == scope:
            self._deleted.add(response_id)  # the write in flight is undone when it lands
            await self.store.delete(response_id, scope)
            return True
        return await self.store.delete(response_id, scope)

    def _spawn(self, work: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, stored: StoredResponse) -> None:
        try:
            await self.store.put(stored)
            if stored.id in self._deleted:
                await self.store.delete(stored.id, stored.scope)
                self._deleted.discard(stored.id)
        except Exception:
            log.exception("could not store response %s", stored.id)
        finally:
            if self._in_flight.get(stored.id) is stored:
                del self._in_flight[stored.id]

    async def _prune(self, now: float) -> None:
        try:
            await self.store.prune(now)
        except Exception:
            log.exception("could not delete expired stored responses")

    async def close(self) -> None:
        """Wait for the writes in flight (a response answered is a response kept), then close the store."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.store.close()
