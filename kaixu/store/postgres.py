"""PostgreSQL for several replicas (`store: {postgres: {dsn, pool_size}}`): the ledger and the store keys live
in one database every replica shares, through asyncpg, an async driver, so nothing here blocks the event loop
or needs a worker thread. The tables are the SQLite ones (the ledger's columns come from `LedgerRecord`), made
on open; `keys_version` is moved by a trigger, as in SQLite.

One pool per process and dsn (`open_pool`), shared by the ledger, the key snapshot and whatever else keeps
state here (install seats): a replica holds at most `pool_size` connections whatever uses them.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import re
import urllib.parse
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import fields
from typing import Any

import asyncpg

from kaixu.config.policy import DEFAULT_POOL_SIZE, PostgresConfig
from kaixu.store.keys import COLUMNS as KEY_COLUMNS
from kaixu.store.keys import KeyExists, KeyRevoked, StoredKey, key_row, key_values, snapshot_of
from kaixu.store.ledger import FIELD_KINDS, LedgerRecord, StoreUnavailable, describe
from kaixu.store.queries import (
    DIMENSIONS,
    MAX_CONCURRENT,
    MAX_LIMIT,
    CostRow,
    Costs,
    Filters,
    LedgerUnavailable,
    Order,
    Page,
    costs_of,
    costs_sql,
    decode_cursor,
    page_of,
    prompt_log_of,
    prompt_log_sql,
    requests_sql,
    total_of,
    total_sql,
)

# -- the pool ----------------------------------------------------------------------------------------------

_pools: dict[tuple[str, int], tuple[asyncpg.Pool, asyncio.AbstractEventLoop, int]] = {}
_opening: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
"""One lock per event loop (a lock is bound to the loop it first waited on; tests run several loops)."""


async def open_pool(dsn: str, size: int = DEFAULT_POOL_SIZE) -> asyncpg.Pool:
    """The process's pool for `dsn` (made on first use, on the running loop): every caller gets the same one
    and gives it back with `close_pool`, which closes it after the last caller. No connection is made until one
    is needed (`min_size=0`), so a server that is down does not fail this call: the first query does.
    Server settings can ride in the dsn's query (`?search_path=kaixu`): asyncpg passes unknown ones on."""
    loop = asyncio.get_running_loop()
    async with _opening.setdefault(loop, asyncio.Lock()):
        held = _pools.get((dsn, size))
        if held is not None and held[1] is loop and not held[0].is_closing():
            _pools[(dsn, size)] = (held[0], loop, held[2] + 1)
            return held[0]
        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=size, max_inactive_connection_lifetime=60.0)
        _pools[(dsn, size)] = (pool, loop, 1)
        return pool


def pool_for(config: PostgresConfig | None) -> asyncpg.Pool | None:
    """The pool already open for the policy's `store.postgres` (the ledger opens it as the proxy starts), for
    steps that need it synchronously (the seats step); None before it is open or without `store.postgres`."""
    held = None if config is None else _pools.get((config.dsn, config.pool_size))
    return None if held is None else held[0]


class SharedPool:
    """The pool the ledger opens for a `store.postgres` as the proxy starts (`pool_for`), looked up at each use:
    a store built when the policy loads (kaixu/store/stores.py) names it before it is open. It stands for the
    pool (`acquire`, `fetch`...: every attribute is the open pool's); until the pool is open, using it raises
    `StoreUnavailable`, which a store's caller handles as any failure of the server (fail closed)."""

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config

    def __getattr__(self, name: str) -> Any:
        pool = pool_for(self.config)
        if pool is None:
            raise StoreUnavailable("the PostgreSQL pool of store.postgres is not open yet")
        return getattr(pool, name)


async def close_pool(pool: asyncpg.Pool) -> None:
    """Gives back a pool `open_pool` returned; the last user closes it."""
    for name, (held, loop, users) in list(_pools.items()):
        if held is pool:
            if users > 1:
                _pools[name] = (held, loop, users - 1)
                return
            del _pools[name]
            break
    await pool.close()


def dsn_shown(dsn: str) -> str:
    """The dsn as /health and the logs may show it: host, port and database, never the user or password."""
    try:
        parsed = urllib.parse.urlsplit(dsn)
        host = parsed.hostname or "localhost"
        port = f":{parsed.port}" if parsed.port else ""
    except ValueError:
        return "postgresql://(unparsable dsn)"
    database = parsed.path.lstrip("/") or "(default)"
    return f"postgresql://{host}{port}/{database}"


async def in_schema_lock(connection: asyncpg.Connection, script: str) -> None:
    """DDL run by one replica at a time (two `CREATE TABLE IF NOT EXISTS` at once can both try to create)."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext('kaixu schema'))")
        await connection.execute(script)


# -- the ledger ------------------------------------------------------------------------------------------

_COLUMNS = [f.name for f in fields(LedgerRecord)]
_SQL_TYPES = {str: "TEXT", int: "BIGINT", float: "DOUBLE PRECISION"}
LEDGER_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests (
    {", ".join(f"{name} {_SQL_TYPES[FIELD_KINDS[name]]}" for name in _COLUMNS)}, id BIGSERIAL
);
{"".join(f"ALTER TABLE requests ADD COLUMN IF NOT EXISTS {n} {_SQL_TYPES[FIELD_KINDS[n]]};" for n in _COLUMNS)}
ALTER TABLE requests ADD COLUMN IF NOT EXISTS id BIGSERIAL;
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts, id);
"""
"""The SQLite ledger's table, with BIGINT for INTEGER and DOUBLE PRECISION for REAL, and `id`, the row's
position (SQLite's `rowid`: the tie-breaker of paging); a table made by an older kaixu gains the columns added
since (`ADD COLUMN IF NOT EXISTS`). `requests_ts` serves the listings, the prompt log, time ranges and the
retention deletes."""
_row = operator.attrgetter(*_COLUMNS)
"""A record as the tuple COPY sends. COPY (binary) over multi-row INSERTs: 61,000 against 9,300 records/s
written here (batches of 1,000); asyncpg binds at most 32,767 parameters a statement anyway."""
_PRUNE = "DELETE FROM requests WHERE ctid = ANY(ARRAY(SELECT ctid FROM requests WHERE ts < $1 LIMIT $2))"
PRUNE_BATCH = 2000
PRUNE_PAUSE_S = 0.005


class PostgresLedgerStore:
    """The `AsyncLedgerStore` contract on PostgreSQL: each write is one transaction (rolled back when it
    fails); the database's failures (connection refused or lost, server shutting down, a lock not granted)
    are `StoreUnavailable`, the records' (text with NUL or a lone surrogate, a number out of range, a
    constraint) are raised as they are."""

    def __init__(self, dsn: str, pool_size: int = DEFAULT_POOL_SIZE, *, prune_batch: int = PRUNE_BATCH) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.prune_batch = prune_batch
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        await self.close()
        try:
            pool = await open_pool(self.dsn, self.pool_size)
        except Exception as exc:
            raise _unavailable(exc) from exc
        self._pool = pool
        try:
            async with pool.acquire() as connection:
                await in_schema_lock(connection, LEDGER_SCHEMA)
        except BaseException as exc:
            self._pool = None
            await close_pool(pool)
            if isinstance(exc, Exception):
                raise _unavailable(exc) from exc
            raise

    async def write(self, records: Sequence[LedgerRecord]) -> None:
        pool = self._live_pool()
        try:
            async with pool.acquire() as connection, connection.transaction():
                await connection.copy_records_to_table("requests", records=map(_row, records), columns=_COLUMNS)
        except Exception as exc:
            raise _classified(exc) from exc

    async def prune(self, before_ts: float) -> int:
        """Deletes the rows with `ts < before_ts`, `prune_batch` at a time, each batch its own transaction."""
        deleted = 0
        while True:
            pool = self._live_pool()
            try:
                status = await pool.execute(_PRUNE, before_ts, self.prune_batch)
            except Exception as exc:
                raise _classified(exc) from exc
            count = int(status.rsplit(" ", 1)[-1])
            deleted += count
            if count < self.prune_batch:
                return deleted
            await asyncio.sleep(PRUNE_PAUSE_S)

    async def ping(self) -> bool:
        try:
            return self._pool is not None and await self._pool.fetchval("SELECT 1") == 1
        except Exception:
            return False

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await close_pool(pool)

    def _live_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        return self._pool


def _records_fault(exc: BaseException) -> bool:
    """The records, not the database: data exceptions (SQLSTATE class 22: NUL in text, a bad value) and
    integrity violations (23), and what asyncpg refuses to encode before sending (a lone surrogate, an int
    beyond 64 bits, a value of the wrong type)."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "").startswith(("22", "23"))
    return isinstance(exc, (UnicodeError, OverflowError, TypeError, ValueError))


def _classified(exc: Exception) -> Exception:
    return exc if _records_fault(exc) or isinstance(exc, StoreUnavailable) else _unavailable(exc)


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(describe(exc))


# -- the store keys --------------------------------------------------------------------------------------

KEYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    name TEXT PRIMARY KEY,
    hmac TEXT NOT NULL UNIQUE,
    team TEXT,
    customer TEXT,
    models TEXT NOT NULL DEFAULT '[]',
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION,
    revoked DOUBLE PRECISION,
    previous_hmac TEXT,
    previous_until DOUBLE PRECISION,
    budget_usd_micros BIGINT,
    budget_period TEXT,
    rpm BIGINT,
    tpm BIGINT,
    max_parallel BIGINT,
    seats BIGINT
);
ALTER TABLE keys ADD COLUMN IF NOT EXISTS budget_usd_micros BIGINT;
ALTER TABLE keys ADD COLUMN IF NOT EXISTS budget_period TEXT;
ALTER TABLE keys ADD COLUMN IF NOT EXISTS rpm BIGINT;
ALTER TABLE keys ADD COLUMN IF NOT EXISTS tpm BIGINT;
ALTER TABLE keys ADD COLUMN IF NOT EXISTS max_parallel BIGINT;
ALTER TABLE keys ADD COLUMN IF NOT EXISTS seats BIGINT;
CREATE TABLE IF NOT EXISTS keys_version (id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL);
INSERT INTO keys_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE OR REPLACE FUNCTION kaixu_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE keys_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER keys_changed AFTER INSERT OR UPDATE OR DELETE ON keys
    FOR EACH STATEMENT EXECUTE FUNCTION kaixu_keys_changed();
"""
"""The SQLite `keys` table (kaixu/store/keys.py) and its version row, moved by a statement trigger on every
change, by any replica, CLI or tool (PostgreSQL 14 or later, for CREATE OR REPLACE TRIGGER)."""

_KEY_COLUMNS = KEY_COLUMNS
_INSERT_KEY = (
    f"INSERT INTO keys ({KEY_COLUMNS}) VALUES ({', '.join(f'${n + 1}' for n in range(len(KEY_COLUMNS.split(','))))})"
)


class PostgresKeyStore:
    """The `keys` table in PostgreSQL, with the methods of `SqliteKeyStore` as coroutines (`AsyncKeyStore`)."""

    def __init__(self, dsn: str, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.path = dsn_shown(dsn)
        """Where the keys are, as messages name it (the CLI's `created in ...`): never the password."""
        self._pool: asyncpg.Pool | None = None
        self._ready = False

    async def _connection_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await open_pool(self.dsn, self.pool_size)
        if not self._ready:
            async with self._pool.acquire() as connection:
                await in_schema_lock(connection, KEYS_SCHEMA)
            self._ready = True
        return self._pool

    async def close(self) -> None:
        pool, self._pool, self._ready = self._pool, None, False
        if pool is not None:
            await close_pool(pool)

    async def create(self, key: StoredKey) -> None:
        pool = await self._connection_pool()
        try:
            await pool.execute(_INSERT_KEY, *key_values(key))
        except asyncpg.UniqueViolationError:
            raise KeyExists(f"a key named {key.name!r} exists already") from None

    async def all(self) -> list[StoredKey]:
        pool = await self._connection_pool()
        rows = await pool.fetch(f"SELECT {_KEY_COLUMNS} FROM keys ORDER BY created, name")
        return [key_row(tuple(row)) for row in rows]

    async def get(self, name: str) -> StoredKey | None:
        pool = await self._connection_pool()
        row = await pool.fetchrow(f"SELECT {_KEY_COLUMNS} FROM keys WHERE name = $1", name)
        return None if row is None else key_row(tuple(row))

    async def revoke(self, name: str, now: float) -> bool:
        pool = await self._connection_pool()
        status = await pool.execute("UPDATE keys SET revoked = COALESCE(revoked, $1) WHERE name = $2", now, name)
        return status != "UPDATE 0"

    async def rotate(self, name: str, new_hmac: str, now: float, grace_s: float) -> bool:
        pool = await self._connection_pool()
        async with pool.acquire() as connection, connection.transaction():
            status = await connection.execute(
                "UPDATE keys SET previous_hmac = hmac, previous_until = $1, hmac = $2 "
                "WHERE name = $3 AND revoked IS NULL", now + grace_s, new_hmac, name,
            )  # fmt: skip
            if status != "UPDATE 0":
                return True
            if await connection.fetchval("SELECT 1 FROM keys WHERE name = $1", name) is not None:
                raise KeyRevoked(f"the key {name!r} was revoked; make a new one with `kaixu keys create`")
            return False

    async def version(self) -> int | None:
        pool = await self._connection_pool()
        value = await pool.fetchval("SELECT version FROM keys_version WHERE id = 1")
        return None if value is None else int(value)

    async def snapshot(self) -> dict[str, StoredKey]:
        return snapshot_of(await self.all())


# -- the ledger read back (kaixu/store/queries.py: the same SQL as SQLite's) ----------------------------------

_PLACEHOLDER = re.compile(r"\?")


def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2...` (the builders' SQL has no `?` anywhere else)."""
    counter = itertools.count(1)
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class PostgresLedgerQueries:
    """`LedgerQueries` on the PostgreSQL ledger: the SQLite SQL (kaixu/store/queries.py builders), awaited on
    the process's pool (`open_pool`); at most `MAX_CONCURRENT` at once, so admin reads leave the ledger writer
    and the key snapshot their connections."""

    POSITION = "id"

    def __init__(self, dsn: str, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.path = dsn_shown(dsn)
        self._pool: asyncpg.Pool | None = None
        self._gate: asyncio.Semaphore | None = None

    async def costs(self, group_by: str, filters: Filters, *, limit: int = MAX_LIMIT) -> Costs:
        column = DIMENSIONS[group_by]
        return costs_of(await self._fetch(lambda present: costs_sql(column, filters, present)), limit)

    async def key_cost(self, key_name: str, filters: Filters) -> CostRow:
        scoped = Filters(filters.since, filters.until, (*filters.equals, ("key", key_name)), filters.status)
        rows = await self._fetch(lambda present: total_sql(scoped, present))
        return total_of(key_name, rows[0])

    async def prompt_log(self, limit: int) -> list[dict[str, Any]]:
        return prompt_log_of(await self._fetch(lambda present: prompt_log_sql(present, limit, self.POSITION)))

    async def requests(
        self,
        filters: Filters,
        *,
        limit: int,
        cursor: str | None = None,
        offset: int = 0,
        order: Order = "desc",
        content: bool = False,
    ) -> Page:
        after = decode_cursor(cursor) if cursor is not None else None
        chosen: list[str] = []

        def statement(present: set[str]) -> tuple[str, list[Any]]:
            sql, params, columns = requests_sql(
                filters, present, limit, after, offset, order, content, position=self.POSITION
            )
            chosen[:] = columns
            return sql, params

        rows = await self._fetch(statement)
        return page_of(rows, chosen, limit)

    async def records(self, filters: Filters, *, batch: int = MAX_LIMIT) -> AsyncIterator[dict[str, Any]]:
        """Every record of `filters`, oldest first, page by page (bounded memory): the export."""
        cursor: str | None = None
        while True:
            page = await self.requests(filters, limit=batch, cursor=cursor, order="asc", content=True)
            for record in page.records:
                yield record
            if not page.more:
                return
            cursor = page.cursors[-1]

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await close_pool(pool)

    async def _fetch(self, statement: Callable[[set[str]], tuple[str, list[Any]]]) -> list[tuple[Any, ...]]:
        if self._gate is None:
            self._gate = asyncio.Semaphore(MAX_CONCURRENT)
        async with self._gate:
            try:
                if self._pool is None:
                    self._pool = await open_pool(self.dsn, self.pool_size)
                async with self._pool.acquire() as connection:
                    present = {
                        str(row[0])
                        for row in await connection.fetch(
                            "SELECT column_name FROM information_schema.columns "
                            "WHERE table_name = 'requests' AND table_schema = current_schema()"
                        )
                    }
                    if not present:
                        raise LedgerUnavailable(f"{self.path} holds no ledger yet (no requests table)")
                    sql, params = statement(present)
                    return [tuple(row) for row in await connection.fetch(numbered(sql), *params)]
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise LedgerUnavailable(f"the ledger {self.path} could not be read: {describe(exc)}") from exc


# -- tables of other state (jobs, sessions) -------------------------------------------------------------------


class PooledTables:
    """A store's tables on the process's pool: made (under the schema lock) on first use, each call on a
    connection of the pool; a server that cannot be reached is `StoreUnavailable` (`what` names the store)."""

    def __init__(self, config: PostgresConfig, schema: str, what: str) -> None:
        self.config = config
        self.schema = schema
        self.what = what
        self._pool: asyncpg.Pool | None = None
        self._ready = False

    async def run(self, work: Callable[[asyncpg.Connection], Any]) -> Any:
        """`await work(connection)` on a connection of the pool."""
        try:
            if self._pool is None:
                self._pool = await open_pool(self.config.dsn, self.config.pool_size)
            async with self._pool.acquire() as connection:
                if not self._ready:
                    await in_schema_lock(connection, self.schema)
                    self._ready = True
                return await work(connection)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"the {self.what} cannot be reached: {exc}") from exc

    async def execute(self, sql: str, *args: Any) -> int:
        """Rows an INSERT, UPDATE or DELETE (`?` placeholders) touched."""
        status = await self.run(lambda c: c.execute(numbered(sql), *args))
        return int(str(status).rsplit(" ", 1)[-1])

    async def fetchone(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        """The first row of a query with `?` placeholders."""
        row = await self.run(lambda c: c.fetchrow(numbered(sql), *args))
        return None if row is None else tuple(row)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await close_pool(pool)
