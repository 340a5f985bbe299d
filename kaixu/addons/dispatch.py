"""The request leaves kaixu: the last request step, once every check (rate limits, route, budget) has passed.

Kept apart from the router so that nothing is counted as sent, and no relay stream is set up, for a request
a later check refuses. How its attempts run is decided in one place, the reliability entry
(kaixu/reliability/serve.py)."""

from __future__ import annotations

from collections.abc import Awaitable

from mitmproxy import connection, http

from kaixu.call import get_call
from kaixu.gateway import Gateway


class Dispatch:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Counted as sent, then served (`Reliability.serve`): a buffered request kaixu fetches itself is the only
        case that returns a coroutine; every other request costs none."""
        call = get_call(flow)
        if call is None or flow.response is not None or not call.route.routed:
            return None
        self.gateway.pool.started(call)
        return self.gateway.reliability.serve(flow, call)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.gateway.reliability.answered(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.gateway.reliability.answered(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        """A client that hangs up while its buffered request is being fetched cancels the fetch."""
        self.gateway.reliability.client_gone(client.id)
