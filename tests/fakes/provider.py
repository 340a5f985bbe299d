"""A fake LLM provider: a real HTTP/1.1 server speaking the OpenAI (Chat Completions and Responses), Anthropic
and Gemini wire formats.

Why this exists: the gateway is a reverse proxy, so the only honest way to test it is to put a real
upstream behind it and look at what arrives on the wire. This module is that upstream. It is written
from the providers' documented formats and deliberately does not import ``kaixu``: it is the oracle
the gateway is judged against, so it must not share the gateway's own understanding of the formats.

Design choices, and why:

* Plain ``asyncio`` streams with a tiny hand-rolled HTTP/1.1 parser (request line, headers,
  Content-Length or chunked body, keep-alive). The fake is also the upstream of throughput
  benchmarks, so it must cost far less per request than the gateway it measures; a framework would
  put its own overhead into the numbers. Nothing slow happens on the plain JSON path and there is no
  per-request logging.
* Replies are deterministic (``"echo: " + last user text``) and token counts follow a fixed formula,
  so tests can assert exact bodies and exact usage/cost numbers.
* Streams are built completely up front and written one HTTP chunk per SSE event, flushed per event,
  which is what lets fault injection stop after exactly N events or pace them in time.
* Faults (status codes, Retry-After, latency, pacing, mid-stream disconnects, dropped connections,
  JSON bodies cut midway, error bodies that quote the request's headers, a usage object of the test's
  choosing or none at all, stream events written by the test byte for byte) can be injected from
  Python, from another process over ``/_fake/*``, or per request with ``x-fake-*`` headers, because
  the gateway's retry and failover policies, its secret scrubbing and its billing are only testable
  against an upstream that misbehaves on demand.
* Every streamed answer is recorded (``FakeProvider.streams``: events sent, and whether it completed,
  was cut by a fault, or stopped because its client closed the connection): a gateway whose client
  went away must cancel the upstream request, and only the upstream can tell.

Token formula (shared by all three formats, so a conversation costs the same whichever way it is
spelled): prompt tokens = for every message (and the system prompt, if any)
``max(1, ceil(len(text) / 4)) + 3``, plus ``max(1, ceil(len(tools_json) / 4))`` for the tool
definitions (``json.dumps(tools, separators=(",", ":"))`` of the request's own ``tools`` field).
Completion tokens = whitespace-separated words of the reply + 1, or for tool calls the sum of
``ceil(len(arguments_json) / 4)``.
A request for several answers (OpenAI ``n``, 1 to 128; Gemini ``candidateCount``, 1 to 8; else the
provider's 400) gets that many identical choices or candidates, and its completion (and reasoning) tokens
are the one answer's times that many, as the providers bill them.

Tool calls: when the request offers tools and its last message is not a tool result, the fake calls the
first tool (the first two when the user's text says "parallel") with ``{"echo": <user text>}``; a
``<<call NAME {json}>>`` marker in the user's text makes it call tool NAME with those arguments instead.

Thinking: the fake thinks only when the request asks it to (OpenAI ``reasoning_effort`` other than
``none``; Anthropic ``thinking`` ``enabled``/``adaptive``; Gemini ``thinkingConfig`` with a non-zero
``thinkingBudget`` or a ``thinkingLevel``), and an OpenAI model whose name contains ``reasoner`` always
thinks, as the OpenAI-compatible servers that return ``reasoning_content`` do. The thought is
``"considering: " + last user text`` (``"considering: " + tool result`` after a tool call); reasoning
tokens = its whitespace-separated words. Each format reports them its own way: OpenAI in
``completion_tokens`` and ``completion_tokens_details.reasoning_tokens``, Anthropic in ``output_tokens``
(no separate count), Gemini as ``thoughtsTokenCount`` beside ``candidatesTokenCount``. The thought text is
shown where the format has a place for it and the request asked: Anthropic ``thinking`` blocks (unless
``display: omitted``) with a signature (``_signature``), Gemini ``thought`` parts with ``includeThoughts``
(and a ``thoughtSignature`` on the first function call or the last part whenever it thinks),
``reasoning_content`` from ``reasoner`` models; the official OpenAI API shows none. The documented
request rules that go with thinking are enforced with the providers' 400s (Anthropic: budget at least
1024 and below ``max_tokens``, no ``temperature`` other than 1, ``top_k``, ``top_p`` below 0.95 or forced
tool choice, a tool loop's last assistant turn starting with a thinking block, history signatures that
verify; Gemini: budget ranges, not both budget and level), so tests see what a translation would cost.

Run it standalone with ``python -m tests.fakes.provider --port 0 --port-file PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import http
import itertools
import json
import math
import os
import random
import re
import signal
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qs

__all__ = ["FakeProvider", "Fault", "RecordedRequest", "StreamRecord", "main"]

Provider = Literal["openai", "anthropic", "gemini"]


# --------------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """A misbehaviour to inject into upcoming requests.

    Faults are queued FIFO; the first one whose ``path_contains`` matches a request is applied and
    its ``times`` decremented, and it is dropped when ``times`` reaches zero. Fields combine: e.g.
    ``latency_ms`` with ``status`` delays the error, ``latency_ms`` alone delays a normal reply.
    """

    status: int | None = None
    retry_after: float | None = None
    latency_ms: int = 0
    until: threading.Event | None = None
    """With ``latency_ms``: the delay ends as soon as the test sets this event, so a request is held exactly as
    long as the test needs it held (``latency_ms`` then only bounds a test that fails before releasing it)."""
    first_byte_delay_ms: int = 0
    event_delay_ms: int = 0
    disconnect_after_events: int | None = None
    close_without_response: bool = False
    echo_headers: bool = False
    """With ``status``: the error message quotes every request header, the credential included, as some
    real providers quote (part of) the key they refused. Lets tests prove the gateway's key never reaches
    its client, log or ledger, whatever the provider says."""
    usage: dict[str, Any] | None = None
    """Report this usage object instead of the formula's, in the provider's own spelling (OpenAI ``usage``,
    Anthropic ``usage``, Gemini ``usageMetadata``): how tests give an answer cached, cache-written or
    reasoning tokens with known counts. Streams: see ``_stream_usage``."""
    omit_usage: bool = False
    """Report no usage at all (no ``usage`` object, no usage chunk, no ``usageMetadata``), as some
    OpenAI-compatible servers do."""
    cut_body_after_bytes: int | None = None
    """JSON answers: send the head (with the full Content-Length) and only this many body bytes, then hang
    up: a provider that drops the connection mid-body."""
    stall_after_events: int | None = None
    """Streams: send this many events, then nothing more while the connection stays open (until the client
    hangs up): a provider that stalls mid-stream."""
    raw_events: list[str] | None = None
    """Streams: send these events instead of the answer's own, as written (each a whole SSE event, its blank line
    included, e.g. ``'data: {...}\\n\\n'``): a provider that sends what the test says, byte for byte, such as a
    lone surrogate as the JSON escape ``\\ud800`` (valid JSON, no valid Unicode) or an event of the wrong shape."""
    probability: float = 1.0
    """The chance that a request this fault is taken for gets it (a queued fault's ``times`` counts only the
    requests that got it): e.g. a ``default_fault`` with 0.2 fails one request in five, at random."""
    times: int = 1
    path_contains: str | None = None

    def applies_to(self, path: str) -> bool:
        """Whether this fault targets ``path`` (always true without ``path_contains``)."""
        return self.path_contains is None or self.path_contains in path


_FAULT_FIELDS = frozenset(f.name for f in dataclasses.fields(Fault)) - {"until"}  # an in-process event, not JSON


@dataclass
class RecordedRequest:
    """One request as the fake received it, kept so tests can assert what the gateway forwarded."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    fault: Fault | None = None
    """The fault this request got (queued, default or ``x-fake-*``), as it was when taken; None: answered
    normally. Lets a test tell "not delayed" from "fast enough", which no clock can under load."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form, for ``GET /_fake/requests`` (the body as UTF-8 text)."""
        return {
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body.decode("utf-8", "replace"),
            "json": self.json,
        }


@dataclass
class StreamRecord:
    """How one streamed answer went, from the fake's side of the wire: lets a test prove that a gateway
    whose client went away stopped the generation (``outcome == "peer_closed"``, fewer events sent)."""

    path: str
    events_total: int
    events_sent: int = 0
    outcome: Literal["streaming", "complete", "cut", "peer_closed"] = "streaming"
    """``cut``: a ``disconnect_after_events`` fault hung up; ``peer_closed``: the client closed the
    connection (or it broke) before the last event."""


# --------------------------------------------------------------------------------------------------
# Deterministic content: the reply and the token arithmetic, independent of any wire format
# --------------------------------------------------------------------------------------------------

_RUN_ID = os.urandom(4).hex()
_COUNTER = itertools.count(1)
_PARALLEL = re.compile(r"\bparallel\b", re.IGNORECASE)
_WORD = re.compile(r"\S+")
_CALL_MARKER = re.compile(r"<<call\s+(?P<name>[^\s>]+)(?P<args>.*?)>>", re.DOTALL)


def _new_id(prefix: str) -> str:
    """A unique id without the cost of ``uuid4`` on every request: process nonce + counter."""
    return f"{prefix}{_RUN_ID}{next(_COUNTER):016x}"


def _ntok(text: str) -> int:
    """Token estimate of one piece of text: ``max(1, ceil(len / 4))``."""
    return max(1, (len(text) + 3) // 4)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _prompt_tokens(texts: Iterable[str], tools: Any) -> int:
    """Prompt tokens: every message (and system prompt) costs its text plus 3; tools cost their JSON."""
    total = sum(_ntok(t) + 3 for t in texts)
    if tools:
        total += _ntok(_compact(tools))
    return total


class _BadRequest(Exception):
    """A request the real provider would reject with 400; the message is shown to the client."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(slots=True)
class _Plan:
    """What one generation request asks for, with every wire format boiled away."""

    model: str
    user_text: str
    tool_result: str | None
    tools: list[str]
    json_mode: bool
    max_tokens: int | None
    stop: list[str]
    prompt_tokens: int
    think: bool = False
    answers: int = 1
    """How many answers the request asks for (OpenAI ``n``, Gemini ``candidateCount``): each is generated and
    billed, as the real APIs do."""


@dataclass(slots=True)
class _ToolCall:
    name: str
    args: dict[str, Any]
    arguments: str
    call_id: str


@dataclass(slots=True)
class _Reply:
    """The deterministic answer to a :class:`_Plan`."""

    text: str
    calls: list[_ToolCall]
    finish: Literal["stop", "length", "tool_calls", "stop_sequence"]
    stop_sequence: str | None
    completion_tokens: int
    thought: str = ""
    reasoning_tokens: int = 0


def _signature(thought: str) -> str:
    """The fake's thinking signature: derived from the text, so a replayed block can be verified."""
    return "sig_" + hashlib.sha256(thought.encode()).hexdigest()[:24]


def _marked_call(plan: _Plan) -> tuple[str, dict[str, Any]] | None:
    """The tool and arguments a ``<<call NAME {json}>>`` marker in the user's text asks for, if any.

    Why: a real agent (a coding CLI) validates a tool's arguments, so ``{"echo": ...}`` cannot make it
    read a file; the marker lets a prompt say exactly which call the model makes. A tool the request does
    not offer, or arguments that are not a JSON object, are the test's mistake: a 400 that says so."""
    match = _CALL_MARKER.search(plan.user_text)
    if match is None:
        return None
    name, raw = match["name"], match["args"].strip()
    if name not in plan.tools:
        raise _BadRequest(f"fake: <<call {name}>> names a tool this request does not offer: {plan.tools}")
    try:
        args = json.loads(raw) if raw else {}
    except ValueError:
        args = None
    if not isinstance(args, dict):
        raise _BadRequest(f"fake: the arguments of <<call {name}>> are not a JSON object: {raw!r}")
    return name, args


def _make_reply(plan: _Plan, call_prefix: str) -> _Reply:
    """The reply (see ``_answer``) and, when the plan thinks, the thought that preceded it."""
    reply = _answer(plan, call_prefix)
    if plan.think:
        reply.thought = "considering: " + (plan.tool_result if plan.tool_result is not None else plan.user_text)
        reply.reasoning_tokens = len(_WORD.findall(reply.thought))
    return reply


def _answer(plan: _Plan, call_prefix: str) -> _Reply:
    """Decide the reply: a tool call, a tool-result echo, a JSON echo or a plain echo."""
    if plan.tool_result is None and plan.tools:
        marked = _marked_call(plan)
        if marked is not None:
            name, args = marked
            arguments = json.dumps(args, ensure_ascii=False)
            call = _ToolCall(name, args, arguments, _new_id(call_prefix))
            return _Reply("", [call], "tool_calls", None, math.ceil(len(arguments) / 4))
        parallel = len(plan.tools) >= 2 and _PARALLEL.search(plan.user_text) is not None
        args = {"echo": plan.user_text}
        arguments = json.dumps(args, ensure_ascii=False)
        calls = [_ToolCall(name, args, arguments, _new_id(call_prefix)) for name in plan.tools[: 2 if parallel else 1]]
        return _Reply("", calls, "tool_calls", None, sum(math.ceil(len(c.arguments) / 4) for c in calls))
    if plan.tool_result is not None:
        text = "tool said: " + plan.tool_result
    elif plan.json_mode:
        text = json.dumps({"echo": plan.user_text}, ensure_ascii=False)
    else:
        text = "echo: " + plan.user_text
    finish: Literal["stop", "length", "stop_sequence"] = "stop"
    stop_sequence: str | None = None
    cut = len(text)
    for seq in plan.stop:
        idx = text.find(seq) if seq else -1
        if 0 <= idx < cut:
            cut, stop_sequence, finish = idx, seq, "stop_sequence"
    text = text[:cut]
    words = list(_WORD.finditer(text))
    tokens = len(words) + 1
    if plan.max_tokens is not None and plan.max_tokens < tokens:
        limit = max(0, plan.max_tokens)
        text = text[: words[limit - 1].end()] if limit else ""
        tokens, finish, stop_sequence = limit, "length", None
    return _Reply(text, [], finish, stop_sequence, tokens)


def _split(text: str, pieces: int, minimum: int = 1) -> list[str]:
    """Split ``text`` into ``pieces`` nearly equal slices (fewer if it is short) that join back exactly."""
    if not text:
        return []
    n = max(minimum, pieces)
    n = max(1, min(n, len(text)))
    bounds = [i * len(text) // n for i in range(n + 1)]
    return [text[bounds[i] : bounds[i + 1]] for i in range(n)]


def _vector(text: str, dims: int = 8) -> list[float]:
    """A deterministic unit vector derived from SHA-256 of the text (so equal inputs embed equally)."""
    dims = max(1, min(dims, 4096))
    raw: list[float] = []
    block = 0
    while len(raw) < dims:
        digest = hashlib.sha256(f"{block}:{text}".encode("utf-8", "surrogatepass")).digest()
        raw.extend(v / 2147483648.0 - 1.0 for v in struct.unpack("<8I", digest))
        block += 1
    raw = raw[:dims]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def _as_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadRequest(f"{name}: expected an integer", name)
    return value


def _answers(value: Any, name: str, most: int) -> int:
    """The number of answers asked for: 1 when absent, else 1..``most`` (OpenAI allows 128, Gemini 8)."""
    count = _as_int(value, name)
    if count is None:
        return 1
    if not 1 <= count <= most:
        raise _BadRequest(f"{name}: must be between 1 and {most}, got {count}", name)
    return count


def _as_stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for s in value if isinstance(s, str)]
    return []


def _need_dict(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    return body


# --------------------------------------------------------------------------------------------------
# Wire helpers
# --------------------------------------------------------------------------------------------------


class _Json(NamedTuple):
    """A complete JSON response (sent with Content-Length)."""

    status: int
    payload: Any
    headers: tuple[tuple[str, str], ...] = ()


class _Stream(NamedTuple):
    """A streamed response: each element is one SSE event, written as one HTTP chunk."""

    events: list[bytes]
    content_type: str = "text/event-stream; charset=utf-8"


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate the client sent (valid JSON, not UTF-8): echo it escaped
        return json.dumps(value, separators=(",", ":")).encode()


def _sse(payload: Any) -> bytes:
    return b"data: " + _dumps(payload) + b"\n\n"


def _sse_named(name: str, payload: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(payload) + b"\n\n"


def _present(key: str, value: Any) -> dict[str, Any]:
    """``{key: value}``, or nothing when ``value`` is None: a field the answer leaves out."""
    return {} if value is None else {key: value}


def _gemini_sse(payload: Any) -> bytes:
    # Google terminates each event with CRLF CRLF (a known trap for LF-only SSE parsers), so do we.
    return b"data: " + _dumps(payload) + b"\r\n\r\n"


# --------------------------------------------------------------------------------------------------
# OpenAI
# --------------------------------------------------------------------------------------------------

_OPENAI_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "text-embedding-3-small")
_OPENAI_ERROR_KIND: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "unknown_url"),
    429: ("requests", "rate_limit_exceeded"),
}


def _openai_error(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind, code = _OPENAI_ERROR_KIND.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _openai_part_text(part: Any) -> str:
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        return ""
    kind = part.get("type")
    if kind in ("text", "input_text", "output_text"):
        return str(part.get("text", ""))
    if kind in ("image_url", "input_image", "image"):
        return "[image]"
    if kind == "refusal":
        return str(part.get("refusal", ""))
    if kind in ("input_audio", "audio"):
        return "[audio]"
    return f"[{kind}]" if kind else ""


def _openai_content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(t for t in (_openai_part_text(p) for p in content) if t)
    return str(content)


def _openai_message_text(msg: dict[str, Any]) -> str:
    text = _openai_content_text(msg.get("content"))
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        args = [
            str(c.get("function", {}).get("arguments", ""))
            for c in calls
            if isinstance(c, dict) and isinstance(c.get("function"), dict)
        ]
        text = " ".join(t for t in (text, *args) if t)
    return text


def _openai_plan(body: Any) -> tuple[_Plan, dict[str, Any]]:
    req = _need_dict(body)
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "model")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' is a required property and must be a non-empty array", "messages")
    if not all(isinstance(m, dict) for m in messages):
        raise _BadRequest("each message must be an object", "messages")
    user_text = ""
    for msg in reversed(messages):
        if msg.get("role") == "user":
            user_text = _openai_content_text(msg.get("content"))
            break
    last = messages[-1]
    tool_result = _openai_content_text(last.get("content")) if last.get("role") in ("tool", "function") else None
    raw_tools = req.get("tools")
    tools: list[str] = []
    if isinstance(raw_tools, list):
        for tool in raw_tools:
            fn = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                tools.append(fn["name"])
    choice = req.get("tool_choice")
    if choice == "none":
        tools = []
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        forced = choice["function"].get("name")
        tools = [forced] if isinstance(forced, str) else tools
    fmt = req.get("response_format")
    json_mode = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
    max_tokens = _as_int(req.get("max_completion_tokens"), "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _as_int(req.get("max_tokens"), "max_tokens")
    effort = req.get("reasoning_effort")
    if effort is not None and effort not in _OPENAI_EFFORTS:
        raise _BadRequest(
            f"Invalid value: '{effort}'. Supported values are: {', '.join(repr(e) for e in _OPENAI_EFFORTS)}.",
            "reasoning_effort",
        )
    plan = _Plan(
        model=model,
        user_text=user_text,
        tool_result=tool_result,
        tools=tools,
        json_mode=json_mode,
        max_tokens=max_tokens,
        stop=_as_stop(req.get("stop")),
        prompt_tokens=_prompt_tokens((_openai_message_text(m) for m in messages), raw_tools),
        think=_shows_reasoning(model) or effort not in (None, "none"),
        answers=_answers(req.get("n"), "n", 128),
    )
    return plan, req


_OPENAI_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


def _shows_reasoning(model: str) -> bool:
    """An OpenAI-compatible reasoning server that always thinks and returns ``reasoning_content``."""
    return "reasoner" in model


_OPENAI_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "stop_sequence": "stop"}


def _openai_usage(plan: _Plan, reply: _Reply) -> dict[str, Any]:
    completion = (reply.completion_tokens + reply.reasoning_tokens) * plan.answers
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reply.reasoning_tokens * plan.answers,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _openai_chat(ctx: _Ctx) -> _Json | _Stream:
    """``POST /v1/chat/completions``: a ``chat.completion`` object or a stream of chunks."""
    plan, req = _openai_plan(ctx.json)
    reply = _make_reply(plan, "call_")
    completion_id = _new_id("chatcmpl-")
    created = int(time.time())
    finish = _OPENAI_FINISH[reply.finish]
    shown = reply.thought if _shows_reasoning(plan.model) else ""
    if not req.get("stream"):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if reply.calls else reply.text,
            "refusal": None,
            "annotations": [],
        }
        if shown:
            message["reasoning_content"] = shown
        if reply.calls:
            message["tool_calls"] = [
                {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in reply.calls
            ]
        return _Json(
            200,
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": plan.model,
                "choices": [
                    {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                    for i in range(plan.answers)
                ],
                **_present("usage", ctx.usage(_openai_usage(plan, reply))),
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
            },
        )

    options = req.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    base: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": plan.model,
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        base["usage"] = None

    events: list[bytes] = []
    for at in range(plan.answers):  # `n` > 1: each choice in turn, as `index` 0, 1, ...

        def chunk(delta: dict[str, Any], finish_reason: str | None = None, at: int = at) -> bytes:
            choice = {"index": at, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return _sse({**base, "choices": [choice]})

        if shown:
            events.append(chunk({"role": "assistant", "content": None, "reasoning_content": ""}))
            events.extend(chunk({"reasoning_content": piece}) for piece in _split(shown, ctx.stream_events))
        if reply.calls:
            for index, call in enumerate(reply.calls):
                head = {
                    "index": index,
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
                delta: dict[str, Any] = {"tool_calls": [head]}
                if index == 0 and not shown:
                    delta = {"role": "assistant", "content": None, **delta}
                events.append(chunk(delta))
                for piece in _split(call.arguments, ctx.stream_events, minimum=2):
                    events.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
        else:
            if not shown:
                events.append(chunk({"role": "assistant", "content": "", "refusal": None}))
            events.extend(chunk({"content": piece}) for piece in _split(reply.text, ctx.stream_events))
        events.append(chunk({}, finish))
    usage = ctx.usage(_openai_usage(plan, reply))
    if include_usage and usage is not None:
        events.append(_sse({**base, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return _Stream(events)


# --- OpenAI Responses API ---------------------------------------------------------------------------


def _responses_plan(body: Any) -> tuple[_Plan, dict[str, Any]]:
    """A ``POST /v1/responses`` body as a plan: ``input`` (a string or items), ``instructions``, flat tools."""
    req = _need_dict(body)
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "model")
    raw_input = req.get("input")
    if isinstance(raw_input, str):
        raw_input = [{"role": "user", "content": raw_input}]
    if not isinstance(raw_input, list) or not raw_input or not all(isinstance(i, dict) for i in raw_input):
        raise _BadRequest("'input' must be a string or a non-empty array of items", "input")
    if req.get("previous_response_id") is not None:
        missing = req["previous_response_id"]
        raise _BadRequest(f"Previous response with id '{missing}' not found.", "previous_response_id")
    texts: list[str] = [str(req["instructions"])] if isinstance(req.get("instructions"), str) else []
    user_text = ""
    for item in raw_input:
        kind = item.get("type", "message")
        if kind == "message":
            texts.append(_openai_content_text(item.get("content")))
            if item.get("role") == "user":
                user_text = _openai_content_text(item.get("content"))
        elif kind == "function_call":
            texts.append(str(item.get("arguments", "")))
        elif kind == "function_call_output":
            texts.append(_openai_content_text(item.get("output")))
    last = raw_input[-1]
    tool_result = _openai_content_text(last.get("output")) if last.get("type") == "function_call_output" else None
    raw_tools = req.get("tools")
    tools = [t["name"] for t in raw_tools or [] if isinstance(t, dict) and t.get("type") == "function"]
    if req.get("tool_choice") == "none":
        tools = []
    text = req.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    reasoning = req.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    plan = _Plan(
        model=model,
        user_text=user_text,
        tool_result=tool_result,
        tools=tools,
        json_mode=isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"),
        max_tokens=_as_int(req.get("max_output_tokens"), "max_output_tokens"),
        stop=[],
        prompt_tokens=_prompt_tokens(texts, raw_tools),
        think=effort not in (None, "none"),
    )
    return plan, req


def _responses_usage(plan: _Plan, reply: _Reply) -> dict[str, Any]:
    output = reply.completion_tokens + reply.reasoning_tokens
    return {
        "input_tokens": plan.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
        "total_tokens": plan.prompt_tokens + output,
    }


def _openai_responses(ctx: _Ctx) -> _Json | _Stream:
    """``POST /v1/responses``: a ``response`` object or its typed event stream (``event:`` + ``sequence_number``)."""
    plan, req = _responses_plan(ctx.json)
    reply = _make_reply(plan, "call_")
    reasoning = req.get("reasoning")
    summary = isinstance(reasoning, dict) and reasoning.get("summary") not in (None, "none")
    items: list[dict[str, Any]] = []
    if reply.thought:
        shown = [{"type": "summary_text", "text": reply.thought}] if summary else []
        items.append({"id": _new_id("rs_"), "type": "reasoning", "summary": shown, "status": "completed"})
    if not reply.calls:
        part = {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}
        items.append({"id": _new_id("msg_"), "type": "message", "status": "completed", "role": "assistant",
                      "content": [part]})  # fmt: skip
    for call in reply.calls:
        items.append({"id": _new_id("fc_"), "type": "function_call", "status": "completed", "call_id": call.call_id,
                      "name": call.name, "arguments": call.arguments})  # fmt: skip
    incomplete = reply.finish == "length"
    response: dict[str, Any] = {
        "id": _new_id("resp_"), "object": "response", "created_at": int(time.time()),
        "status": "incomplete" if incomplete else "completed", "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None, "model": plan.model,
        "output": items, "parallel_tool_calls": True, "tool_choice": req.get("tool_choice", "auto"),
        "tools": req.get("tools") or [], "usage": ctx.usage(_responses_usage(plan, reply)),
    }  # fmt: skip
    if not req.get("stream"):
        return _Json(200, response)
    seq = iter(range(1 << 30))
    events: list[bytes] = []

    def emit(name: str, **fields: Any) -> None:
        events.append(_sse_named(name, {"type": name, "sequence_number": next(seq), **fields}))

    start = {**response, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    emit("response.created", response=start)
    emit("response.in_progress", response=start)
    for index, item in enumerate(items):
        head = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            emit(
                "response.output_item.added", output_index=index, item={**item, "status": "in_progress", "content": []}
            )
            text = item["content"][0]["text"]
            emit("response.content_part.added", **head, content_index=0,
                 part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})  # fmt: skip
            for piece in _split(text, ctx.stream_events):
                emit("response.output_text.delta", **head, content_index=0, delta=piece, logprobs=[])
            emit("response.output_text.done", **head, content_index=0, text=text, logprobs=[])
            emit("response.content_part.done", **head, content_index=0, part=item["content"][0])
        elif item["type"] == "function_call":
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            for piece in _split(item["arguments"], ctx.stream_events, minimum=2):
                emit("response.function_call_arguments.delta", **head, delta=piece)
            emit("response.function_call_arguments.done", **head, arguments=item["arguments"])
        else:
            emit(
                "response.output_item.added", output_index=index, item={**item, "status": "in_progress", "summary": []}
            )
            for s_index, part in enumerate(item["summary"]):
                s_head = {**head, "summary_index": s_index}
                emit("response.reasoning_summary_part.added", **s_head, part={"type": "summary_text", "text": ""})
                for piece in _split(part["text"], ctx.stream_events):
                    emit("response.reasoning_summary_text.delta", **s_head, delta=piece)
                emit("response.reasoning_summary_text.done", **s_head, text=part["text"])
                emit("response.reasoning_summary_part.done", **s_head, part=part)
        emit("response.output_item.done", output_index=index, item=item)
    emit("response.incomplete" if incomplete else "response.completed", response=response)
    return _Stream(events)


def _openai_embeddings(ctx: _Ctx) -> _Json:
    """``POST /v1/embeddings``: deterministic 8-float vectors (or ``dimensions``), float or base64."""
    req = _need_dict(ctx.json)
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "model")
    raw = req.get("input")
    if isinstance(raw, str):
        inputs: list[str] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        inputs = [_compact(raw)]
    elif isinstance(raw, list) and raw:
        inputs = [x if isinstance(x, str) else _compact(x) for x in raw]
    else:
        raise _BadRequest("'input' is a required property", "input")
    dims = _as_int(req.get("dimensions"), "dimensions") or 8
    as_base64 = req.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(inputs):
        vec = _vector(text, dims)
        embedding: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if as_base64 else vec
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(_ntok(t) for t in inputs)
    return _Json(
        200,
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
    )


def _openai_model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1715367049, "owned_by": "system"}


def _openai_models(ctx: _Ctx) -> _Json:
    """``GET /v1/models`` (OpenAI flavour)."""
    return _Json(200, {"object": "list", "data": [_openai_model(m) for m in _OPENAI_MODELS]})


# --------------------------------------------------------------------------------------------------
# Anthropic
# --------------------------------------------------------------------------------------------------

_ANTHROPIC_MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
_ANTHROPIC_ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _anthropic_error(status: int, message: str) -> dict[str, Any]:
    kind = _ANTHROPIC_ERROR_TYPE.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": _new_id("req_")}


def _anthropic_block_text(block: Any, *, with_tools: bool) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "image":
        return "[image]"
    if kind == "document":
        return "[document]"
    if kind == "thinking":
        return str(block.get("thinking", ""))
    if not with_tools:
        return ""
    if kind == "tool_use":
        return _compact(block.get("input", {}))
    if kind == "tool_result":
        return _anthropic_content_text(block.get("content"), with_tools=True)
    return ""


def _anthropic_content_text(content: Any, *, with_tools: bool) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(t for t in (_anthropic_block_text(b, with_tools=with_tools) for b in content) if t)
    return str(content)


def _anthropic_plan(body: Any, *, need_max_tokens: bool) -> tuple[_Plan, dict[str, Any]]:
    req = _need_dict(body)
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("model: Field required")
    messages = req.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _BadRequest("messages: Field required")
    max_tokens = _as_int(req.get("max_tokens"), "max_tokens")
    if need_max_tokens and max_tokens is None:
        raise _BadRequest("max_tokens: Field required")
    user_text = ""
    for msg in reversed(messages):
        if msg.get("role") == "user":
            user_text = _anthropic_content_text(msg.get("content"), with_tools=False)
            break
    tool_result: str | None = None
    if messages and messages[-1].get("role") == "user" and isinstance(messages[-1].get("content"), list):
        results = [
            _anthropic_content_text(b.get("content"), with_tools=True)
            for b in messages[-1]["content"]
            if isinstance(b, dict) and b.get("type") == "tool_result"
        ]
        if results:
            tool_result = " ".join(results)
    raw_tools = req.get("tools")
    tools = [
        t["name"]
        for t in (raw_tools if isinstance(raw_tools, list) else [])
        if isinstance(t, dict) and isinstance(t.get("name"), str) and t.get("type") in (None, "custom")
    ]
    choice = req.get("tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") == "none":
            tools = []
        elif choice.get("type") == "tool" and isinstance(choice.get("name"), str):
            tools = [choice["name"]]
    system = _anthropic_content_text(req.get("system"), with_tools=False)
    texts = [_anthropic_content_text(m.get("content"), with_tools=True) for m in messages]
    if system:
        texts.append(system)
    output_config = req.get("output_config")
    fmt = output_config.get("format") if isinstance(output_config, dict) else None
    effort = output_config.get("effort") if isinstance(output_config, dict) else None
    if effort is not None and effort not in ("low", "medium", "high", "xhigh", "max"):
        raise _BadRequest("output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'")
    think = _anthropic_thinking(req, max_tokens) if need_max_tokens else False
    plan = _Plan(
        model=model,
        user_text=user_text,
        tool_result=tool_result,
        tools=tools,
        json_mode=isinstance(fmt, dict) and fmt.get("type") == "json_schema",
        max_tokens=max_tokens,
        stop=_as_stop(req.get("stop_sequences")),
        prompt_tokens=_prompt_tokens(texts, raw_tools),
        think=think,
    )
    return plan, req


def _anthropic_thinking(req: dict[str, Any], max_tokens: int | None) -> bool:
    """Whether the request turns thinking on, after Anthropic's documented checks of what goes with it."""
    thinking = req.get("thinking")
    for msg in req.get("messages") or []:
        for block in msg.get("content") if isinstance(msg.get("content"), list) else []:
            signed = isinstance(block, dict) and block.get("type") == "thinking"
            if signed and block.get("signature") != _signature(str(block.get("thinking", ""))):
                raise _BadRequest("messages: Invalid `signature` in `thinking` block")
    if thinking is None:
        return False
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "adaptive", "disabled"):
        raise _BadRequest(
            "thinking: Input tag does not match any of the expected tags: 'enabled', 'adaptive', 'disabled'"
        )
    if thinking["type"] == "disabled":
        return False
    if thinking["type"] == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            raise _BadRequest("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if max_tokens is not None and budget >= max_tokens:
            raise _BadRequest("`max_tokens` must be greater than `thinking.budget_tokens`")
    if req.get("temperature") not in (None, 1):
        raise _BadRequest("`temperature` may only be set to 1 when thinking is enabled")
    if req.get("top_k") is not None:
        raise _BadRequest("`top_k` is not supported when thinking is enabled")
    top_p = req.get("top_p")
    if isinstance(top_p, int | float) and top_p < 0.95:
        raise _BadRequest("`top_p` must be greater than or equal to 0.95 when thinking is enabled")
    choice = req.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise _BadRequest("Thinking may not be enabled when tool_choice forces tool use.")
    messages = [m for m in req.get("messages") or [] if isinstance(m, dict)]
    last = messages[-1] if messages else {}
    in_loop = isinstance(last.get("content"), list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in last["content"]
    )
    assistant = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
    if in_loop and assistant is not None:
        content = assistant.get("content")
        first = content[0] if isinstance(content, list) and content else None
        if not (isinstance(first, dict) and first.get("type") in ("thinking", "redacted_thinking")):
            raise _BadRequest(
                "Expected `thinking` or `redacted_thinking`, but found another block. When `thinking` is enabled, "
                "a final `assistant` message must start with a thinking block."
            )
    return True


def _anthropic_thinking_block(req: dict[str, Any], reply: _Reply) -> dict[str, Any] | None:
    """The answer's thinking block: the thought, or empty with ``display: omitted``; signed either way."""
    if not reply.thought:
        return None
    omitted = isinstance(req.get("thinking"), dict) and req["thinking"].get("display") == "omitted"
    text = "" if omitted else reply.thought
    return {"type": "thinking", "thinking": text, "signature": _signature(text)}


_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "stop_sequence": "stop_sequence",
}


def _anthropic_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _anthropic_messages(ctx: _Ctx) -> _Json | _Stream:
    """``POST /v1/messages``: a message object or the documented SSE event sequence."""
    plan, req = _anthropic_plan(ctx.json, need_max_tokens=True)
    reply = _make_reply(plan, "toolu_")
    message_id = _new_id("msg_")
    stop_reason = _ANTHROPIC_STOP[reply.finish]
    output_tokens = reply.completion_tokens + reply.reasoning_tokens
    thinking = _anthropic_thinking_block(req, reply)
    if not req.get("stream"):
        content: list[dict[str, Any]] = (
            [{"type": "tool_use", "id": c.call_id, "name": c.name, "input": c.args} for c in reply.calls]
            if reply.calls
            else [{"type": "text", "text": reply.text}]
        )
        if thinking is not None:
            content.insert(0, thinking)
        return _Json(
            200,
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": plan.model,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": reply.stop_sequence,
                **_present("usage", ctx.usage(_anthropic_usage(plan.prompt_tokens, output_tokens))),
            },
        )

    usage = ctx.usage(_anthropic_usage(plan.prompt_tokens, output_tokens))
    # As the API does: input (and cache) counts in message_start with a token or so of output, the cumulative
    # output count in the last message_delta.
    start_usage = None if usage is None else {**usage, "output_tokens": 1}
    start_usage = start_usage and {k: v for k, v in start_usage.items() if k != "output_tokens_details"}
    delta_usage = None if usage is None else {k: v for k, v in usage.items() if k.startswith("output_tokens")}
    events = [
        _sse_named(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": plan.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    **_present("usage", start_usage),
                },
            },
        )
    ]
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    if thinking is not None:
        deltas = [{"type": "thinking_delta", "thinking": p} for p in _split(thinking["thinking"], ctx.stream_events)]
        deltas.append({"type": "signature_delta", "signature": thinking["signature"]})
        blocks.append(({"type": "thinking", "thinking": "", "signature": ""}, deltas))
    if reply.calls:
        for call in reply.calls:
            start = {"type": "tool_use", "id": call.call_id, "name": call.name, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": piece}
                for piece in _split(call.arguments, ctx.stream_events, minimum=2)
            ]
            blocks.append((start, deltas))
    else:
        deltas = [{"type": "text_delta", "text": piece} for piece in _split(reply.text, ctx.stream_events)]
        blocks.append(({"type": "text", "text": ""}, deltas))
    for index, (start, deltas) in enumerate(blocks):
        events.append(
            _sse_named("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
        )
        if index == 0:
            events.append(_sse_named("ping", {"type": "ping"}))
        events.extend(
            _sse_named("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        )
        events.append(_sse_named("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        _sse_named(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": reply.stop_sequence},
                **_present("usage", delta_usage),
            },
        )
    )
    events.append(_sse_named("message_stop", {"type": "message_stop"}))
    return _Stream(events)


def _anthropic_count_tokens(ctx: _Ctx) -> _Json:
    """``POST /v1/messages/count_tokens``: the same prompt arithmetic as ``/v1/messages``."""
    plan, _ = _anthropic_plan(ctx.json, need_max_tokens=False)
    return _Json(200, {"input_tokens": plan.prompt_tokens})


def _anthropic_model(name: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": name,
        "display_name": name.replace("-", " ").title(),
        "created_at": "2025-09-29T00:00:00Z",
    }


def _anthropic_models(ctx: _Ctx) -> _Json:
    """``GET /v1/models`` (Anthropic flavour, chosen when the request carries ``anthropic-version``)."""
    return _Json(
        200,
        {
            "data": [_anthropic_model(m) for m in _ANTHROPIC_MODELS],
            "has_more": False,
            "first_id": _ANTHROPIC_MODELS[0],
            "last_id": _ANTHROPIC_MODELS[-1],
        },
    )


# --------------------------------------------------------------------------------------------------
# Gemini
# --------------------------------------------------------------------------------------------------

_GEMINI_MODELS = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-embedding-001")
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _gemini_error(status: int, message: str) -> dict[str, Any]:
    name = _GEMINI_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    return {"error": {"code": status, "message": message, "status": name}}


def _gemini_response_text(response: Any) -> str:
    """Text of a ``functionResponse.response``: its output/result/content string, else compact JSON."""
    if isinstance(response, dict):
        for key in ("output", "result", "content"):
            if isinstance(response.get(key), str):
                return response[key]
    return _compact(response)


def _gemini_part_text(part: Any, *, with_tools: bool) -> str:
    if not isinstance(part, dict):
        return ""
    if "text" in part:
        return str(part["text"])
    for key in ("inlineData", "inline_data", "fileData", "file_data"):
        blob = part.get(key)
        if isinstance(blob, dict):
            mime = str(blob.get("mimeType") or blob.get("mime_type") or "")
            return "[image]" if mime.startswith("image/") else "[file]"
    if not with_tools:
        return ""
    call = part.get("functionCall") or part.get("function_call")
    if isinstance(call, dict):
        return _compact(call.get("args", {}))
    response = part.get("functionResponse") or part.get("function_response")
    if isinstance(response, dict):
        return _gemini_response_text(response.get("response"))
    return ""


def _gemini_content_text(content: Any, *, with_tools: bool) -> str:
    if isinstance(content, str):
        return content
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return ""
    return " ".join(t for t in (_gemini_part_text(p, with_tools=with_tools) for p in parts) if t)


def _gemini_function_responses(content: dict[str, Any]) -> list[str]:
    """The result texts of the ``functionResponse`` parts of one content (empty if none)."""
    parts = content.get("parts")
    return [
        _gemini_response_text((p.get("functionResponse") or p.get("function_response") or {}).get("response"))
        for p in (parts if isinstance(parts, list) else [])
        if isinstance(p, dict) and ("functionResponse" in p or "function_response" in p)
    ]


def _gemini_plan(body: Any, model: str) -> tuple[_Plan, dict[str, Any]]:
    req = _need_dict(body)
    if isinstance(req.get("generateContentRequest"), dict):  # countTokens' alternative spelling
        req = req["generateContentRequest"]
    contents = req.get("contents")
    if not isinstance(contents, list) or not contents or not all(isinstance(c, dict) for c in contents):
        raise _BadRequest("* GenerateContentRequest.contents: contents is not specified")
    user_text = ""
    for content in reversed(contents):
        if content.get("role", "user") == "user" and not _gemini_function_responses(content):
            user_text = _gemini_content_text(content, with_tools=False)
            break
    results = _gemini_function_responses(contents[-1])
    raw_tools = req.get("tools")
    tools: list[str] = []
    for tool in raw_tools if isinstance(raw_tools, list) else []:
        decls = (
            (tool.get("functionDeclarations") or tool.get("function_declarations")) if isinstance(tool, dict) else None
        )
        for decl in decls if isinstance(decls, list) else []:
            if isinstance(decl, dict) and isinstance(decl.get("name"), str):
                tools.append(decl["name"])
    tool_config = req.get("toolConfig") or req.get("tool_config")
    calling = tool_config.get("functionCallingConfig") if isinstance(tool_config, dict) else None
    if isinstance(calling, dict):
        if calling.get("mode") == "NONE":
            tools = []
        elif isinstance(calling.get("allowedFunctionNames"), list) and calling["allowedFunctionNames"]:
            tools = [n for n in calling["allowedFunctionNames"] if isinstance(n, str)]
    config = req.get("generationConfig") or req.get("generation_config") or {}
    if not isinstance(config, dict):
        config = {}
    max_tokens = config.get("maxOutputTokens", config.get("max_output_tokens"))
    mime = config.get("responseMimeType", config.get("response_mime_type"))
    system = _gemini_content_text(req.get("systemInstruction") or req.get("system_instruction") or {}, with_tools=False)
    texts = [_gemini_content_text(c, with_tools=True) for c in contents]
    if system:
        texts.append(system)
    thinking = config.get("thinkingConfig", config.get("thinking_config"))
    plan = _Plan(
        model=model,
        user_text=user_text,
        tool_result=" ".join(results) if results else None,
        tools=tools,
        json_mode=mime == "application/json",
        max_tokens=_as_int(max_tokens, "generationConfig.maxOutputTokens"),
        stop=_as_stop(config.get("stopSequences", config.get("stop_sequences"))),
        prompt_tokens=_prompt_tokens(texts, raw_tools),
        think=_gemini_thinks(thinking, model),
        answers=_answers(config.get("candidateCount", config.get("candidate_count")), "candidateCount", 8),
    )
    return plan, req


def _gemini_thinks(config: Any, model: str) -> bool:
    """Whether ``thinkingConfig`` asks for thinking, after Google's documented range checks."""
    if not isinstance(config, dict):
        return False
    budget = config.get("thinkingBudget", config.get("thinking_budget"))
    level = config.get("thinkingLevel", config.get("thinking_level"))
    if budget is not None and level is not None:
        raise _BadRequest("You can only set only one of thinking budget and thinking level.")
    if level is not None and (not isinstance(level, str) or level.upper() not in _GEMINI_LEVELS):
        raise _BadRequest(f"Invalid value at 'generation_config.thinking_config.thinking_level' ({level!r})")
    if budget is not None:
        low, high = (128, 32768) if "pro" in model else (0, 24576)
        if budget == 0 and low > 0:
            raise _BadRequest("Budget 0 is invalid. This model only works in thinking mode.")
        if not isinstance(budget, int) or (budget != -1 and not low <= budget <= high):
            raise _BadRequest(f"The thinking budget ({budget}) is invalid.")
    return level is not None or budget not in (None, 0)


_GEMINI_LEVELS = ("MINIMAL", "LOW", "MEDIUM", "HIGH", "XHIGH")


_GEMINI_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "stop_sequence": "STOP"}


def _gemini_usage(prompt: int, completion: int | None) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": prompt}
    if completion is not None:
        usage["candidatesTokenCount"] = completion
    usage["totalTokenCount"] = prompt + (completion or 0)
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    return usage


def _gemini_generate(ctx: _Ctx, model: str, *, stream: bool) -> _Json | _Stream:
    """``:generateContent`` / ``:streamGenerateContent`` (SSE with ``alt=sse``, else a streamed array)."""
    plan, req = _gemini_plan(ctx.json, model)
    reply = _make_reply(plan, "")
    response_id = _new_id("r")
    config = req.get("generationConfig") or req.get("generation_config") or {}
    thinking = config.get("thinkingConfig", config.get("thinking_config")) if isinstance(config, dict) else None
    include = isinstance(thinking, dict) and bool(thinking.get("includeThoughts", thinking.get("include_thoughts")))
    thought_parts = [{"text": reply.thought, "thought": True}] if reply.thought and include else []

    def response(parts: list[dict[str, Any]], finish: str | None, completion: int | None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish is not None:
            candidate["finishReason"] = finish
        candidates = [{**candidate, "index": i} for i in range(plan.answers)]  # `candidateCount`: each billed
        usage = _gemini_usage(plan.prompt_tokens, None if completion is None else completion * plan.answers)
        if completion is not None and reply.reasoning_tokens:
            usage["thoughtsTokenCount"] = reply.reasoning_tokens * plan.answers
            usage["totalTokenCount"] += reply.reasoning_tokens * plan.answers
        reported = ctx.usage(usage)
        if reported is not None and ctx.usage_override is not None and completion is None:
            # a chunk before the last: the prompt's counts only, as Google sends them
            reported = {k: v for k, v in reported.items() if k in ("promptTokenCount", "cachedContentTokenCount")}
        return {
            "candidates": candidates,
            **_present("usageMetadata", reported),
            "modelVersion": model,
            "responseId": response_id,
        }

    def signed(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Google's rule: the signature rides on the first function call, else on the last part."""
        if not reply.thought:
            return parts
        at = next((i for i, p in enumerate(parts) if "functionCall" in p), len(parts) - 1)
        return [dict(p, thoughtSignature=_signature(reply.thought)) if i == at else p for i, p in enumerate(parts)]

    finish = _GEMINI_FINISH[reply.finish]
    if reply.calls:
        call_parts = [{"functionCall": {"name": c.name, "args": c.args}} for c in reply.calls]
        chunks = [response(thought_parts + signed(call_parts), finish, reply.completion_tokens)]
    elif not stream:
        chunks = [response(thought_parts + signed([{"text": reply.text}]), finish, reply.completion_tokens)]
    else:
        pieces = _split(reply.text, ctx.stream_events) or [""]
        thoughts = _split(reply.thought, ctx.stream_events) if thought_parts else []
        chunks = [response([{"text": t, "thought": True}], None, None) for t in thoughts]
        chunks += [response([{"text": p}], None, None) for p in pieces[:-1]]
        chunks.append(response(signed([{"text": pieces[-1]}]), finish, reply.completion_tokens))
    if not stream:
        return _Json(200, chunks[0])
    if ctx.query_param("alt") == "sse":
        return _Stream([_gemini_sse(c) for c in chunks], "text/event-stream")
    # Without alt=sse Google streams one JSON array, element by element.
    events = [(b"[" if i == 0 else b",\r\n") + _dumps(c) for i, c in enumerate(chunks)]
    events[-1] += b"]"
    return _Stream(events, "application/json; charset=UTF-8")


def _gemini_count_tokens(ctx: _Ctx, model: str) -> _Json:
    """``:countTokens``: the same prompt arithmetic as ``:generateContent``."""
    plan, _ = _gemini_plan(ctx.json, model)
    return _Json(
        200,
        {
            "totalTokens": plan.prompt_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": plan.prompt_tokens}],
        },
    )


def _gemini_embedding(request: Any) -> dict[str, Any]:
    req = _need_dict(request)
    content = req.get("content")
    if not isinstance(content, dict):
        raise _BadRequest("* EmbedContentRequest.content: content is not specified")
    dims = _as_int(req.get("outputDimensionality"), "outputDimensionality") or 8
    return {"values": _vector(_gemini_content_text(content, with_tools=False), dims)}


def _gemini_embed(ctx: _Ctx, model: str) -> _Json:
    """``:embedContent``."""
    return _Json(200, {"embedding": _gemini_embedding(ctx.json)})


def _gemini_batch_embed(ctx: _Ctx, model: str) -> _Json:
    """``:batchEmbedContents`` (what google-genai's ``embed_content`` calls on the Gemini API)."""
    requests = _need_dict(ctx.json).get("requests")
    if not isinstance(requests, list) or not requests:
        raise _BadRequest("* BatchEmbedContentsRequest.requests: requests is not specified")
    return _Json(200, {"embeddings": [_gemini_embedding(r) for r in requests]})


def _gemini_model(name: str) -> dict[str, Any]:
    embedding = "embedding" in name
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name.replace("-", " ").title(),
        "description": "A fake model served by the kaixu test provider.",
        "inputTokenLimit": 1048576 if not embedding else 2048,
        "outputTokenLimit": 65536 if not embedding else 1,
        "supportedGenerationMethods": (
            ["embedContent", "batchEmbedContents"] if embedding else ["generateContent", "countTokens"]
        ),
    }


_GEMINI_METHODS: dict[str, Callable[[_Ctx, str], _Json | _Stream]] = {
    "generateContent": lambda ctx, model: _gemini_generate(ctx, model, stream=False),
    "streamGenerateContent": lambda ctx, model: _gemini_generate(ctx, model, stream=True),
    "countTokens": _gemini_count_tokens,
    "embedContent": _gemini_embed,
    "batchEmbedContents": _gemini_batch_embed,
}


# --------------------------------------------------------------------------------------------------
# Routing
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Ctx:
    """One parsed request, as the endpoint handlers see it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    json: Any
    stream_events: int
    usage_override: dict[str, Any] | None = None
    omit_usage: bool = False
    _params: dict[str, list[str]] | None = field(default=None)

    def usage(self, formula: dict[str, Any]) -> dict[str, Any] | None:
        """The usage object to report: none (``Fault.omit_usage``), a fault's ``usage``, or the formula's."""
        if self.omit_usage:
            return None
        return dict(self.usage_override) if self.usage_override is not None else formula

    def query_param(self, name: str) -> str | None:
        if not self.query:
            return None
        if self._params is None:
            self._params = parse_qs(self.query)
        values = self._params.get(name)
        return values[0] if values else None


Handler = Callable[[_Ctx], _Json | _Stream]

_GEMINI_PREFIXES = ("/v1beta/models", "/v1alpha/models", "/v1/models")


def _is_anthropic_client(headers: dict[str, str]) -> bool:
    """Anthropic SDKs always send ``anthropic-version`` (and authenticate with ``x-api-key``)."""
    return "anthropic-version" in headers or ("x-api-key" in headers and "authorization" not in headers)


def _is_gemini_client(headers: dict[str, str], query: str) -> bool:
    """Gemini clients send ``x-goog-api-key`` or ``?key=``; google-genai adds ``x-goog-api-client``."""
    has_key = query.startswith("key=") or "&key=" in query
    return has_key or "x-goog-api-key" in headers or "x-goog-api-client" in headers


def _models_owner(headers: dict[str, str], query: str) -> Provider:
    """``GET /v1/models`` is OpenAI's, Anthropic's and (google-genai defaults to ``v1``) Gemini's.

    Only the client's headers tell them apart, so ask them.
    """
    if _is_gemini_client(headers, query):
        return "gemini"
    return "anthropic" if _is_anthropic_client(headers) else "openai"


def _gemini_list_models(ctx: _Ctx) -> _Json:
    """``GET /v1beta/models``."""
    return _Json(200, {"models": [_gemini_model(m) for m in _GEMINI_MODELS]})


_MODEL_LISTS: dict[Provider, Handler] = {
    "openai": _openai_models,
    "anthropic": _anthropic_models,
    "gemini": _gemini_list_models,
}
_MODEL_OBJECTS: dict[Provider, Callable[[str], dict[str, Any]]] = {
    "openai": _openai_model,
    "anthropic": _anthropic_model,
    "gemini": _gemini_model,
}


def _resolve_models(
    method: str, path: str, query: str, headers: dict[str, str]
) -> tuple[Provider, Handler | None] | None:
    """The ``.../models...`` family: Gemini verbs (``models/{m}:verb``) and model listing/retrieval."""
    prefix = next((p for p in _GEMINI_PREFIXES if path == p or path.startswith(p + "/")), None)
    if prefix is None:
        return None
    owner: Provider = "gemini"
    if prefix == "/v1/models":
        owner = _models_owner(headers, query)
    rest = path[len(prefix) + 1 :]
    model, colon, verb = rest.rpartition(":")
    if colon:
        fn = _GEMINI_METHODS.get(verb)
        if fn is None or method != "POST" or not model:
            return "gemini", None
        return "gemini", lambda ctx: fn(ctx, model)
    if method != "GET" or "/" in rest:
        return owner, None
    if not rest:
        return owner, _MODEL_LISTS[owner]
    render = _MODEL_OBJECTS[owner]
    return owner, lambda ctx: _Json(200, render(rest))


def _resolve(method: str, path: str, query: str, headers: dict[str, str]) -> tuple[Provider, Handler | None]:
    """Map a request to its provider (which decides error shape and auth) and handler (None: 404)."""
    if path == "/v1/chat/completions":
        return "openai", _openai_chat if method == "POST" else None
    if path == "/v1/messages":
        return "anthropic", _anthropic_messages if method == "POST" else None
    if path == "/v1/messages/count_tokens":
        return "anthropic", _anthropic_count_tokens if method == "POST" else None
    if path == "/v1/embeddings":
        return "openai", _openai_embeddings if method == "POST" else None
    if path == "/v1/responses":
        return "openai", _openai_responses if method == "POST" else None
    found = _resolve_models(method, path, query, headers)
    if found is not None:
        return found
    if path.startswith(("/v1beta/", "/v1alpha/")) or _is_gemini_client(headers, query):
        return "gemini", None
    if path.startswith("/v1/messages") or _is_anthropic_client(headers):
        return "anthropic", None
    return "openai", None


def _error_payload(provider: Provider, status: int, message: str, param: str | None = None) -> dict[str, Any]:
    if provider == "anthropic":
        return _anthropic_error(status, message)
    if provider == "gemini":
        return _gemini_error(status, message)
    return _openai_error(status, message, param)


def _auth_ok(provider: Provider, key: str, headers: dict[str, str], ctx_query: Callable[[str], str | None]) -> bool:
    if provider == "openai":
        return headers.get("authorization") == f"Bearer {key}"
    if provider == "anthropic":
        # The documented header is x-api-key, but anthropic>=2 SDKs send the key as a Bearer token.
        return headers.get("x-api-key") == key or headers.get("authorization") == f"Bearer {key}"
    return headers.get("x-goog-api-key") == key or ctx_query("key") == key


_AUTH_MESSAGE = {
    "openai": "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
    "anthropic": "invalid x-api-key",
    "gemini": "API key not valid. Please pass a valid API key.",
}


# --------------------------------------------------------------------------------------------------
# HTTP/1.1 plumbing
# --------------------------------------------------------------------------------------------------

_REASONS: dict[int, str] = {s.value: s.phrase for s in http.HTTPStatus}
_REASONS[529] = "Overloaded"
_MAX_HEAD = 256 * 1024
_OVERRIDE_HEADERS = (
    "x-fake-status",
    "x-fake-retry-after",
    "x-fake-latency-ms",
    "x-fake-first-byte-delay-ms",
    "x-fake-event-delay-ms",
    "x-fake-disconnect-after-events",
    "x-fake-stream-events",
    "x-fake-echo-headers",
)


def _format_retry_after(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _response_head(status: int, headers: Iterable[tuple[str, str]], keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _json_response(status: int, payload: Any, extra: Iterable[tuple[str, str]], keep_alive: bool) -> bytes:
    body = _dumps(payload)
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra]
    return _response_head(status, headers, keep_alive) + body


class _ProtocolError(Exception):
    """The client sent something that is not HTTP/1.1 we understand; answer 400 and hang up."""


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise _ProtocolError("bad chunk size") from exc
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


class FakeProvider:
    """The fake upstream: start it, point an SDK or the gateway at ``base_url``, then inspect ``requests``.

    It runs its own event loop in a daemon thread, so the same object works from sync tests, from
    pytest-asyncio tests (whose loop it never touches) and from benchmarks.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        stream_events: int = 5,
        require_key: str | None = None,
        record: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.ssl_context = ssl_context
        self.record = record
        self.port = port
        self.stream_events = stream_events
        self.require_key = require_key
        self.requests: list[RecordedRequest] = []
        self.streams: list[StreamRecord] = []
        """Every streamed answer, in order (kept when ``record`` is on)."""
        self.default_fault: Fault | None = None
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._random = random.Random()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._bound = threading.Event()
        self._error: BaseException | None = None
        self.connections = 0
        """Connections accepted so far (with TLS: handshakes completed), also at ``GET /_fake/connections``."""

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http(s)://host:port`` with no path: SDKs add their own (``/v1``, ``/v1beta``)."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> FakeProvider:
        """Serve from a daemon thread; returns once the socket is bound (``port`` is then real)."""
        if self._thread is not None:
            raise RuntimeError("FakeProvider already started")
        self._bound.clear()
        self._error = None
        self._thread = threading.Thread(target=self._thread_main, name=f"fake-provider-{self.port}", daemon=True)
        self._thread.start()
        if not self._bound.wait(10):
            raise RuntimeError("FakeProvider did not bind within 10 s")
        if self._error is not None:
            self._thread.join(1)
            self._thread = None
            raise self._error
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and join the thread. Safe to call twice."""
        loop, stop_event, thread = self._loop, self._stop_event, self._thread
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_event.set)
        if thread is not None:
            thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.serve(self._bound.set))
        except BaseException as exc:  # surfaced to start() rather than lost in the thread
            self._error = exc
            self._bound.set()

    async def serve(self, on_bound: Callable[[], None] | None = None) -> None:
        """Serve on the running loop until :meth:`stop` (or :meth:`request_stop`) is called.

        ``on_bound`` runs once the socket is listening; the CLI uses it to write the port file and
        install signal handlers.
        """
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(
            self._handle_connection, self.host, self.port, limit=_MAX_HEAD, backlog=2048, ssl=self.ssl_context
        )
        self.port = server.sockets[0].getsockname()[1]
        try:
            if on_bound is not None:
                on_bound()
            await self._stop_event.wait()
        finally:
            server.close()
            server.abort_clients()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2)

    def request_stop(self) -> None:
        """Ask a running :meth:`serve` to return; call from the loop's own thread (e.g. a signal handler)."""
        if self._stop_event is not None:
            self._stop_event.set()

    # -- recording and faults ----------------------------------------------------------------------

    def clear(self) -> None:
        """Forget recorded requests and streams (the list objects stay the same)."""
        with self._lock:
            self.requests.clear()
            self.streams.clear()

    def add_fault(self, fault: Fault) -> None:
        """Queue a fault (a copy: the caller's object is not consumed)."""
        if fault.times < 1:
            raise ValueError("Fault.times must be >= 1")
        with self._lock:
            self._faults.append(dataclasses.replace(fault))

    def clear_faults(self) -> None:
        """Drop every queued fault (``default_fault`` is left alone)."""
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        """A snapshot of the queued faults."""
        with self._lock:
            return [dataclasses.replace(f) for f in self._faults]

    def _take_fault(self, path: str) -> Fault | None:
        if self._faults:
            with self._lock:
                for index, fault in enumerate(self._faults):
                    if fault.applies_to(path):
                        if fault.probability < 1 and self._random.random() >= fault.probability:
                            return None
                        fault.times -= 1
                        if fault.times <= 0:
                            del self._faults[index]
                        return fault
        default = self.default_fault
        if default is not None and default.applies_to(path):
            if default.probability < 1 and self._random.random() >= default.probability:
                return None
            return default
        return None

    # -- connection handling -----------------------------------------------------------------------

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await self._handle_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except _ProtocolError as exc:
            with contextlib.suppress(ConnectionError):
                writer.write(_json_response(400, {"error": {"message": str(exc)}}, (), False))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _handle_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; False when the connection must close."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        text = head.decode("latin-1").lstrip("\r\n")
        lines = text.split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError as exc:
            raise _ProtocolError("malformed request line") from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise _ProtocolError("malformed header line")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        connection = headers.get("connection", "").lower()
        keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        else:
            length = headers.get("content-length")
            try:
                body = await reader.readexactly(int(length)) if length else b""
            except ValueError as exc:
                raise _ProtocolError("bad Content-Length") from exc
        path, _, query = target.partition("?")
        if path.startswith("/_fake/"):
            writer.write(self._control(method, path, body, keep_alive))
            await writer.drain()
            return keep_alive
        return await self._serve_provider(method, target, path, query, headers, body, reader, writer, keep_alive)

    async def _serve_provider(
        self,
        method: str,
        target: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        keep_alive: bool,
    ) -> bool:
        parsed: Any = None
        bad_json = False
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                bad_json = True
        recorded = RecordedRequest(method, target, headers, body, parsed)
        if self.record:  # long benchmarks turn this off so memory stays flat
            with self._lock:
                self.requests.append(recorded)

        provider, handler = _resolve(method, path, query, headers)
        stream_events = self.stream_events
        fault: Fault | None
        try:
            if any(h in headers for h in _OVERRIDE_HEADERS):
                # A per-request override wins and leaves the queued faults untouched.
                fault, events_override = self._header_fault(headers)
                stream_events = events_override or stream_events
            else:
                fault = self._take_fault(path)
        except ValueError as exc:
            return await self._send(writer, 400, _error_payload(provider, 400, str(exc)), (), keep_alive)

        if fault is not None:
            recorded.fault = dataclasses.replace(fault)
            if fault.latency_ms > 0 and fault.until is not None:
                await asyncio.get_running_loop().run_in_executor(None, fault.until.wait, fault.latency_ms / 1000)
            elif fault.latency_ms > 0:
                await asyncio.sleep(fault.latency_ms / 1000)
            if fault.close_without_response:
                return False
            if fault.status is not None:
                extra: list[tuple[str, str]] = []
                if fault.retry_after is not None:
                    extra.append(("Retry-After", _format_retry_after(fault.retry_after)))
                message = f"Injected fault: HTTP {fault.status} from the fake {provider} provider."
                if fault.echo_headers:
                    message += " Request headers: " + _compact(headers)
                return await self._send(
                    writer, fault.status, _error_payload(provider, fault.status, message), extra, keep_alive
                )

        ctx = _Ctx(method, path, query, headers, parsed, stream_events)
        if fault is not None:
            ctx.usage_override, ctx.omit_usage = fault.usage, fault.omit_usage
        if handler is None:
            message = f"Unknown request URL: {method} {path}."
            return await self._send(writer, 404, _error_payload(provider, 404, message), (), keep_alive)
        if self.require_key is not None and not _auth_ok(provider, self.require_key, headers, ctx.query_param):
            return await self._send(writer, 401, _error_payload(provider, 401, _AUTH_MESSAGE[provider]), (), keep_alive)
        if bad_json or (method == "POST" and not body):
            message = "We could not parse the JSON body of your request."
            return await self._send(writer, 400, _error_payload(provider, 400, message), (), keep_alive)
        try:
            response = handler(ctx)
        except _BadRequest as exc:
            return await self._send(writer, 400, _error_payload(provider, 400, exc.message, exc.param), (), keep_alive)
        if isinstance(response, _Json):
            if fault is not None and fault.cut_body_after_bytes is not None:
                whole = _json_response(response.status, response.payload, response.headers, keep_alive)
                head, _, body = whole.partition(b"\r\n\r\n")
                writer.write(head + b"\r\n\r\n" + body[: fault.cut_body_after_bytes])
                await writer.drain()
                return False  # hang up mid-body
            return await self._send(writer, response.status, response.payload, response.headers, keep_alive)
        if fault is not None and fault.raw_events is not None:
            response = response._replace(events=[event.encode() for event in fault.raw_events])
        record = StreamRecord(path, len(response.events))
        if self.record:
            with self._lock:
                self.streams.append(record)
        return await self._send_stream(reader, writer, response, fault, keep_alive, record)

    @staticmethod
    def _header_fault(headers: dict[str, str]) -> tuple[Fault, int | None]:
        """Build the one-shot fault described by ``x-fake-*`` headers (raises ValueError if malformed)."""

        def number(name: str) -> float | None:
            raw = headers.get(name)
            if raw is None:
                return None
            try:
                return float(raw)
            except ValueError:
                raise ValueError(f"{name}: not a number: {raw!r}") from None

        status = number("x-fake-status")
        disconnect = number("x-fake-disconnect-after-events")
        events = number("x-fake-stream-events")
        fault = Fault(
            status=int(status) if status is not None else None,
            retry_after=number("x-fake-retry-after"),
            latency_ms=int(number("x-fake-latency-ms") or 0),
            first_byte_delay_ms=int(number("x-fake-first-byte-delay-ms") or 0),
            event_delay_ms=int(number("x-fake-event-delay-ms") or 0),
            disconnect_after_events=int(disconnect) if disconnect is not None else None,
            echo_headers=headers.get("x-fake-echo-headers", "").lower() in ("1", "true", "yes"),
        )
        return fault, (max(1, int(events)) if events is not None else None)

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: int,
        payload: Any,
        extra: Iterable[tuple[str, str]],
        keep_alive: bool,
    ) -> bool:
        writer.write(_json_response(status, payload, extra, keep_alive))
        await writer.drain()
        return keep_alive

    @staticmethod
    async def _send_stream(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stream: _Stream,
        fault: Fault | None,
        keep_alive: bool,
        record: StreamRecord,
    ) -> bool:
        """Write one HTTP chunk per event, flushing each, honouring pacing and disconnect faults; stop
        generating as soon as the client has closed the connection, as a provider does (``record``)."""
        headers = [
            ("Content-Type", stream.content_type),
            ("Cache-Control", "no-cache"),
            ("Transfer-Encoding", "chunked"),
        ]
        writer.write(_response_head(200, headers, keep_alive))
        first_delay = fault.first_byte_delay_ms if fault else 0
        event_delay = fault.event_delay_ms if fault else 0
        disconnect = fault.disconnect_after_events if fault else None
        stall = fault.stall_after_events if fault else None
        if first_delay > 0:
            await writer.drain()
            await asyncio.sleep(first_delay / 1000)
        for index, event in enumerate(stream.events):
            if disconnect is not None and index >= disconnect:
                break
            if stall is not None and index >= stall:
                await writer.drain()
                await reader.read()  # silent until the client hangs up
                record.outcome = "peer_closed"
                return False
            if index and event_delay > 0:
                await asyncio.sleep(event_delay / 1000)
            if reader.at_eof() or writer.is_closing():  # the client hung up: generate nothing more
                record.outcome = "peer_closed"
                return False
            try:
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
            except ConnectionError:
                record.outcome = "peer_closed"
                raise
            record.events_sent += 1
        if disconnect is not None:
            # Hang up with a FIN but no terminating chunk: the client must see a truncated body.
            # (Not an RST: that could make the kernel discard events the client has not read yet.)
            await writer.drain()
            record.outcome = "cut"
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        record.outcome = "complete"
        return keep_alive

    # -- control endpoints -------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes, keep_alive: bool) -> bytes:
        """``/_fake/*``: drive faults and read recordings from another process (never recorded)."""

        def reply(status: int, payload: Any) -> bytes:
            return _json_response(status, payload, (), keep_alive)

        if path == "/_fake/health" and method == "GET":
            return reply(200, {"ok": True, "port": self.port})
        if path == "/_fake/connections" and method == "GET":
            return reply(200, {"accepted": self.connections})
        if path == "/_fake/requests":
            if method == "GET":
                with self._lock:
                    snapshot = [r.to_dict() for r in self.requests]
                return reply(200, snapshot)
            if method == "DELETE":
                self.clear()
                return reply(200, {"ok": True})
        if path == "/_fake/faults":
            if method == "GET":
                return reply(200, [dataclasses.asdict(f) for f in self.faults])
            if method == "DELETE":
                self.clear_faults()
                return reply(200, {"ok": True})
            if method == "POST":
                try:
                    faults = _parse_faults(body)
                except ValueError as exc:
                    return reply(400, {"error": {"message": str(exc)}})
                for fault in faults:
                    self.add_fault(fault)
                return reply(200, {"ok": True, "queued": len(self.faults)})
        if path == "/_fake/default_fault":
            if method == "DELETE":
                self.default_fault = None
                return reply(200, {"ok": True})
            if method == "PUT":
                try:
                    (fault,) = _parse_faults(body, allow_list=False)
                except ValueError as exc:
                    return reply(400, {"error": {"message": str(exc)}})
                self.default_fault = fault
                return reply(200, {"ok": True})
        return reply(404, {"error": {"message": f"Unknown control endpoint: {method} {path}"}})


def _parse_faults(body: bytes, *, allow_list: bool = True) -> list[Fault]:
    """Fault objects from a control request body (a JSON object, or a list of them)."""
    try:
        data = json.loads(body or b"{}")
    except ValueError as exc:
        raise ValueError("body is not JSON") from exc
    items = data if allow_list and isinstance(data, list) else [data]
    faults = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("a fault must be a JSON object")
        unknown = set(item) - _FAULT_FIELDS
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        try:
            fault = Fault(**item)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc
        if not isinstance(fault.times, int) or fault.times < 1:
            raise ValueError("times must be an integer >= 1")
        faults.append(fault)
    return faults


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _write_port_file(path: str, port: int) -> None:
    """Write atomically so a poller never reads a half-written file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(f"{port}\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.fakes.provider``: serve until SIGTERM/SIGINT, for other processes to use."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.provider", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="write the bound port here (atomically) once listening")
    parser.add_argument("--stream-events", type=int, default=5, help="pieces a streamed reply is split into")
    parser.add_argument("--require-key", help="reject requests not carrying this API key (401)")
    parser.add_argument("--no-record", action="store_true", help="do not record requests (long benchmarks)")
    parser.add_argument("--certfile", help="serve HTTPS with this PEM certificate (chain)")
    parser.add_argument("--keyfile", help="the certificate's PEM private key (with --certfile)")
    args = parser.parse_args(argv)
    context = None
    if args.certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.certfile, args.keyfile)
    provider = FakeProvider(
        args.host,
        args.port,
        stream_events=args.stream_events,
        require_key=args.require_key,
        record=not args.no_record,
        ssl_context=context,
    )

    def on_bound() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, provider.request_stop)
        if args.port_file:
            _write_port_file(args.port_file, provider.port)
        print(f"fake provider listening on {provider.base_url}", flush=True)

    asyncio.run(provider.serve(on_bound))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
