"""The stores a policy's `store:` names: PostgreSQL when `store.postgres` is set (shared by every replica), else
the SQLite file `store.sqlite`."""

from __future__ import annotations

from kaixu.config.policy import StoreConfig
from kaixu.store import postgres
from kaixu.store.keys import AsyncKeyStore, InThread, SqliteKeyStore


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
