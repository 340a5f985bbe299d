"""The attempt executor's HTTP/1.1 client (kaixu/reliability/upstream.py) against a server that answers with
exactly the bytes each test gives it: every body framing, keep-alive and its stale connections, and the
failures it must tell apart (unreachable, broken)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from kaixu.reliability.upstream import MAX_HEAD_BYTES, ConnectError, ProtocolError, UpstreamClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat?x=1"


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", b"hello"),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\nT: 1\r\n\r\n",
            b"hello",
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    ],
)
def test_each_body_framing_and_the_connection_is_kept(answer: bytes, body: bytes) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while not reader.at_eof():
            try:
                request = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            assert request.startswith(b"POST /v1/chat?x=1 HTTP/1.1\r\nhost: 127.0.0.1:")
            assert request.endswith(b"\r\ncontent-length: 2\r\n\r\n{}")
            writer.write(answer)
            await writer.drain()
        writer.close()

    async def scenario() -> None:
        server, url = await serve(handler)
        client = UpstreamClient(None)
        for _ in range(3):
            response = await client.send("POST", url, [("content-type", "application/json")], b"{}", 1)
            assert response.status_code in (200, 204)
            assert await response.aread() == body
            await response.aclose()
        assert connections == 1, "one kept-alive connection for the three"
        await client.aclose()
        server.close()

    run(scenario)


def test_a_body_framed_by_the_end_of_the_connection_and_one_cut_short() -> None:
    answers = [b"HTTP/1.1 200 OK\r\n\r\nuntil the end", b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort"]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answers.pop(0))
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server, url = await serve(handler)
        client = UpstreamClient(None)
        response = await client.send("POST", url, [], b"{}", 1)
        assert await response.aread() == b"until the end"
        await response.aclose()
        response = await client.send("POST", url, [], b"{}", 1)
        with pytest.raises(ProtocolError, match="closed the connection before the end"):
            await response.aread()
        await response.aclose()
        await client.aclose()
        server.close()

    run(scenario)


def test_a_kept_connection_the_provider_closed_is_replaced_once() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # no keep-alive, though it did not say so

    async def scenario() -> None:
        server, url = await serve(handler)
        client = UpstreamClient(None)
        for _ in range(3):
            response = await client.send("POST", url, [], b"{}", 1)
            assert await response.aread() == b"ok"
            await response.aclose()
        await client.aclose()
        server.close()

    run(scenario)


def test_unreachable_and_broken_are_told_apart() -> None:
    async def silent_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async def huge_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nx: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n\r\n")
        await writer.drain()

    async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async def scenario() -> None:
        client = UpstreamClient(None)
        with pytest.raises(ConnectError):
            await client.send("POST", "http://127.0.0.1:9/v1", [], b"{}", 1)
        for handler, match in (
            (silent_close, "closed the connection"),
            (huge_head, "too large"),
            (not_http, "not an HTTP"),
        ):
            server, url = await serve(handler)
            with pytest.raises(ProtocolError, match=match):
                await client.send("POST", url, [], b"{}", 1)
            server.close()
        await client.aclose()

    run(scenario)


def test_a_stream_is_read_chunk_by_chunk_as_it_comes() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\nlater\n\r\n0\r\n\r\n")
        await writer.drain()

    async def scenario() -> None:
        server, url = await serve(handler)
        client = UpstreamClient(None)
        response = await client.send("POST", url, [], b"{}", 1)
        chunks = response.aiter_raw()
        assert await anext(chunks) == b"first\n", "the first chunk comes before the rest is sent"
        release.set()
        assert [c async for c in chunks] == [b"later\n"]
        await response.aclose()
        await client.aclose()
        server.close()

    run(scenario)
