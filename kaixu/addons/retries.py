"""The retries step: the first attempt of a buffered request with an attempt plan failed: the plan goes on.

mitmproxy makes that first attempt itself, as for any request, so a plan costs nothing while providers answer
(`Delivery.native_first`). This step only hands the failure to the reliability entry (kaixu/reliability/serve.py):
a failed answer in the response hook (`Reliability.retry`), no whole answer in the error hook
(`Reliability.recover`, which runs the chain's response steps on what the next attempt gives).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mitmproxy import http

from kaixu.call import get_call
from kaixu.gateway import Gateway


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
        if call is None or flow.response is None or not call.delivery.native_first:
            return None  # the common case: no coroutine
        return self.gateway.reliability.retry(flow, call)

    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        call = get_call(flow)
        if call is None or not call.delivery.native_first or flow.error is None:
            return None
        assert self.respond is not None
        return self.gateway.reliability.recover(flow, call, self.respond)
