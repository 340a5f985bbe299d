"""Step 9: upstream trouble becomes a JSON error with the request id, never mitmproxy's HTML page.

mitmproxy answers connect failures, upstream disconnects and over-limit bodies itself, from its HTTP/1
layer, with an HTML page, and the `error` hook cannot replace it (see shared research notes, section 5).
So kaixu replaces that page where it is written: `Http1Server.send` for a protocol error on a response
that has not started. The upstream timeout is a timer that closes the upstream connection, which takes the
same path and comes out as a 504.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Generator
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import commands
from mitmproxy.proxy import layers as proxy_layers
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._events import ErrorCode, ResponseProtocolError

from kaixu.addons.dialect import front_for_path
from kaixu.addons.respond import error_json, json_response
from kaixu.call import Call, call_for_request, get_call
from kaixu.metrics import UPSTREAM_ERRORS

log = logging.getLogger("kaixu.errors")
_installed = False


def _error_bytes(
    call: Call | None, request: http.Request | None, status: int, reason: str, connect_failed: bool = False
) -> bytes:
    if call is not None:
        status, message, type, code = _describe(call, status, reason, connect_failed)
        body = error_json(call.front, call.request_id, status, message, type, code)
    else:
        front = front_for_path(request.path) if request is not None else "openai"
        body = error_json(front, None, status, reason, "invalid_request_error" if status < 500 else "api_error")
    response = json_response(call, status, body, {"connection": "close"})
    return _http1.http1.assemble_response(response)


def _describe(call: Call, status: int, reason: str, connect_failed: bool) -> tuple[int, str, str, str]:
    provider = call.provider.name if call.provider else "upstream"
    if call.timed_out:
        UPSTREAM_ERRORS.labels(provider, "timeout").inc()
        seconds = call.policy.upstream_timeout_s
        return (
            504,
            f"provider {provider!r} did not answer within {seconds:g} s",
            "timeout_error",
            "upstream_timeout",
        )
    if status == 413:
        limit = call.policy.max_body_bytes
        return (
            413,
            f"the request body is larger than the limit of {limit} bytes",
            "invalid_request_error",
            ("request_too_large"),
        )
    if status == 502:
        kind = "connect" if connect_failed else "protocol"
        UPSTREAM_ERRORS.labels(provider, kind).inc()
        what = "is unreachable" if kind == "connect" else "closed the connection without a complete response"
        return 502, f"provider {provider!r} {what} ({reason})", "api_error", f"upstream_{kind}_error"
    return status, reason, "api_error" if status >= 500 else "invalid_request_error", "gateway_error"


def install_json_error_pages() -> None:
    """Patch mitmproxy's HTTP/1 server side so its self-made error responses are kaixu JSON errors."""
    global _installed
    if _installed:
        return
    _installed = True
    original_send = _http1.Http1Server.send

    def send(self: _http1.Http1Server, event: Any) -> Generator[commands.Command, Any]:
        if (
            isinstance(event, ResponseProtocolError)
            and not self.response
            and self.conn.state & ConnectionState.CAN_WRITE
            and event.code.http_status_code() is not None
        ):
            status = event.code.http_status_code()
            assert status is not None
            call = call_for_request(self.request)
            connect_failed = event.code is ErrorCode.CONNECT_FAILED
            yield commands.SendData(self.conn, _error_bytes(call, self.request, status, event.message, connect_failed))
            yield commands.CloseConnection(self.conn)
            return
        yield from original_send(self, event)

    def make_error_response(status_code: int, message: str = "") -> bytes:
        return _error_bytes(None, None, status_code, message)

    _http1.Http1Server.send = send  # type: ignore[method-assign]
    _http1.make_error_response = make_error_response
    _limit_request_bodies_only()


def _limit_request_bodies_only() -> None:
    """mitmproxy applies `body_size_limit` to requests and responses alike; kaixu's limit is for what
    clients send. Provider answers (an embeddings batch easily passes 5 MB) come from configured upstreams
    and are not cut off."""
    stream_class = proxy_layers.http.HttpStream
    original = stream_class.check_body_size

    def check_body_size(self: Any, request: bool) -> Generator[Any, Any, bool]:
        if request:
            return (yield from original(self, request))
        return False

    stream_class.check_body_size = check_body_size  # type: ignore[method-assign]


class Errors:
    """Arms the upstream timeout for every forwarded request and logs upstream failures."""

    def __init__(self) -> None:
        install_json_error_pages()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is not None or call.provider is None:
            return
        loop = asyncio.get_running_loop()
        self._timers[flow.id] = loop.call_later(call.policy.upstream_timeout_s, self._expire, flow, call)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        timer = self._timers.pop(flow.id, None)
        if timer is not None:
            timer.cancel()

    def error(self, flow: http.HTTPFlow) -> None:
        self.responseheaders(flow)
        call = get_call(flow)
        if call is None or flow.error is None or flow.error.msg == "Client disconnected.":
            return
        provider = call.provider.name if call.provider else "-"
        if call.timed_out:
            log.warning("request %s: provider %s did not answer within %g s", call.request_id, provider,
                        call.policy.upstream_timeout_s)  # fmt: skip
        elif "body_size_limit" in flow.error.msg:
            log.info("request %s refused: body over %d bytes", call.request_id, call.policy.max_body_bytes)
        else:
            log.warning("request %s to provider %s failed: %s", call.request_id, provider, flow.error.msg)

    def _expire(self, flow: http.HTTPFlow, call: Call) -> None:
        self._timers.pop(flow.id, None)
        if flow.response is not None or not flow.live:
            return
        call.timed_out = True
        handler = ctx.master.addons.get("proxyserver").connections.get(flow.client_conn.id)
        if handler is None or flow.server_conn not in handler.transports:
            return
        handler.close_connection(flow.server_conn)
