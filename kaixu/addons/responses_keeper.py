"""The Responses API's stored responses, on the answer side: an answer the recall step marked (`Call.turn`:
`store` not false) is kept once complete, under the id its client saw, with the request's own input items
(kaixu/store/responses.py). A JSON answer is read as the client gets it (after the settle step translated it);
a stream is read for its terminal event as it is sent (`TerminalTap`). The write runs in the background: the
answer never waits for it, and a follow-up finds it at once.

Runs after the stream and settle steps, whose work it reads."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from mitmproxy import http

from kaixu.call import get_call
from kaixu.formats.responses import TerminalTap
from kaixu.gateway import Gateway
from kaixu.store.responses import StoredResponse

_KEPT_STATUSES = ("completed", "incomplete")
_DAY_S = 86400.0


class ResponsesKeeper:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        response = flow.response
        if call is None or call.turn is None or response is None or response.status_code >= 400:
            return
        inner = response.stream
        if not callable(inner):
            return
        tap, turn = TerminalTap(), call.turn

        def tapped(chunk: bytes) -> bytes | Iterable[bytes]:
            out = inner(chunk)
            if isinstance(out, bytes):
                tap.feed(out)
            else:  # an iterable (an empty one: nothing to send yet, while b"" would end the stream)
                out = list(out)
                for piece in out:
                    tap.feed(piece)
            if tap.answer is not None and turn.answer is None:
                turn.answer = tap.answer
            return out

        response.stream = tapped

    def response(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        response = flow.response
        stores = self.gateway.stores
        if call is None or call.turn is None or response is None or stores is None or response.status_code >= 400:
            return
        turn = call.turn
        if turn.answer is None and not response.stream:
            try:
                answer = json.loads(response.content or b"null")
            except ValueError:
                return
            turn.answer = answer if isinstance(answer, dict) and answer.get("object") == "response" else None
        answer = turn.answer
        if not answer or answer.get("status") not in _KEPT_STATUSES or not isinstance(answer.get("id"), str):
            return
        if turn.previous_id is not None:
            answer = {**answer, "previous_response_id": turn.previous_id}
        now = time.time()
        days = call.policy.responses.retention_days
        stores.responses.keep(
            StoredResponse(
                id=answer["id"], scope=turn.scope, created=now, expires=now + days * _DAY_S,
                previous_id=turn.previous_id, input=json.dumps(turn.input, separators=(",", ":")),
                response=json.dumps(answer, separators=(",", ":")),
            )
        )  # fmt: skip
