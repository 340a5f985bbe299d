"""The background job runner: jobs wait in the store (`kaixu_jobs`, kaixu/store/jobs.py) until a worker of any
kaixu process sharing that store claims one, and each runs as an ordinary request sent to kaixu itself.

Why through kaixu's own listener: a job is then authenticated, limited, routed, retried, priced, metered and
recorded in the ledger exactly like the same request sent by its client (nothing is re-implemented for jobs).
It runs as the key that made it, without that key: the job keeps only the key's name, and the runner sends a
short-lived credential signed with a secret of this process (`credentials.internal_credential`), which the
auth step turns back into the key as it is now (a key revoked meanwhile is refused).

A claim holds a lease (`jobs.lease_s`), renewed while the request runs: a process that dies leaves its jobs
running with a lease that runs out, and any process claims them again. A process that stops cleanly puts its
running jobs back in the queue. Each process runs at most `jobs.concurrency` jobs per provider at once.

The API a front door uses (Gateway 13's jobs, the Responses API's `background: true`): `submit`, `find`,
`cancel`, `kick`; the answers' shapes are the door's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from kaixu.config.policy import JobsPolicy
from kaixu.credentials import INTERNAL_HEADER
from kaixu.exceptions import KaixuError
from kaixu.log import Outage
from kaixu.store.jobs import FINISHED, Job, JobStore
from kaixu.store.ledger import StoreUnavailable

log = logging.getLogger("kaixu.jobs")

RETRY_LATER = frozenset({429, 503})
"""Answers that mean "not now": the job goes back to the queue (at most `jobs.max_attempts` claims)."""
MAX_WAIT_S = 60.0
"""The longest a job waits before its next attempt, whatever a `Retry-After` says."""
PRUNE_EVERY_S = 60.0


class TooManyJobs(KaixuError):
    """The key has `jobs.max_pending` jobs queued or running already."""

    status = 429
    type = "rate_limit_error"
    code = "too_many_jobs"


class JobsUnavailable(KaixuError):
    """The job store does not answer: the client may retry."""

    status = 503
    type = "api_error"
    code = "jobs_unavailable"


def _error_message(body: bytes) -> str:
    """The message of an error answer in any door's shape (`{"error": "..."}`, `{"error": {"message"}}`)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error) if error else "the job's request failed"


def _wait_s(response: httpx.Response, attempts: int) -> float:
    try:
        wait = float(response.headers.get("retry-after", ""))
    except ValueError:
        wait = 2.0**attempts
    return min(max(wait, 0.0), MAX_WAIT_S)


class JobRunner:
    def __init__(
        self,
        store: Callable[[], JobStore | None],
        settings: Callable[[], JobsPolicy],
        target: Callable[[], Awaitable[str | None]],
        credential: Callable[[str, float], str],
    ) -> None:
        """`store`: the job store in force (it changes when a reload changes `store:`); `settings`: the
        policy's `jobs:`; `target`: kaixu's own base URL (None while it does not listen); `credential(name,
        expires_at)`: the internal credential of a key."""
        self._store = store
        self._settings = settings
        self._target = target
        self._credential = credential
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        """The jobs this process runs, by id."""
        self._providers: dict[str, str] = {}
        self._client: httpx.AsyncClient | None = None
        self._pruned_at = 0.0
        self.outage = Outage("job store", log, level=logging.WARNING)
        """A store that does not answer: a line when it goes and one when it is back, never one a poll."""

    # -- the API a door uses ------------------------------------------------------------------------------

    def store(self) -> JobStore:
        store = self._store()
        if store is None:
            raise JobsUnavailable("background jobs need a store")
        return store

    async def submit(
        self,
        *,
        owner: str,
        front: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        provider: str,
        job_id: str | None = None,
    ) -> Job:
        """A new queued job running `body` at `path` as the key named `owner`; woken at once in this process.
        `TooManyJobs` when the key has `jobs.max_pending` jobs queued or running already. `job_id`: the door's own
        id for it (unguessable: the Responses API's `resp_...`), else a fresh uuid4; it is also the request id
        of the job's request (its ledger record, `x-kaixu-request-id`)."""
        most = self._settings().max_pending
        if await self._guarded(self.store().pending(owner)) >= most:
            raise TooManyJobs(f"this key has {most} jobs queued or running already (jobs.max_pending)")
        now = time.time()
        job = Job(
            id=job_id or str(uuid.uuid4()),
            owner=owner,
            front=front,
            path=path,
            body=body.decode("utf-8"),
            headers=json.dumps(headers),
            provider=provider,
            created_at=now,
            updated_at=now,
        )
        await self._guarded(self.store().create(job))
        self._wake.set()
        return job

    async def find(self, job_id: str, owner: str) -> Job | None:
        """The job, if it is `owner`'s (another key's job is as unknown as one that does not exist)."""
        job: Job | None = await self._guarded(self.store().get(job_id))
        return job if job is not None and job.owner == owner else None

    async def cancel(self, job_id: str, owner: str) -> Job | None:
        """Cancelled (a running one is stopped by the worker running it, at its next lease renewal; at once
        here), unless it finished already; the job as it is then."""
        job = await self.find(job_id, owner)
        if job is None or job.status in FINISHED:
            return job
        await self._guarded(self.store().cancel(job_id, time.time()))
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
        return await self.find(job_id, owner)

    async def kick(self, job_id: str, owner: str) -> Job | None:
        """A stalled job (running, its lease run out: its worker is gone) back in the queue, and the runner
        woken; the job as it is then."""
        job = await self.find(job_id, owner)
        if job is None:
            return None
        if job.status == "running":
            await self._guarded(self.store().kick(job_id, time.time()))
        self._wake.set()
        return await self.find(job_id, owner)

    @staticmethod
    async def _guarded[T](work: Any) -> T:
        try:
            return await work
        except StoreUnavailable as exc:
            raise JobsUnavailable(f"the job store does not answer: {exc}") from exc

    # -- the worker -----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._loop_task is None:
            self._client = httpx.AsyncClient(trust_env=False, timeout=None)
            self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="kaixu-jobs")

    async def stop(self) -> None:
        """No more claims; the jobs running here go back to the queue for the next process."""
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        running = list(self._running.values())
        for job_task in running:
            job_task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _loop(self) -> None:
        while True:
            settings = self._settings()
            self._wake.clear()
            claimed = None
            store = self._store()
            if store is not None and await self._target() is not None:
                try:
                    claimed = await self._claim(store, settings)
                    await self._prune(store, settings)
                    self.outage.recovered()
                except StoreUnavailable as exc:
                    self.outage.failed(exc)
                except Exception:
                    log.exception("jobs: claiming failed")
            if claimed is not None:
                continue  # look for the next one at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), settings.poll_s)

    async def _claim(self, store: JobStore, settings: JobsPolicy) -> Job | None:
        counts: dict[str, int] = {}
        for provider in self._providers.values():
            counts[provider] = counts.get(provider, 0) + 1
        full = frozenset(p for p, n in counts.items() if n >= settings.concurrency)
        job = await store.claim(self.worker, time.time(), settings.lease_s, full)
        if job is None:
            return None
        self._providers[job.id] = job.provider
        task = asyncio.get_running_loop().create_task(self._run(store, job, settings), name=f"kaixu-job-{job.id}")
        self._running[job.id] = task
        return job

    async def _prune(self, store: JobStore, settings: JobsPolicy) -> None:
        now = time.time()
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            await store.prune(now - settings.keep_s)

    async def _run(self, store: JobStore, job: Job, settings: JobsPolicy) -> None:
        renewing = asyncio.get_running_loop().create_task(self._renew(store, job, settings))
        try:
            if job.attempts > settings.max_attempts:
                job.status, job.error = "failed", f"gave up after {settings.max_attempts} attempts"
                await store.finish(job, self.worker, time.time())
                return
            await self._send(store, job, settings)
        except asyncio.CancelledError:
            # stopped (this process stops, or the job was cancelled): a job still ours goes back to the queue
            with contextlib.suppress(Exception):
                await asyncio.shield(store.release(job.id, self.worker, 0.0, time.time(), None))
        except StoreUnavailable as exc:
            self.outage.failed(f"job {job.id} could not be saved (its lease will run out): {exc}")
        except Exception:
            log.exception("jobs: job %s failed in the runner", job.id)
        finally:
            renewing.cancel()
            self._running.pop(job.id, None)
            self._providers.pop(job.id, None)
            self._wake.set()  # a slot is free

    async def _renew(self, store: JobStore, job: Job, settings: JobsPolicy) -> None:
        """Keeps the lease while the job runs; stops the job when it is no longer this worker's (cancelled, or
        taken over after a lease that ran out)."""
        while True:
            await asyncio.sleep(settings.lease_s / 3)
            try:
                held = await store.renew(job.id, self.worker, time.time() + settings.lease_s)
            except StoreUnavailable:
                continue
            if not held:
                task = self._running.get(job.id)
                if task is not None:
                    task.cancel()
                return

    async def _send(self, store: JobStore, job: Job, settings: JobsPolicy) -> None:
        target, client = await self._target(), self._client
        if target is None or client is None:
            await store.release(job.id, self.worker, time.time() + 1, time.time(), "kaixu is not listening")
            return
        headers = {**job.header_map(), "content-type": "application/json", "x-kaixu-request-id": job.id}
        if job.owner:
            headers[INTERNAL_HEADER] = self._credential(job.owner, time.time() + settings.timeout_s + 60)
        try:
            response = await client.post(
                target + job.path, content=job.body.encode(), headers=headers, timeout=settings.timeout_s
            )
        except httpx.HTTPError as exc:
            wait = min(2.0**job.attempts, MAX_WAIT_S)
            await store.release(job.id, self.worker, time.time() + wait, time.time(), f"kaixu unreachable: {exc}")
            return
        status = response.status_code
        if status in RETRY_LATER and job.attempts < settings.max_attempts:
            wait = _wait_s(response, job.attempts)
            await store.release(job.id, self.worker, time.time() + wait, time.time(), _error_message(response.content))
            return
        job.result_status, job.result_body = status, response.text
        if 200 <= status < 300:
            job.status, job.error = "succeeded", None
        else:
            job.status, job.error = "failed", _error_message(response.content)
        await store.finish(job, self.worker, time.time())
