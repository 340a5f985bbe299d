"""A SQLite database used from the event loop (the jobs, the sessions): one connection, owned by one worker
thread, so the loop never blocks and the connection is never shared between threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from collections.abc import Callable
from typing import Any

from kaixu.store.connect import WAL_NORMAL, open_sqlite
from kaixu.store.ledger import StoreUnavailable


class SqliteThread:
    """One SQLite connection owned by one worker thread, for the stores whose calls come from the event loop
    (the jobs, the sessions): every call runs in that thread, so the loop never blocks and the connection is
    never shared between threads. `:memory:` works too (one database for as long as the process runs)."""

    def __init__(self, path: str, schema: str, what: str) -> None:
        self.path = path
        self._schema = schema
        self.what = what
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kaixu-sqlite")
        self._db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            db = open_sqlite(self.path, pragmas=() if self.path == ":memory:" else WAL_NORMAL)
            try:
                db.executescript(self._schema)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    async def call[T](self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` in the worker thread; a database that cannot be used (locked, its file gone) is
        `StoreUnavailable` (`what` names the store)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: work(self._connection()))
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"the {self.what} cannot be used: {exc}") from exc

    async def execute(self, sql: str, *args: Any) -> int:
        """Rows an INSERT, UPDATE or DELETE touched."""
        return await self.call(lambda db: db.execute(sql, args).rowcount)

    async def fetchone(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        row = await self.call(lambda db: db.execute(sql, args).fetchone())
        return None if row is None else tuple(row)

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._pool, close)
        self._pool.shutdown(wait=False)
