"""The one addon mitmproxy sees: it runs kaixu's steps in order, and fails closed.

Why one dispatcher instead of a dozen addons registered with mitmproxy:

* Speed, on every host: mitmproxy walks all its addons for every event; kaixu's chain is walked once, over
  hook lists resolved when the chain is built, so `mitmdump -s kaixu/plugin.py` pays for one addon.
* Failing closed in one place: an exception in any step of a kaixu flow ends that request with a JSON 500
  in the caller's shape, logged with the request id, and the flow is never forwarded. mitmproxy's own
  addon manager would log the exception and carry on — forwarding the flow as it stood.
* Scope: steps only ever see kaixu's flows (`kaixu/mitm.py: is_kaixu_client`); any other flow in the same
  mitmproxy passes untouched. A step may also leave a flow of kaixu's connections alone (its `untouched` hook:
  a forward listener's request to a host kaixu does not intercept, kaixu/addons/forward.py).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mitmproxy import http

from kaixu import mitm
from kaixu.call import get_call
from kaixu.log import safe
from kaixu.respond import JSON_HEADERS, error_json, error_response, stamp_request_id

log = logging.getLogger("kaixu.chain")

FLOW_HOOKS = ("requestheaders", "request", "responseheaders", "response", "error")
LIFECYCLE_HOOKS = ("load", "configure", "running", "done")
CONNECTION_HOOKS = ("client_connected", "client_disconnected", "next_layer", "http_connect", "untouched")
INTERNAL_ERROR = "kaixu could not handle this request (internal error); the request id is in the logs"

Hook = Callable[..., Any]


def _hooks(steps: Sequence[object], name: str) -> list[Hook]:
    return [getattr(step, name) for step in steps if callable(getattr(step, name, None))]


class Chain:
    """kaixu's steps, in the order a request meets them (see docs/architecture.md)."""

    def __init__(self, steps: Sequence[object]) -> None:
        self.steps = tuple(steps)
        self._flow = {name: _hooks(self.steps, name) for name in FLOW_HOOKS}
        self._other = {name: _hooks(self.steps, name) for name in (*LIFECYCLE_HOOKS, *CONNECTION_HOOKS)}
        for step in self.steps:  # a step that must run the response steps itself (addons/retries.py)
            attach = getattr(step, "attach_chain", None)
            if callable(attach):
                attach(self.respond)

    def respond(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Run the response steps for a flow whose answer a step set after mitmproxy gave up on it."""
        return self._run("response", flow)

    # -- lifecycle: mitmproxy's semantics (an OptionsError from configure propagates) ---------------------

    def load(self, loader: Any) -> None:
        for hook in self._other["load"]:
            hook(loader)

    def configure(self, updated: set[str]) -> None:
        for hook in self._other["configure"]:
            hook(updated)

    def running(self) -> None:
        for hook in self._other["running"]:
            hook()

    async def done(self) -> None:
        for hook in self._other["done"]:
            result = hook()
            if inspect.isawaitable(result):
                await result

    # -- connections ---------------------------------------------------------------------------------------

    def client_connected(self, client: Any) -> None:
        if mitm.is_kaixu_client(client):
            self._run_plain("client_connected", client)

    def client_disconnected(self, client: Any) -> None:
        if mitm.is_kaixu_client(client):
            self._run_plain("client_disconnected", client)

    def next_layer(self, nextlayer: Any) -> None:
        if mitm.is_kaixu_client(nextlayer.context.client):
            self._run_plain("next_layer", nextlayer)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """A forward listener's CONNECT: a step may refuse it (its answer is sent instead of the tunnel). A step
        that fails refuses it too: nothing is tunnelled on a decision that was not made."""
        if not mitm.is_kaixu_client(flow.client_conn):
            return
        for hook in self._other["http_connect"]:
            try:
                hook(flow)
            except Exception:
                log.exception("http_connect hook of %s failed", _owner(hook))
                body = error_json("openai", None, 500, INTERNAL_ERROR, "api_error", "internal_error")
                flow.response = http.Response.make(500, json.dumps(body), JSON_HEADERS)
                return

    def _untouched(self, flow: http.HTTPFlow) -> bool:
        """Whether a step leaves this flow of a kaixu connection alone (it may have answered it)."""
        return any(hook(flow) for hook in self._other["untouched"])

    def _run_plain(self, name: str, arg: Any) -> None:
        for hook in self._other[name]:
            try:
                hook(arg)
            except Exception:
                log.exception("%s hook of %s failed", name, _owner(hook))

    # -- flows -----------------------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if not mitm.is_kaixu_client(flow.client_conn):
            return None
        if self._other["untouched"]:
            try:
                if self._untouched(flow):
                    return None
            except Exception as exc:
                self._fail("requestheaders", flow, self._other["untouched"][0], exc)
                return None
        return self._run("requestheaders", flow)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if get_call(flow) is None:
            return None
        return self._run("request", flow)

    def responseheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return None if get_call(flow) is None else self._run("responseheaders", flow)

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return None if get_call(flow) is None else self._run("response", flow)

    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return None if get_call(flow) is None else self._run("error", flow)

    def _run(self, name: str, flow: http.HTTPFlow, start: int = 0) -> Awaitable[None] | None:
        """Run the steps' hooks in order; sync hooks cost no coroutine. The first async one hands the rest of
        the chain to a coroutine that mitmproxy awaits."""
        hooks = self._flow[name]
        for index in range(start, len(hooks)):
            try:
                result = hooks[index](flow)
            except Exception as exc:
                self._fail(name, flow, hooks[index], exc)
                continue
            if result is not None and inspect.isawaitable(result):
                return self._resume(name, flow, result, index)
        if name == "request":
            self._refuse_unrouted(flow)
        return None

    async def _resume(self, name: str, flow: http.HTTPFlow, pending: Awaitable[Any], index: int) -> None:
        try:
            await pending
        except Exception as exc:
            self._fail(name, flow, self._flow[name][index], exc)
        rest = self._run(name, flow, index + 1)
        if rest is not None:
            await rest

    def _fail(self, name: str, flow: http.HTTPFlow, hook: Hook, exc: Exception) -> None:
        """An exception in a step: the caller gets a JSON 500 in its shape; the flow goes nowhere."""
        call = get_call(flow)
        request_id = call.request_id if call is not None else "-"
        log.error("request %s: the %s hook of %s failed: %r", request_id, name, _owner(hook), exc, exc_info=exc)
        if call is not None:
            call.failed = True
        response = flow.response
        if name in ("requestheaders", "request") or response is None:
            if call is not None:
                flow.response = error_response(call, 500, INTERNAL_ERROR, "api_error", "internal_error")
            else:
                body = error_json("openai", None, 500, INTERNAL_ERROR, "api_error", "internal_error")
                flow.response = http.Response.make(500, json.dumps(body), JSON_HEADERS)
            return
        front = call.front if call is not None else "openai"
        body_bytes = json.dumps(
            error_json(front, call.request_id if call else None, 500, INTERNAL_ERROR, "api_error", "internal_error")
        ).encode()
        if name == "responseheaders":
            # Headers not sent yet: swap in the error and let the provider's bytes fall on the floor.
            response.status_code = 500
            response.headers.clear()
            response.headers.update(JSON_HEADERS)
            response.headers["content-length"] = str(len(body_bytes))
            if call is not None:
                stamp_request_id(response.headers, call.request_id)
            response.stream = lambda data: body_bytes if not data else []
        elif name == "response" and response.stream is False:
            response.status_code = 500
            response.headers["content-type"] = "application/json"
            response.content = body_bytes
        # After the answer started (a stream mid-way, or the error hook) nothing can be replaced: logged above.

    def _refuse_unrouted(self, flow: http.HTTPFlow) -> None:
        """Last line of defence: a kaixu flow leaves for a provider only when the router sent it there."""
        call = get_call(flow)
        if flow.response is not None or call is None or call.route.routed:
            return
        log.error("request %s was not routed by any step; refused (%s %s)", call.request_id,
                  safe(flow.request.method, 20), safe(flow.request.path))  # fmt: skip
        call.failed = True
        flow.response = error_response(call, 500, INTERNAL_ERROR, "api_error", "internal_error")


def _owner(hook: Hook) -> str:
    owner = getattr(hook, "__self__", None)
    return type(owner).__name__ if owner is not None else getattr(hook, "__qualname__", repr(hook))
