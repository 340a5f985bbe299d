"""The stores a policy's `store:` names: PostgreSQL when `store.postgres` is set (shared by every replica), else
the SQLite file `store.sqlite`. The gateway builds them once per (re)load (kaixu/addons/stores.py, held as
`Gateway.stores`); the CLI builds its own through the same functions."""

from __future__ import annotations

from dataclasses import dataclass

from kaixu.config.policy import StoreConfig
from kaixu.store import postgres
from kaixu.store.jobs import JobStore, job_store
from kaixu.store.keys import AsyncKeyStore, InThread, SqliteKeyStore
from kaixu.store.queries import LedgerQueries, SqliteLedgerQueries
from kaixu.store.responses import Kept, MemoryResponseStore, PostgresResponseStore, ResponseStore, SqliteResponseStore
from kaixu.store.seats import PostgresSeatStore, SeatStore, SqliteSeatStore
from kaixu.store.sessions import SessionStore, session_store


def key_store(store: StoreConfig, *, sqlite_path: str | None = None) -> AsyncKeyStore | None:
    """The key store a policy's `store:` names: PostgreSQL when `postgres` is set, else its SQLite file
    (`sqlite_path` overrides it: the CLI's --db). None when there is no place to keep keys (`:memory:`)."""
    pg = store.postgres
    if pg is not None and sqlite_path is None:
        return postgres.PostgresKeyStore(pg.dsn, pg.pool_size)
    path = sqlite_path or store.sqlite
    if path == ":memory:" or path.startswith("file:"):
        return None
    return InThread(SqliteKeyStore(path))


def ledger_queries(store: StoreConfig) -> LedgerQueries:
    """The reader of the ledger the writer keeps: `store.postgres` when set, else `store.sqlite` (a `:memory:`
    reader answers every query with `LedgerUnavailable`)."""
    pg = store.postgres
    if pg is not None:
        return postgres.PostgresLedgerQueries(pg.dsn, pg.pool_size)
    return SqliteLedgerQueries(store.sqlite)


def seat_store(store: StoreConfig) -> SeatStore | None:
    """The seats a policy's `store:` keeps: in PostgreSQL through the pool the ledger opens as the proxy starts
    (`postgres.SharedPool`), else in its SQLite file. None when there is no durable place (`:memory:`): a
    request bound to seats is then refused (503)."""
    pg = store.postgres
    if pg is not None:
        return PostgresSeatStore(postgres.SharedPool(pg))
    path = store.sqlite
    if path == ":memory:" or path.startswith("file:"):
        return None
    return SqliteSeatStore(path)


def response_store(store: StoreConfig) -> ResponseStore:
    """Where stored responses live: `store.postgres` when set, else `store.sqlite` (a process-local dict for
    `:memory:`)."""
    pg = store.postgres
    if pg is not None:
        return PostgresResponseStore(pg.dsn, pg.pool_size)
    if store.sqlite == ":memory:":
        return MemoryResponseStore()
    return SqliteResponseStore(store.sqlite)


@dataclass(frozen=True)
class Stores:
    """What one policy's `store:` opens for the steps that read state per request (the admin API, the seats
    step): built when the policy (re)loads, never chosen per request.

    The ledger's writer and the counters are not here on purpose: they open as the proxy starts and stay for
    its life (kaixu/addons/ledger_writer.py, kaixu/addons/counters.py), because each holds what a reload must
    not drop: records queued for the next batch, budget reservations of requests in flight. A reload that names
    another store changes the keys, the admin API's reads and the seats at once; the ledger and the counters
    keep theirs until a restart (logged), so one request's records and reservations never split across two."""

    config: StoreConfig
    keys: AsyncKeyStore | None
    """None when the policy keeps no store file (`store.sqlite: :memory:`)."""
    queries: LedgerQueries
    seats: SeatStore | None
    """None when the policy keeps no durable store (`store.sqlite: :memory:`)."""
    responses: Kept
    """The Responses API's stored responses (kaixu/store/responses.py)."""
    jobs: JobStore
    """The background jobs (kaixu/jobs/): the SQLite file (kept in memory under `:memory:`), or PostgreSQL."""
    sessions: SessionStore
    """The conversations of `sessions:` (kaixu/addons/sessions.py), where the jobs are."""

    @classmethod
    def build(cls, config: StoreConfig) -> Stores:
        """Cheap and without I/O: connections open on first use (a PostgreSQL pool, a SQLite file)."""
        where = (config.sqlite, config.postgres)
        return cls(
            config,
            key_store(config),
            ledger_queries(config),
            seat_store(config),
            Kept(response_store(config)),
            job_store(*where),
            session_store(*where),
        )

    async def close(self) -> None:
        if self.keys is not None:
            await self.keys.close()
        await self.queries.close()
        await self.responses.close()
        await self.jobs.close()
        await self.sessions.close()
