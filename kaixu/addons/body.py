"""The body step: the request body, read only once the caller is authenticated (the auth step).

Decompressed here, never earlier and never without a bound: `limits.max_body_bytes` applies to the
decompressed size too, so a 1 MB gzip bomb costs at most the limit in memory. Then parsed as JSON (nesting
bounded, so no step after this can recurse itself to death on a hostile body: kaixu/request_body.py), and the
request facts the later steps use are read: model (validated), stream flag, routing hints, client attribution,
and a chat body's output limits and answer counts (`max_tokens`, `n`...: positive integers, or the budget cannot
bound them).
"""

from __future__ import annotations

from typing import Any

from mitmproxy import http

from kaixu import content
from kaixu.call import Call, get_call
from kaixu.formats import FormatError, json_type
from kaixu.formats.doors import Endpoint, front_door
from kaixu.request_body import BodyRefused, decompress, parse_json_object
from kaixu.request_facts import agent_ask, model_name_problem, output_limit_problem
from kaixu.respond import error_response


class Body:
    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is not None or call.endpoint is None or not call.endpoint.needs_body:
            return
        request = flow.request
        try:
            raw = request.raw_content or b""
            encoding = request.headers.get("content-encoding", "")
            if encoding:
                raw = decompress(raw, encoding, call.policy.max_body_bytes)
                # the provider gets plain bytes: the encoding header is not forwarded (router's allowlist)
                del request.headers["content-encoding"]
                request.content = raw  # (sets content-length too)
            body = parse_json_object(raw)
        except BodyRefused as refused:
            flow.response = error_response(call, refused.status, refused.message, refused.type, refused.code)
            return
        call.body = body
        problem = self._read_request_fields(call, call.endpoint, body)
        if problem is not None:
            flow.response = error_response(call, 400, problem, "invalid_request_error", "invalid_field")
            return
        content.start(call)  # content logging: the answer's text is collected from now on

    @staticmethod
    def _read_request_fields(call: Call, endpoint: Endpoint, body: dict[str, Any]) -> str | None:
        """Model, stream flag and routing hints; returns what is wrong, naming the field."""
        if call.model is None:  # Gemini has it in the path
            model = body.get("model")
            if model is None:
                model = call.policy.default_model
            if not isinstance(model, str) or not model:
                return f"model: a model name (string) is required, got {json_type(model)}"
            problem = model_name_problem(model)
            if problem is not None:
                return problem
            call.model = model
        if endpoint.stream is None:
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                return f"stream: must be true or false, got {json_type(stream)}"
            call.stream = stream
        backend = body.get("backend")
        if backend is not None:
            if not isinstance(backend, str) or not backend:
                return "backend: must be a backend name (string)"
            if model_name_problem(backend) is not None:
                return "backend: not a valid backend name"
            call.backend = call.backend or backend
        said = _end_user(body)
        if said is not None:  # an x-kaixu-user header wins
            problem = call.caller.say("user", *said, replace=False)
            if problem is not None:
                return problem
        door = front_door(call.front)
        try:  # the seeds' own fields a later step reads: a wrong type is the client's 400 here, not a 500 there
            if door.attribution is not None:  # who the body says it is for (Pulse's teamId, projectId...)
                for name, value in door.attribution(body).items():
                    where = name if body.get(name) is not None else f"metadata.{name}"
                    problem = call.caller.say(name, value, where) if value else None
                    if problem is not None:
                        return problem
            if door.provider_hint is not None:  # the provider kind the body asks for (Gateway 13's `provider`)
                call.provider_hint = door.provider_hint(body)
            if door.include_raw is not None:  # read again when the router aims the call (its SeedContext)
                door.include_raw(body)
            if endpoint.operation == "chat":  # the Intelligent AI Gateway's working_directory, tools by name
                call.agent = agent_ask(body)
        except FormatError as exc:
            return str(exc)
        if endpoint.operation == "chat":  # before anything is reserved, translated or forwarded (same-format too)
            return output_limit_problem(call.front, body)
        return None


def _end_user(body: dict[str, Any]) -> tuple[str, str] | None:
    """The end user a body names, and the field naming it: OpenAI's `user`, Anthropic's `metadata.user_id`
    (for the ledger only)."""
    user, field = body.get("user"), "user"
    if not isinstance(user, str):
        metadata = body.get("metadata")
        user, field = (metadata.get("user_id") if isinstance(metadata, dict) else None), "metadata.user_id"
    return (user, field) if isinstance(user, str) and user else None
