"""The stream relay: a stream that needs more than mitmproxy's forwarding (retries and fallbacks before the
first byte, timeouts between events, a terminal error event, Kaixu Gateway 13's `ping` keep-alives while the
model thinks) is pointed at the relay's own loopback server (`RelayServer`), which runs the request's attempts
itself (kaixu/reliability/executor.py) and streams the winner back to mitmproxy.

mitmproxy cannot emit bytes for a flow on its own (docs/architecture.md): this is the workaround measured for
mitmproxy 12.2.3. The client's answer starts only when an attempt has answered with its first chunk, so a
retry is never spliced into an answer already begun; until then a failed plan is answered as any provider
error (the settle step puts it in the client's shape). Gateway 13 is told 200 at once (its pings need it):
before the provider's first byte the relay writes SSE comment markers the stream step turns into `ping` and
`error` events, never mixed into the provider's bytes. After the first byte, a provider that fails ends the
client's stream with a terminal error event in its own format (the stream step, from `Route.stream_broken`),
never a silently truncated 200. Provider bytes are forwarded whole events at a time, so that event is never
glued to half of another.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

from kaixu.call import Call
from kaixu.formats import get_codec
from kaixu.providers import RESPONSE_HOP, credentials_rejected
from kaixu.reliability.upstream import MAX_HEAD_BYTES

if TYPE_CHECKING:
    from kaixu.reliability.executor import Executor, Outcome
    from kaixu.reliability.plan import Upstream

PING_MARKER = b": kaixu-ping"
ERROR_MARKER = b": kaixu-error "
MARKER_PREFIX = b": kaixu-"
ROUTE_PREFIX = "/_kaixu/relay/"


@dataclass(slots=True)
class RelayPlan:
    call: Call
    upstream: Upstream
    ping_s: float | None
    """Gateway 13: seconds between keep-alives, the client's 200 sent at once; None: the answer starts with
    the winning attempt's own status."""


class Relay:
    def __init__(self) -> None:
        self.plans: dict[str, RelayPlan] = {}
        self.executor: Executor | None = None

    def register(self, plan: RelayPlan) -> str:
        token = uuid.uuid4().hex
        self.plans[token] = plan
        return ROUTE_PREFIX + token


def error_marker(message: str, status: int) -> bytes:
    return ERROR_MARKER + json.dumps({"status": status, "message": message}).encode() + b"\n\n"


def _event_end(buffer: bytes) -> int:
    """Where the last complete SSE event of ``buffer`` ends (0: none yet)."""
    lf, crlf = buffer.rfind(b"\n\n"), buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


class _Answer:
    """What the relay writes back to mitmproxy on one connection: a head, then chunks (HTTP/1.1 chunked)."""

    __slots__ = ("writer",)

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def head(self, status: int, headers: list[tuple[str, str]], length: int | None = None) -> None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{name}: {value}" for name, value in headers if name.lower() not in RESPONSE_HOP]
        lines.append("transfer-encoding: chunked" if length is None else f"content-length: {length}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def write(self, data: bytes) -> None:
        if data:
            self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))

    async def flush(self) -> None:
        await self.writer.drain()

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


STREAM_HEADERS = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]


class RelayServer:
    """The relay's own HTTP/1.1 server on a loopback port. Only mitmproxy talks to it, with the requests the
    router pointed at it (`POST /_kaixu/relay/<token>`, a Content-Length body, kept-alive connections), so it
    speaks just that: about a millisecond less per stream than a tornado handler here. An unknown token is a
    404; anything else is not HTTP/1.1 from mitmproxy and closes the connection."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self.url: str | None = None

    def start(self) -> str:
        """Bind now (so the URL is known to the router at once); serve from the next turn of the loop."""
        sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        asyncio.get_running_loop().create_task(self._serve(sock))
        return self.url

    async def _serve(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._connection, sock=sock, limit=MAX_HEAD_BYTES)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._connections):
            writer.close()
        self._connections.clear()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                    line, *fields = head[:-4].decode("latin-1").split("\r\n")
                    method, path, _ = line.split(" ", 2)
                    length = 0
                    for field in fields:
                        name, _, value = field.partition(":")
                        if name.strip().lower() == "content-length":
                            length = int(value)
                    await reader.readexactly(length)  # the body: the plan holds it already
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
                    return
                plan = self.relay.plans.pop(path.removeprefix(ROUTE_PREFIX), None)
                if method != "POST" or not path.startswith(ROUTE_PREFIX) or plan is None:
                    answer = _Answer(writer)
                    answer.head(404, [], 0)
                    await answer.flush()
                    continue
                if not await self._relay(plan, reader, _Answer(writer)):
                    return
        except ConnectionError:
            return
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _relay(self, plan: RelayPlan, reader: asyncio.StreamReader, answer: _Answer) -> bool:
        """One relayed stream; False when mitmproxy went away (its client left) and the connection is done."""
        executor = self.relay.executor
        assert executor is not None
        task = asyncio.current_task()
        assert task is not None
        served = False

        def hung_up(watch: asyncio.Future[bytes]) -> None:  # mitmproxy closed the connection: stop everything
            if not served and not watch.cancelled():
                task.cancel()

        watch = asyncio.ensure_future(reader.read(1))  # mitmproxy sends nothing more until this answer is done
        watch.add_done_callback(hung_up)
        outcome: Outcome | None = None
        call = plan.call
        try:
            if plan.ping_s is not None:
                answer.head(200, STREAM_HEADERS)
                await answer.flush()  # the client gets its stream headers now, whatever the provider does
                opening = asyncio.ensure_future(executor.run(call, plan.upstream, stream=True))
                try:
                    outcome = await self._with_pings(answer, opening, plan.ping_s)
                finally:
                    if not opening.done():
                        opening.cancel()
                if not outcome.ok:
                    await self._fail(call, outcome, answer)
                    await answer.end()
                    return True
            else:
                outcome = await executor.run(call, plan.upstream, stream=True)
                if not outcome.ok:  # the plan is spent: its last failure, as any provider's error answer
                    answer.head(outcome.status, outcome.headers, len(outcome.body))
                    answer.writer.write(outcome.body)
                    await answer.flush()
                    return True
                answer.head(outcome.status, [*STREAM_HEADERS, *_without(outcome.headers, STREAM_HEADERS)])
            await self._pump(call, outcome, answer)
            await answer.end()
            return True
        except (asyncio.CancelledError, ConnectionError):
            return False  # the client went away: the provider's request is dropped, its queue slot freed
        finally:
            served = True
            watch.cancel()
            if outcome is not None:
                await outcome.close()

    async def _pump(self, call: Call, outcome: Outcome, answer: _Answer) -> None:
        """Forward the provider's stream, whole events at a time, until it ends, breaks or goes quiet."""
        assert outcome.chunks is not None
        loop = asyncio.get_running_loop()
        idle = outcome.idle_s or call.policy.upstream_timeout_s
        provider = call.route.provider.name if call.route.provider else "upstream"
        held = b""
        chunk = outcome.first
        try:
            while chunk:
                held += chunk
                cut = _event_end(held)
                if cut:
                    answer.write(held[:cut])
                    held = held[cut:]
                    await answer.flush()
                left = idle if outcome.deadline == 0 else outcome.deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                chunk = await asyncio.wait_for(anext(outcome.chunks, b""), min(idle, left))
            if held:
                answer.write(held)
        except (TimeoutError, OSError) as exc:
            if isinstance(exc, ConnectionError) and answer.writer.is_closing():
                raise  # mitmproxy's side, not the provider's
            if not isinstance(exc, TimeoutError):
                reason = str(exc) or "connection lost"
            elif outcome.deadline and outcome.deadline - loop.time() <= 0.001:
                reason = f"the answer took longer than its total of {outcome.total_s:g} s"
            else:
                reason = f"no data within {idle:g} s"
            call.route.relay_error = f"stream from provider {provider!r} broke: {reason}"
            call.route.stream_broken = True

    @staticmethod
    async def _with_pings(answer: _Answer, pending: asyncio.Future[Outcome], ping_s: float) -> Outcome:
        """Await the attempts, writing a keep-alive marker every `ping_s` seconds meanwhile."""
        while True:
            done, _ = await asyncio.wait({pending}, timeout=ping_s)
            if done:
                return pending.result()
            answer.write(PING_MARKER + b"\n\n")
            await answer.flush()

    @staticmethod
    async def _fail(call: Call, outcome: Outcome, answer: _Answer) -> None:
        """Gateway 13 was told 200 already: the plan's last failure becomes an error marker."""
        message = outcome.transport_error
        if message is None:
            message, _ = get_codec(call.route.format or "openai").decode_error(outcome.status, outcome.body)
        if outcome.status == 401 and not call.caller.byok and call.route.provider is not None:
            message = credentials_rejected(call.route.provider.name)
        message = call.policy.redactor.text(message, call.caller.client_key)  # provider text may quote kaixu's key
        call.route.relay_error = message
        status = 502 if outcome.status == 401 and not call.caller.byok else outcome.status
        call.route.relay_status = status  # what the client would have got without the relay
        answer.write(error_marker(message, status))
        await answer.flush()


def _without(headers: list[tuple[str, str]], ours: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The provider's headers but those the relay sets itself."""
    names = {name for name, _ in ours}
    return [(k, v) for k, v in headers if k.lower() not in names]
