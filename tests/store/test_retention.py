"""Retention (`ledger.retention_days`): records older than that are deleted once the store opens and then
every round (an hour; shortened here through LedgerWriter's interval, not by waiting), in short batches that
let the ledger's writes through while a big prune runs. Checked on real SQLite files."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from kaixu.addons.ledger_writer import LedgerWriter
from kaixu.config import parse_policy
from kaixu.gateway import Gateway
from kaixu.store import LedgerRecord, SqliteLedgerStore
from tests.fakes.provider import FakeProvider
from tests.harness import TEST_KEY, Kaixu, ledger_row, policy_for, wait_for

DAY = 86_400.0


def record(request_id: str, ts: float) -> LedgerRecord:
    return LedgerRecord(
        request_id=request_id, ts=ts, front="openai", operation="chat", key_name="k", team=None, model="m",
        provider="p", upstream_model="m", status=200, stream=0, input_tokens=1, output_tokens=1,
        cached_input_tokens=None, latency_ms=1.0, error=None, attributes=None,
    )  # fmt: skip


def ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT request_id FROM requests")}


def count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM requests").fetchone()[0])


def test_prune_deletes_only_older_records_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    store = SqliteLedgerStore(str(path), prune_batch=100)
    store.open()
    now = time.time()
    store.write([record(f"old-{i}", now - 40 * DAY - i) for i in range(1050)])
    store.write([record("edge", now - 30 * DAY + 60), record("new", now)])
    assert store.prune(now - 30 * DAY) == 1050  # 11 batches: 10 full and one of 50
    assert ids(path) == {"edge", "new"}
    assert store.prune(now - 30 * DAY) == 0
    store.close()


def test_writes_go_on_while_a_big_prune_runs(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    store = SqliteLedgerStore(str(path), prune_batch=1000)
    store.open()
    old = time.time() - 100 * DAY
    for start in range(0, 200_000, 20_000):
        store.write([record(f"old-{i}", old) for i in range(start, start + 20_000)])
    pruned: list[int] = []
    pruning = threading.Thread(target=lambda: pruned.append(store.prune(old + 1)))
    pruning.start()
    wait_for(lambda: count(path) < 200_000, 30, "the prune to start")
    started = time.monotonic()
    store.write([record("written-during-the-prune", time.time())])
    waited = time.monotonic() - started
    still_pruning = pruning.is_alive()
    pruning.join(60)
    assert still_pruning, "the write waited for the whole prune"
    assert pruned == [200_000] and ids(path) == {"written-during-the-prune"}
    assert waited < 1.0
    store.close()


def test_the_writer_prunes_at_start_and_then_every_round(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ledger.db"
    seed = SqliteLedgerStore(str(path))
    seed.open()
    now = time.time()
    seed.write([record("before-start", now - 10 * DAY), record("recent", now - DAY)])
    seed.close()
    gateway = Gateway()
    gateway.install(parse_policy(json.dumps({"store": {"sqlite": str(path)}, "ledger": {"retention_days": 7}})))

    async def scenario() -> None:
        writer = LedgerWriter(gateway, prune_interval_s=0.05)
        writer.running()
        await asyncio.wait_for(writer._start, 10)
        await poll(lambda: ids(path) == {"recent"}, "the prune at start")
        assert gateway.ledger is not None
        gateway.ledger.record(record("after-start", time.time() - 8 * DAY))  # old already when it arrives
        await gateway.ledger.flush()
        assert gateway.ledger.queued == 0 and gateway.ledger.dropped == 0  # stored: a later round deletes it
        await poll(lambda: ids(path) == {"recent"}, "a later round to delete it")
        # a reload applies from the next round
        gateway.install(parse_policy(json.dumps({"store": {"sqlite": str(path)}, "ledger": {"retention_days": 0.5}})))
        await poll(lambda: ids(path) == set(), "the shorter retention")
        await writer.done()

    with caplog.at_level(logging.INFO, logger="kaixu.ledger"):
        asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("ledger retention: deleted 1 records older than 7 days") == 2  # at start, and later
    assert "ledger retention: deleted 1 records older than 0.5 days" in messages


async def poll(condition: object, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):  # type: ignore[arg-type]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def test_kaixu_run_enforces_retention_on_its_ledger(fake: FakeProvider, tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    seed = SqliteLedgerStore(str(path))
    seed.open()
    now = time.time()
    seed.write([record(f"ancient-{i}", now - 400 * DAY) for i in range(3)] + [record("last-week", now - 7 * DAY)])
    seed.close()
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"}, ledger={"retention_days": 30})
    gateway = Kaixu(tmp_path, policy).start()
    try:
        wait_for(lambda: "ledger retention: deleted 3 records older than 30 days" in gateway.log(), 20, "the prune")
        assert ids(path) == {"last-week"}
        import httpx

        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {TEST_KEY}"},
        )
        assert ledger_row(gateway, response.headers["x-request-id"])["status"] == 200
    finally:
        gateway.stop()


def test_no_retention_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    seed = SqliteLedgerStore(str(path))
    seed.open()
    seed.write([record("ancient", time.time() - 4000 * DAY)])
    seed.close()
    gateway = Gateway()
    gateway.install(parse_policy(json.dumps({"store": {"sqlite": str(path)}})))

    async def scenario() -> int | None:
        writer = LedgerWriter(gateway, prune_interval_s=0.05)
        writer.running()
        await writer._start
        assert gateway.ledger is not None
        result = await writer.prune(gateway.ledger)
        await writer.done()
        return result

    assert asyncio.run(scenario()) is None
    assert ids(path) == {"ancient"}


def test_postgres_prune_deletes_only_older_records_in_batches() -> None:
    """The same rounds on PostgreSQL (kaixu/store/postgres.py): batches of `prune_batch`, awaited, no thread."""
    from kaixu.store.postgres import PostgresLedgerStore
    from tests import pg

    async def scenario(dsn: str) -> tuple[int, int, set[str]]:
        store = PostgresLedgerStore(dsn, 2, prune_batch=100)
        await store.open()
        now = time.time()
        await store.write([record(f"old-{i}", now - 40 * DAY - i) for i in range(1050)])
        await store.write([record("edge", now - 30 * DAY + 60), record("new", now)])
        first, second = await store.prune(now - 30 * DAY), await store.prune(now - 30 * DAY)
        left = {row[0] for row in await pg.fetch(dsn, "SELECT request_id FROM requests")}
        await store.close()
        return first, second, left

    with pg.own_schema() as dsn:
        assert asyncio.run(scenario(dsn)) == (1050, 0, {"edge", "new"})


def test_the_writer_prunes_a_postgres_ledger_at_start(caplog: pytest.LogCaptureFixture) -> None:
    from kaixu.store.postgres import PostgresLedgerStore
    from tests import pg

    async def seed(dsn: str) -> None:
        store = PostgresLedgerStore(dsn, 2)
        await store.open()
        await store.write([record("before-start", time.time() - 10 * DAY), record("recent", time.time() - DAY)])
        await store.close()

    async def scenario(dsn: str, gateway: Gateway) -> set[str]:
        writer = LedgerWriter(gateway, prune_interval_s=3600)
        writer.running()
        await asyncio.wait_for(writer._start, 10)
        deadline = time.monotonic() + 10
        while "ledger retention: deleted 1 records older than 7 days" not in caplog.text:
            assert time.monotonic() < deadline, "the prune at start"
            await asyncio.sleep(0.02)
        await writer.done()
        return {row[0] for row in await pg.fetch(dsn, "SELECT request_id FROM requests")}

    with pg.own_schema() as dsn, caplog.at_level(logging.INFO, logger="kaixu.ledger"):
        asyncio.run(seed(dsn))
        gateway = Gateway()
        gateway.install(
            parse_policy(json.dumps({"store": {"postgres": {"dsn": dsn}}, "ledger": {"retention_days": 7}}))
        )
        assert asyncio.run(scenario(dsn, gateway)) == {"recent"}
