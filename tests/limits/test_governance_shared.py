"""Budgets and rate limits shared by two kaixu processes through Redis (`store.redis`), and what happens when
Redis dies (`fail: closed | open`). Real Redis (127.0.0.1:6379, or KAIXU_TEST_REDIS; a missing one fails under
CI=true), each test under its own key prefix; the dying Redis is a `redis-server` the test starts itself."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests import pg, scrape
from tests.conftest import Alone
from tests.fakes.provider import FakeProvider, Fault
from tests.harness import Kaixu, key_hash, policy_for, wait_for
from tests.limits.test_counters import REDIS_URL, OwnRedis, need_redis
from tests.limits.test_governance import HI, clear_of_a_minute_boundary
from tests.store.test_postgres import PEPPER, cli

LOADED_S = 5.0
"""Redis timeouts of the replica tests (`store.redis.timeout_s`): what they check is exactness, and a loaded machine
(parallel test workers) can make a burst wait past the default 0.5 s for a pooled connection, a 503 by design."""

BODY = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 3}


def replicas(tmp_path: Path, policy: dict[str, Any], count: int = 2) -> list[Kaixu]:
    """`count` kaixu processes on one policy, each with its own work directory (and SQLite ledger)."""
    started = []
    for index in range(count):
        work = tmp_path / f"replica{index}"
        work.mkdir()
        started.append(Kaixu(work, {**policy, "store": {**policy["store"], "sqlite": str(work / "ledger.db")}}).start())
    return started


@pytest.fixture
def prefix() -> Iterator[str]:
    need_redis()
    name = f"kaixu-test:{uuid.uuid4().hex[:12]}:"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{name}*", count=1000))
    if keys:
        client.delete(*keys)


def one_each(gateways: list[Kaixu], key: str, body: dict[str, Any] = BODY) -> list[httpx.Response]:
    """One request on each replica, in turn, before a burst: that every replica admits some of the key's
    requests then holds by construction, not by how the machine happens to schedule the replicas in the burst."""
    headers = {"authorization": f"Bearer {key}"}
    return [httpx.post(g.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) for g in gateways]


async def burst(urls: list[str], key: str, count: int, body: dict[str, Any] = BODY) -> list[httpx.Response]:
    """`count` requests at once, spread over the replicas in turn."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=count), timeout=30) as client:
        headers = {"authorization": f"Bearer {key}"}
        return await asyncio.gather(
            *(
                client.post(urls[i % len(urls)] + "/v1/chat/completions", json=body, headers=headers)
                for i in range(count)
            )
        )


WARM = {"name": "warm", "hash": key_hash("sk-warm"), "limits": {"rpm": 1_000_000}}
"""A key whose requests are counted in Redis and never refused: `warm` sends with it."""


def warm(gateways: list[Kaixu]) -> None:
    """Has each replica open its Redis connections (up to 32) before a measured burst, as a replica in service
    has them: opened during the burst instead, each must connect within kaixu's timeout on an event loop busy
    with a hundred requests, which a machine loaded by other work does not always allow (503, fail closed)."""
    asyncio.run(burst([g.url for g in gateways], "sk-warm", 64))


@pytest.mark.parametrize("n", [1, 8])
def test_two_replicas_on_redis_never_overspend_a_budget_by_more_than_one_reservation(
    tmp_path: Path, fake: FakeProvider, prefix: str, n: int, alone: Alone
) -> None:
    """`n`: OpenAI's number of answers, each generated and billed (issue 18: reserving one answer's worth let
    such a burst spend several times the budget)."""
    body = BODY if n == 1 else {**BODY, "n": n}
    policy = policy_for(
        fake.base_url, store={"sqlite": "x", "redis": {"url": REDIS_URL, "prefix": prefix, "timeout_s": LOADED_S}}
    )
    policy["keys"].append(WARM)
    gateways = replicas(tmp_path, policy)
    try:
        calibrate = httpx.post(gateways[0].url + "/v1/chat/completions", json=body,
                               headers={"authorization": "Bearer sk-test"})  # fmt: skip
        cost = Decimal(calibrate.headers["x-kaixu-cost-usd"])
        cap = cost * 20
        policy["keys"].append(
            {"name": "racer", "hash": key_hash("sk-racer"), "budget": {"usd": float(cap), "period": "total"}}
        )
        for gateway in gateways:
            generation = gateway.health()["policy"]["generation"]
            gateway.write_policy({**policy, "store": {**policy["store"], "sqlite": str(gateway.workdir / "ledger.db")}})
            wait_for(lambda g=gateway, n=generation: g.health()["policy"]["generation"] > n, 10, "the budget to load")

        with alone():  # 200 requests at once, each with Redis calls
            warm(gateways)
            answers = one_each(gateways, "sk-racer", body)
            answers += asyncio.run(burst([g.url for g in gateways], "sk-racer", 198, body))
        statuses = {a.status_code for a in answers}
        admitted = [a for a in answers if a.status_code == 200]
        spent = sum(Decimal(a.headers["x-kaixu-cost-usd"]) for a in admitted)
        reservation = max(Decimal(a.json()["budget"]["request_reserve_usd"]) for a in answers if a.status_code != 200)
        assert spent <= cap + reservation, f"spent {spent} of {cap} (one reservation: {reservation})"
        assert statuses <= {200, 402, 429} and 200 in statuses, statuses
        assert 429 in statuses, "a budget held by the requests in flight is a 429 to retry, not a 402"
        assert len(admitted) >= 2
        by_replica = {a.url.port for a in admitted}
        assert len(by_replica) == 2, "both replicas admitted requests against the one budget"
        client = redis.Redis.from_url(REDIS_URL)
        scope = f"{prefix}c1:spend:budget:key:racer:total:total"
        wait_for(lambda: int(client.get(scope) or 0) == int(spent * 1_000_000), 10, "every settle to reach Redis")
    finally:
        for gateway in gateways:
            gateway.stop()


def test_rpm_is_exact_across_two_replicas(tmp_path: Path, fake: FakeProvider, prefix: str, alone: Alone) -> None:
    policy = policy_for(
        fake.base_url, store={"sqlite": "x", "redis": {"url": REDIS_URL, "prefix": prefix, "timeout_s": LOADED_S}}
    )
    policy["keys"] += [WARM, {"name": "rpm", "hash": key_hash("sk-rpm"), "limits": {"rpm": 20, "max_parallel": 50}}]
    gateways = replicas(tmp_path, policy)
    try:
        with alone():  # the burst must fit in one minute's window
            warm(gateways)
            clear_of_a_minute_boundary()
            answers = one_each(gateways, "sk-rpm") + asyncio.run(burst([g.url for g in gateways], "sk-rpm", 58))
        admitted = [a for a in answers if a.status_code == 200]
        assert len(admitted) == 20, sorted(a.status_code for a in answers)
        assert {a.status_code for a in answers} == {200, 429}
        assert {a.url.port for a in admitted} == {g.port for g in gateways}
    finally:
        for gateway in gateways:
            gateway.stop()


@pytest.mark.parametrize("fail", ["closed", "open"])
def test_when_redis_dies_the_policy_decides(tmp_path: Path, fake: FakeProvider, fail: str) -> None:
    own = OwnRedis(tmp_path)
    policy = policy_for(
        fake.base_url, store={"sqlite": str(tmp_path / "ledger.db"), "redis": {"url": own.url, "fail": fail}}
    )
    policy["keys"].append({"name": "limited", "hash": key_hash("sk-lim"), "limits": {"rpm": 1000}})
    gateway = Kaixu(tmp_path, policy).start()
    try:
        limited = {"authorization": "Bearer sk-lim"}
        assert httpx.post(gateway.url + "/v1/chat/completions", json=BODY, headers=limited).status_code == 200
        own.kill()
        started = time.monotonic()
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=BODY, headers=limited, timeout=10)
        assert time.monotonic() - started < 3, "an unreachable Redis is found out fast"
        if fail == "closed":
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
            assert answer.json()["error"]["code"] == "counters_unavailable"
        else:
            assert answer.status_code == 200
            assert scrape.total(scrape.samples(gateway), "kaixu_governance_fail_open_total") >= 1
        plain = httpx.post(gateway.url + "/v1/chat/completions", json=BODY, headers={"authorization": "Bearer sk-test"})
        assert plain.status_code == 200, "a request with no budget or limit needs no counters"
    finally:
        gateway.stop()
        own.kill()


def lines_after(gateway: Kaixu, seen: int) -> list[str]:
    """kaixu's log lines (stderr: every logger, the access log off) after the first `seen`."""
    return gateway.log().splitlines()[seen:]


HEALTH_FIELDS = {
    "status",
    "version",
    "backend",
    "uptime_seconds",
    "policy",
    "providers",
    "store",
    "routing",
    "deployments",
}
"""What /health carried before it carried the counters: the seeds' fields (seed 002's `status`, `version`,
`backend`, `uptime_seconds`, `routing`) and kaixu's own."""


@pytest.mark.parametrize("fail", ["closed", "open"])
def test_a_redis_outage_is_logged_once_each_way_and_health_tells_it(
    tmp_path: Path, fake: FakeProvider, fail: str
) -> None:
    """Redis dies under load: one log line when it goes (not one per request), /health not ok with the
    counters' state (503 under `fail: closed`; `degraded`, still 200, under `fail: open`), and when it comes
    back, one line with what the outage cost and /health ok again, with no request needed to notice."""
    own = OwnRedis(tmp_path)
    store = {"sqlite": str(tmp_path / "ledger.db"), "redis": {"url": own.url, "fail": fail}}
    policy = policy_for(fake.base_url, store=store)
    policy["keys"].append({"name": "limited", "hash": key_hash("sk-lim"), "limits": {"rpm": 100_000}})
    policy["keys"].append({"name": "budgeted", "hash": key_hash("sk-bud"), "budget": {"usd": 100, "period": "month"}})
    gateway = Kaixu(tmp_path, policy).start()
    try:
        assert asyncio.run(burst([gateway.url], "sk-lim", 2))[0].status_code == 200
        health = httpx.get(gateway.url + "/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        counters = health.json()["counters"]
        assert counters["kind"] == "redis" and counters["ok"] is True and counters["fail"] == fail
        seen = len(gateway.log().splitlines())
        own.kill()
        answers = asyncio.run(burst([gateway.url], "sk-lim", 150)) + asyncio.run(burst([gateway.url], "sk-bud", 150))
        expected = 503 if fail == "closed" else 200
        assert {a.status_code for a in answers} == {expected}, answers[0].text
        logged = lines_after(gateway, seen)
        assert len(logged) <= 2, f"{len(logged)} log lines for 300 requests:\n" + "\n".join(logged[:5])
        assert any("unavailable" in line for line in logged), logged

        health = httpx.get(gateway.url + "/health")
        body = health.json()
        assert set(body) >= HEALTH_FIELDS, sorted(body)
        counters = body["counters"]
        assert counters["ok"] is False and counters["kind"] == "redis" and counters["last_error"]
        assert counters["unavailable_for_s"] >= 0
        if fail == "closed":
            assert health.status_code == 503 and body["status"] == "unavailable"
            assert counters["meanwhile"]["refused_requests"] == 300
        else:
            assert health.status_code == 200 and body["status"] == "degraded"
            assert counters["meanwhile"]["uncounted_requests"] == 300

        seen = len(gateway.log().splitlines())
        own.start()
        wait_for(lambda: httpx.get(gateway.url + "/health").status_code == 200 and gateway.health()["status"] == "ok",
                 10, "/health to see Redis back")  # fmt: skip
        assert gateway.health()["counters"]["ok"] is True
        back = lines_after(gateway, seen)
        assert len(back) == 1 and "available again" in back[0] and "300" in back[0], back
        assert asyncio.run(burst([gateway.url], "sk-lim", 2))[0].status_code == 200
    finally:
        gateway.stop()
        own.kill()


def test_two_replicas_on_redis_and_postgres_hold_a_cli_keys_budget(
    tmp_path: Path, fake: FakeProvider, prefix: str, alone: Alone
) -> None:
    """The issue's proof with the whole shared store: the key is made by `kaixu keys create` in PostgreSQL, both
    replicas read it from there, count on Redis and write their ledger rows to PostgreSQL."""
    with pg.own_schema() as dsn:
        store = {
            "postgres": {"dsn": dsn, "pool_size": 4},
            "redis": {"url": REDIS_URL, "prefix": prefix, "timeout_s": LOADED_S},
        }
        policy = policy_for(fake.base_url, store=store)
        policy["keys"].append(WARM)
        env = {"KAIXU_KEY_PEPPER": PEPPER}
        gateways = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            gateways.append(Kaixu(tmp_path / name, policy, env=env).start())
        try:
            calibrate = httpx.post(gateways[0].url + "/v1/chat/completions", json=BODY,
                                   headers={"authorization": "Bearer sk-test"})  # fmt: skip
            cap = Decimal(calibrate.headers["x-kaixu-cost-usd"]) * 20
            made = cli(gateways[0].workdir, "keys", "create", "--name", "racer", "--budget-usd", str(cap),
                       "--period", "total")  # fmt: skip
            assert made.returncode == 0, made.stderr
            key = made.stdout.strip()

            def known(gateway: Kaixu) -> bool:
                answer = httpx.get(gateway.url + "/v1/models", headers={"authorization": f"Bearer {key}"})
                return answer.status_code == 200

            for gateway in gateways:
                wait_for(lambda g=gateway: known(g), 10, "the key on each replica")

            with alone():
                warm(gateways)
                answers = one_each(gateways, key) + asyncio.run(burst([g.url for g in gateways], key, 198))
            statuses = {a.status_code for a in answers}
            admitted = [a for a in answers if a.status_code == 200]
            spent = sum(Decimal(a.headers["x-kaixu-cost-usd"]) for a in admitted)
            reservation = max(
                Decimal(a.json()["budget"]["request_reserve_usd"]) for a in answers if a.status_code != 200
            )
            assert spent <= cap + reservation, f"spent {spent} of {cap} (one reservation: {reservation})"
            assert statuses <= {200, 402, 429} and 200 in statuses, statuses
            assert 429 in statuses, "a budget held by the requests in flight is a 429 to retry, not a 402"
            assert {a.url.port for a in admitted} == {g.port for g in gateways}, "both replicas served the key"
            query = (
                "SELECT count(*), coalesce(sum(cost_micros), 0) FROM requests"
                " WHERE key_name = 'racer' AND status = 200 AND operation = 'chat'"
            )

            def rows() -> Any:
                return asyncio.run(pg.fetch(dsn, "SELECT key_name, status, count(*) FROM requests GROUP BY 1, 2"))

            try:
                wait_for(lambda: asyncio.run(pg.fetch(dsn, query))[0][0] == len(admitted), 10, "the ledger rows")
            except TimeoutError:
                raise AssertionError(f"{len(admitted)} admitted; {rows()}") from None
            assert Decimal(asyncio.run(pg.fetch(dsn, query))[0][1]) / 1_000_000 == spent
        finally:
            for gateway in gateways:
                gateway.stop()


def test_the_parallel_request_cap_holds_across_two_replicas(tmp_path: Path, fake: FakeProvider, prefix: str) -> None:
    policy = policy_for(
        fake.base_url, store={"sqlite": "x", "redis": {"url": REDIS_URL, "prefix": prefix, "timeout_s": LOADED_S}}
    )
    policy["keys"].append({"name": "par", "hash": key_hash("sk-par"), "limits": {"max_parallel": 3}})
    gateways = replicas(tmp_path, policy)
    release = threading.Event()  # the admitted requests are held at the provider until the others are answered
    try:
        fake.clear()
        fake.add_fault(Fault(latency_ms=10_000, until=release, times=10, path_contains="/chat/completions"))

        async def hold_then_release() -> list[httpx.Response]:
            """10 requests at once over both replicas; once 7 are answered (the 3 admitted cannot be), the
            provider answers the rest. A wrongly admitted 4th leaves 6: the 10 s bound ends the wait."""
            headers = {"authorization": "Bearer sk-par"}
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=10), timeout=30) as client:
                sent = [
                    asyncio.ensure_future(client.post(gateways[i % 2].url + "/v1/chat/completions", json=BODY,
                                                      headers=headers))
                    for i in range(10)
                ]  # fmt: skip
                deadline = time.monotonic() + 10
                while sum(answer.done() for answer in sent) < 7 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                release.set()
                return list(await asyncio.gather(*sent))

        answers = asyncio.run(hold_then_release())
        assert sorted(a.status_code for a in answers) == [200] * 3 + [429] * 7, answers[0].text
        assert len(fake.requests) == 3, "the refused ones never reached the provider"
    finally:
        release.set()
        fake.clear_faults()
        for gateway in gateways:
            gateway.stop()
