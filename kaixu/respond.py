"""Responses kaixu makes itself (local endpoints and errors), always JSON, always with the request id, in the
caller's own error shape; and headers added to an answer in one go (`add_headers`)."""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http

from kaixu.call import Call
from kaixu.formats.fronts import error_body

JSON_HEADERS = {"content-type": "application/json"}


def stamp_request_id(headers: http.Headers | dict[str, str], request_id: str) -> None:
    """The request id on an answer, under both names clients look for: the common `x-request-id` and kaixu's own.
    The one place it is written, whoever made the answer (kaixu, a provider, mitmproxy's error page)."""
    headers["x-request-id"] = headers["x-kaixu-request-id"] = request_id


def json_response(call: Call | None, status: int, body: Any, headers: dict[str, str] | None = None) -> http.Response:
    response = http.Response.make(status, json.dumps(body, separators=(",", ":")), JSON_HEADERS)
    if call is not None:
        stamp_request_id(response.headers, call.request_id)
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


def add_headers(response: http.Response, headers: dict[str, str]) -> None:
    """Set headers in one assignment (mitmproxy rebuilds its field tuple on every `headers[name] = ...`, a few
    µs each): a provider's own header of the same name is replaced, not repeated."""
    names = {name.lower().encode() for name in headers}
    fields = response.headers.fields
    if any(name.lower() in names for name, _ in fields):
        fields = tuple((name, value) for name, value in fields if name.lower() not in names)
    response.headers.fields = fields + tuple((name.encode(), value.encode()) for name, value in headers.items())
