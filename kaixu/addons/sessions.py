"""Session continuity (the Intelligent AI Gateway's `session_id`, under `sessions:`): every chat answer of a door
with sessions (`FrontDoor.session_field`: OpenAI's) names its conversation, and a request that sends that id
back gets the conversation's earlier turns prepended, whichever provider serves it. A session is its key's
(another key's id is a 404, as one that expired) and lives in the store next to the jobs
(kaixu/store/sessions.py).

Two steps, because the two halves sit at two places of the chain: `SessionHistory` prepends the turns right
after the body is read (before the policy's token caps, the budgets and the router see the request), and
`SessionRecord` keeps the new turns once the answer is settled in the client's own format (after the settle
step translated it)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from mitmproxy import http

from kaixu.call import Call, get_call
from kaixu.conversation import Session, new_session_id
from kaixu.formats.doors import front_door
from kaixu.gateway import Gateway
from kaixu.respond import error_response
from kaixu.store.ledger import StoreUnavailable

log = logging.getLogger("kaixu.sessions")

HEADER = "x-session-id"
"""The session of an answer, in a header too: a stream's first bytes go out before its end is known."""
PRUNE_EVERY_S = 60.0


def _field(call: Call) -> str | None:
    """The door's session field when the call is a chat under `sessions:`."""
    if call.operation != "chat" or not call.policy.sessions.enabled:
        return None
    return front_door(call.front).session_field


class SessionHistory:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is not None or call.body is None:
            return
        field = _field(call)
        stores = self.gateway.stores
        messages = call.body.get("messages")
        if field is None or stores is None or not isinstance(messages, list):
            return  # (a body without messages is the codec's 400)
        said = call.body.get(field)
        if said is None:
            call.session = Session(new_session_id(), call.caller.owner(), asked=messages)
            if call.stream:
                call.bill.streamed_text = call.bill.streamed_text or []  # the stream's text, for the session
            return
        if not isinstance(said, str) or not said:
            message = f"{field}: must be the id of a session (string)"
            flow.response = error_response(call, 400, message, "invalid_request_error", "invalid_field")
            return
        try:
            session = await stores.sessions.get(said, call.caller.owner(), time.time())
        except StoreUnavailable as exc:
            flow.response = error_response(call, 503, str(exc), "api_error", "session_store_unavailable")
            return
        if session is None:
            message = f"no session {said!r}: it expired, or it is not this key's"
            flow.response = error_response(call, 404, message, "not_found_error", "session_not_found")
            return
        session.asked = messages
        call.session = session
        if call.stream:
            call.bill.streamed_text = call.bill.streamed_text or []
        body = {k: v for k, v in call.body.items() if k != field}
        body["messages"] = [*session.messages, *messages]
        call.body = body
        flow.request.content = json.dumps(body, separators=(",", ":")).encode()


def _turn(call: Call, response: http.Response) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The assistant's turn of an answer in the OpenAI chat shape, and the answer's JSON body (None: a stream)."""
    if call.stream:
        return {"role": "assistant", "content": "".join(call.bill.streamed_text or ())}, None
    try:
        body = json.loads(response.content or b"null")
    except ValueError:
        return None, None
    choices = body.get("choices") if isinstance(body, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        return None, None
    turn = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        turn["tool_calls"] = message["tool_calls"]
    return turn, body


class SessionRecord:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._pruned_at = 0.0

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is not None and call.session is not None and flow.response is not None:
            flow.response.headers[HEADER] = call.session.id

    async def response(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        response = flow.response
        if call is None or call.session is None or response is None or response.status_code != 200:
            return
        field, stores = _field(call), self.gateway.stores
        if field is None or stores is None:
            return
        session = call.session
        turn, body = _turn(call, response)
        if turn is None:
            return
        settings = call.policy.sessions
        messages = [*session.messages, *session.asked, turn][-settings.max_turns :]
        now = time.time()
        try:
            await stores.sessions.save(session, messages, now + settings.ttl_s)
            if now - self._pruned_at >= PRUNE_EVERY_S:
                self._pruned_at = now
                await stores.sessions.prune(now)
        except StoreUnavailable as exc:
            log.warning("request %s: session %s not kept: %s", call.request_id, session.id, exc)
            return
        if body is not None:
            body[field] = session.id
            response.content = json.dumps(body, separators=(",", ":")).encode()
