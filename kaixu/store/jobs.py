"""Background jobs as rows of one table, `kaixu_jobs`, in the store `store:` names: the SQLite file by default,
PostgreSQL when `store.postgres` is set (every replica shares the queue). A job is a request kept until a
worker runs it (kaixu/jobs/runner.py): claimed with a lease, so a job whose worker died (its lease ran out) is
claimed again by another worker, or by the same process after a restart.

A claim is one transaction: SQLite's `BEGIN IMMEDIATE` (one writer at a time, so two processes on one file
never claim the same job), PostgreSQL's `SELECT ... FOR UPDATE SKIP LOCKED` (replicas claim different jobs
without waiting for each other). Every later change of a running job names the worker that claimed it, so a
worker whose lease was taken over cannot overwrite the new worker's result."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol

from kaixu.config.policy import PostgresConfig
from kaixu.store import postgres
from kaixu.store.threaded import SqliteThread

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(slots=True)
class Job:
    """One background job: the request it runs (kept as the client sent it, never its key), whose it is, and
    where it stands."""

    id: str
    owner: str
    """The name of the key that made it (policy and store keys share one namespace); "" for an anonymous
    caller. Only that key reads, kicks or cancels it."""
    front: str
    """The front door it came in by (its answers are shaped by that door)."""
    path: str
    """The endpoint its request is sent to when it runs."""
    body: str
    """The request body (JSON text)."""
    headers: str = "{}"
    """What the client said about itself (attribution headers, JSON object), sent again when it runs."""
    provider: str = ""
    """The provider it will most likely go to: the bucket of `jobs.concurrency`."""
    status: JobStatus = "queued"
    attempts: int = 0
    """How many times a worker claimed it."""
    created_at: float = 0.0
    updated_at: float = 0.0
    not_before: float = 0.0
    """Not claimed before this time (a job put back after a 429 waits for the limit)."""
    lease_until: float = 0.0
    worker: str | None = None
    result_status: int | None = None
    result_body: str | None = None
    error: str | None = None

    def public(self) -> dict[str, Any]:
        """What its owner may see of it (no body, no headers, no worker)."""
        view: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if self.error is not None:
            view["error"] = self.error
        try:
            model = json.loads(self.body).get("model")
        except (ValueError, AttributeError):
            model = None
        view["model"] = model if isinstance(model, str) else None
        return view

    def header_map(self) -> dict[str, str]:
        loaded = json.loads(self.headers or "{}")
        return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


COLUMNS = [f.name for f in fields(Job)]
_TYPES = {"attempts": "INTEGER", "result_status": "INTEGER"}
_REAL = {"created_at", "updated_at", "not_before", "lease_until"}


def _schema(real: str) -> str:
    columns = ", ".join(
        f"{name} {_TYPES.get(name, real if name in _REAL else 'TEXT')}{' PRIMARY KEY' if name == 'id' else ''}"
        for name in COLUMNS
    )
    return (
        f"CREATE TABLE IF NOT EXISTS kaixu_jobs ({columns});"
        "CREATE INDEX IF NOT EXISTS kaixu_jobs_due ON kaixu_jobs (status, not_before, created_at);"
        "CREATE INDEX IF NOT EXISTS kaixu_jobs_owner ON kaixu_jobs (owner, status);"
    )


SQLITE_SCHEMA = _schema("REAL")
POSTGRES_SCHEMA = _schema("DOUBLE PRECISION")
_INSERT = f"INSERT INTO kaixu_jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM kaixu_jobs"
_DUE = "((status = 'queued' AND not_before <= ?) OR (status = 'running' AND lease_until < ?))"
"""A job a worker may claim: queued and due, or running under a lease that ran out (its worker died)."""


def _job(row: Any) -> Job:
    return Job(*tuple(row))


class JobStore(Protocol):
    """Where jobs are kept. Every method may raise `StoreUnavailable` (the store does not answer)."""

    async def create(self, job: Job) -> None: ...
    async def get(self, job_id: str) -> Job | None: ...
    async def claim(self, worker: str, now: float, lease_s: float, full: frozenset[str]) -> Job | None:
        """The oldest due job whose provider is not in `full`, now running under `worker`'s lease."""
        ...

    async def pending(self, owner: str) -> int:
        """How many of `owner`'s jobs are queued or running."""
        ...

    async def renew(self, job_id: str, worker: str, until: float) -> bool:
        """The lease extended; False when the job is no longer running under `worker` (taken over,
        cancelled)."""
        ...

    async def finish(self, job: Job, worker: str, now: float) -> bool:
        """The job's end (`status`, `result_*`, `error` as `job` holds them), if `worker` still holds it."""
        ...

    async def release(self, job_id: str, worker: str, not_before: float, now: float, error: str | None) -> bool:
        """Back to the queue, due at `not_before`."""
        ...

    async def cancel(self, job_id: str, now: float) -> bool:
        """Cancelled, unless it has finished."""
        ...

    async def kick(self, job_id: str, now: float) -> bool:
        """A running job whose lease ran out back to the queue (its worker is gone)."""
        ...

    async def prune(self, before: float) -> int: ...
    async def close(self) -> None: ...


_PENDING = "SELECT count(*) FROM kaixu_jobs WHERE owner = ? AND status IN ('queued', 'running')"
_RENEW = "UPDATE kaixu_jobs SET lease_until = ? WHERE id = ? AND worker = ? AND status = 'running'"
_FINISH = (
    "UPDATE kaixu_jobs SET status = ?, result_status = ?, result_body = ?, error = ?, updated_at = ?, worker = NULL"
    " WHERE id = ? AND worker = ? AND status = 'running'"
)
_RELEASE = (
    "UPDATE kaixu_jobs SET status = 'queued', not_before = ?, error = ?, updated_at = ?, worker = NULL"
    " WHERE id = ? AND worker = ? AND status = 'running'"
)
_CANCEL = (
    "UPDATE kaixu_jobs SET status = 'cancelled', updated_at = ?, worker = NULL"
    " WHERE id = ? AND status IN ('queued', 'running')"
)
_KICK = (
    "UPDATE kaixu_jobs SET status = 'queued', not_before = 0, updated_at = ?, worker = NULL"
    " WHERE id = ? AND status = 'running' AND lease_until < ?"
)
_PRUNE = "DELETE FROM kaixu_jobs WHERE status IN ('succeeded', 'failed', 'cancelled') AND updated_at < ?"


def _finish_args(job: Job, worker: str, now: float) -> tuple[Any, ...]:
    return (job.status, job.result_status, job.result_body, job.error, now, job.id, worker)


class JobTable:
    """What is the same SQL on SQLite (a worker thread) and PostgreSQL (the process's pool); the claim is each
    backend's own."""

    def __init__(self, db: SqliteThread | postgres.PooledTables) -> None:
        self.db = db

    async def create(self, job: Job) -> None:
        await self.db.execute(_INSERT, *[getattr(job, name) for name in COLUMNS])

    async def get(self, job_id: str) -> Job | None:
        row = await self.db.fetchone(f"{_SELECT} WHERE id = ?", job_id)
        return None if row is None else _job(row)

    async def pending(self, owner: str) -> int:
        row = await self.db.fetchone(_PENDING, owner)
        return int(row[0]) if row is not None else 0

    async def renew(self, job_id: str, worker: str, until: float) -> bool:
        return await self.db.execute(_RENEW, until, job_id, worker) > 0

    async def finish(self, job: Job, worker: str, now: float) -> bool:
        return await self.db.execute(_FINISH, *_finish_args(job, worker, now)) > 0

    async def release(self, job_id: str, worker: str, not_before: float, now: float, error: str | None) -> bool:
        return await self.db.execute(_RELEASE, not_before, error, now, job_id, worker) > 0

    async def cancel(self, job_id: str, now: float) -> bool:
        return await self.db.execute(_CANCEL, now, job_id) > 0

    async def kick(self, job_id: str, now: float) -> bool:
        return await self.db.execute(_KICK, now, job_id, now) > 0

    async def prune(self, before: float) -> int:
        return await self.db.execute(_PRUNE, before)

    async def close(self) -> None:
        await self.db.close()


class SqliteJobStore(JobTable):
    """One writer at a time (`BEGIN IMMEDIATE`): two processes on one file never claim the same job."""

    def __init__(self, path: str) -> None:
        self.sqlite = SqliteThread(path, SQLITE_SCHEMA, "job store")
        super().__init__(self.sqlite)

    async def claim(self, worker: str, now: float, lease_s: float, full: frozenset[str]) -> Job | None:
        skip = f" AND provider NOT IN ({', '.join('?' * len(full))})" if full else ""

        due = f"SELECT id FROM kaixu_jobs WHERE {_DUE}{skip} ORDER BY created_at LIMIT 1"

        def claim(db: sqlite3.Connection) -> Job | None:
            if db.execute(due, (now, now, *full)).fetchone() is None:
                return None  # nothing due: no write lock taken (an idle gateway polls without one)
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(due, (now, now, *full)).fetchone()
                if row is None:
                    db.execute("COMMIT")
                    return None
                db.execute(
                    "UPDATE kaixu_jobs SET status = 'running', worker = ?, lease_until = ?, attempts = attempts + 1,"
                    " updated_at = ? WHERE id = ?",
                    (worker, now + lease_s, now, row[0]),
                )
                job = _job(db.execute(f"{_SELECT} WHERE id = ?", (row[0],)).fetchone())
                db.execute("COMMIT")
                return job
            except BaseException:
                db.execute("ROLLBACK")
                raise

        return await self.sqlite.call(claim)


class PostgresJobStore(JobTable):
    """Replicas claim with `FOR UPDATE SKIP LOCKED`: each takes a different job without waiting for another's
    transaction."""

    def __init__(self, config: PostgresConfig) -> None:
        self.pg = postgres.PooledTables(config, POSTGRES_SCHEMA, "job store")
        super().__init__(self.pg)

    async def claim(self, worker: str, now: float, lease_s: float, full: frozenset[str]) -> Job | None:
        sql = (
            "UPDATE kaixu_jobs SET status = 'running', worker = $1, lease_until = $2, attempts = attempts + 1,"
            " updated_at = $3 WHERE id = (SELECT id FROM kaixu_jobs WHERE"
            " ((status = 'queued' AND not_before <= $3) OR (status = 'running' AND lease_until < $3))"
            " AND provider <> ALL($4::text[]) ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
            f" RETURNING {', '.join(COLUMNS)}"
        )
        row = await self.pg.run(lambda c: c.fetchrow(sql, worker, now + lease_s, now, sorted(full)))
        return None if row is None else _job(row)


def job_store(path: str, postgres: PostgresConfig | None) -> JobStore:
    return PostgresJobStore(postgres) if postgres is not None else SqliteJobStore(path)
