"""The embedded SQLite store. sqlite3 is blocking, so every call here runs in a worker thread
(`asyncio.to_thread`), never on mitmproxy's event loop."""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields

from kaixu.store.connect import WAL_NORMAL, open_sqlite
from kaixu.store.keys import SCHEMA as KEYS_SCHEMA
from kaixu.store.keys import add_missing_columns as add_missing_key_columns
from kaixu.store.ledger import FIELD_KINDS, LedgerRecord, StoreUnavailable, describe

_COLUMNS = [f.name for f in fields(LedgerRecord)]
_row = operator.attrgetter(*_COLUMNS)
"""A record as the tuple `_INSERT` binds (twice as fast as `dataclasses.astuple`, which deep-copies)."""
_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL"}
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests ({", ".join(f"{name} {_SQL_TYPES[FIELD_KINDS[name]]}" for name in _COLUMNS)});
"""
_SUMS = "cost_micros, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens, unpriced"
# The read side's indexes (kaixu/store/queries.py), made after the columns they name exist (an older ledger
# gains them first). Measured on 1M records in docs/performance.md ("Ledger"):
#   requests_ts     the listings and the prompt log, newest first, paged by (ts, rowid);
#   requests_costs  every cost query, with or without a time range and filters, and the filtered listings:
#                   covering for costs (a cost query never reads the records, whose prompt and answer text may
#                   be large), and a filter is checked on the index before a record is read;
# Indexes led by key or team (grouping without a sort) were measured and left out: they took by-key and by-team
# costs from 0.55 to 0.2 s over 1M records but cut the writer from 150k to 62k records/s (docs/performance.md).
_INDEXES = f"""
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE INDEX IF NOT EXISTS requests_costs
    ON requests (ts, key_name, team, user_id, project, app, client, model, provider, status, {_SUMS});
"""
_INSERT = f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES "
_ROW_PLACEHOLDERS = f"({', '.join('?' for _ in _COLUMNS)})"
MAX_ROWS_PER_STATEMENT = 256
"""Rows one INSERT carries (fewer when the SQLite build allows fewer bound variables): one statement per batch
instead of one per row (`executemany`) took a 130-row batch from 7.2 to 6.0 µs of CPU per row here."""


@functools.cache
def _insert(rows: int) -> str:
    return _INSERT + ", ".join([_ROW_PLACEHOLDERS] * rows)


_PRUNE = "DELETE FROM requests WHERE rowid IN (SELECT rowid FROM requests WHERE ts < ? LIMIT ?)"
PRUNE_BATCH = 2000
"""Rows deleted per retention transaction: about 3 ms of write lock each on this machine (docs/ledger.md)."""
PRUNE_PAUSE_S = 0.005
"""The pause between two prune batches, lock let go: a write waiting for it gets its turn."""


class SqliteLedgerStore:
    """Keeps the `LedgerStore` contract: each write is one transaction, rolled back when it fails; failures
    of the database (locked by another process, file removed or unreadable, disk full) are `StoreUnavailable`,
    failures of the records (text SQLite cannot encode, values it cannot bind) are raised as they are."""

    def __init__(self, path: str, *, busy_timeout_s: float = 5.0, prune_batch: int = PRUNE_BATCH) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        """How long a write waits for another process's lock before the batch is kept for the next flush."""
        self.prune_batch = prune_batch
        """Rows one prune transaction deletes: the write lock (this object's and SQLite's) is held that long."""
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None
        self._rows_per_statement = MAX_ROWS_PER_STATEMENT

    def open(self) -> None:
        with self._lock:
            self._close()
            db = open_sqlite(self.path, timeout_s=self.busy_timeout_s, pragmas=WAL_NORMAL, check_same_thread=False)
            try:
                db.executescript(_SCHEMA)
                db.executescript(KEYS_SCHEMA)  # the store keys (kaixu keys create), read by kaixu/addons/store_keys.py
                _add_missing_columns(db)
                add_missing_key_columns(db)
                db.executescript(_INDEXES)
            except BaseException:
                db.close()
                raise
            self._db = db
            limit = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._rows_per_statement = max(1, min(MAX_ROWS_PER_STATEMENT, limit // len(_COLUMNS)))
            self._file = self._identity()

    def write(self, records: Sequence[LedgerRecord]) -> None:
        with self._lock:
            db = self._db
            if db is None:
                raise StoreUnavailable("the store is not open")
            if self._identity() != self._file:
                # Deleted or replaced under us: rows would go to an unlinked file. Reopening recreates it.
                raise StoreUnavailable(f"{self.path} was removed or replaced")
            with _transaction(db, "BEGIN"):
                step = self._rows_per_statement
                for start in range(0, len(records), step):
                    chunk = records[start : start + step]
                    db.execute(_insert(len(chunk)), [value for record in chunk for value in _row(record)])

    def prune(self, before_ts: float) -> int:
        """Deletes the rows with `ts < before_ts`, `prune_batch` at a time, each batch its own transaction:
        between batches the lock is let go, so the ledger's writes (and readers) are not held up by a prune
        of millions of rows. Returns the number of rows deleted."""
        deleted = 0
        while True:
            with self._lock:
                db = self._db
                if db is None:
                    raise StoreUnavailable("the store is not open")
                with _transaction(db, "BEGIN IMMEDIATE"):
                    count = db.execute(_PRUNE, (before_ts, self.prune_batch)).rowcount
            deleted += count
            if count < self.prune_batch:
                return deleted
            time.sleep(PRUNE_PAUSE_S)  # threading.Lock is not fair: without a pause a waiting write may never get it

    def ping(self) -> bool:
        with self._lock:
            try:
                return self._db is not None and self._db.execute("SELECT 1").fetchone() == (1,)
            except sqlite3.Error:
                return False

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        db, self._db, self._file = self._db, None, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):  # a broken connection is let go all the same
                db.close()

    def _identity(self) -> tuple[int, int] | None:
        if self.path == ":memory:" or self.path.startswith("file:"):
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, begin: str) -> Iterator[None]:
    """One transaction, committed, or rolled back when the body fails; a failure of the database is
    `StoreUnavailable`, a failure of the rows is raised as it is (the `LedgerStore` contract)."""
    try:
        if db.in_transaction:  # never carry a transaction over from a failed call
            db.execute("ROLLBACK")
        db.execute(begin)
        yield
        db.execute("COMMIT")
    except BaseException as exc:
        _rollback(db, exc)
        if _database_failed(exc):
            raise StoreUnavailable(describe(exc)) from exc
        raise


def _rollback(db: sqlite3.Connection, cause: BaseException) -> None:
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"rollback failed: {describe(exc)}") from cause


def _database_failed(exc: BaseException) -> bool:
    """The database, not the rows: locked, I/O error, disk full, read-only, table gone, not a database.
    Unencodable text (UnicodeEncodeError), unbindable values (ProgrammingError, OverflowError) and constraint
    violations (IntegrityError) are the rows' fault."""
    return (
        isinstance(exc, (OSError, sqlite3.OperationalError, sqlite3.InternalError))
        or type(exc) is sqlite3.DatabaseError
    )


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """A ledger written by an older kaixu gains the columns added since (new columns are nullable)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
    for name in _COLUMNS:
        if name not in present:
            db.execute(f"ALTER TABLE requests ADD COLUMN {name} {_SQL_TYPES[FIELD_KINDS[name]]}")
