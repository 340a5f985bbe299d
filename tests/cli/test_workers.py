"""`kaixu run --workers 2`: one supervisor, two worker processes on one port (SO_REUSEPORT), sharing what replicas
share. Each test looks at what a client, the ledger file, `/metrics`, `/health` and the log can see: requests
spread over both workers, a rate limit and a budget exact across them, one scrape summing both, a reload reaching
both, a killed worker restarted, SIGTERM draining a stream in flight, one ledger row per request."""

from __future__ import annotations

import asyncio
import copy
import os
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.provider import FakeProvider, Fault
from tests.harness import Kaixu, key_hash, policy_for, wait_for
from tests.limits.test_budget_bound import HI, LONG  # LONG: its echo is longer than `max_tokens` below


class Workers:
    """The module's `kaixu run --workers 2`, and the policy it runs (the tests add keys to it)."""

    def __init__(self, kaixu: Kaixu, policy: dict[str, Any]) -> None:
        self.kaixu, self.policy = kaixu, policy
        self.url = kaixu.url

    def health(self) -> dict[str, Any]:
        """`/health` on a new connection: answered by whichever worker the kernel picks."""
        return httpx.get(self.url + "/health", headers={"connection": "close"}).json()

    def reload(self) -> str:
        """Write the policy and wait until every worker has it in force; its hash."""
        before = self.health()["workers"]["policy_hash"]
        self.kaixu.write_policy(self.policy)

        def reloaded() -> bool:
            fleet = self.health()["workers"]
            return fleet["policy_hash"] not in (None, before)

        wait_for(reloaded, 15, "every worker to load the new policy")
        return str(self.health()["workers"]["policy_hash"])

    def add_key(self, name: str, **fields: Any) -> str:
        secret = f"sk-{name}"
        self.policy["keys"].append({"name": name, "hash": key_hash(secret), **fields})
        self.reload()
        return secret


@pytest.fixture(scope="module")
def workers(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    work = tmp_path_factory.mktemp("workers")
    policy = policy_for(fake.base_url, store={"sqlite": str(work / "ledger.db")})
    policy["models"]["sum-model"] = {"route": [{"provider": "oai", "model": "gpt-4o-mini"}]}
    kaixu = Kaixu(work, policy, args=("--workers", "2", "--access-log")).start()
    yield Workers(kaixu, copy.deepcopy(policy))
    kaixu.stop()


async def burst(url: str, key: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """Every request at once, each on a connection of its own (the kernel spreads connections, not requests)."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=30) as client:
        headers = {"authorization": f"Bearer {key}", "connection": "close"}
        return await asyncio.gather(
            *(client.post(url + "/v1/chat/completions", json=body, headers=headers) for body in bodies)
        )


def served_by(kaixu: Kaixu, request_ids: list[str]) -> dict[str, str]:
    """Which worker logged each request's access line (`[w1]`, `[w2]`), once every one is logged."""
    pattern = re.compile(r"\[(w\d+)\] kaixu\.access: (\S+) ")

    def found() -> dict[str, str]:
        return {m[2]: m[1] for m in pattern.finditer(kaixu.log()) if m[2] in request_ids}

    wait_for(lambda: len(found()) == len(request_ids), 15, "an access line for every request")
    return found()


def ledger_counts(kaixu: Kaixu, request_ids: list[str]) -> dict[str, int]:
    with sqlite3.connect(f"file:{kaixu.workdir / 'ledger.db'}?mode=ro", uri=True) as db:
        marks = ",".join("?" * len(request_ids))
        rows = db.execute(
            f"SELECT request_id, count(*) FROM requests WHERE request_id IN ({marks}) GROUP BY request_id",
            request_ids,
        ).fetchall()
    return {rid: n for rid, n in rows}


def test_connections_spread_over_both_workers_and_each_request_has_one_ledger_row(workers: Workers) -> None:
    seen: dict[int, int] = {}

    def both() -> bool:
        fleet = workers.health()["workers"]
        assert fleet["count"] == 2
        seen[fleet["id"]] = fleet["pid"]
        return len(seen) == 2

    wait_for(both, 15, "/health answered by both workers")
    assert len(set(seen.values())) == 2, seen
    assert workers.kaixu.proc is not None and workers.kaixu.proc.pid not in seen.values(), "the supervisor serves none"

    answers = asyncio.run(burst(workers.url, "sk-test", [{"model": "gpt-4o-mini", "messages": HI}] * 30))
    assert [a.status_code for a in answers] == [200] * 30, [a.text for a in answers if a.status_code != 200]
    ids = [a.headers["x-request-id"] for a in answers]
    assert set(served_by(workers.kaixu, ids).values()) == {"w1", "w2"}
    wait_for(lambda: len(ledger_counts(workers.kaixu, ids)) == 30, 15, "every ledger row")
    assert set(ledger_counts(workers.kaixu, ids).values()) == {1}, "one row per request, none twice"


def test_a_rate_limit_is_exact_and_a_budget_never_overspent_across_workers(
    workers: Workers, fake: FakeProvider
) -> None:
    """Per-process counters would let each worker admit the whole limit: 14 of 24, and twice the budget."""
    limited = workers.add_key("w-rpm", limits={"rpm": 7})
    answers = asyncio.run(burst(workers.url, limited, [{"model": "gpt-4o-mini", "messages": HI}] * 24))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 7 + [429] * 17, statuses
    assert set(served_by(workers.kaixu, [a.headers["x-request-id"] for a in answers]).values()) == {"w1", "w2"}

    body = {"model": "gpt-4o-mini", "messages": LONG, "max_tokens": 20}
    one = Decimal(asyncio.run(burst(workers.url, "sk-test", [body]))[0].headers["x-kaixu-cost-usd"])
    cap = one * 3
    budgeted = workers.add_key("w-budget", budget={"usd": float(cap), "period": "total"})
    answers = asyncio.run(burst(workers.url, budgeted, [body] * 20))
    assert {a.status_code for a in answers} <= {200, 402, 429}, [a.text for a in answers if a.status_code >= 500]
    admitted = [a for a in answers if a.status_code == 200]
    spent = sum(Decimal(a.headers["x-kaixu-cost-usd"]) for a in admitted)
    assert admitted and spent <= cap, f"{len(admitted)} of 20 admitted spent {spent} USD of a {cap} USD budget"
    assert set(served_by(workers.kaixu, [a.headers["x-request-id"] for a in answers]).values()) == {"w1", "w2"}


def scraped(workers: Workers, model: str) -> float:
    """kaixu_requests of one model, summed over its series, from one scrape (one worker answers it)."""
    text = httpx.get(workers.url + "/metrics", headers={"connection": "close"}).text
    pattern = re.compile(r'^kaixu_requests_total\{[^}]*model="' + re.escape(model) + r'"[^}]*\} (\S+)$', re.M)
    return sum(float(v) for v in pattern.findall(text))


def test_one_scrape_of_metrics_sums_every_worker(workers: Workers) -> None:
    answers = asyncio.run(burst(workers.url, "sk-test", [{"model": "sum-model", "messages": HI}] * 20))
    assert [a.status_code for a in answers] == [200] * 20
    assert set(served_by(workers.kaixu, [a.headers["x-request-id"] for a in answers]).values()) == {"w1", "w2"}
    wait_for(lambda: scraped(workers, "sum-model") == 20, 15, "a scrape counting the requests of both workers")
    for _ in range(6):  # whichever worker answers the scrape
        assert scraped(workers, "sum-model") == 20


def test_a_reload_reaches_every_worker_with_one_policy_hash(workers: Workers) -> None:
    secret = workers.add_key("w-reload")  # waits for `workers.policy_hash` to name the new policy in every worker
    fleet = workers.health()["workers"]
    assert {p["hash"] for p in fleet["policies"].values()} == {fleet["policy_hash"]}
    answers = asyncio.run(burst(workers.url, secret, [{"model": "gpt-4o-mini", "messages": HI}] * 10))
    assert [a.status_code for a in answers] == [200] * 10, "the new key works in both workers"


def test_a_killed_worker_is_restarted_and_logged(workers: Workers) -> None:
    fleet = workers.health()["workers"]
    victim, pid = fleet["id"], fleet["pid"]
    os.kill(pid, signal.SIGKILL)

    def replaced() -> bool:
        try:
            policy = workers.health()["workers"]["policies"][str(victim)]
        except httpx.HTTPError:
            return False
        return policy is not None and policy["pid"] != pid

    wait_for(replaced, 30, f"worker {victim} to be restarted")
    assert re.search(rf"worker {victim} \(pid {pid}\) exited with status -9 .*; restarting", workers.kaixu.log())
    answers = asyncio.run(burst(workers.url, "sk-test", [{"model": "gpt-4o-mini", "messages": HI}] * 10))
    assert [a.status_code for a in answers] == [200] * 10


def test_sigterm_drains_a_stream_in_flight_in_every_worker(fake: FakeProvider, tmp_path: Path) -> None:
    policy = policy_for(fake.base_url, store={"sqlite": str(tmp_path / "ledger.db")})
    policy["limits"]["upstream_timeout_s"] = 30
    gateway = Kaixu(tmp_path, policy, args=("--workers", "2")).start()
    try:
        fake.add_fault(Fault(event_delay_ms=150))
        body = {"model": "gpt-4o-mini", "messages": HI, "stream": True}
        headers = {"authorization": "Bearer sk-test"}
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert gateway.proc is not None
            gateway.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            rest = [line for line in lines if line.startswith("data: ")]
        assert first and rest[-1] == "data: [DONE]", rest
        # the client reads the last event before the fake's handler records that it finished sending
        wait_for(lambda: fake.streams[-1].outcome == "complete", 5, "the fake to record its stream complete")
        assert gateway.proc.wait(30) == 0
        assert time.monotonic() - started < 30
        request_id = r.headers["x-request-id"]
        with sqlite3.connect(f"file:{tmp_path / 'ledger.db'}?mode=ro", uri=True) as db:
            (count,) = db.execute("SELECT count(*) FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        assert count == 1, "the drained stream's row was written before the worker stopped"
        log = gateway.log()
        assert "[w1] kaixu: shutting down" in log and "[w2] kaixu: shutting down" in log
        assert not re.search(r"worker \d .*restarting", log), "a worker stopping on SIGTERM is not restarted"
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    ("store", "workers", "says"),
    [
        ({"sqlite": ":memory:"}, "2", "--workers needs a store the workers share"),
        (  # the ledger in PostgreSQL, but no counters to share
            {"sqlite": ":memory:", "postgres": {"dsn": "postgresql://kaixu@127.0.0.1:9/kaixu"}},
            "2",
            "--workers needs a store the workers share",
        ),
        ({"sqlite": "ledger.db"}, "0", "--workers: expected a number from 1 or auto, got '0'"),
    ],
)
def test_workers_refuse_what_they_could_not_share_or_count(
    fake: FakeProvider, tmp_path: Path, store: dict[str, Any], workers: str, says: str
) -> None:
    gateway = Kaixu(tmp_path, policy_for(fake.base_url, store=store), args=("--workers", workers))
    with pytest.raises(RuntimeError, match="kaixu exited with 1") as failed:
        gateway.start()
    assert says in str(failed.value)
