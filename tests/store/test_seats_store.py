"""The seat stores (kaixu/store/seats.py), one suite over both backends: a real SQLite file and a real PostgreSQL
(127.0.0.1:5432, database `test`, each test in its own schema, dropped after).

The race test is the point: two "replicas" (two store objects, two connection pools) claim 20 distinct installs
at once against `seats: 3`, and exactly 3 are admitted."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kaixu.store.seats import INSTALL_ID, PostgresSeatStore, SeatStore, SqliteSeatStore
from tests.harness import unavailable

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"


class PostgresSchema:
    """A schema of its own for one test; the pools it makes use it (search_path), and it is dropped after."""

    def __init__(self) -> None:
        self.name = "kaixu_seats_" + secrets.token_hex(6)
        self.pools: list[Any] = []

    async def create(self) -> None:
        import asyncpg

        try:
            conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            unavailable(f"no PostgreSQL at {POSTGRES_DSN}: {exc}")
        try:
            await conn.execute(f"CREATE SCHEMA {self.name}")
        finally:
            await conn.close()

    async def pool(self, size: int = 10) -> Any:
        import asyncpg

        pool = await asyncpg.create_pool(
            POSTGRES_DSN, min_size=1, max_size=size, server_settings={"search_path": self.name}
        )
        self.pools.append(pool)
        return pool

    async def drop(self) -> None:
        import asyncpg

        for pool in self.pools:
            await pool.close()
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        try:
            await conn.execute(f"DROP SCHEMA {self.name} CASCADE")
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[SeatStore]]:
    """Two stores over the same data, as two replicas (or two processes) see it."""
    if request.param == "sqlite":
        path = str(tmp_path / "store.sqlite")
        yield [SqliteSeatStore(path), SqliteSeatStore(path)]
        return
    schema = PostgresSchema()
    await schema.create()
    try:
        yield [PostgresSeatStore(await schema.pool(20)), PostgresSeatStore(await schema.pool(20))]
    finally:
        await schema.drop()


@pytest.fixture
def store(replicas: list[SeatStore]) -> SeatStore:
    return replicas[0]


async def test_an_empty_store_has_no_seats(store: SeatStore) -> None:
    assert await store.version() == 0
    assert await store.revoked() == set()
    assert await store.seats() == []


async def test_claims_admit_up_to_the_limit_and_again_the_installs_admitted(store: SeatStore) -> None:
    assert [await store.claim("key:a", f"install-{n}", 3, 100.0 + n) for n in range(4)] == [
        "admitted", "admitted", "admitted", "full",
    ]  # fmt: skip
    assert await store.claim("key:a", "install-1", 3, 200.0) == "admitted"  # idempotent, and last_seen moved
    assert await store.claim("key:b", "install-3", 3, 200.0) == "admitted"  # another scope, its own seats
    seats = await store.seats("key:a")
    assert [(s.install_id, s.first_seen, s.last_seen, s.state) for s in seats] == [
        ("install-0", 100.0, 100.0, "active"),
        ("install-1", 101.0, 200.0, "active"),
        ("install-2", 102.0, 102.0, "active"),
    ]
    assert {s.scope for s in await store.seats()} == {"key:a", "key:b"}


async def test_twenty_replicas_racing_for_three_seats_admit_exactly_three(replicas: list[SeatStore]) -> None:
    installs = [f"install-{n}" for n in range(20)]
    results = await asyncio.gather(
        *(replicas[n % 2].claim("customer:acme", install, 3, 1000.0) for n, install in enumerate(installs))
    )
    admitted = [install for install, result in zip(installs, results, strict=True) if result == "admitted"]
    assert len(admitted) == 3
    assert results.count("full") == 17
    assert sorted(s.install_id for s in await replicas[0].seats("customer:acme")) == sorted(admitted)
    again = await asyncio.gather(*(replicas[1].claim("customer:acme", i, 3, 1001.0) for i in admitted * 2))
    assert again == ["admitted"] * 6


async def test_a_revoked_install_frees_its_seat_stays_refused_and_moves_the_version(store: SeatStore) -> None:
    for n in range(3):
        assert await store.claim("key:a", f"i{n}", 3, 10.0) == "admitted"
    version = await store.version()
    assert await store.claim("key:a", "i3", 3, 11.0) == "full"
    assert await store.touch([("key:a", "i0")], 12.0) is None
    assert await store.version() == version  # last_seen is not a change the proxy rereads for
    assert await store.revoke("key:a", "i1", 13.0) is True
    assert await store.version() > version
    assert await store.revoked() == {("key:a", "i1")}
    assert await store.claim("key:a", "i1", 3, 14.0) == "revoked"
    assert await store.claim("key:a", "i3", 3, 14.0) == "admitted"  # the freed seat
    assert await store.claim("key:a", "i4", 3, 14.0) == "full"
    states = {s.install_id: (s.state, s.last_seen, s.revoked) for s in await store.seats("key:a")}
    assert states["i0"] == ("active", 12.0, None)
    assert states["i1"] == ("revoked", 10.0, 13.0)
    assert await store.revoke("key:a", "i1", 20.0) is True  # revoked already: keeps its first revocation time
    assert {s.install_id: s.revoked for s in await store.seats("key:a")}["i1"] == 13.0


async def test_an_install_revoked_before_it_is_seen_is_refused_from_its_first_request(store: SeatStore) -> None:
    version = await store.version()
    assert await store.revoke("customer:acme", "stolen", 5.0) is False
    assert await store.version() > version
    assert await store.claim("customer:acme", "stolen", 3, 6.0) == "revoked"
    assert await store.revoked() == {("customer:acme", "stolen")}


async def test_touch_moves_last_seen_in_one_batch(store: SeatStore) -> None:
    for n in range(3):
        await store.claim("key:a", f"i{n}", 5, 1.0)
    await store.touch([("key:a", "i0"), ("key:a", "i2"), ("key:a", "never-claimed")], 9.0)
    await store.touch([("key:a", "i0")], 5.0)  # an older time never moves it back
    assert [s.last_seen for s in await store.seats("key:a")] == [9.0, 1.0, 9.0]
    assert [s.install_id for s in await store.seats("key:a")] == ["i0", "i1", "i2"]


def test_install_ids_are_a_safe_charset() -> None:
    for good in ("0b8f3c1e-8d1a-4c1e-9a8e-3f2b1c0d9e8f", "a", "A" * 128, "dev:ios/abc+def=="):
        assert INSTALL_ID.fullmatch(good)
    for bad in ("", "A" * 129, "has space", "semi;colon", "line\nbreak", "é", "-leading", "<script>"):
        assert not INSTALL_ID.fullmatch(bad)
