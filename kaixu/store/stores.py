"""The stores a policy's `store:` names: PostgreSQL when `store.postgres` is set (shared by every replica), else
the SQLite file `store.sqlite`. The gateway builds them once per (re)load (kaixu/addons/stores.py, held as
`Gateway.stores`); the CLI builds its own through the same functions."""

from __future__ import annotations

from dataclasses import dataclass

from kaixu.config.policy import StoreConfig
from kaixu.store import postgres
from kaixu.store.keys import AsyncKeyStore, InThread, SqliteKeyStore
from kaixu.store.queries import LedgerQueries, SqliteLedgerQueries


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


@dataclass(frozen=True)
class Stores:
    """What one policy's `store:` opens for the steps that read state per request (the admin API): built when
    the policy (re)loads, never chosen per request. The ledger's writer and the counters open theirs as the
    proxy starts (kaixu/addons/ledger_writer.py, kaixu/addons/counters.py)."""

    config: StoreConfig
    keys: AsyncKeyStore | None
    """None when the policy keeps no store file (`store.sqlite: :memory:`)."""
    queries: LedgerQueries

    @classmethod
    def build(cls, config: StoreConfig) -> Stores:
        """Cheap and without I/O: connections open on first use (a PostgreSQL pool, a SQLite file)."""
        return cls(config, key_store(config), ledger_queries(config))

    async def close(self) -> None:
        if self.keys is not None:
            await self.keys.close()
        await self.queries.close()
