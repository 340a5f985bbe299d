"""The ledger and its SQLite store, on real database files: what a bad record, a locked, removed or
missing database, a full queue do to it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from kaixu.store import Ledger, LedgerRecord, SqliteLedgerStore, escape_text, escaped


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


def rows(path: Path, columns: str = "request_id") -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(f"SELECT {columns} FROM requests ORDER BY rowid").fetchall()


def test_escaping_makes_any_record_storable() -> None:
    clean = record("clean", model="gpt-4o")
    assert escaped(clean) is clean
    assert escape_text("a\ud800b\udcff") == "a\\ud800b\\udcff"
    assert escape_text("nul\x00") == "nul\\x00"
    junk = record("junk", model={"x": 1}, input_tokens=2**70, output_tokens=7.0, latency_ms="fast", team=b"\xff")
    fixed = escaped(junk)
    assert (fixed.model, fixed.team, fixed.input_tokens, fixed.output_tokens, fixed.latency_ms) == (
        "{'x': 1}", "b'\\xff'", None, 7, None
    )  # fmt: skip
    assert escaped(fixed) is fixed


def test_a_failed_write_is_rolled_back_and_the_next_write_succeeds(tmp_path: Path) -> None:
    store = SqliteLedgerStore(str(tmp_path / "l.db"))
    store.open()
    with pytest.raises(UnicodeEncodeError):
        store.write([record("a"), record("b", model="\ud800")])
    store.write([record("c")])
    store.close()
    assert rows(tmp_path / "l.db") == [("c",)]


def test_a_record_the_store_cannot_encode_is_stored_escaped_with_the_rest_of_its_batch(tmp_path: Path) -> None:
    async def scenario() -> Ledger:
        ledger = Ledger(SqliteLedgerStore(str(tmp_path / "l.db")))
        await ledger.start()
        ledger.record(record("a"))
        ledger.record(record("b", model="\ud800", error="bad \udcff byte"))
        ledger.record(record("c", model={"not": "text"}, input_tokens=2**70))
        ledger.record(record("d"))
        await ledger.stop()
        return ledger

    ledger = asyncio.run(scenario())
    assert rows(tmp_path / "l.db", "request_id, model, error, input_tokens") == [
        ("a", "m", None, 3),
        ("b", "\\ud800", "bad \\udcff byte", 3),
        ("c", "{'not': 'text'}", None, None),
        ("d", "m", None, 3),
    ]
    assert (ledger.ok, ledger.degraded, ledger.escaped, ledger.dropped, ledger.queued) == (True, False, 2, 0, 0)
    assert ledger.write_failures == 3  # the batch, then b and c alone before they were escaped
    assert ledger.last_error is not None and ledger.last_error.startswith("ProgrammingError: Error binding parameter")


def test_a_record_refused_even_escaped_is_dropped_and_does_not_block_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "l.db"

    async def scenario() -> Ledger:
        ledger = Ledger(SqliteLedgerStore(str(path)))
        await ledger.start()
        with sqlite3.connect(path) as db:  # a store that refuses one record whatever its encoding
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON requests WHEN NEW.request_id = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        for request_id in ("a", "poison", "b"):
            ledger.record(record(request_id))
        await ledger.flush()
        assert rows(path) == [("a",), ("b",)]
        ledger.record(record("c"))
        await ledger.stop()
        return ledger

    ledger = asyncio.run(scenario())
    assert rows(path) == [("a",), ("b",), ("c",)]
    assert (ledger.ok, ledger.degraded, ledger.dropped, ledger.queued) == (True, True, 1, 0)
    assert ledger.last_error == "IntegrityError: refused"


def test_records_wait_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "l.db"

    async def scenario() -> Ledger:
        ledger = Ledger(SqliteLedgerStore(str(path), busy_timeout_s=0.05))
        await ledger.start()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        ledger.record(record("a"))
        ledger.record(record("b"))
        await ledger.flush()
        assert (ledger.ok, ledger.degraded, ledger.queued) == (False, True, 2)
        assert ledger.last_error == "StoreUnavailable: OperationalError: database is locked"
        await ledger.flush()  # reopened, still locked: still kept
        assert ledger.queued == 2 and ledger.write_failures == 2
        other.execute("ROLLBACK")
        other.close()
        await ledger.flush()
        assert (ledger.ok, ledger.degraded, ledger.queued) == (True, False, 0)
        await ledger.stop()
        return ledger

    asyncio.run(scenario())
    assert rows(path) == [("a",), ("b",)]


def test_a_removed_ledger_file_is_created_again(tmp_path: Path) -> None:
    path = tmp_path / "l.db"

    async def scenario() -> None:
        ledger = Ledger(SqliteLedgerStore(str(path)))
        await ledger.start()
        ledger.record(record("a"))
        await ledger.flush()
        path.unlink()  # rows written now would go to the unlinked file
        ledger.record(record("b"))
        await ledger.flush()
        assert ledger.ok is False and ledger.queued == 1 and "was removed or replaced" in str(ledger.last_error)
        await ledger.flush()
        assert ledger.ok is True and ledger.queued == 0
        await ledger.stop()

    asyncio.run(scenario())
    assert rows(path) == [("b",)]


def test_a_store_that_cannot_be_opened_keeps_the_newest_records_until_it_opens(tmp_path: Path) -> None:
    path = tmp_path / "not-yet" / "l.db"

    async def scenario() -> Ledger:
        ledger = Ledger(SqliteLedgerStore(str(path)), max_queue=2)
        await ledger.start()
        assert ledger.ok is False and "unable to open database file" in str(ledger.last_error)
        for request_id in ("a", "b", "c"):
            ledger.record(record(request_id))
        await ledger.flush()
        assert (ledger.queued, ledger.dropped, ledger.degraded) == (2, 1, True)
        path.parent.mkdir()
        await ledger.flush()
        assert (ledger.ok, ledger.queued) == (True, 0)
        await ledger.stop()
        return ledger

    ledger = asyncio.run(scenario())
    assert rows(path) == [("b",), ("c",)]
    assert ledger.status() == {
        "ok": True, "degraded": True, "queued_records": 0, "write_failures": 2, "dropped_records": 1,
        "escaped_records": 0, "last_error": "OperationalError: unable to open database file",
    }  # fmt: skip
