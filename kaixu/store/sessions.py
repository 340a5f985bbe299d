"""Conversation sessions (the Intelligent AI Gateway's `session_id`): the turns of a conversation kept in the
store `store:` names, next to the jobs (table `kaixu_sessions`), so that a request naming its session gets the
earlier turns prepended on whichever provider serves it, by whichever replica. A session is its key's, and is
forgotten `sessions.ttl_s` after its last use."""

from __future__ import annotations

import json
from typing import Any, Protocol

from kaixu.config.policy import PostgresConfig
from kaixu.conversation import Session
from kaixu.store import postgres
from kaixu.store.threaded import SqliteThread


def _schema(real: str) -> str:
    return (
        "CREATE TABLE IF NOT EXISTS kaixu_sessions"
        f" (id TEXT PRIMARY KEY, owner TEXT, messages TEXT, expires_at {real});"
        "CREATE INDEX IF NOT EXISTS kaixu_sessions_expiry ON kaixu_sessions (expires_at);"
    )


_UPSERT = (
    "INSERT INTO kaixu_sessions (id, owner, messages, expires_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET messages = excluded.messages, expires_at = excluded.expires_at"
    " WHERE kaixu_sessions.owner = excluded.owner"
)
_GET = "SELECT owner, messages FROM kaixu_sessions WHERE id = ? AND expires_at >= ?"
_PRUNE = "DELETE FROM kaixu_sessions WHERE expires_at < ?"


class SessionStore(Protocol):
    async def get(self, session_id: str, owner: str, now: float) -> Session | None:
        """The session, if it is `owner`'s and not expired."""
        ...

    async def save(self, session: Session, messages: list[dict[str, Any]], expires_at: float) -> None:
        """The session's turns now (a session another key holds is left alone)."""
        ...

    async def prune(self, now: float) -> int: ...
    async def close(self) -> None: ...


def _session(session_id: str, owner: str, row: Any) -> Session | None:
    if row is None or row[0] != owner:
        return None
    messages = json.loads(row[1])
    return Session(session_id, owner, messages if isinstance(messages, list) else [])


class SessionTable:
    """`SessionStore` on SQLite (in a worker thread) or PostgreSQL (the process's pool): the same SQL."""

    def __init__(self, db: SqliteThread | postgres.PooledTables) -> None:
        self.db = db

    async def get(self, session_id: str, owner: str, now: float) -> Session | None:
        return _session(session_id, owner, await self.db.fetchone(_GET, session_id, now))

    async def save(self, session: Session, messages: list[dict[str, Any]], expires_at: float) -> None:
        await self.db.execute(_UPSERT, session.id, session.owner, json.dumps(messages), expires_at)

    async def prune(self, now: float) -> int:
        return await self.db.execute(_PRUNE, now)

    async def close(self) -> None:
        await self.db.close()


def session_store(path: str, config: PostgresConfig | None) -> SessionStore:
    if config is not None:
        return SessionTable(postgres.PooledTables(config, _schema("DOUBLE PRECISION"), "session store"))
    return SessionTable(SqliteThread(path, _schema("REAL"), "session store"))
