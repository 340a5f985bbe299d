"""Kaixu Gateway 13's background jobs (seed 000, "Long responses"), with httpx as its runbook shows them:
submit (202), poll the status (queued / running / succeeded / failed, `&kick=1`), fetch the result (200 with the
gateway-chat answer, 202 while it runs, 500 when it failed); a job is its key's; it survives a restart; it is
recorded in the ledger as the request it ran."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.provider import FakeProvider, Fault
from tests.harness import LIMITED_KEY, TEST_KEY, Kaixu, key_hash, ledger_row, policy_for, wait_for
from tests.store.test_store_keys import PEPPER

FN = "/.netlify/functions"
BEARER = {"authorization": f"Bearer {TEST_KEY}"}
ADMIN_KEY = "sk-admin-jobs-test"
LIMITS = {"upstream_timeout_s": 60}
"""The provider holds a job's request for as long as a test needs (the harness's 2 s would end it)."""
BODY: dict[str, Any] = {
    "provider": "openai",
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Write a long story"}],
    "max_tokens": 64,
}


def submit(kaixu: Kaixu, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(kaixu.url + f"{FN}/gateway-job-submit", json=body or BODY, headers=headers or BEARER, timeout=10)


def status(kaixu: Kaixu, job_id: str, key: str = TEST_KEY, kick: bool = False) -> httpx.Response:
    query = f"?id={job_id}" + ("&kick=1" if kick else "")
    return httpx.get(kaixu.url + f"{FN}/gateway-job-status{query}", headers={"authorization": f"Bearer {key}"})


def result(kaixu: Kaixu, job_id: str, key: str = TEST_KEY) -> httpx.Response:
    return httpx.get(kaixu.url + f"{FN}/gateway-job-result?id={job_id}", headers={"authorization": f"Bearer {key}"})


def finished(kaixu: Kaixu, job_id: str, timeout: float = 15, key: str = TEST_KEY) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(status(kaixu, job_id, key=key).json()["job"])
        return seen["status"] in ("succeeded", "failed")

    wait_for(done, timeout, f"job {job_id} to finish")
    return seen


@pytest.fixture(scope="module")
def gateway(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    workdir = tmp_path_factory.mktemp("jobs")
    jobs = {"poll_s": 0.2, "lease_s": 3, "max_pending": 2}
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"}, limits=LIMITS, jobs=jobs)
    policy["admin_keys"] = [{"name": "ops", "hash": key_hash(ADMIN_KEY)}]
    kaixu = Kaixu(workdir, policy, env={"KAIXU_KEY_PEPPER": PEPPER}).start()
    yield kaixu
    kaixu.stop()


def test_submit_poll_result_as_the_runbook_shows(gateway: Kaixu, fake: FakeProvider) -> None:
    release = threading.Event()
    fake.add_fault(Fault(latency_ms=10_000, until=release))
    accepted = submit(gateway)
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert set(body) == {"job_id", "status_url", "result_url", "note"}
    job_id = body["job_id"]
    assert body["status_url"] == f"{FN}/gateway-job-status?id={job_id}"
    assert body["result_url"] == f"{FN}/gateway-job-result?id={job_id}"
    # the provider holds the answer: the job is running, its result not there yet
    wait_for(lambda: status(gateway, job_id).json()["job"]["status"] == "running", 10, "the job to run")
    pending = result(gateway, job_id)
    assert pending.status_code == 202 and pending.json()["job"]["status"] == "running"
    release.set()
    assert finished(gateway, job_id)["status"] == "succeeded"
    done = result(gateway, job_id)
    assert done.status_code == 200
    answer = done.json()
    assert answer["output_text"] == "echo: Write a long story"
    assert answer["provider"] == "openai" and answer["model"] == "gpt-4o-mini"
    assert set(answer) >= {"usage", "month", "telemetry"} and answer["usage"]["output_tokens"] > 0
    # the job ran as an ordinary request of its key: forwarded once, recorded in the ledger under the job's id
    assert [r.path for r in fake.requests].count("/v1/chat/completions") == 1
    sent = {h.lower() for h in fake.requests[-1].headers}
    assert "authorization" in sent and "x-kaixu-internal" not in sent  # the provider's key, not kaixu's credential
    record = ledger_row(gateway, job_id)
    assert record["key_name"] == "test" and record["status"] == 200 and record["model"] == "gpt-4o-mini"
    assert record["cost_micros"] is not None and record["output_tokens"] > 0


def test_a_job_is_its_keys_own(gateway: Kaixu) -> None:
    job_id = submit(gateway).json()["job_id"]
    finished(gateway, job_id)
    assert status(gateway, job_id, key=LIMITED_KEY).status_code == 404
    assert result(gateway, job_id, key=LIMITED_KEY).status_code == 404
    assert status(gateway, job_id, key=LIMITED_KEY, kick=True).status_code == 404
    assert status(gateway, "no-such-job").status_code == 404
    # an unknown key is looked up in the store keys' snapshot too: on a loaded machine that snapshot can be
    # stale for a moment, and kaixu then fails closed with a 503 (seen once in CI); the answer that counts is 401
    unknown: list[int] = []
    wait_for(lambda: unknown.append(status(gateway, job_id, key="sk-unknown").status_code) or unknown[-1] != 503,
             15, "the store keys' snapshot to be fresh")  # fmt: skip
    assert unknown[-1] == 401, unknown
    unauthenticated = httpx.post(gateway.url + f"{FN}/gateway-job-submit", json=BODY)
    assert unauthenticated.status_code == 401


def stored(kaixu: Kaixu, job_id: str) -> tuple[str, int, str | None]:
    """A job as the store has it (status, attempts, error): what its owner sees, when the owner cannot ask."""
    with sqlite3.connect(f"file:{kaixu.workdir / 'ledger.db'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT status, attempts, error FROM kaixu_jobs WHERE id = ?", (job_id,)).fetchone()
    return (str(row[0]), int(row[1]), row[2]) if row is not None else ("", 0, None)


def test_a_store_key_runs_its_jobs_as_itself_until_it_is_revoked(gateway: Kaixu, fake: FakeProvider) -> None:
    """A job keeps its key's name, never the key: it runs as the store key as it is when it runs."""
    made = httpx.post(gateway.url + "/api/keys", json={"name": "jobs-store-key"},
                      headers={"authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    bearer = {"authorization": f"Bearer {key}"}
    wait_for(lambda: status(gateway, "none", key=key).status_code == 404, 10, "the store key to be accepted")
    job_id = submit(gateway, headers=bearer).json()["job_id"]
    assert finished(gateway, job_id, key=key)["status"] == "succeeded"
    assert ledger_row(gateway, job_id)["key_name"] == "jobs-store-key"
    # the next job is throttled once (it waits 3 s), meanwhile its key is revoked: its next attempt is refused
    fake.add_fault(Fault(status=429, retry_after=3))
    waiting = submit(gateway, headers=bearer).json()["job_id"]
    wait_for(
        lambda: (
            status(gateway, waiting, key=made.json()["key"]).json()["job"]["attempts"] == 1
            and status(gateway, waiting, key=made.json()["key"]).json()["job"]["status"] == "queued"
        ),
        10,
        "the throttled job to wait",
    )
    revoked = httpx.delete(gateway.url + "/api/keys/jobs-store-key", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert revoked.status_code == 200
    wait_for(lambda: status(gateway, "none", key=key).status_code == 401, 10, "the revocation to be seen")
    wait_for(lambda: stored(gateway, waiting)[0] == "failed", 15, "the job's next attempt")
    assert stored(gateway, waiting) == ("failed", 2, "the key that made this job is no longer valid (revoked)")


def test_a_failed_job_is_a_500_with_the_reason(gateway: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=400))
    job_id = submit(gateway).json()["job_id"]
    job = finished(gateway, job_id)
    assert job["status"] == "failed" and job["error"]
    failed = result(gateway, job_id)
    assert failed.status_code == 500 and failed.json()["error"] == job["error"]


def test_a_request_the_door_refuses_is_refused_at_submit(gateway: Kaixu) -> None:
    assert submit(gateway, {**BODY, "provider": "nobody"}).status_code == 400
    assert submit(gateway, {**BODY, "messages": []}).status_code == 400
    refused = submit(
        gateway, BODY | {"model": "claude-test", "provider": None}, {"authorization": f"Bearer {LIMITED_KEY}"}
    )
    assert refused.status_code == 403


def test_a_key_has_at_most_max_pending_jobs_waiting(gateway: Kaixu, fake: FakeProvider) -> None:
    release = threading.Event()
    fake.add_fault(Fault(latency_ms=10_000, until=release, times=2))
    try:
        jobs = [submit(gateway).json()["job_id"] for _ in range(2)]
        refused = submit(gateway)
        assert refused.status_code == 429 and refused.json()["error"] == (
            "this key has 2 jobs queued or running already (jobs.max_pending)"
        )
        assert refused.json()["code"] == "too_many_jobs"
    finally:
        release.set()
    for job in jobs:
        assert finished(gateway, job)["status"] == "succeeded"
    again = submit(gateway)
    assert again.status_code == 202
    finished(gateway, again.json()["job_id"])  # (not left running into the next test's faults)


def test_a_job_throttled_by_the_provider_waits_and_runs_again(gateway: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=429, retry_after=0))
    job_id = submit(gateway).json()["job_id"]
    job = finished(gateway, job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 2


def test_jobs_survive_a_restart(fake: FakeProvider, tmp_path: Path) -> None:
    """One job runs (held by the provider) and one waits (one job at a time per provider) when kaixu dies: the
    next process runs the queued one at once and the one whose process died once its lease has run out."""
    jobs = {"poll_s": 0.2, "lease_s": 2, "concurrency": 1}
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"}, limits=LIMITS, jobs=jobs)
    release = threading.Event()
    fake.add_fault(Fault(latency_ms=20_000, until=release))
    first = Kaixu(tmp_path, policy).start()
    try:
        running = submit(first).json()["job_id"]
        wait_for(lambda: status(first, running).json()["job"]["status"] == "running", 10, "the first job to run")
        queued = submit(first).json()["job_id"]
        assert status(first, queued).json()["job"]["status"] == "queued"
    finally:
        assert first.proc is not None
        first.proc.kill()  # no clean stop: its running job keeps its lease until the lease runs out
        first.proc.wait()
        release.set()
        first.port_file.unlink()  # (the next process writes its own)
    second = Kaixu(tmp_path, policy).start()
    try:
        assert finished(second, queued)["status"] == "succeeded"
        again = finished(second, running)
        assert again["status"] == "succeeded" and again["attempts"] == 2
        assert result(second, running).json()["output_text"] == "echo: Write a long story"
    finally:
        second.stop()


def test_an_internal_credential_is_worth_nothing_outside_kaixu(gateway: Kaixu) -> None:
    """The credential a job's request carries is signed with a secret of the process: a client cannot make one
    (here: the right shape for the key `test`, with a made-up signature), and one is never accepted unsigned."""
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    for forged in ("dGVzdA.9999999999." + "0" * 64, "dGVzdA.9999999999", "-.9999999999.00"):
        refused = httpx.post(gateway.url + "/v1/chat/completions", json=chat, headers={"x-kaixu-internal": forged})
        assert refused.status_code == 401, forged


def test_kick_requeues_a_stalled_job(fake: FakeProvider, tmp_path: Path) -> None:
    """`&kick=1` (the seed's "re-invoke worker"): a job whose process died stays `running` until its lease runs
    out; a process that would not look again for a minute runs it at once when kicked."""
    store = {"sqlite": str(tmp_path / "jobs.db")}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    release = threading.Event()
    fake.add_fault(Fault(latency_ms=20_000, until=release))
    first = Kaixu(
        tmp_path / "a", policy_for(fake.base_url, store=store, limits=LIMITS, jobs={"poll_s": 0.2, "lease_s": 2})
    ).start()
    idle = Kaixu(
        tmp_path / "b", policy_for(fake.base_url, store=store, limits=LIMITS, jobs={"poll_s": 60, "lease_s": 2})
    )
    try:
        job_id = submit(first).json()["job_id"]
        wait_for(lambda: status(first, job_id).json()["job"]["status"] == "running", 10, "the job to run")
        idle.start()  # it looks for jobs as it starts (none is due), then not for a minute
        assert first.proc is not None
        first.proc.kill()
        first.proc.wait()
        killed = time.monotonic()
        release.set()
        wait_for(lambda: time.monotonic() - killed > 2.5, 10, "the dead process's lease to run out")
        assert status(idle, job_id).json()["job"]["status"] == "running"  # stalled: nobody looks for a minute
        kicked = status(idle, job_id, kick=True)
        assert kicked.status_code == 200 and kicked.json()["job"]["status"] in ("queued", "running")
        job = finished(idle, job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 2
    finally:
        release.set()
        first.stop()
        if idle.proc is not None:
            idle.stop()
