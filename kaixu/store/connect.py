"""The one way kaixu opens a SQLite file (the ledger, the store keys, the seats, the counters, the ledger queries):
the busy timeout, the transaction mode, read-only and the pragmas are arguments here, not copied per store."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

WAL = ("PRAGMA journal_mode=WAL",)
"""Readers do not block the writer (and the other way round): every file kaixu writes is in WAL mode."""
WAL_NORMAL = (*WAL, "PRAGMA synchronous=NORMAL")
"""WAL with fsync at checkpoints only: what the ledger and the counters use (a crash loses at most the last
transactions, never the file)."""


def open_sqlite(
    path: str,
    *,
    timeout_s: float = 5.0,
    isolation_level: Literal["DEFERRED", "IMMEDIATE", "EXCLUSIVE"] | None = None,
    read_only: bool = False,
    pragmas: Sequence[str] = (),
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """A connection to `path`. `isolation_level=None` (the default) is autocommit: the stores say `BEGIN` where
    they mean it. `read_only` opens the file by URI with `mode=ro`, so a reader can never create or change it.
    The pragmas run in order; if one fails the connection is closed before the error goes up."""
    if read_only:
        target, uri = Path(path).resolve().as_uri() + "?mode=ro", True
    else:
        target, uri = path, False
    db = sqlite3.connect(
        target, timeout=timeout_s, isolation_level=isolation_level, check_same_thread=check_same_thread, uri=uri
    )
    try:
        for pragma in pragmas:
            db.execute(pragma)
    except BaseException:
        db.close()
        raise
    return db
