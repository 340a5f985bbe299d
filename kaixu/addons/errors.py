"""The errors step: upstream trouble becomes a JSON error with the request id, never mitmproxy's HTML page.

mitmproxy answers connect failures, upstream disconnects, over-limit bodies and malformed requests itself,
from its HTTP layers, and the `error` hook cannot replace that answer. `kaixu/mitm.py` (the one home of
mitmproxy internals) hands those answers to `render_error` here. The upstream timeout (kaixu/reliability/serve.py)
closes the upstream connection, which takes the same path and comes out as a 504.
"""

from __future__ import annotations

import logging
import uuid

from mitmproxy import http

from kaixu import mitm
from kaixu.call import Call, call_for_request, get_call
from kaixu.formats import class_type
from kaixu.formats.doors import front_for_path
from kaixu.log import safe
from kaixu.mitm import ErrorCode
from kaixu.reliability.failures import forwarding_failure
from kaixu.reliability.serve import first_attempt_timeout
from kaixu.respond import error_json, json_response, stamp_request_id
from kaixu.stream_errors import broken_stream_event

log = logging.getLogger("kaixu.errors")


def render_error(request: http.Request | None, status: int, reason: str, code: ErrorCode, path: str) -> bytes:
    """A complete HTTP/1 error response for mitmproxy to send on a kaixu connection, in the shape of the front
    door the path names, always with a request id (a fresh one for a request that never became a flow)."""
    call = call_for_request(request)
    if call is not None and call.delivery.recovered is not None:  # a later attempt answered instead
        return mitm.assemble_response(call.delivery.recovered)
    if call is not None:
        status, message, type, error_code = _describe(call, status, reason, code is ErrorCode.CONNECT_FAILED)
        body = error_json(call.front, call.request_id, status, message, type, error_code)
        request_id = call.request_id
    else:
        request_id = str(uuid.uuid4())
        type = class_type(status)
        error_code = "bad_request" if status < 500 else "gateway_error"
        body = error_json(front_for_path(path.partition("?")[0]), request_id, status, reason, type, error_code)
    headers = {"connection": "close"}
    stamp_request_id(headers, request_id)
    return mitm.assemble_response(json_response(call, status, body, headers))


def _describe(call: Call, status: int, reason: str, connect_failed: bool) -> tuple[int, str, str, str]:
    provider = call.served.provider.name if call.served is not None else "upstream"
    if call.timed_out:
        failure = forwarding_failure(provider, first_attempt_timeout(call), True, reason)
        return failure.status, failure.message, failure.type, failure.code
    if status == 413:
        limit = call.policy.max_body_bytes
        return (
            413,
            f"the request body is larger than the limit of {limit} bytes",
            "invalid_request_error",
            ("request_too_large"),
        )
    if status == 502:
        failure = forwarding_failure(provider, None, not connect_failed, reason)
        return failure.status, failure.message, failure.type, failure.code
    return status, reason, class_type(status), "gateway_error"


class Errors:
    """Puts kaixu's JSON error pages in place of mitmproxy's, and logs upstream failures."""

    def __init__(self) -> None:
        mitm.install(render_error, broken_stream_event)

    def error(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.error is None:
            return
        fault = mitm.client_fault_status(flow)  # the one classification of client faults (settle uses it too)
        provider = call.served.provider.name if call.served is not None else "-"
        if fault == mitm.CLIENT_CLOSED:
            return
        if fault == 413:
            log.info("request %s refused: body over %d bytes", call.request_id, call.policy.max_body_bytes)
        elif fault == 400:
            log.info("request %s refused: %s", call.request_id, safe(flow.error.msg))
        elif call.timed_out:
            log.warning("request %s: provider %s did not answer within %g s", call.request_id, provider,
                        first_attempt_timeout(call))  # fmt: skip
        else:
            log.warning("request %s to provider %s failed: %s", call.request_id, provider, safe(flow.error.msg))
