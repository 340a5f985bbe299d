"""Seats (Kaixu Gateway 13's device binding, docs/keys.md#seats): which installs (`x-kaixu-install-id`) a key or
an end customer with `seats: N` may be used from, kept in the store beside the keys: SQLite (the policy's
`store.sqlite`) or PostgreSQL (`store.postgres`, shared by replicas), behind one protocol, `SeatStore`.

A seat is one row of `seats` (scope `key:NAME` or `customer:NAME`, install id, first and last seen, revoked).
Claiming one is atomic across processes and replicas (SQLite `BEGIN IMMEDIATE`, PostgreSQL an advisory lock on
the scope inside the transaction), so two replicas racing for the last seat admit one. A revoked install frees
its seat and stays refused. `seats_version` moves (triggers) whenever a seat is revoked or deleted, whoever did
it: the proxy polls that one row every second and rereads the revoked installs only when it moved
(kaixu/addons/seat_limits.py). last_seen is written in batches, and does not move the version.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from kaixu.store.connect import WAL, open_sqlite
from kaixu.store.queries import iso

Claim = Literal["admitted", "full", "revoked"]
"""What claiming a seat gave: the install holds a seat (new or known), every seat is taken, or it was revoked."""

Pair = tuple[str, str]
"""(scope, install id)."""

INSTALL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/=~-]{0,127}")
INSTALL_ID_RULE = "1-128 letters, digits, '.', '_', ':', '+', '/', '=', '~' or '-', starting with a letter or digit"
"""What an install id may be: checked before it reaches a store, a log line or an answer (UUIDs, base64url...)."""


def key_scope(name: str) -> str:
    return "key:" + name


def customer_scope(name: str) -> str:
    return "customer:" + name


@dataclass(frozen=True, slots=True)
class Seat:
    """One row of `seats`: what `kaixu seats list` shows."""

    scope: str
    install_id: str
    first_seen: float
    last_seen: float
    revoked: float | None

    @property
    def state(self) -> str:
        return "active" if self.revoked is None else "revoked"


class SeatStore(Protocol):
    """Where seats live. Every method is async: the SQLite store runs its blocking calls in a worker thread."""

    async def claim(self, scope: str, install_id: str, limit: int, now: float) -> Claim:
        """The install's seat in `scope`: a known install is admitted again (its last_seen moves), a revoked
        one refused, a new one admitted only while fewer than `limit` installs of the scope hold a seat."""
        ...

    async def version(self) -> int:
        """`seats_version`: moves whenever a seat is revoked or deleted."""
        ...

    async def revoked(self) -> set[Pair]:
        """Every revoked (scope, install id)."""
        ...

    async def touch(self, pairs: Iterable[Pair], now: float) -> None:
        """last_seen of these seats is `now` (one batch)."""
        ...

    async def seats(self, scope: str | None = None) -> list[Seat]:
        """Every seat (of one scope), by scope then first seen."""
        ...

    async def revoke(self, scope: str, install_id: str, now: float) -> bool:
        """Revokes the install in `scope` (frees its seat; it stays refused). An install never seen is recorded
        revoked, so it is refused from its first request. False when it was not seen before."""
        ...


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS seats (
    scope TEXT NOT NULL,
    install_id TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    revoked REAL,
    PRIMARY KEY (scope, install_id)
);
CREATE TABLE IF NOT EXISTS seats_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
INSERT OR IGNORE INTO seats_version (id, version) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS seats_revoked AFTER UPDATE OF revoked ON seats BEGIN
    UPDATE seats_version SET version = version + 1;
END;
CREATE TRIGGER IF NOT EXISTS seats_inserted_revoked AFTER INSERT ON seats WHEN NEW.revoked IS NOT NULL BEGIN
    UPDATE seats_version SET version = version + 1;
END;
CREATE TRIGGER IF NOT EXISTS seats_deleted AFTER DELETE ON seats BEGIN
    UPDATE seats_version SET version = version + 1;
END;
"""

_SELECT = "SELECT scope, install_id, first_seen, last_seen, revoked FROM seats"


def _seat(row: Any) -> Seat:
    scope, install_id, first_seen, last_seen, revoked = row
    return Seat(
        str(scope), str(install_id), float(first_seen), float(last_seen), None if revoked is None else float(revoked)
    )


class SqliteSeatStore:
    """The `seats` table of the policy's SQLite file (created on the first claim or revoke). One short connection
    per call, in a worker thread: claims happen once per new install, reads once a second."""

    def __init__(self, path: str, *, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._ready = False

    @contextlib.contextmanager
    def _db(self, *, create: bool) -> Iterator[sqlite3.Connection]:
        if not create and not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path} does not exist")
        db = open_sqlite(self.path, timeout_s=self.busy_timeout_s, pragmas=WAL if create and not self._ready else ())
        try:
            if create and not self._ready:
                db.executescript(SQLITE_SCHEMA)
                self._ready = True
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the file's write lock first (`BEGIN IMMEDIATE`): the writes of every
        process are serialised, so what a claim counts is still true when it inserts."""
        with self._db(create=True) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _read(self, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Rows of a read; none when there is no file or no table yet (no seat was ever claimed)."""
        try:
            with self._db(create=False) as db:
                return db.execute(query, params).fetchall()
        except FileNotFoundError:
            return []
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise

    def _claim(self, scope: str, install_id: str, limit: int, now: float) -> Claim:
        with self._write() as db:
            row = db.execute(
                "SELECT revoked FROM seats WHERE scope = ? AND install_id = ?", (scope, install_id)
            ).fetchone()
            if row is not None:
                if row[0] is not None:
                    return "revoked"
                db.execute("UPDATE seats SET last_seen = ? WHERE scope = ? AND install_id = ?",
                           (now, scope, install_id))  # fmt: skip
                return "admitted"
            (taken,) = db.execute("SELECT count(*) FROM seats WHERE scope = ? AND revoked IS NULL", (scope,)).fetchone()
            if taken >= limit:
                return "full"
            db.execute("INSERT INTO seats (scope, install_id, first_seen, last_seen) VALUES (?, ?, ?, ?)",
                       (scope, install_id, now, now))  # fmt: skip
            return "admitted"

    async def claim(self, scope: str, install_id: str, limit: int, now: float) -> Claim:
        return await asyncio.to_thread(self._claim, scope, install_id, limit, now)

    async def version(self) -> int:
        rows = await asyncio.to_thread(self._read, "SELECT version FROM seats_version WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    async def revoked(self) -> set[Pair]:
        rows = await asyncio.to_thread(self._read, "SELECT scope, install_id FROM seats WHERE revoked IS NOT NULL")
        return {(str(scope), str(install)) for scope, install in rows}

    def _touch(self, pairs: list[Pair], now: float) -> None:
        with self._write() as db:
            db.executemany("UPDATE seats SET last_seen = max(last_seen, ?) WHERE scope = ? AND install_id = ?",
                           [(now, scope, install) for scope, install in pairs])  # fmt: skip

    async def touch(self, pairs: Iterable[Pair], now: float) -> None:
        batch = list(pairs)
        if batch:
            await asyncio.to_thread(self._touch, batch, now)

    async def seats(self, scope: str | None = None) -> list[Seat]:
        where, params = ("", ()) if scope is None else (" WHERE scope = ?", (scope,))
        rows = await asyncio.to_thread(self._read, _SELECT + where + " ORDER BY scope, first_seen", params)
        return [_seat(r) for r in rows]

    def _revoke(self, scope: str, install_id: str, now: float) -> bool:
        with self._write() as db:
            cursor = db.execute("UPDATE seats SET revoked = COALESCE(revoked, ?) WHERE scope = ? AND install_id = ?",
                                (now, scope, install_id))  # fmt: skip
            if cursor.rowcount > 0:
                return True
            db.execute("INSERT INTO seats (scope, install_id, first_seen, last_seen, revoked) VALUES (?, ?, ?, ?, ?)",
                       (scope, install_id, now, now, now))  # fmt: skip
            return False

    async def revoke(self, scope: str, install_id: str, now: float) -> bool:
        return await asyncio.to_thread(self._revoke, scope, install_id, now)


POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS seats (
    scope text NOT NULL,
    install_id text NOT NULL,
    first_seen double precision NOT NULL,
    last_seen double precision NOT NULL,
    revoked double precision,
    PRIMARY KEY (scope, install_id)
);
CREATE TABLE IF NOT EXISTS seats_version (id integer PRIMARY KEY CHECK (id = 1), version bigint NOT NULL);
INSERT INTO seats_version (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION kaixu_seats_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE seats_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER seats_revoked AFTER UPDATE OF revoked OR DELETE ON seats
    FOR EACH ROW EXECUTE FUNCTION kaixu_seats_version_bump();
CREATE OR REPLACE TRIGGER seats_inserted_revoked AFTER INSERT ON seats
    FOR EACH ROW WHEN (NEW.revoked IS NOT NULL) EXECUTE FUNCTION kaixu_seats_version_bump();
"""

_PG_LOCK = "SELECT pg_advisory_xact_lock(hashtext('kaixu.seats'), hashtext($1))"
"""Serialises claims and revocations of one scope across every replica, for the transaction's length."""


class PostgresSeatStore:
    """The `seats` table in PostgreSQL (`store.postgres`), through an `asyncpg.Pool` its caller owns (the pool
    the store's other tables use). The tables are created once per process, under an advisory lock so that
    replicas starting together do not race on the DDL."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def _ensure(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('kaixu.seats.schema'))")
                await conn.execute(POSTGRES_SCHEMA)
            self._ready = True

    async def claim(self, scope: str, install_id: str, limit: int, now: float) -> Claim:
        await self._ensure()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_PG_LOCK, scope)
            row = await conn.fetchrow(
                "SELECT revoked FROM seats WHERE scope = $1 AND install_id = $2", scope, install_id
            )
            if row is not None:
                if row["revoked"] is not None:
                    return "revoked"
                await conn.execute("UPDATE seats SET last_seen = $3 WHERE scope = $1 AND install_id = $2",
                                   scope, install_id, now)  # fmt: skip
                return "admitted"
            taken = await conn.fetchval("SELECT count(*) FROM seats WHERE scope = $1 AND revoked IS NULL", scope)
            if taken >= limit:
                return "full"
            await conn.execute("INSERT INTO seats (scope, install_id, first_seen, last_seen) VALUES ($1, $2, $3, $3)",
                               scope, install_id, now)  # fmt: skip
            return "admitted"

    async def version(self) -> int:
        await self._ensure()
        return int(await self.pool.fetchval("SELECT version FROM seats_version WHERE id = 1") or 0)

    async def revoked(self) -> set[Pair]:
        await self._ensure()
        rows = await self.pool.fetch("SELECT scope, install_id FROM seats WHERE revoked IS NOT NULL")
        return {(r["scope"], r["install_id"]) for r in rows}

    async def touch(self, pairs: Iterable[Pair], now: float) -> None:
        batch = list(pairs)
        if not batch:
            return
        await self._ensure()
        await self.pool.execute(
            "UPDATE seats SET last_seen = GREATEST(last_seen, $3) FROM unnest($1::text[], $2::text[]) AS t(s, i) "
            "WHERE seats.scope = t.s AND seats.install_id = t.i",
            [s for s, _ in batch], [i for _, i in batch], now,
        )  # fmt: skip

    async def seats(self, scope: str | None = None) -> list[Seat]:
        await self._ensure()
        if scope is None:
            rows = await self.pool.fetch(_SELECT + " ORDER BY scope, first_seen")
        else:
            rows = await self.pool.fetch(_SELECT + " WHERE scope = $1 ORDER BY scope, first_seen", scope)
        return [_seat(tuple(r)) for r in rows]

    async def revoke(self, scope: str, install_id: str, now: float) -> bool:
        await self._ensure()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_PG_LOCK, scope)
            status = await conn.execute(
                "UPDATE seats SET revoked = COALESCE(revoked, $3) WHERE scope = $1 AND install_id = $2",
                scope, install_id, now,
            )  # fmt: skip
            if status != "UPDATE 0":
                return True
            await conn.execute(
                "INSERT INTO seats (scope, install_id, first_seen, last_seen, revoked) VALUES ($1, $2, $3, $3, $3)",
                scope, install_id, now,
            )  # fmt: skip
            return False


def seat_json(seat: Seat) -> dict[str, Any]:
    """A seat as `kaixu seats list --json` and `/api/seats` show it."""
    return {"scope": seat.scope, "install_id": seat.install_id, "first_seen": iso(seat.first_seen),
            "last_seen": iso(seat.last_seen), "revoked": iso(seat.revoked), "state": seat.state}  # fmt: skip
