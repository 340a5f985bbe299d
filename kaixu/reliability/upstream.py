"""The executor's HTTP/1.1 client: what kaixu sends an attempt with when mitmproxy does not (a retry, a fallback,
a stream through the relay, a provider with a queue).

Why not httpx: measured on this machine, httpx takes about 1.9 ms from sending a request to holding the first
chunk of a streamed answer on a kept-alive loopback connection; plain asyncio streams take 0.45 ms. Every relayed
stream pays that on its time to first token. A provider API is a well-behaved HTTP/1.1 server, so this client
speaks only what they speak: a request with a Content-Length, an answer framed by Content-Length, chunked
encoding or the end of the connection, keep-alive, TLS verified against certifi's roots or the policy's
`tls.ca_file`. No proxies, no redirects, no content decoding (kaixu asks for identity), no HTTP/2.

Connections are pooled per (scheme, host, port); one taken from the pool that turns out to be closed by the
provider before any byte of the answer is replaced by a fresh one, once (what every client does with keep-alive).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from kaixu.exceptions import KaixuError
from kaixu.trust import ssl_context

#: The provider's headers about its connection to kaixu and the answer's framing: all that is not passed on of an
#: answer kaixu fetched in mitmproxy's stead (`executor.forwarded_response`), which passes the rest on as it is.
CONNECTION_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection",
                            "upgrade", "te", "trailer"})  # fmt: skip
#: Provider response headers that describe the provider's connection, not the answer: never passed on when kaixu
#: made the request itself (the executor, the relay).
RESPONSE_HOP = CONNECTION_HOP | {"content-encoding", "date", "server"}
#: Request headers an HTTP client sets itself when kaixu makes an upstream request on its own (the executor).
REQUEST_DROP = frozenset({"host", "content-length", "transfer-encoding", "connection"})

MAX_HEAD_BYTES = 64 * 1024
MAX_IDLE_PER_ORIGIN = 64
READ_SIZE = 65536

Origin = tuple[str, str, int]


class ConnectError(OSError, KaixuError):
    """The provider could not be reached: refused, unknown host, TLS failure, connect timeout."""

    status, type, code = 502, "api_error", "upstream_connect_error"


class ProtocolError(OSError, KaixuError):
    """The provider broke the exchange: it closed the connection, or sent what is not HTTP/1.1."""

    status, type, code = 502, "api_error", "upstream_protocol_error"


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    origin: Origin
    reused: bool = False

    def close(self) -> None:
        self.writer.close()


@dataclass(slots=True)
class Response:
    """An answer whose head has arrived; its body is read with `aread` or `aiter_raw` (transfer-decoded)."""

    status_code: int
    headers: list[tuple[str, str]]
    _client: UpstreamClient
    _conn: _Connection | None
    _length: int | None
    _chunked: bool
    _done: bool = False
    _keep: bool = True
    _started: bool = field(default=False)
    reason: str = ""

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        if self._started:
            raise RuntimeError("the body was read already")
        self._started = True
        conn = self._conn
        if conn is None or self._done:
            return
        reader = conn.reader
        try:
            if self._chunked:
                while True:
                    line = await reader.readuntil(b"\r\n")
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers: dropped
                            pass
                        break
                    data = await reader.readexactly(size)
                    await reader.readexactly(2)
                    yield data
            elif self._length is not None:
                left = self._length
                while left > 0:
                    data = await reader.read(min(left, READ_SIZE))
                    if not data:
                        raise ProtocolError("the provider closed the connection before the end of its answer")
                    left -= len(data)
                    yield data
            else:  # framed by the end of the connection
                self._keep = False
                while data := await reader.read(READ_SIZE):
                    yield data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError) as exc:
            self._keep = False
            raise ProtocolError(
                f"peer closed connection without sending complete message body ({type(exc).__name__})"
            ) from exc
        except BaseException:
            self._keep = False
            raise
        self._done = True

    async def aclose(self) -> None:
        """Give the connection back when the answer was read whole (and may be kept), else close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._keep:
            self._client.put_back(conn)
        else:
            conn.close()


class UpstreamClient:
    def __init__(self, ca_file: str | None) -> None:
        self._ssl = ssl_context(ca_file)
        self._idle: dict[Origin, list[_Connection]] = {}

    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, connect_timeout: float
    ) -> Response:
        """Send the request and wait for the answer's head (the caller bounds that wait)."""
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        origin = (scheme, host, port)
        authority = host if port in (80, 443) else f"{host}:{port}"
        head = [f"{method} {target} HTTP/1.1", f"host: {authority}"]
        head += [f"{name}: {value}" for name, value in headers if name.lower() not in ("host", "content-length")]
        head.append(f"content-length: {len(body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        for fresh in (False, True):
            conn = await self._connection(origin, connect_timeout, fresh)
            try:
                conn.writer.write(data)
                await conn.writer.drain()
                return await self._head(conn, method)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                conn.close()
                if conn.reused and not fresh:
                    continue  # the provider had closed the idle connection: once more, on a new one
                raise ProtocolError(f"the provider closed the connection ({type(exc).__name__})") from exc
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    async def _connection(self, origin: Origin, timeout: float, fresh: bool) -> _Connection:
        idle = self._idle.get(origin)
        while idle and not fresh:
            conn = idle.pop()
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                conn.reused = True
                return conn
            conn.close()
        scheme, host, port = origin
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=self._ssl if scheme == "https" else None, limit=MAX_HEAD_BYTES,
                    server_hostname=host if scheme == "https" else None,
                ),
                timeout,
            )  # fmt: skip
        except TimeoutError as exc:
            raise ConnectError(f"connect timeout after {timeout:g} s") from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(str(exc) or type(exc).__name__) from exc
        return _Connection(reader, writer, origin)

    async def _head(self, conn: _Connection, method: str) -> Response:
        try:
            raw = await conn.reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise ProtocolError("the provider's answer head is too large") from exc
        lines = raw[:-4].decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
        status = int(status_line[1])
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError(f"malformed header line: {line[:80]!r}")
            headers.append((name.strip(), value.strip()))
        lowered = {name.lower(): value for name, value in headers}
        chunked = "chunked" in lowered.get("transfer-encoding", "").lower()
        length = None if chunked or "content-length" not in lowered else int(lowered["content-length"])
        empty = method == "HEAD" or status in (204, 304) or 100 <= status < 200 or length == 0
        response = Response(status, headers, self, conn, length, chunked)
        response.reason = status_line[2] if len(status_line) > 2 else ""
        response._keep = lowered.get("connection", "").lower() != "close" and status_line[0] != "HTTP/1.0"
        if empty:
            response._done = True
        return response

    def put_back(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) < MAX_IDLE_PER_ORIGIN and not conn.writer.is_closing():
            conn.reused = False
            idle.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
