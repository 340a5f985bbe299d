"""Responses kaixu makes itself (local endpoints and errors), always JSON, always with the request id."""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http

from kaixu.call import Call
from kaixu.formats.fronts import error_body

JSON_HEADERS = {"content-type": "application/json"}


def json_response(call: Call | None, status: int, body: Any, headers: dict[str, str] | None = None) -> http.Response:
    response = http.Response.make(status, json.dumps(body, separators=(",", ":")), JSON_HEADERS)
    if call is not None:
        response.headers["x-request-id"] = call.request_id
        response.headers["x-kaixu-request-id"] = call.request_id
    if headers:
        response.headers.update(headers)
    return response


def error_response(
    call: Call,
    status: int,
    message: str,
    type: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> http.Response:
    """An error in the shape of the caller's front door (OpenAI, Anthropic, Gemini or a seed API)."""
    return json_response(call, status, error_json(call.front, call.request_id, status, message, type, code), headers)


def error_json(
    front: str, request_id: str | None, status: int, message: str, type: str, code: str | None = None
) -> dict[str, Any]:
    body = error_body(front, status, message, type, code)
    if request_id is not None:
        body["request_id"] = request_id
    return body
