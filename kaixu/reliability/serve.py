"""The one entry of reliability: every request that leaves kaixu is served from here, and every attempt after
the first starts here.

`serve` is called by the dispatch step for every routed request, once every check has passed. It decides how
the request's attempts run:

- a stream with an attempt plan goes through the loopback relay (kaixu/reliability/relay.py), which runs the
  plan with the executor and streams the winner back;
- a buffered request whose provider has a queue is fetched by the executor (kaixu/reliability/executor.py), so
  mitmproxy never connects upstream itself;
- the first request of a client connection, when it is buffered and has no plan, is sent by the executor's
  pooled HTTP client too (`Executor.forward`): mitmproxy opens its upstream connections per client connection,
  so a client that opens a connection per request would make it open a new TCP + TLS connection to the provider
  for each (docs/performance.md, "Upstream connections"); a client that keeps its connection has the next ones
  forwarded by mitmproxy on the connection it then opens and keeps;
- anything else is forwarded by mitmproxy itself, the first attempt of a plan included (a plan costs nothing
  while providers answer); its time to the answer's head is bounded here (`first_attempt_timeout`), by a timer
  that closes the upstream connection.

When mitmproxy's own first attempt of a plan fails, the retries step hands it back here: `retry` for a failed
answer, `recover` for no whole answer at all (mitmproxy's error hook). The executor runs the attempts that
follow. So a retry can start in one place only, and every upstream timeout is this package's.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

from mitmproxy import http

from kaixu import mitm
from kaixu.call import Call
from kaixu.formats.doors import front_door
from kaixu.providers import split_url
from kaixu.reliability.executor import Executor, Outcome, as_response
from kaixu.reliability.failures import UpstreamFailure, forwarding_failure
from kaixu.reliability.health import Deployments
from kaixu.reliability.plan import Upstream
from kaixu.reliability.relay import Relay, RelayPlan

Respond = Callable[[http.HTTPFlow], Awaitable[None] | None]


class Reliability:
    """Retries, fallbacks, timeouts and provider queues for every request kaixu forwards (docs/reliability.md).

    Held by the `Gateway`; the dispatch, retries and errors steps call it from their hooks."""

    def __init__(self, deployments: Deployments, mock_url: Callable[[], str | None]) -> None:
        self.deployments = deployments
        self.executor = Executor(deployments, mock_url)
        self.relay = Relay(self.executor)
        self.loopback_url: str | None = None
        """kaixu's loopback server, once it listens (the relay is one of its routes)."""
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._opened: set[str] = set()
        """The client connections that have sent a request to a provider (ids; forgotten when they close)."""

    # -- the request leaves ----------------------------------------------------------------------------------

    def serve(self, flow: http.HTTPFlow, call: Call) -> Awaitable[None] | None:
        """The request leaves: the one decision of how its attempts run (see the module docstring). Returns the
        executor's fetch for a buffered request kaixu fetches itself, else None (no coroutine)."""
        served = call.served
        if served is not None:
            self.deployments.started(served.target)
        if call.route.plan is not None:
            if call.stream:
                if self._divert_to_relay(flow, call):
                    return None
            elif served is not None and served.provider.max_concurrent is not None:
                return self.executor.answer(flow, call)  # the provider's queue is kaixu's: so is its HTTP client
            else:
                # mitmproxy makes the first attempt, as for any request; `retry` / `recover` take over if it fails
                call.delivery.native_first = True
                call.delivery.sent_at = time.monotonic()
        elif served is not None and self._first_of_connection(flow) and not call.stream:
            return self.executor.forward(flow, call)  # on a pooled connection, not a new one for one request
        if served is not None:
            timer = asyncio.get_running_loop().call_later(first_attempt_timeout(call), self._expire, flow, call)
            self._timers[flow.id] = timer
        return None

    def _first_of_connection(self, flow: http.HTTPFlow) -> bool:
        """Whether this is the first request of its client connection to go to a provider (counted as it goes)."""
        client = flow.client_conn.id
        if client in self._opened:
            return False
        self._opened.add(client)
        return True

    def _divert_to_relay(self, flow: http.HTTPFlow, call: Call) -> bool:
        """Send the flow, as it would go to the provider, through the relay, which runs its attempts and keeps the
        stream of a door with keep-alives (`FrontDoor.keepalive_s`: Gateway 13's `ping` events) alive until the
        provider's first byte. False while the loopback server is not listening yet (one attempt, forwarded)."""
        loopback = self.loopback_url
        if loopback is None:
            return False
        request = flow.request
        ping_s = front_door(call.front).keepalive_s
        if ping_s is not None:
            ping_s = float(call.policy.front_settings(call.front).get("ping_interval_s", ping_s))
        path = self.relay.register(RelayPlan(call=call, upstream=Upstream.of(request), ping_s=ping_s))
        request.scheme, request.host, request.port, request.path = split_url(loopback + path)
        call.delivery.relayed = True
        return True

    def answered(self, flow: http.HTTPFlow) -> None:
        """The answer's head arrived (or the flow ended): mitmproxy's attempt is no longer timed."""
        timer = self._timers.pop(flow.id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, flow: http.HTTPFlow, call: Call) -> None:
        self._timers.pop(flow.id, None)
        if flow.response is not None or not flow.live:
            return
        call.timed_out = True
        mitm.close_connection(flow.client_conn, flow.server_conn)

    def client_gone(self, client_id: str) -> None:
        """A client connection closed: the fetches it was waiting for are cancelled."""
        self._opened.discard(client_id)
        self.executor.client_gone(client_id)

    # -- mitmproxy's first attempt failed: the plan goes on -----------------------------------------------------

    def retry(self, flow: http.HTTPFlow, call: Call) -> Awaitable[None] | None:
        """A buffered answer to mitmproxy's first attempt of a plan arrived: a failure the plan retries or falls
        back on is replaced by what the next attempts give. None for an answer that needs nothing (no coroutine)."""
        response = flow.response
        if response is None or not call.delivery.native_first or response.status_code < 400:
            return None
        if response.stream is not False or call.route.attempts is not None:
            return None
        headers = [(k, v) for k, v in response.headers.items(multi=True)]
        return self._go_on(flow, call, Outcome(response.status_code, headers, body=response.content or b""))

    async def _go_on(self, flow: http.HTTPFlow, call: Call, failed: Outcome) -> None:
        outcome = await self.executor.fetch(flow, call, None, failed)
        if outcome is not None and outcome is not failed:
            flow.response = as_response(outcome)
            call.governance.headers_sent = False  # the new answer has none of kaixu's headers yet

    def recover(self, flow: http.HTTPFlow, call: Call, respond: Respond) -> Awaitable[None] | None:
        """mitmproxy's first attempt of a plan got no whole answer (a connection refused or dropped, a timeout, a
        body cut midway: none of it reached the client) and the flow is ending in its error hook, where a
        response can no longer be set: the next attempts run now, the response steps (``respond``) are run on the
        winner, and kaixu/addons/errors.py hands it to kaixu/mitm.py in place of the error page
        (`Delivery.recovered`; HTTP/1 clients: an HTTP/2 client gets the error)."""
        if not call.delivery.native_first or flow.error is None or call.served is None:
            return None
        if flow.response is not None and flow.response.stream is not False:
            return None  # a stream: nothing here (a plan's streams go through the relay)
        if mitm.client_fault_status(flow) is not None or call.route.attempts is not None:
            return None  # the client's own doing (it left, its body was too large...): nothing to retry
        return self._recover(flow, call, respond)

    async def _recover(self, flow: http.HTTPFlow, call: Call, respond: Respond) -> None:
        assert flow.error is not None
        failed = self.executor.unanswered(call, forwarding_failure_of(flow, call))
        cut = flow.response  # a buffered answer cut midway (none of it reached the client), or None
        outcome = await self.executor.fetch(flow, call, None, failed)
        if outcome is None or outcome is failed:
            flow.response = cut  # nothing followed it (or the client left): mitmproxy's error stands
            return  # and the settle step records it
        flow.response = as_response(outcome)
        flow.response.headers["connection"] = "close"  # mitmproxy closes the connection after its error answer
        call.delivery.recovered = flow.response
        pending = respond(flow)  # decorated, translated, priced, recorded as any answer
        if pending is not None and inspect.isawaitable(pending):
            await pending

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await self.executor.close()


def first_attempt_timeout(call: Call) -> float:
    """How long the first attempt of a request may wait for its answer's head when mitmproxy makes it itself:
    its model's `ttfb_s` or `total_s` (the smaller), else `limits.upstream_timeout_s`."""
    total = call.policy.upstream_timeout_s
    plan = call.route.plan
    if plan is None:
        return total
    timeouts = plan.routes[plan.start].timeouts
    if timeouts is None:
        return total
    total = timeouts.total_s or total
    return min(timeouts.ttfb_s or total, total)


def forwarding_failure_of(flow: http.HTTPFlow, call: Call, detail: str | None = None) -> UpstreamFailure:
    """What mitmproxy's own forwarding of ``call`` failing means (`failures.forwarding_failure`): timed out by
    `serve`'s timer, never connected, or broken before a whole answer."""
    provider = call.served.provider.name if call.served is not None else "upstream"
    waited = first_attempt_timeout(call) if call.timed_out else None
    connected = flow.server_conn.timestamp_tcp_setup is not None
    message = detail if detail is not None else (flow.error.msg if flow.error is not None else "")
    return forwarding_failure(provider, waited, connected, message)
