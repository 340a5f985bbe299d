"""The embedded SQLite store. sqlite3 is blocking, so every call here runs in a worker thread
(`asyncio.to_thread`), never on mitmproxy's event loop."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import astuple, fields

from kaixu.store.ledger import LedgerRecord

_COLUMNS = [f.name for f in fields(LedgerRecord)]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT, ts REAL, front TEXT, operation TEXT, key_name TEXT, team TEXT, model TEXT,
    provider TEXT, upstream_model TEXT, status INTEGER, stream INTEGER, input_tokens INTEGER,
    output_tokens INTEGER, cached_input_tokens INTEGER, latency_ms REAL, error TEXT, attributes TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
"""
_INSERT = f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"


class SqliteLedgerStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        with self._lock:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            _add_missing_columns(db)
            self._db = db

    def write(self, records: Sequence[LedgerRecord]) -> None:
        with self._lock:
            assert self._db is not None, "store not open"
            self._db.execute("BEGIN")
            self._db.executemany(_INSERT, [astuple(r) for r in records])
            self._db.execute("COMMIT")

    def ping(self) -> bool:
        with self._lock:
            return self._db is not None and self._db.execute("SELECT 1").fetchone() == (1,)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """A ledger written by an older kaixu gains the columns added since (new columns are nullable)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
    for name in _COLUMNS:
        if name not in present:
            kind = (
                "REAL" if name in ("ts", "latency_ms") else "INTEGER" if name.endswith(("tokens", "status")) else "TEXT"
            )
            db.execute(f"ALTER TABLE requests ADD COLUMN {name} {kind}")
