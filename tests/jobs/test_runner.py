"""The job runner's own API (what the Responses API's `background: true` will call): submit, find, cancel, kick,
and its bound of jobs per provider, against a real SQLite job store and a real HTTP server standing in for
kaixu's listener (it counts the requests it holds at once, and hands out answers when the test says)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kaixu.config.policy import JobsPolicy
from kaixu.jobs.runner import JobRunner, TooManyJobs
from kaixu.store.jobs import Job, SqliteJobStore


class Target:
    """An HTTP/1.1 server answering each POST with 200 `{"path", "credential"}` once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held = 0
        self.most_held = 0
        self.closed_early = 0
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
        await reader.readexactly(int(headers.get("content-length", "0")))
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        try:
            waiting = asyncio.ensure_future(self.release.wait())
            gone = asyncio.ensure_future(reader.read(1))  # b"": the client hung up (a cancelled job)
            await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone.done() and gone.result() == b"":
                self.closed_early += 1
                waiting.cancel()
                return
            gone.cancel()
            body = json.dumps({"path": lines[0].split()[1], "credential": headers.get("x-kaixu-internal")}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
            writer.write(body)
            await writer.drain()
        finally:
            self.held -= 1
            writer.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[JobRunner, Target, SqliteJobStore]]:
    target = Target()
    await target.start()
    store = SqliteJobStore(str(tmp_path / "jobs.db"))
    settings = JobsPolicy(concurrency=2, poll_s=0.05, lease_s=5, max_pending=10)

    async def url() -> str:
        return target.url

    runner = JobRunner(lambda: store, lambda: settings, url, lambda name, expires: f"for:{name}")
    runner.start()
    yield runner, target, store
    target.release.set()
    await runner.stop()
    await store.close()
    assert target.server is not None
    target.server.close()


async def until(check: object, what: str, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


async def submit(runner: JobRunner, owner: str = "alice", provider: str = "p") -> Job:
    return await runner.submit(owner=owner, front="gateway13", path="/run", body=b"{}", headers={}, provider=provider)


async def test_at_most_concurrency_jobs_per_provider(rig: tuple[JobRunner, Target, SqliteJobStore]) -> None:
    runner, target, _ = rig
    jobs = [await submit(runner) for _ in range(4)] + [await submit(runner, provider="q")]

    async def held() -> bool:
        return target.held == 3  # two of provider p, the one of q

    await until(held, "two jobs of p and one of q to run")
    states = [(await runner.find(job.id, "alice")) for job in jobs]
    assert sorted(job.status for job in states if job is not None) == [
        "queued",
        "queued",
        "running",
        "running",
        "running",
    ]
    target.release.set()

    async def done() -> bool:
        found = [await runner.find(job.id, "alice") for job in jobs]
        return all(job is not None and job.status == "succeeded" for job in found)

    await until(done, "every job to succeed")
    assert target.most_held == 3
    finished = await runner.find(jobs[0].id, "alice")
    assert finished is not None and json.loads(finished.result_body or "") == {
        "path": "/run",
        "credential": "for:alice",
    }


async def test_cancel_stops_a_running_job_and_is_the_owners(rig: tuple[JobRunner, Target, SqliteJobStore]) -> None:
    runner, target, _ = rig
    job = await submit(runner)

    async def running() -> bool:
        found = await runner.find(job.id, "alice")
        return found is not None and found.status == "running" and target.held == 1

    await until(running, "the job to run")
    assert await runner.cancel(job.id, "mallory") is None  # another key's job is not there
    assert await runner.find(job.id, "mallory") is None
    cancelled = await runner.cancel(job.id, "alice")
    assert cancelled is not None and cancelled.status == "cancelled"

    async def hung_up() -> bool:
        return target.closed_early == 1

    await until(hung_up, "the job's request to be dropped")
    target.release.set()
    queued = await submit(runner)  # the runner goes on with the next job

    async def next_done() -> bool:
        found = await runner.find(queued.id, "alice")
        return found is not None and found.status == "succeeded"

    await until(next_done, "the next job to succeed")
    after = await runner.find(job.id, "alice")
    assert after is not None and after.status == "cancelled" and after.result_body is None


async def test_a_queued_job_cancelled_never_runs(rig: tuple[JobRunner, Target, SqliteJobStore]) -> None:
    runner, target, _ = rig
    blocking = [await submit(runner) for _ in range(2)]  # the two slots of provider p

    async def both() -> bool:
        return target.held == 2

    await until(both, "two jobs to run")
    waiting = await submit(runner)
    cancelled = await runner.cancel(waiting.id, "alice")
    assert cancelled is not None and cancelled.status == "cancelled"
    target.release.set()

    async def done() -> bool:
        found = [await runner.find(job.id, "alice") for job in blocking]
        return all(job is not None and job.status == "succeeded" for job in found)

    await until(done, "the running jobs to succeed")
    after = await runner.find(waiting.id, "alice")
    assert after is not None and after.status == "cancelled" and after.attempts == 0


async def test_max_pending(rig: tuple[JobRunner, Target, SqliteJobStore]) -> None:
    runner, _, _ = rig
    for _ in range(10):
        await submit(runner, owner="bob")
    with pytest.raises(TooManyJobs):
        await submit(runner, owner="bob")
    await submit(runner, owner="carol")  # per key
