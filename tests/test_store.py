"""The SQLite ledger store, on a real database file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from kaixu.store import Ledger, LedgerRecord, SqliteLedgerStore


def record(request_id: str, **overrides: object) -> LedgerRecord:
    fields: dict[str, object] = {
        "request_id": request_id, "ts": 1.0, "front": "openai", "operation": "chat", "key_name": "k", "team": None,
        "model": "m", "provider": "p", "upstream_model": "m", "status": 200, "stream": 0, "input_tokens": 3,
        "output_tokens": 4, "cached_input_tokens": 0, "latency_ms": 1.5, "error": None, "attributes": None,
    }  # fmt: skip
    fields.update(overrides)
    return LedgerRecord(**fields)  # type: ignore[arg-type]


def test_a_ledger_from_an_older_version_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE requests (request_id TEXT, ts REAL, status INTEGER)")
        db.execute("INSERT INTO requests VALUES ('old', 0.5, 200)")
    store = SqliteLedgerStore(str(path))
    store.open()
    store.write([record("new", attributes='{"app":"a"}')])
    store.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT request_id, status, attributes FROM requests ORDER BY ts").fetchall()
    assert rows == [("old", 200, None), ("new", 200, '{"app":"a"}')]


def test_records_queued_while_the_store_fails_are_written_later(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[str]]:
        store = SqliteLedgerStore(str(tmp_path / "l.db"))
        ledger = Ledger(store)
        await ledger.start()
        ledger.record(record("a"))
        await asyncio.to_thread(store.close)  # the store goes away: writes fail
        await ledger.flush()
        assert ledger.ok is False and ledger.queued == 1
        await asyncio.to_thread(store.open)
        ledger.record(record("b"))
        await ledger.stop()
        assert ledger.queued == 0
        with sqlite3.connect(tmp_path / "l.db") as db:
            return db.execute("SELECT request_id FROM requests ORDER BY request_id").fetchall()

    assert asyncio.run(scenario()) == [("a",), ("b",)]
