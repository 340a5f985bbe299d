"""The request leaves kaixu: the last request step, once every check (rate limits, route, budget) has passed.

Kept apart from the router so that nothing is counted as sent, and no relay stream is set up, for a request
a later check refuses."""

from __future__ import annotations

from collections.abc import Awaitable

from mitmproxy import connection, http

from kaixu.addons.router import Router
from kaixu.call import get_call


class Dispatch:
    def __init__(self, router: Router) -> None:
        self.router = router

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A request with an attempt plan and a buffered answer is awaited here (kaixu/reliability/executor.py):
        the only async case; every other request costs no coroutine."""
        call = get_call(flow)
        if call is None or flow.response is not None or not call.route.routed:
            return None
        return self.router.dispatch(flow, call)

    def client_disconnected(self, client: connection.Client) -> None:
        """A client that hangs up while its buffered request is being fetched cancels the fetch."""
        executor = self.router.gateway.executor
        if executor is not None:
            executor.client_gone(client.id)
