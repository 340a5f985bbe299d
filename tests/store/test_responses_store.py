"""Stored responses (kaixu/store/responses.py) in each store: scoped to their key, expiring, chained, deleted;
and `Kept`, which writes in the background yet reads its writes at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaixu.store.responses import (
    Kept,
    MemoryResponseStore,
    PostgresResponseStore,
    ResponseStore,
    SqliteResponseStore,
    StoredResponse,
)
from tests import pg


def stored(response_id: str, scope: str = "sha256:a", previous: str | None = None, ttl: float = 60) -> StoredResponse:
    now = time.time()
    return StoredResponse(response_id, scope, now, now + ttl, previous, '[{"role":"user","content":"hi"}]',
                          f'{{"id":"{response_id}","output":[]}}')  # fmt: skip


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResponseStore]:
    if request.param == "memory":
        yield MemoryResponseStore()
    elif request.param == "sqlite":
        yield SqliteResponseStore(str(tmp_path / "store.db"))
    else:
        with pg.own_schema() as dsn:
            yield PostgresResponseStore(dsn, 2)


def test_a_store_keeps_reads_scopes_expires_and_deletes(store: ResponseStore) -> None:
    async def run() -> None:
        try:
            now = time.time()
            await store.put(stored("resp_1"))
            await store.put(stored("resp_old", ttl=-1))
            found = await store.get("resp_1", "sha256:a", now)
            assert found is not None and found.response == '{"id":"resp_1","output":[]}'
            assert await store.get("resp_1", "sha256:b", now) is None  # another key's
            assert await store.get("resp_old", "sha256:a", now) is None  # expired
            assert await store.delete("resp_1", "sha256:b") is False
            assert await store.prune(now) == 1
            assert await store.delete("resp_1", "sha256:a") is True
            assert await store.get("resp_1", "sha256:a", now) is None
        finally:
            await store.close()

    asyncio.run(run())


def test_kept_reads_its_writes_at_once_and_follows_chains(tmp_path: Path) -> None:
    async def run() -> None:
        kept = Kept(SqliteResponseStore(str(tmp_path / "store.db")))
        kept.keep(stored("resp_1"))
        kept.keep(stored("resp_2", previous="resp_1"))
        # not awaited: the reads find them among the writes in flight
        chain = await kept.chain("resp_2", "sha256:a")
        assert chain is not None and [s.id for s in chain] == ["resp_1", "resp_2"]
        assert await kept.chain("resp_2", "sha256:b") is None
        kept.keep(stored("resp_3"))
        assert await kept.delete("resp_3", "sha256:a") is True  # deleted while its write is in flight
        await kept.close()  # waits for the writes
        again = Kept(SqliteResponseStore(str(tmp_path / "store.db")))
        assert await again.get("resp_3", "sha256:a") is None
        chain = await again.chain("resp_2", "sha256:a")
        assert chain is not None and [s.id for s in chain] == ["resp_1", "resp_2"]
        await again.close()

    asyncio.run(run())
