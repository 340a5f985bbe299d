"""A PostgreSQL schema of its own for each test (`pg_dsn`): created on the test server, named in the dsn's
`search_path` (asyncpg passes it on as a server setting), dropped after, so tests never see each other's rows
and a run can follow another. The server is `KAIXU_TEST_POSTGRES` (default: 127.0.0.1:5432, user postgres,
database test); when it is not there, `unavailable()` fails the test under CI and skips it elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any

import asyncpg

from tests.harness import unavailable

SERVER = os.environ.get("KAIXU_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


async def execute(dsn: str, sql: str, *args: Any) -> str:
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        return str(await connection.execute(sql, *args))
    finally:
        await connection.close()


async def fetch(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows as tuples, read on a connection of their own (as another replica or tool would)."""
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        return [tuple(row) for row in await connection.fetch(sql, *args)]
    finally:
        await connection.close()


@contextlib.contextmanager
def own_schema() -> Iterator[str]:
    """A dsn whose `search_path` is a schema made for the caller, dropped (with its rows) on exit."""
    schema = "t_" + secrets.token_hex(6)
    try:
        asyncio.run(execute(SERVER, f"CREATE SCHEMA {schema}"))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        unavailable(f"PostgreSQL is not reachable at {SERVER}: {exc}")
    try:
        yield f"{SERVER}?search_path={schema}&application_name={schema}"  # the name: to find its connections
    finally:
        asyncio.run(execute(SERVER, f"DROP SCHEMA {schema} CASCADE"))


async def terminate_connections(dsn: str) -> int:
    """Kills the server side of every connection made with `dsn` (a failover or restart as clients see it)."""
    schema = dsn.rpartition("application_name=")[2]
    rows = await fetch(SERVER, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                       schema)  # fmt: skip
    return len(rows)
