"""Two kaixu processes on one PostgreSQL share one job queue: each job is claimed by one of them
(`FOR UPDATE SKIP LOCKED`), whichever process it was submitted to, and none runs twice. They share the sessions
too: a conversation begun on one continues on the other."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterator

import pytest

from tests import pg
from tests.fakes.provider import FakeProvider, Fault
from tests.harness import LIMITED_KEY, Kaixu, policy_for, wait_for
from tests.jobs.test_gateway13_jobs import LIMITS, finished, result, status, submit
from tests.jobs.test_sessions import chat


@pytest.fixture(scope="module")
def pair(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kaixu, Kaixu, str]]:
    tmp_path = tmp_path_factory.mktemp("replicas")
    with pg.own_schema() as dsn:
        policy = policy_for(
            fake.base_url,
            store={"postgres": {"dsn": dsn, "pool_size": 4}},
            limits=LIMITS,
            jobs={"poll_s": 0.1, "lease_s": 5, "concurrency": 1},
            sessions={},
        )
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a = Kaixu(tmp_path / "a", policy).start()
        b = Kaixu(tmp_path / "b", policy).start()
        try:
            yield a, b, dsn
        finally:
            a.stop()
            b.stop()


def test_two_processes_take_jobs_and_run_none_twice(pair: tuple[Kaixu, Kaixu, str], fake: FakeProvider) -> None:
    a, b, dsn = pair
    # two jobs held by the provider at once, both submitted to `a`: with one job per provider per process, the
    # second can only be running in `b`
    release = threading.Event()
    fake.add_fault(Fault(latency_ms=20_000, until=release, times=2))
    held = [submit(a).json()["job_id"] for _ in range(2)]
    try:
        wait_for(
            lambda: all(status(a, job).json()["job"]["status"] == "running" for job in held), 10, "both jobs to run"
        )
    finally:
        release.set()
    jobs = held + [submit(a if i % 2 else b).json()["job_id"] for i in range(12)]
    for job in jobs:
        assert finished(a, job)["status"] == "succeeded"
        assert result(b, job).json()["output_text"] == "echo: Write a long story"
    sent = collections.Counter(r.headers.get("x-request-id") for r in fake.requests)
    assert {job: sent[job] for job in jobs} == dict.fromkeys(jobs, 1)  # each ran exactly once, by one process
    rows = asyncio.run(pg.fetch(dsn, "SELECT status, attempts FROM kaixu_jobs"))
    assert sorted(rows) == [("succeeded", 1)] * len(jobs)

    def recorded() -> bool:
        rows = asyncio.run(pg.fetch(dsn, "SELECT request_id FROM requests WHERE request_id = ANY($1)", jobs))
        return len(rows) == len(jobs)

    wait_for(recorded, 10, "a ledger record of each job")


def test_a_session_begun_on_one_replica_continues_on_the_other(
    pair: tuple[Kaixu, Kaixu, str], fake: FakeProvider
) -> None:
    a, b, _ = pair
    first = chat(a, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "My name is Alice"}]})
    session_id = first.json()["session_id"]
    body = {"model": "claude-test", "session_id": session_id, "messages": [{"role": "user", "content": "Name?"}]}
    second = chat(b, body)
    assert second.status_code == 200 and second.json()["session_id"] == session_id
    assert "My name is Alice" in fake.requests[-1].body.decode()
    assert chat(b, body, key=LIMITED_KEY).status_code == 404
