"""The dialect step: which front door did the client knock on? From the request head alone (path, method, headers):
the call's front door (its wire format and error shape, kaixu/formats/doors.py), operation, a model named in
the path, the stream flag a path fixes, and client attribution headers. The body waits until the caller is
known (addons/body.py).
"""

from __future__ import annotations

from mitmproxy import http

from kaixu.call import ATTRIBUTE_HEADERS, get_call
from kaixu.formats.doors import door_for_path, front_door, front_for_path, models_front
from kaixu.log import safe
from kaixu.request_facts import model_name_problem
from kaixu.respond import error_response


class Dialect:
    """Runs on the request head: the body is neither read nor parsed before the caller is authenticated."""

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is not None or call.operation == "local":
            return  # ("local" without an answer yet: kaixu's own endpoint answered once its body is read, admin.py)
        request = flow.request
        path = request.path.partition("?")[0]
        found = door_for_path(path)
        if found is None:
            call.front = front_for_path(path, request.host)
            flow.response = error_response(
                call, 404, f"no such endpoint: {request.method} {safe(path)}", "not_found_error", "unknown_endpoint"
            )
            return
        endpoint = call.endpoint = found.endpoint
        if found.model is not None:
            call.model = found.model
        if found.backend is not None:
            call.backend = found.backend
        call.resource = found.resource
        call.front, call.operation = endpoint.front, endpoint.operation
        if endpoint.operation in ("models", "model") and path.startswith("/v1/"):
            # shared by three SDKs: answer in the shape of the one asking
            call.front = models_front(request.headers, request.path, request.host)
        if request.method not in endpoint.methods:
            flow.response = error_response(
                call,
                405,
                f"method {safe(request.method, 20)} is not allowed on {path}; use {', '.join(endpoint.methods)}",
                "invalid_request_error",
                "method_not_allowed",
                {"allow": ", ".join(endpoint.methods)},
            )
            return
        if endpoint.stream is not None:
            call.stream = endpoint.stream
        if call.model is not None:  # from the path (Gemini, GET one model)
            problem = model_name_problem(call.model)
            if problem is not None:
                flow.response = error_response(call, 400, problem, "invalid_request_error", "invalid_model")
                return
        if endpoint.stream and front_door(endpoint.front).json_array_without_sse and "alt=sse" not in request.path:
            call.json_array_stream = True  # what Google streams without alt=sse
        headers = request.headers
        for header, name in ATTRIBUTE_HEADERS:
            if header in headers:
                problem = call.caller.say(name, headers[header], header)
                if problem is not None:
                    flow.response = error_response(call, 400, problem, "invalid_request_error", "invalid_header")
                    return
