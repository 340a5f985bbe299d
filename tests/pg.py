"""A PostgreSQL schema of its own for each test (`pg_dsn`): created on the test server, named in the dsn's
`search_path` (asyncpg passes it on as a server setting), dropped after, so tests never see each other's rows
and a run can follow another. The server is `KAIXU_TEST_POSTGRES` (default: 127.0.0.1:5432, user postgres,
database test); when it is not there, `unavailable()` fails the test under CI and skips it elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

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


class Plug:
    """A TCP forwarder between kaixu and the test server whose plug the test pulls: `pull()` stops listening and
    cuts every connection (PostgreSQL gone, as kaixu sees it: refused connections), `push()` listens again on
    the same port. The test server itself is shared, so it is never stopped. Runs its own loop in a thread."""

    def __init__(self) -> None:
        parts = urlsplit(SERVER)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.push()

    def dsn(self, dsn: str) -> str:
        """`dsn` (a test server's, from `own_schema`) through the plug."""
        return dsn.replace(f"{self.target[0]}:{self.target[1]}", f"127.0.0.1:{self.port}", 1)

    def push(self) -> None:
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)

    def pull(self) -> None:
        asyncio.run_coroutine_threadsafe(self._cut(), self.loop).result(10)

    def close(self) -> None:
        self.pull()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
