"""Client connections: a cap on how many are open, and the timeouts mitmproxy does not have.

mitmproxy's only bound on a connection is `tcp_timeout` (600 s of silence): a client sending its request
head a byte at a time, or holding idle keep-alive connections open, costs kaixu a connection each for as
long as it likes. Here, from the policy's `limits`:

* `client_header_timeout_s`: from connect to a complete request head;
* `client_body_timeout_s`: from a request head to the end of its body (a client that announces a body and
  never sends it all);
* `client_idle_timeout_s`: from the end of a response to the next request head (and how long kaixu keeps
  reading the rest of a body it refused with 413, for the client's sake);
* `max_client_connections`: connections beyond it are closed as they arrive.

Each connection carries one deadline (a float: what it is waiting for, and until when), and one task sweeps
them every `SWEEP_S`: a request costs a few attribute writes, not timers (timeouts are met within `SWEEP_S`).

Plaintext HTTP/2 with prior knowledge (gRPC-style clients) is recognised here too: mitmproxy's reverse mode
would parse the HTTP/2 preface as an HTTP/1 request and drop the connection.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from mitmproxy import connection, http

from kaixu import mitm
from kaixu.forward import intercepts
from kaixu.gateway import Gateway

log = logging.getLogger("kaixu.connections")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SWEEP_S = 0.25
_NEVER = float("inf")


@dataclass(slots=True)
class _Tracked:
    client: connection.Client
    deadline: float
    waiting_for: str
    """What the deadline is for: a request head, an idle period's end, or the rest of a body."""
    active: int = 0
    bodies: dict[str, float] = field(default_factory=dict)
    """Per flow still receiving its body: when it must be complete."""


class Connections:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._open: dict[str, _Tracked] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def running(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="kaixu-connections")

    def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    def client_connected(self, client: connection.Client) -> None:
        limits = self.gateway.require_policy().limits
        if len(self._open) >= limits.max_client_connections:
            client.error = f"kaixu: over limits.max_client_connections ({limits.max_client_connections})"
            log.warning("connection from %s refused: %d connections open", client.peername[0], len(self._open))
            return
        deadline = asyncio.get_running_loop().time() + limits.client_header_timeout_s
        self._open[client.id] = _Tracked(client, deadline, "no complete request head")

    def client_disconnected(self, client: connection.Client) -> None:
        self._open.pop(client.id, None)

    def next_layer(self, nextlayer: object) -> None:
        data = nextlayer.data_client()  # type: ignore[attr-defined]
        if data.startswith(H2_PREFACE[:16]):
            nextlayer.context.client.alpn = b"h2"  # type: ignore[attr-defined]

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """A forward listener's CONNECT: a tunnel kaixu does not look into is bounded by mitmproxy's `tcp_timeout`
        only (no request head will come); an intercepted one gets a new head timeout (TLS, then its request)."""
        tracked = self._open.get(flow.client_conn.id)
        if tracked is None or flow.response is not None:
            return
        policy = self.gateway.require_policy()
        if intercepts(policy, flow.request.host):
            tracked.deadline = asyncio.get_running_loop().time() + policy.limits.client_header_timeout_s
        else:
            tracked.deadline, tracked.waiting_for = _NEVER, "tunnel"

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        tracked = self._open.get(flow.client_conn.id)
        if tracked is None:
            return
        tracked.active += 1
        tracked.deadline = _NEVER
        if flow.request.timestamp_end is None:  # a body is still to come
            seconds = self.gateway.require_policy().limits.client_body_timeout_s
            tracked.bodies[flow.id] = asyncio.get_running_loop().time() + seconds

    def request(self, flow: http.HTTPFlow) -> None:
        tracked = self._open.get(flow.client_conn.id)
        if tracked is not None and tracked.bodies:
            tracked.bodies.pop(flow.id, None)

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def _finished(self, flow: http.HTTPFlow) -> None:
        tracked = self._open.get(flow.client_conn.id)
        if tracked is None:
            return
        if tracked.bodies:
            tracked.bodies.pop(flow.id, None)
        tracked.active = max(0, tracked.active - 1)
        if tracked.active == 0:
            seconds = self.gateway.require_policy().limits.client_idle_timeout_s
            tracked.deadline, tracked.waiting_for = asyncio.get_running_loop().time() + seconds, "idle"

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                self.sweep(loop.time())
            except Exception:  # the sweeper must outlive any surprise; a missed sweep is retried next tick
                log.exception("connection sweep failed")

    def sweep(self, now: float) -> None:
        """Close every connection past its deadline: no request head in time, idle too long, a stalled body."""
        for tracked in list(self._open.values()):
            if tracked.bodies and min(tracked.bodies.values()) <= now:
                why = "request body not complete in time"
            elif tracked.active == 0 and tracked.deadline <= now:
                why = tracked.waiting_for
            else:
                continue
            log.debug("closing connection from %s: %s", tracked.client.peername[0], why)
            self._open.pop(tracked.client.id, None)
            mitm.close_connection(tracked.client)
