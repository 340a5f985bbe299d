"""The request leaves kaixu: the last request step, once every check (rate limits, route, budget) has passed.

Kept apart from the router so that nothing is counted as sent, and no relay stream is set up, for a request
a later check refuses."""

from __future__ import annotations

import time
from collections.abc import Awaitable

from mitmproxy import connection, http

from kaixu.call import Call, get_call
from kaixu.formats.doors import front_door
from kaixu.gateway import Gateway
from kaixu.providers import split_url
from kaixu.providers.relay import RelayPlan
from kaixu.reliability.plan import Upstream


class Dispatch:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A request with an attempt plan and a buffered answer is awaited here (kaixu/reliability/executor.py):
        the only async case; every other request costs no coroutine."""
        call = get_call(flow)
        if call is None or flow.response is not None or not call.route.routed:
            return None
        return self.dispatch(flow, call)

    def dispatch(self, flow: http.HTTPFlow, call: Call) -> Awaitable[None] | None:
        """The request leaves: counted in the pool and against its deployment; a request with a plan goes to the
        attempt executor (a stream through the relay)."""
        self.gateway.pool.started(call)
        served = call.served
        if served is not None:
            self.gateway.deployments.started(served.target)
        if call.route.plan is None:
            return None
        if call.stream:
            self._divert_to_relay(flow, call)
            return None
        executor = self.gateway.executor
        if executor is None or served is None or served.provider.max_concurrent is None:
            # mitmproxy makes the first attempt, as for any request; the retries step takes over if it fails
            call.delivery.native_first = True
            call.delivery.sent_at = time.monotonic()
            return None
        return executor.answer(flow, call)  # the provider's queue is kaixu's: so is its HTTP client

    def _divert_to_relay(self, flow: http.HTTPFlow, call: Call) -> None:
        """Send the flow, as it would go to the provider, through the relay, which runs its attempts and keeps the
        stream of a door with keep-alives (`FrontDoor.keepalive_s`: Gateway 13's `ping` events) alive until the
        provider's first byte."""
        relay, loopback = self.gateway.relay, self.gateway.loopback_url
        if relay is None or loopback is None:
            return  # not running yet: the stream goes straight to the provider, one attempt
        request = flow.request
        ping_s = front_door(call.front).keepalive_s
        if ping_s is not None:
            ping_s = float(call.policy.front_settings(call.front).get("ping_interval_s", ping_s))
        path = relay.register(RelayPlan(call=call, upstream=Upstream.of(request), ping_s=ping_s))
        request.scheme, request.host, request.port, request.path = split_url(loopback + path)
        call.delivery.relayed = True

    def client_disconnected(self, client: connection.Client) -> None:
        """A client that hangs up while its buffered request is being fetched cancels the fetch."""
        executor = self.gateway.executor
        if executor is not None:
            executor.client_gone(client.id)
