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

Plaintext HTTP/2 with prior knowledge (gRPC-style clients) is recognised here too: mitmproxy's reverse mode
would parse the HTTP/2 preface as an HTTP/1 request and drop the connection.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mitmproxy import connection, http

from kaixu import mitm
from kaixu.gateway import Gateway

log = logging.getLogger("kaixu.connections")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(slots=True)
class _Tracked:
    client: connection.Client
    active: int = 0
    timer: asyncio.TimerHandle | None = None
    bodies: dict[str, asyncio.TimerHandle] | None = None
    """Per flow still receiving its body: the timer that closes the connection if the body stalls."""


class Connections:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._open: dict[str, _Tracked] = {}
        self.refused = 0
        self.timed_out = 0

    @property
    def open_count(self) -> int:
        return len(self._open)

    def client_connected(self, client: connection.Client) -> None:
        limits = self.gateway.require_policy().limits
        if len(self._open) >= limits.max_client_connections:
            self.refused += 1
            client.error = f"kaixu: over limits.max_client_connections ({limits.max_client_connections})"
            log.warning("connection from %s refused: %d connections open", client.peername[0], len(self._open))
            return
        tracked = self._open[client.id] = _Tracked(client)
        self._arm(tracked, limits.client_header_timeout_s, "no complete request head")

    def client_disconnected(self, client: connection.Client) -> None:
        tracked = self._open.pop(client.id, None)
        if tracked is None:
            return
        if tracked.timer is not None:
            tracked.timer.cancel()
        for timer in (tracked.bodies or {}).values():
            timer.cancel()

    def next_layer(self, nextlayer: object) -> None:
        data = nextlayer.data_client()  # type: ignore[attr-defined]
        if data.startswith(H2_PREFACE[:16]):
            nextlayer.context.client.alpn = b"h2"  # type: ignore[attr-defined]

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        tracked = self._open.get(flow.client_conn.id)
        if tracked is None:
            return
        tracked.active += 1
        if tracked.timer is not None:
            tracked.timer.cancel()
            tracked.timer = None
        if flow.request.timestamp_end is None:  # a body is still to come
            seconds = self.gateway.require_policy().limits.client_body_timeout_s
            timer = asyncio.get_running_loop().call_later(seconds, self._body_stalled, tracked, flow.id)
            (tracked.bodies if tracked.bodies is not None else self._bodies(tracked))[flow.id] = timer

    def request(self, flow: http.HTTPFlow) -> None:
        self._body_done(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    @staticmethod
    def _bodies(tracked: _Tracked) -> dict[str, asyncio.TimerHandle]:
        tracked.bodies = {}
        return tracked.bodies

    def _body_done(self, flow: http.HTTPFlow) -> None:
        tracked = self._open.get(flow.client_conn.id)
        if tracked is not None and tracked.bodies:
            timer = tracked.bodies.pop(flow.id, None)
            if timer is not None:
                timer.cancel()

    def _body_stalled(self, tracked: _Tracked, flow_id: str) -> None:
        if tracked.bodies is None or tracked.bodies.pop(flow_id, None) is None:
            return
        self.timed_out += 1
        log.info("closing connection from %s: request body not complete in time", tracked.client.peername[0])
        mitm.close_connection(tracked.client)

    def _finished(self, flow: http.HTTPFlow) -> None:
        self._body_done(flow)
        tracked = self._open.get(flow.client_conn.id)
        if tracked is None:
            return
        tracked.active = max(0, tracked.active - 1)
        if tracked.active == 0:
            self._arm(tracked, self.gateway.require_policy().limits.client_idle_timeout_s, "idle")

    def _arm(self, tracked: _Tracked, seconds: float, why: str) -> None:
        if tracked.timer is not None:
            tracked.timer.cancel()
        tracked.timer = asyncio.get_running_loop().call_later(seconds, self._expire, tracked, why)

    def _expire(self, tracked: _Tracked, why: str) -> None:
        tracked.timer = None
        if tracked.active or self._open.get(tracked.client.id) is not tracked:
            return
        self.timed_out += 1
        log.debug("closing connection from %s: %s", tracked.client.peername[0], why)
        mitm.close_connection(tracked.client)
