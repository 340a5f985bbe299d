"""The seats step (kaixu/addons/seat_limits.py) on both stores, with real flows: on PostgreSQL through a pool its caller
owns (as `store.postgres` gives it), on a SQLite file. The step's own poll is what makes a revocation land; the
hot path must not touch the store for an admitted install (checked by closing the pool under it)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from kaixu.addons.seat_limits import Seats
from kaixu.call import Call, attach
from kaixu.config import Policy, VirtualKey, parse_policy
from kaixu.gateway import Gateway
from kaixu.store.seats import PostgresSeatStore
from kaixu.store.stores import Stores
from tests.store.test_seats_store import POSTGRES_DSN, PostgresSchema

KEY = VirtualKey("seated", "sha256:x", seats=2)


def policy(store: str) -> Policy:
    return parse_policy(
        f"store: {store}\nproviders: {{m: {{kind: mock}}}}\nmodels: {{x: {{route: [{{provider: m}}]}}}}\n"
    )


def loaded(source: str, seats: PostgresSeatStore | None = None) -> Gateway:
    """A gateway with the policy loaded as a reload leaves it: its stores chosen (`Stores.build`, as the
    store_choice step builds them); ``seats``: a PostgreSQL seat store on the test's own schema."""
    gateway = Gateway(policy=policy(source))
    assert gateway.policy is not None
    stores = Stores.build(gateway.policy.store)
    gateway.stores = stores if seats is None else dataclasses.replace(stores, seats=seats)
    return gateway


@pytest.fixture(params=["sqlite", "postgres"])
async def step(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Seats]:
    if request.param == "sqlite":
        yield Seats(loaded(f"{{sqlite: {tmp_path / 'store.sqlite'}}}"))
        return
    schema = PostgresSchema()
    await schema.create()
    pool = await schema.pool(5)
    try:
        yield Seats(loaded(f"{{postgres: {{dsn: '{POSTGRES_DSN}'}}}}", PostgresSeatStore(pool)))
    finally:
        await schema.drop()


async def ask(step: Seats, install: str | None) -> http.Response | None:
    flow = tflow.tflow()
    if install is not None:
        flow.request.headers["x-kaixu-install-id"] = install
    assert step.gateway.policy is not None
    call = Call(request_id="rid", policy=step.gateway.policy)
    call.caller.key = KEY
    attach(flow, call)
    pending = step.request(flow)
    if pending is not None:
        await pending
    return flow.response


def code(response: http.Response | None) -> tuple[int, str] | None:
    if response is None:
        return None
    return response.status_code, json.loads(response.content or b"{}")["error"]["code"]


async def test_the_step_admits_refuses_and_sees_a_revocation_at_its_next_poll(step: Seats) -> None:
    assert code(await ask(step, None)) == (400, "install_id_required")
    assert code(await ask(step, "a")) is None
    assert code(await ask(step, "b")) is None
    assert code(await ask(step, "c")) == (403, "seat_limit_reached")
    assert step.gateway.policy is not None
    cache = step.cache()
    assert cache is not None
    await step.poll(cache)
    assert code(await ask(step, "a")) is None  # from the cache
    await cache.store.revoke("key:seated", "a", 1.0)  # as `kaixu seats revoke` does, from anywhere
    await step.poll(cache)
    assert code(await ask(step, "a")) == (403, "install_revoked")
    assert code(await ask(step, "c")) is None  # the freed seat: the refusal cached before is asked again
    last_seen = {s.install_id: s.last_seen for s in await cache.store.seats()}
    await step.poll(cache)  # writes last_seen of the installs used since the last poll
    assert {s.install_id: s.last_seen for s in await cache.store.seats()}["b"] == last_seen["b"]
    await ask(step, "b")
    await step.poll(cache)
    assert {s.install_id: s.last_seen for s in await cache.store.seats()}["b"] > last_seen["b"]


async def test_concurrent_first_requests_of_one_install_share_one_claim(step: Seats) -> None:
    assert [code(r) for r in await asyncio.gather(*(ask(step, "same") for _ in range(10)))] == [None] * 10
    assert step._claims == {}  # every waiter was answered by the one claim, which is gone
    results = await asyncio.gather(*(ask(step, f"o{n}") for n in range(5)))  # for the one seat left
    assert sorted(str(code(r)) for r in results) == ["(403, 'seat_limit_reached')"] * 4 + ["None"]
    assert step.gateway.policy is not None
    cache = step.cache()
    assert cache is not None and len(await cache.store.seats()) == 2


async def test_postgres_admitted_installs_need_no_store_until_the_poll_goes_stale(tmp_path: Path) -> None:
    schema = PostgresSchema()
    await schema.create()
    pool = await schema.pool(2)
    try:
        step = Seats(loaded(f"{{postgres: {{dsn: '{POSTGRES_DSN}'}}}}", PostgresSeatStore(pool)))
        assert code(await ask(step, "a")) is None
        assert step.gateway.policy is not None
        cache = step.cache()
        assert cache is not None and isinstance(cache.store, PostgresSeatStore)
        await step.poll(cache)
        await pool.close()  # the store is gone: an admitted install is still served from the process
        assert code(await ask(step, "a")) is None
        refused = await ask(step, "new")
        assert code(refused) == (503, "seat_store_unavailable") and refused is not None
        assert refused.headers["retry-after"] == "1"
        await step.poll(cache)  # fails: the cache keeps its last read, which goes stale after 5 s
        cache.polled_at -= 6
        assert code(await ask(step, "a")) == (503, "seat_store_unavailable")
    finally:
        await schema.drop()


async def test_a_policy_without_a_durable_store_fails_closed() -> None:
    step = Seats(loaded("{sqlite: ':memory:'}"))
    assert code(await ask(step, "a")) == (503, "seat_store_unavailable")
    postgres_without_pool = Seats(loaded(f"{{postgres: {{dsn: '{POSTGRES_DSN}'}}}}"))  # the ledger opens it
    assert code(await ask(postgres_without_pool, "a")) == (503, "seat_store_unavailable")


def test_keys_and_customers_without_seats_are_not_bound() -> None:
    step = Seats(loaded("{sqlite: ':memory:'}"))
    flow = tflow.tflow()
    assert step.gateway.policy is not None
    call = Call(request_id="rid", policy=step.gateway.policy)
    call.caller.key = VirtualKey("free", "sha256:y")
    call.caller.attributes["user"] = "anyone"
    attach(flow, call)
    assert step.request(flow) is None and flow.response is None


async def test_the_cli_lists_and_revokes_on_postgres_when_the_policy_has_store_postgres(tmp_path: Path) -> None:
    import subprocess
    import sys

    schema = PostgresSchema()
    await schema.create()
    try:
        store = PostgresSeatStore(await schema.pool(2))
        await store.claim("key:seated", "phone-1", 2, 1.0)
        dsn = f"{POSTGRES_DSN}?search_path={schema.name}"  # asyncpg passes it on as a server setting
        path = tmp_path / "proxy.yaml"
        path.write_text(f"store: {{postgres: {{dsn: '{dsn}'}}}}\nproviders: {{m: {{kind: mock}}}}\n"
                        "models: {x: {route: [{provider: m}]}}\n")  # fmt: skip

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "kaixu", "seats", *args, str(path)]
            return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)

        revoked = await asyncio.to_thread(cli, "revoke", "--key", "seated", "phone-1")
        assert revoked.returncode == 0, revoked.stderr
        assert "PostgreSQL" in revoked.stdout
        assert await store.revoked() == {("key:seated", "phone-1")}
        listed = await asyncio.to_thread(cli, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [(s["install_id"], s["state"]) for s in json.loads(listed.stdout)] == [("phone-1", "revoked")]
        bad = await asyncio.to_thread(cli, "revoke", "--customer", "acme", "not ok")
        assert bad.returncode == 1 and "INSTALL_ID" in bad.stderr
    finally:
        await schema.drop()
