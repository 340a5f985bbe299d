"""The ledger and its stores, on real databases: what a bad record, a locked, removed or missing database,
a lost connection, a full queue do to it. The backend-neutral behaviour runs on SQLite files and on PostgreSQL
(a schema of its own per test, tests/pg.py) alike: the `backend` fixture."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from kaixu.store import Ledger, LedgerRecord, SqliteLedgerStore, escape_text, escaped
from kaixu.store.ledger import as_async
from kaixu.store.postgres import PostgresLedgerStore
from tests import pg
from tests.pg import own_schema


def record(request_id: str, **overrides: object) -> LedgerRecord:
    fields: dict[str, object] = {
        "request_id": request_id, "ts": 1.0, "front": "openai", "operation": "chat", "key_name": "k", "team": None,
        "model": "m", "provider": "p", "upstream_model": "m", "status": 200, "stream": 0, "input_tokens": 3,
        "output_tokens": 4, "cached_input_tokens": 0, "latency_ms": 1.5, "error": None, "attributes": None,
    }  # fmt: skip
    fields.update(overrides)
    return LedgerRecord(**fields)  # type: ignore[arg-type]


class Backend:
    """One ledger backend as the tests drive it: a store, its rows as another connection reads them, and
    a store-side refusal of one record (a trigger)."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind, self.where = kind, where

    def store(self) -> Any:
        return SqliteLedgerStore(self.where) if self.kind == "sqlite" else PostgresLedgerStore(self.where, 2)

    def rows(self, columns: str = "request_id") -> list[tuple[object, ...]]:
        if self.kind == "sqlite":
            return rows(Path(self.where), columns)
        return asyncio.run(pg.fetch(self.where, f"SELECT {columns} FROM requests ORDER BY request_id"))

    async def refuse(self, request_id: str) -> None:
        """The store refuses this record whatever its encoding (a constraint, as a DBA might add)."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.where) as db:
                db.execute(
                    f"CREATE TRIGGER refuse BEFORE INSERT ON requests WHEN NEW.request_id = '{request_id}' "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
        else:
            await pg.execute(self.where, f"ALTER TABLE requests ADD CONSTRAINT refused CHECK "
                             f"(request_id <> '{request_id}')")  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", str(tmp_path / "l.db"))
        return
    with own_schema() as dsn:
        yield Backend("postgres", dsn)


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


def test_records_queued_while_the_store_fails_are_written_later(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.store()
        ledger = Ledger(store)
        await ledger.start()
        ledger.record(record("a"))
        await as_async(store).close()  # the store goes away: writes fail
        await ledger.flush()
        assert ledger.ok is False and ledger.queued == 1
        await as_async(store).open()
        ledger.record(record("b"))
        await ledger.stop()
        assert ledger.queued == 0

    asyncio.run(scenario())
    assert backend.rows() == [("a",), ("b",)]


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


def test_a_failed_write_is_rolled_back_and_the_next_write_succeeds(backend: Backend) -> None:
    async def scenario() -> None:
        store = as_async(backend.store())
        await store.open()
        with pytest.raises((UnicodeEncodeError, asyncpg.DataError)):
            await store.write([record("a"), record("b", model="\ud800")])
        await store.write([record("c")])
        await store.close()

    asyncio.run(scenario())
    assert backend.rows() == [("c",)]


def test_a_record_the_store_cannot_encode_is_stored_escaped_with_the_rest_of_its_batch(backend: Backend) -> None:
    async def scenario() -> Ledger:
        ledger = Ledger(backend.store())
        await ledger.start()
        ledger.record(record("a"))
        ledger.record(record("b", model="\ud800", error="bad \udcff byte"))
        ledger.record(record("c", model={"not": "text"}, input_tokens=2**70))
        ledger.record(record("d"))
        ledger.record(record("e", error="NUL\x00 in it"))  # PostgreSQL refuses NUL in text
        await ledger.stop()
        return ledger

    ledger = asyncio.run(scenario())
    nul = "NUL\x00 in it" if backend.kind == "sqlite" else "NUL\\x00 in it"
    assert backend.rows("request_id, model, error, input_tokens") == [
        ("a", "m", None, 3),
        ("b", "\\ud800", "bad \\udcff byte", 3),
        ("c", "{'not': 'text'}", None, None),
        ("d", "m", None, 3),
        ("e", "m", nul, 3),
    ]
    escaped_records = 2 if backend.kind == "sqlite" else 3
    assert (ledger.ok, ledger.degraded, ledger.escaped, ledger.dropped, ledger.queued) == (
        True, False, escaped_records, 0, 0
    )  # fmt: skip
    assert ledger.write_failures == 1 + escaped_records  # the batch, then each alone before it was escaped
    error = "ProgrammingError: Error binding parameter" if backend.kind == "sqlite" else "CharacterNotInRepertoire"
    assert ledger.last_error is not None and ledger.last_error.startswith(error)


def test_a_record_refused_even_escaped_is_dropped_and_does_not_block_the_queue(backend: Backend) -> None:
    async def scenario() -> Ledger:
        ledger = Ledger(backend.store())
        await ledger.start()
        await backend.refuse("poison")
        for request_id in ("a", "poison", "b"):
            ledger.record(record(request_id))
        await ledger.flush()
        assert await asyncio.to_thread(backend.rows) == [("a",), ("b",)]
        ledger.record(record("c"))
        await ledger.stop()
        return ledger

    ledger = asyncio.run(scenario())
    assert backend.rows() == [("a",), ("b",), ("c",)]
    assert (ledger.ok, ledger.degraded, ledger.dropped, ledger.queued) == (True, True, 1, 0)
    assert ledger.last_error is not None
    assert ledger.last_error.startswith("IntegrityError: refused" if backend.kind == "sqlite" else "CheckViolation")


def test_records_wait_while_another_process_holds_the_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "l.db"
    # Only the test's own flushes, so it can count their failures: the ledger's timer flushes every 0.1 s, and a
    # loaded machine can let one slip in between (a third failure).
    monkeypatch.setattr("kaixu.store.ledger.FLUSH_SECONDS", 3600)

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


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with own_schema() as dsn:
        yield dsn


def test_a_lost_postgres_connection_keeps_the_records_and_the_ledger_reconnects(pg_dsn: str) -> None:
    """Every connection of the ledger's pool killed by the server (a failover, a restart): the batch stays
    queued, the next flush writes it on new connections."""

    async def scenario() -> Ledger:
        ledger = Ledger(PostgresLedgerStore(pg_dsn, 2))
        await ledger.start()
        ledger.record(record("a"))
        await ledger.flush()
        assert await pg.terminate_connections(pg_dsn) >= 1
        ledger.record(record("b"))
        await ledger.flush()
        if ledger.queued:  # the write met a dead connection: kept, and the ledger is marked down
            assert ledger.ok is False and ledger.last_error is not None
            assert ledger.last_error.startswith("StoreUnavailable")
            await ledger.flush()
        assert (ledger.ok, ledger.queued) == (True, 0)
        await ledger.stop()
        return ledger

    asyncio.run(scenario())
    assert asyncio.run(pg.fetch(pg_dsn, "SELECT request_id FROM requests ORDER BY request_id")) == [("a",), ("b",)]


def test_a_postgres_server_that_is_not_there_keeps_the_newest_records(unused_tcp_port: int) -> None:
    async def scenario() -> Ledger:
        ledger = Ledger(PostgresLedgerStore(f"postgresql://postgres@127.0.0.1:{unused_tcp_port}/test"), max_queue=2)
        await ledger.start()
        for request_id in ("a", "b", "c"):
            ledger.record(record(request_id))
        await ledger.flush()
        await ledger.stop()
        return ledger

    ledger = asyncio.run(scenario())
    assert (ledger.ok, ledger.queued, ledger.dropped, ledger.degraded) == (False, 2, 1, True)
    assert ledger.last_error is not None and "Connect" in ledger.last_error
