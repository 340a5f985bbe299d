"""Step 9a: the first attempt of a buffered request with an attempt plan failed: the plan goes on.

mitmproxy makes that first attempt itself, as for any request, so a plan costs nothing while providers answer
(the dispatch step: `Delivery.native_first`). When the answer is a failure the plan retries or falls back on
(a 429, a 5xx, a `fallback_on` error), the response hook hands it to the executor (kaixu/reliability/executor.py),
which runs the next attempts and puts the winner (or the last failure) in its place before the settle step
reads it. When the first attempt got no whole answer (a connection refused or dropped, a timeout, a body cut
midway: none of it reached the client), mitmproxy ends the flow in its error hook, where a response can no
longer be set: the executor runs the next attempts there, the response steps are run on the result at once
(`Chain.respond`), and kaixu/addons/errors.py hands it to kaixu/mitm.py in place of the error page
(`Delivery.recovered`; HTTP/1 clients: an HTTP/2 client gets the error).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from mitmproxy import http

from kaixu import mitm
from kaixu.call import Call, get_call
from kaixu.gateway import Gateway
from kaixu.providers import FailureKind, upstream_failure
from kaixu.reliability.executor import Outcome, as_response
from kaixu.reliability.served import first_attempt_timeout


class Retries:
    """Runs before the other response steps (first in the chain after the connection steps), so that what it
    puts in place of a failed answer is what they decorate, translate, price and record."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.respond: Callable[[http.HTTPFlow], Awaitable[None] | None] | None = None
        """The chain's response steps (`Chain.respond`), for an answer recovered in the error hook."""

    def attach_chain(self, respond: Callable[[http.HTTPFlow], Awaitable[None] | None]) -> None:
        self.respond = respond

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        call = get_call(flow)
        response = flow.response
        if call is None or response is None or not call.delivery.native_first or response.status_code < 400:
            return None  # the common case: no coroutine
        if response.stream is not False or call.route.attempts is not None:
            return None
        headers = [(k, v) for k, v in response.headers.items(multi=True)]
        return self._go_on(flow, call, Outcome(response.status_code, headers, body=response.content or b""))

    async def _go_on(self, flow: http.HTTPFlow, call: Call, failed: Outcome) -> None:
        executor = self.gateway.executor
        assert executor is not None
        outcome = await executor.fetch(flow, call, None, failed)
        if outcome is not None and outcome is not failed:
            flow.response = as_response(outcome)
            call.governance.headers_sent = False  # the new answer has none of kaixu's headers yet

    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        call = get_call(flow)
        if call is None or not call.delivery.native_first or flow.error is None:
            return None
        if flow.response is not None and flow.response.stream is not False:
            return None  # a stream: nothing here (a plan's streams go through the relay)
        if mitm.client_fault_status(flow) is not None or call.route.attempts is not None:
            return None  # the client's own doing (it left, its body was too large...): nothing to retry
        return self._recover(flow, call)

    async def _recover(self, flow: http.HTTPFlow, call: Call) -> None:
        executor = self.gateway.executor
        served = call.served
        assert executor is not None and served is not None and flow.error is not None
        provider = served.provider.name
        if call.timed_out:
            failure = upstream_failure("timeout", provider, "", first_attempt_timeout(call))
        else:  # never connected, or the connection broke before a whole answer (none of it reached the client)
            kind: FailureKind = "connect" if flow.server_conn.timestamp_tcp_setup is None else "protocol"
            failure = upstream_failure(kind, provider, flow.error.msg)
        failed = executor.unanswered(call, failure)
        cut = flow.response  # a buffered answer cut midway (none of it reached the client), or None
        outcome = await executor.fetch(flow, call, None, failed)
        if outcome is None or outcome is failed:
            flow.response = cut  # nothing followed it (or the client left): mitmproxy's error stands
            return  # and the settle step records it
        flow.response = as_response(outcome)
        flow.response.headers["connection"] = "close"  # mitmproxy closes the connection after its error answer
        call.delivery.recovered = flow.response
        assert self.respond is not None
        pending = self.respond(flow)  # decorated, translated, priced, recorded as any answer
        if pending is not None and inspect.isawaitable(pending):
            await pending
