"""kaixu/store/queries.py on real SQLite files: a ledger written by an older kaixu (fewer columns, no read
indexes) still answers, time bounds parse the documented ways, and a reader never writes."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from kaixu.store import SqliteLedgerStore
from kaixu.store.queries import BadCursor, Filters, SqliteLedgerQueries, decode_cursor, parse_time


@pytest.fixture
def old_ledger(tmp_path: Path) -> Path:
    """The columns of a ledger from before money (no cost, no attribution, no read indexes)."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE requests (request_id TEXT, ts REAL, key_name TEXT, team TEXT, model TEXT, "
                   "status INTEGER, input_tokens INTEGER, output_tokens INTEGER)")  # fmt: skip
        db.executemany("INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
            ("a", 10.0, "k1", "t", "m", 200, 5, 7), ("b", 20.0, "k1", None, "m", 200, 1, 1),
            ("c", 30.0, "k2", "t", "m", 500, None, None),
        ])  # fmt: skip
    return path


def test_an_older_ledger_is_read_without_its_missing_columns(old_ledger: Path) -> None:
    q = SqliteLedgerQueries(str(old_ledger))
    costs = asyncio.run(q.costs("key", Filters()))
    assert [(g.group, g.requests, g.input_tokens, g.cost_micros) for g in costs.groups] == [
        ("k1", 2, 6, None), ("k2", 1, None, None)
    ]  # fmt: skip
    assert asyncio.run(q.costs("user", Filters())).groups[0].group is None  # no such column: one NULL group
    assert asyncio.run(q.costs("key", Filters(equals=(("project", "p"),)))).groups == []
    log = asyncio.run(q.prompt_log(2))
    assert [e["request_id"] for e in log] == ["c", "b"] and log[0]["prompt_preview"] is None
    page = asyncio.run(q.requests(Filters(equals=(("team", "t"),)), limit=1))
    assert [r["request_id"] for r in page.records] == ["c"] and page.next_cursor is not None
    rest = asyncio.run(q.requests(Filters(equals=(("team", "t"),)), limit=1, cursor=page.next_cursor))
    assert [r["request_id"] for r in rest.records] == ["a"] and rest.next_cursor is None
    assert rest.records[0]["cost_micros"] is None


def test_reading_never_writes(old_ledger: Path) -> None:
    before = old_ledger.read_bytes()
    q = SqliteLedgerQueries(str(old_ledger))
    asyncio.run(q.costs("team", Filters()))
    list(q.iter_records(Filters()))
    assert old_ledger.read_bytes() == before
    with sqlite3.connect(old_ledger) as db:
        assert [r[1] for r in db.execute("PRAGMA index_list(requests)")] == []  # the writer makes indexes


def test_the_writer_makes_the_read_indexes(tmp_path: Path) -> None:
    store = SqliteLedgerStore(str(tmp_path / "l.db"))
    store.open()
    store.close()
    with sqlite3.connect(tmp_path / "l.db") as db:
        names = {r[1] for r in db.execute("PRAGMA index_list(requests)")}
    assert names == {"requests_ts", "requests_costs"}


@pytest.mark.parametrize(
    ("text", "end", "expected"),
    [
        ("1767225600", False, 1767225600.0),
        ("1767225600.25", False, 1767225600.25),
        ("2026-01-01", False, 1767225600.0),
        ("2026-01-01", True, 1767312000.0),
        ("2026-01-01T01:00", False, 1767229200.0),
        ("2026-01-01T01:00:00Z", True, 1767229200.0),
        ("2026-01-01T03:00:00+02:00", False, 1767229200.0),
    ],
)
def test_time_bounds(text: str, end: bool, expected: float) -> None:
    assert parse_time(text, end=end) == expected


@pytest.mark.parametrize("text", ["", "now", "2026-02-30", "1e9", "-5", "2026-01-01 junk"])
def test_bad_time_bounds(text: str) -> None:
    with pytest.raises(ValueError, match="unix seconds or an ISO 8601"):
        parse_time(text)


@pytest.mark.parametrize("cursor", ["", "!!!", "bm90IGEgY3Vyc29y", "aW5mOjE"])
def test_cursors_this_ledger_did_not_make(cursor: str) -> None:
    with pytest.raises(BadCursor):
        decode_cursor(cursor)
