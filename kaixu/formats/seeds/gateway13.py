"""Kaixu Gateway 13 (seed 000): ``/.netlify/functions/gateway-chat`` (JSON) and ``gateway-stream`` (SSE).

Body ``{provider?, model, messages: [{role, content}], max_tokens?, temperature?}``.
Responses carry gateway accounting (cost, monthly caps, install id) that comes from
``SeedContext``; see ``context.py``.

Decisions worth knowing:

* ``provider`` is only a hint for routing (the seed *required* it and called that
  vendor); read it with ``provider_hint(body)``. Unknown names are a 400, as in the
  seed.
* ``max_tokens`` defaults to ``DEFAULT_MAX_TOKENS`` (1024) because the seed always
  sent 1024 when the client did not say, and clients rely on that answer length.
  ``temperature`` is left unset when absent: the seed's default (1) is every
  provider's default anyway.
* Roles ``system`` / ``user`` / ``assistant`` (case-insensitive), string content;
  blank turns are dropped (the seed did). System turns become the system prompt.
* ``month`` in responses is the rollup *after* this call (``context.month`` plus
  this call's cost), as the seed re-read it after recording the usage; the
  stream's ``meta`` event shows the rollup before the call. Both also carry the
  seed's legacy ``cap_cents`` / ``spent_cents`` aliases.
* Stream events: ``meta`` first (before any other event, whatever it is), then
  ``delta`` ``{"text"}`` per text delta, then ``done`` (usage + cost + month) or
  ``error`` ``{"error"}``. Tool calls cannot occur (the body has no tools) and are
  ignored. ``ping_event()`` is for the gateway's keep-alive timer.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from kaixu.pricing import cents

from .._common import JSON, dumps, expect_dict, jstr, opt_int, opt_num, opt_str, req_str
from ..base import StreamEncoder
from ..canonical import (
    ChatRequest,
    ChatResponse,
    MessageEnd,
    StreamError,
    StreamEvent,
    TextDelta,
    Usage,
    UsageUpdate,
)
from ..errors import FormatError
from ..sse import encode_sse, utf8
from ._front import FrontDoorOnly, canonical_turns, chat_turns, positive_int
from .context import MonthRollup, SeedContext

NAME = "gateway13"
PROVIDERS = ("openai", "anthropic", "gemini")
DEFAULT_MAX_TOKENS = 1024


# --- request -------------------------------------------------------------------------


def provider_hint(body: JSON) -> str | None:
    """The client's ``provider`` (trimmed, lower-cased), or ``None`` when absent or blank."""
    value = opt_str(expect_dict(body, "body"), "provider")
    hint = (value or "").strip().lower()
    if not hint:
        return None
    if hint not in PROVIDERS:
        raise FormatError("provider", f"must be one of {', '.join(PROVIDERS)}")
    return hint


def decode_request(body: JSON, *, model: str | None = None, stream: bool | None = None) -> ChatRequest:
    """A Gateway 13 body -> canonical. ``model`` (from the gateway) beats ``body.model``."""
    body = expect_dict(body, "body")
    provider_hint(body)  # validate: an unknown provider is the client's 400
    name = model or req_str(body, "model").strip()
    if not name:
        raise FormatError("model", "must not be empty")
    if body.get("messages") is None:
        raise FormatError("messages", "is required")
    system, messages = canonical_turns(chat_turns(body["messages"], "messages"), "messages")
    max_tokens = positive_int(opt_int(body, "max_tokens"), "max_tokens")
    return ChatRequest(
        model=name,
        messages=messages,
        system=system,
        max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        temperature=opt_num(body, "temperature"),
        stream=bool(stream),
    )


# --- response ------------------------------------------------------------------------


def _usage(usage: Usage, cost_cents: float) -> JSON:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cost_cents": cost_cents,
    }


def encode_response(resp: ChatResponse, context: SeedContext | None = None) -> JSON:
    """``{provider, model, output_text, usage, month, telemetry}`` with the month after this call."""
    ctx = context or SeedContext()
    cost = ctx.call_cost_cents(resp.usage)
    return {
        "provider": ctx.provider,
        "model": ctx.model or resp.model,
        "output_text": resp.message.text(),
        "usage": _usage(resp.usage, cost),
        "month": ctx.month.plus(cost).to_json(),
        "telemetry": {"install_id": ctx.install_id},
    }


# --- streaming -----------------------------------------------------------------------


def ping_event(now_ms: int | None = None) -> bytes:
    """A keep-alive event; the seed sent one every 15 s with the time in ms (``{"t": ...}``)."""
    t = int(time.time() * 1000) if now_ms is None else now_ms
    return encode_sse(dumps({"t": t}), "ping")


def _delta(text: str) -> bytes:
    return b'event: delta\ndata: {"text":' + utf8(jstr(text)) + b"}\n\n"


class Gateway13StreamEncoder:
    """Canonical events -> ``meta`` / ``delta`` / ``done`` | ``error`` events.

    ``meta`` goes out with the first event of any kind, so a client always learns
    the caps before the answer (or the error). Usage is the latest report (decoders
    report cumulative counts, so the latest is the whole: an explicit 0 in it stays 0).
    """

    __slots__ = ("_ctx", "_finished", "_model", "_started", "_usage")

    def __init__(self, req: ChatRequest, context: SeedContext | None = None) -> None:
        self._ctx = context or SeedContext()
        self._model = self._ctx.model or req.model
        self._usage = Usage()
        self._started = False
        self._finished = False

    def encode(self, event: StreamEvent) -> bytes:
        if self._finished:
            return b""
        if type(event) is TextDelta:
            return self._meta() + _delta(event.text) if event.text else self._meta()
        if type(event) is UsageUpdate:
            self._usage = event.usage
        elif type(event) is MessageEnd:
            return self._meta() + self._done(event)
        elif type(event) is StreamError:
            self._finished = True
            return self._meta() + encode_sse(dumps({"error": event.message}), "error")
        return self._meta()  # MessageStart, tool call events: nothing to show but the meta

    def close(self) -> bytes:
        return self._meta()

    def keepalive(self) -> bytes:
        """A `ping` while the provider has not answered yet (after the `meta` every stream starts with)."""
        return b"" if self._finished else self._meta() + ping_event()

    def _meta(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        ctx = self._ctx
        meta = {
            "provider": ctx.provider,
            "model": self._model,
            "telemetry": {"install_id": ctx.install_id},
            "month": ctx.month.to_json(),
        }
        return encode_sse(dumps(meta), "meta")

    def _done(self, event: MessageEnd) -> bytes:
        self._finished = True
        usage = event.usage if event.usage is not None else self._usage
        cost = self._ctx.call_cost_cents(usage)
        done = {"usage": _usage(usage, cost), "month": self._ctx.month.plus(cost).to_json()}
        return encode_sse(dumps(done), "done")


# --- errors --------------------------------------------------------------------------


def error_body(status: int, message: str, type: str, code: str | None = None) -> JSON:
    """``{"error": message}`` plus ``"code"`` when given (e.g. 409 ``UNPRICED_MODEL``)."""
    body: JSON = {"error": message}
    if code is not None:
        body["code"] = code
    return body


def cap_reached_body(scope: str, month: MonthRollup) -> JSON:
    """The seed's 402 body when the ``customer`` or ``key`` monthly cap is spent."""
    return {"error": "Monthly cap reached", "scope": scope, "month": month.to_json()}


def budget_refusal_body(level: str, cap_micros: int, spent_micros: int, month: MonthRollup | None) -> JSON:
    """The 402 of a spent budget in the seed's shape (`cap_reached_body`): a customer's budget is its
    ``customer`` cap, any other the ``key`` cap; the ``month`` object shows that cap and its spend (held
    requests included), in cents."""
    month = month or MonthRollup()
    scope = "customer" if level == "customer" else "key"
    if scope == "customer":
        month = replace(month, customer_cap_cents=cents(cap_micros), customer_spent_cents=cents(spent_micros))
    else:
        month = replace(month, key_cap_cents=cents(cap_micros), key_spent_cents=cents(spent_micros))
    return cap_reached_body(scope, month)


# --- background jobs -----------------------------------------------------------------

JOB_PATHS = {
    "submit": "/.netlify/functions/gateway-job-submit",
    "status": "/.netlify/functions/gateway-job-status",
    "result": "/.netlify/functions/gateway-job-result",
}
JOB_RUN_PATH = "/.netlify/functions/gateway-chat"
"""A job's request runs as this one: its result is the gateway-chat answer."""


def job_accepted_body(job_id: str) -> JSON:
    """The 202 of ``gateway-job-submit``. The URLs are paths: the client knows the gateway it called (its
    ``KAIXU_API_BASE``), kaixu cannot know the scheme and host a load balancer in front shows."""
    return {
        "job_id": job_id,
        "status_url": f"{JOB_PATHS['status']}?id={job_id}",
        "result_url": f"{JOB_PATHS['result']}?id={job_id}",
        "note": "Job accepted: poll status_url until job.status is succeeded or failed, then fetch result_url.",
    }


def job_accepted(job_id: str, model: str | None) -> tuple[int, JSON]:
    return 202, job_accepted_body(job_id)


def job_state(job: JSON, result: str | None, asked: str) -> tuple[int, JSON]:
    """``gateway-job-status``: 200 ``{"job": {id, status, ...}}`` whatever the status. ``gateway-job-result``: 200
    with the gateway-chat answer once it succeeded, 202 ``{"job"}`` while it waits or runs, 500 ``{"error",
    "job"}`` when it failed (or was cancelled)."""
    if asked == "status":
        return 200, {"job": job}
    if job["status"] == "succeeded":
        return 200, json.loads(result or "{}")
    if job["status"] in ("failed", "cancelled"):
        return 500, {"error": job.get("error") or f"the job was {job['status']}", "job": job}
    return 202, {"job": job}


# --- codec ---------------------------------------------------------------------------


class Gateway13Codec(FrontDoorOnly):
    name = NAME

    def decode_request(self, body: JSON, *, model: str | None = None, stream: bool | None = None) -> ChatRequest:
        return decode_request(body, model=model, stream=stream)

    def encode_response(self, resp: ChatResponse, context: SeedContext | None = None) -> JSON:
        return encode_response(resp, context)

    def stream_encoder(self, req: ChatRequest, context: SeedContext | None = None) -> Gateway13StreamEncoder:
        return Gateway13StreamEncoder(req, context)

    def error_body(self, status: int, message: str, type: str, code: str | None = None) -> JSON:
        return error_body(status, message, type, code)


CODEC = Gateway13Codec()

if TYPE_CHECKING:
    from ..base import Codec

    _codec_check: Codec = CODEC
    _encoder_check: StreamEncoder = Gateway13StreamEncoder(ChatRequest(model=""))
