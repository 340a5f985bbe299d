"""The stream relay: a stream that needs more than mitmproxy's forwarding (retries and fallbacks before the
first byte, timeouts between events, a terminal error event, Kaixu Gateway 13's `ping` keep-alives while the
model thinks) is pointed at kaixu's loopback server, which runs the request's attempts itself
(kaixu/reliability/executor.py) and streams the winner back to mitmproxy.

mitmproxy cannot emit bytes for a flow on its own (docs/architecture.md): this is the workaround measured for
mitmproxy 12.2.3. The client's answer starts only when an attempt has answered with its first chunk, so a
retry is never spliced into an answer already begun; until then a failed plan is answered as any provider
error (the settle step puts it in the client's shape). Gateway 13 is told 200 at once (its pings need it):
before the provider's first byte the relay writes SSE comment markers the stream step turns into `ping` and
`error` events, never mixed into the provider's bytes. After the first byte, a provider that fails ends the
client's stream with a terminal error event in its own format (the stream step, from `Delivery.stream_broken`),
never a silently truncated 200. Provider bytes are forwarded whole events at a time, so that event is never
glued to half of another.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import tornado.iostream

from kaixu.call import Call
from kaixu.formats import get_codec
from kaixu.providers.mock import LoopbackHandler
from kaixu.reliability.failures import credentials_rejected, hides_provider_answer
from kaixu.reliability.upstream import RESPONSE_HOP

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
    def __init__(self, executor: Executor) -> None:
        self.plans: dict[str, RelayPlan] = {}
        self.executor = executor

    def register(self, plan: RelayPlan) -> str:
        token = uuid.uuid4().hex
        self.plans[token] = plan
        return ROUTE_PREFIX + token

    def route(self) -> tuple[str, type[RelayHandler], dict[str, Any]]:
        return (ROUTE_PREFIX + r"([0-9a-f]+)", RelayHandler, {"relay": self})


def error_marker(message: str, status: int) -> bytes:
    return ERROR_MARKER + json.dumps({"status": status, "message": message}).encode() + b"\n\n"


def _event_end(buffer: bytes) -> int:
    """Where the last complete SSE event of ``buffer`` ends (0: none yet)."""
    lf, crlf = buffer.rfind(b"\n\n"), buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


class RelayHandler(LoopbackHandler):
    """mitmproxy hanging up (its client left) cancels the provider's request and frees its queue slot."""

    def initialize(self, relay: Relay) -> None:
        self.relay = relay

    async def post(self, token: str) -> None:
        plan = self.relay.plans.pop(token, None)
        executor = self.relay.executor
        if plan is None:
            self.set_status(404)
            self.finish()
            return
        self._task = asyncio.current_task()
        outcome: Outcome | None = None
        try:
            if plan.ping_s is not None:
                self._stream_headers()
                await self.flush()  # the client gets its stream headers now, whatever the provider does
                opening = asyncio.ensure_future(executor.run(plan.call, plan.upstream, stream=True))
                try:
                    outcome = await self._with_pings(opening, plan.ping_s)
                finally:
                    if not opening.done():
                        opening.cancel()
                if not outcome.ok:
                    await self._fail(plan.call, outcome)
                    self.finish()
                    return
            else:
                outcome = await executor.run(plan.call, plan.upstream, stream=True)
                if not outcome.ok:  # the plan is spent: its last failure, as any provider's error answer
                    self.set_status(outcome.status)
                    self._provider_headers(outcome.headers)
                    self.write(outcome.body)
                    self.finish()
                    return
                self.set_status(outcome.status)
                self._stream_headers(outcome.headers)
            await self._pump(plan.call, outcome)
            self.finish()
        except (tornado.iostream.StreamClosedError, asyncio.CancelledError):
            return  # the client went away
        finally:
            if outcome is not None:
                await outcome.close()

    def _stream_headers(self, provider: list[tuple[str, str]] | None = None) -> None:
        self.set_header("content-type", "text/event-stream")
        self._provider_headers(provider or [])
        self.set_header("cache-control", "no-cache")

    def _provider_headers(self, headers: list[tuple[str, str]]) -> None:
        """The provider's headers, as mitmproxy would have passed them on (the settle and stream steps filter
        them as for any answer); not those of its connection."""
        for name, value in headers:
            if name.lower() not in RESPONSE_HOP:
                self.add_header(name, value)

    async def _pump(self, call: Call, outcome: Outcome) -> None:
        """Forward the provider's stream, whole events at a time, until it ends, breaks or goes quiet."""
        assert outcome.chunks is not None
        loop = asyncio.get_running_loop()
        idle = outcome.idle_s
        provider = call.served.provider.name if call.served is not None else "upstream"
        held = b""
        chunk = outcome.first
        try:
            while chunk:
                held += chunk
                cut = _event_end(held)
                if cut:
                    self.write(held[:cut])
                    held = held[cut:]
                    await self.flush()
                left = idle if outcome.deadline == 0 else outcome.deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                chunk = await asyncio.wait_for(anext(outcome.chunks, b""), min(idle, left))
            if held:
                self.write(held)
        except (TimeoutError, OSError) as exc:
            if not isinstance(exc, TimeoutError):
                reason = str(exc) or "connection lost"
            elif outcome.deadline and outcome.deadline - loop.time() <= 0.001:
                reason = f"the answer took longer than its total of {outcome.total_s:g} s"
            else:
                reason = f"no data within {idle:g} s"
            call.delivery.relay_error = f"stream from provider {provider!r} broke: {reason}"
            call.delivery.stream_broken = True

    async def _with_pings(self, pending: asyncio.Future[Outcome], ping_s: float) -> Outcome:
        """Await the attempts, writing a keep-alive marker every `ping_s` seconds meanwhile."""
        while True:
            done, _ = await asyncio.wait({pending}, timeout=ping_s)
            if done:
                return pending.result()
            self.write(PING_MARKER + b"\n\n")
            await self.flush()

    async def _fail(self, call: Call, outcome: Outcome) -> None:
        """Gateway 13 was told 200 already: the plan's last failure becomes an error marker."""
        message = outcome.transport_error
        served = call.served
        if message is None:
            message, _ = get_codec(served.format if served else "openai").decode_error(outcome.status, outcome.body)
        hidden = hides_provider_answer(outcome.status, call.caller.byok)
        if hidden and served is not None:
            message = credentials_rejected(served.provider.name).message
        message = call.policy.redactor.text(message, call.caller.client_key)  # provider text may quote kaixu's key
        call.delivery.relay_error = message
        status = 502 if hidden else outcome.status
        call.delivery.relay_status = status  # what the client would have got without the relay
        self.write(error_marker(message, status))
        await self.flush()
