"""OpenAI Chat Completions (``POST /v1/chat/completions``) codec.

Decisions worth knowing:

* ``system`` and ``developer`` messages before the first other message are joined
  (blank line between) into ``ChatRequest.system``; a later one is a canonical
  ``system`` message at its position, and is encoded back as a ``system`` message
  there (``system`` rather than ``developer``: OpenAI reads both alike, and
  OpenAI-compatible servers know ``system``).
* Requests are encoded with ``max_completion_tokens`` (``max_tokens`` is deprecated and
  rejected by reasoning models); both are accepted on decode.
* A streamed request to OpenAI always asks for ``stream_options.include_usage`` so the
  gateway can meter it; the client only sees the usage chunk if it asked for it.
* ``image_url`` data URLs become inline ``ImagePart.data``; other URLs stay URLs.
* ``input_audio`` and ``file`` parts are kept as ``RawPart`` (forwarded to OpenAI,
  refused by other formats). Legacy ``function`` messages and ``function_call`` are
  refused with ``UnsupportedFeature``.
* Tool results have no error flag in this format: ``Message.is_error`` is dropped and
  the text is sent as is. Images in tool results cannot be expressed.
* The canonical ``error`` finish reason has no OpenAI equivalent and is sent as ``stop``.
* Reasoning: ``reasoning_effort`` is ``ChatRequest.reasoning`` (``none`` = off, any other level = on at
  that effort); other formats' budgets are sent as the effort band they fall in (``Reasoning.level``).
  The official API returns no thinking text, only ``completion_tokens_details.reasoning_tokens``; the
  ``reasoning_content`` (or ``reasoning``) string of OpenAI-compatible servers is read from messages
  and deltas, and kaixu sends translated thinking to OpenAI clients that set ``reasoning_effort`` the
  same way (a field the SDKs keep as an extra and other clients ignore). Thinking in a request history
  is not sent to OpenAI.
* Fields of other formats that only tune their vendor's machinery are dropped and
  reported (``droppable``); any other field this format cannot express is a 400.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ._common import (
    JSON,
    SSEStreamDecoder,
    content_parts,
    data_url,
    decode_error_body,
    dumps,
    expect_dict,
    expect_list,
    image_at,
    jstr,
    merge_extra,
    new_id,
    now,
    openai_style_usage,
    opt_bool,
    opt_int,
    opt_num,
    opt_str,
    raw_part,
    reports_usage,
    req_str,
    str_list,
)
from .canonical import (
    EFFORTS,
    ChatRequest,
    ChatResponse,
    FinishReason,
    ImagePart,
    Message,
    MessageEnd,
    MessageStart,
    Part,
    RawPart,
    Reasoning,
    ResponseFormat,
    StreamError,
    StreamEvent,
    TextDelta,
    TextPart,
    ThinkingDelta,
    ThinkingPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    Usage,
    UsageUpdate,
)
from .droppable import losses
from .errors import FormatError, UnsupportedFeature
from .sse import utf8

NAME = "openai"

_KNOWN_REQUEST_KEYS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "user",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "reasoning_effort",
    }
)
_OPAQUE_PART_TYPES = frozenset({"input_audio", "file"})
_PLAIN_TEXT_DELTA = re.compile(
    r'"choices":\[\{"index":0,"delta":\{"content":"((?:[^"\\]|\\.)*)"\}(?:,"logprobs":null)?,"finish_reason":null\}\]'
)
"""A chunk that carries one piece of text for choice 0 and nothing else the decoder reads (no role, tool call,
reasoning, refusal, finish reason or usage; `_handle` checks the last two before it looks): the text is read
without decoding the chunk's JSON. Anything else, in any other key order or spacing, is decoded in full."""

_FINISH_IN: dict[Any, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
_FINISH_OUT: dict[FinishReason, str] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "error": "stop",
}


# --- usage ---------------------------------------------------------------------------


def usage_from_openai(raw: Any) -> Usage:
    return openai_style_usage(
        raw, "prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details"
    )


#: The counts without which a usage object reports nothing.
_COUNTERS = ("prompt_tokens", "completion_tokens")


def usage_to_openai(usage: Usage) -> JSON:
    prompt_details: JSON = {"cached_tokens": usage.cached_input_tokens}
    if usage.cache_creation_input_tokens:
        prompt_details["cache_write_tokens"] = usage.cache_creation_input_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


# --- request decoding ----------------------------------------------------------------


def _decode_part(part: Any, path: str) -> Part:
    part = expect_dict(part, path)
    ptype = part.get("type")
    if ptype == "text":
        return TextPart(req_str(part, "text", path))
    if ptype == "image_url":
        image = part.get("image_url")
        if isinstance(image, str):  # tolerated shorthand
            image = {"url": image}
        image = expect_dict(image, f"{path}.image_url")
        url = req_str(image, "url", f"{path}.image_url")
        detail = opt_str(image, "detail", f"{path}.image_url")
        return image_at(url, detail)
    if ptype == "refusal":
        return TextPart(req_str(part, "refusal", path))
    if ptype in _OPAQUE_PART_TYPES:
        return RawPart(NAME, part)
    raise FormatError(f"{path}.type", f"unknown content part type {ptype!r}")


def _decode_content(content: Any, path: str) -> list[Part]:
    return content_parts(content, path, _decode_part)


def _reasoning_text(msg: JSON) -> str | None:
    """The thinking text OpenAI-compatible servers put beside the content (``reasoning_content``, or
    ``reasoning`` in some); ``None`` when there is none."""
    for key in ("reasoning_content", "reasoning"):
        value = msg.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _decode_tool_calls(raw: Any, path: str) -> list[ToolCall]:
    calls = []
    for k, call in enumerate(expect_list(raw, path)):
        cpath = f"{path}[{k}]"
        call = expect_dict(call, cpath)
        fn = expect_dict(call.get("function"), f"{cpath}.function")
        arguments = fn.get("arguments", "")
        if not isinstance(arguments, str):
            raise FormatError(f"{cpath}.function.arguments", "must be a string of JSON")
        calls.append(ToolCall(req_str(call, "id", cpath), req_str(fn, "name", f"{cpath}.function"), arguments))
    return calls


def _decode_message(raw: Any, path: str) -> Message:
    msg = expect_dict(raw, path)
    role = msg.get("role")
    content = msg.get("content")
    if role in ("system", "developer"):
        parts = _decode_content(content, f"{path}.content")
        return Message("system", [TextPart("\n\n".join(p.text for p in parts if isinstance(p, TextPart)))])
    if role == "user":
        return Message("user", _decode_content(content, f"{path}.content"), name=opt_str(msg, "name", path))
    if role == "assistant":
        if msg.get("function_call") is not None:
            raise UnsupportedFeature(f"{path}.function_call", "legacy function_call is not supported; use tool_calls")
        parts = _decode_content(content, f"{path}.content")
        thinking = _reasoning_text(msg)
        if thinking is not None:
            parts.insert(0, ThinkingPart(thinking, format=NAME))
        refusal = opt_str(msg, "refusal", path)
        if refusal:
            parts.append(TextPart(refusal))
        calls = _decode_tool_calls(msg["tool_calls"], f"{path}.tool_calls") if msg.get("tool_calls") else []
        return Message("assistant", parts, calls, name=opt_str(msg, "name", path))
    if role == "tool":
        return Message(
            "tool",
            _decode_content(content, f"{path}.content"),
            tool_call_id=req_str(msg, "tool_call_id", path),
        )
    if role == "function":
        raise UnsupportedFeature(f"{path}.role", "legacy function messages are not supported; use tool messages")
    raise FormatError(f"{path}.role", "must be one of system, developer, user, assistant, tool")


def _decode_tools(raw: Any, extra: JSON) -> list[Tool]:
    tools, unmodeled = [], []
    for i, tool in enumerate(expect_list(raw, "tools")):
        path = f"tools[{i}]"
        tool = expect_dict(tool, path)
        if tool.get("type", "function") != "function":
            unmodeled.append(tool)
            continue
        fn = expect_dict(tool.get("function"), f"{path}.function")
        params = fn.get("parameters")
        tools.append(
            Tool(
                name=req_str(fn, "name", f"{path}.function"),
                description=opt_str(fn, "description", f"{path}.function"),
                parameters=expect_dict(params, f"{path}.function.parameters") if params is not None else {},
                strict=opt_bool(fn, "strict", f"{path}.function"),
            )
        )
    if unmodeled:
        extra["tools"] = unmodeled
    return tools


def _decode_tool_choice(raw: Any, extra: JSON) -> ToolChoice | None:
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function":
        fn = expect_dict(raw.get("function"), "tool_choice.function")
        return {"name": req_str(fn, "name", "tool_choice.function")}
    if isinstance(raw, dict):
        extra["tool_choice"] = raw  # e.g. allowed_tools: forwarded to OpenAI only
        return None
    raise FormatError("tool_choice", "must be 'auto', 'none', 'required' or a tool choice object")


def _decode_response_format(raw: Any) -> ResponseFormat | None:
    if raw is None:
        return None
    raw = expect_dict(raw, "response_format")
    rtype = raw.get("type")
    if rtype in ("text", "json_object"):
        return ResponseFormat(rtype)
    if rtype == "json_schema":
        spec = expect_dict(raw.get("json_schema"), "response_format.json_schema")
        schema = spec.get("schema")
        return ResponseFormat(
            "json_schema",
            schema=expect_dict(schema, "response_format.json_schema.schema") if schema is not None else None,
            name=opt_str(spec, "name", "response_format.json_schema"),
            strict=opt_bool(spec, "strict", "response_format.json_schema"),
            description=opt_str(spec, "description", "response_format.json_schema"),
        )
    raise FormatError("response_format.type", "must be one of text, json_object, json_schema")


def _decode_stream_options(raw: Any, extra: JSON) -> bool:
    if raw is None:
        return False
    raw = expect_dict(raw, "stream_options")
    for key, value in raw.items():
        if key != "include_usage":
            extra[f"stream_options.{key}"] = value
    return bool(opt_bool(raw, "include_usage", "stream_options"))


def _decode_reasoning(raw: Any) -> Reasoning | None:
    if raw is None:
        return None
    if raw == "none":
        return Reasoning(mode="off")
    if raw not in EFFORTS:
        raise FormatError("reasoning_effort", "must be one of none, minimal, low, medium, high, xhigh, max")
    return Reasoning(mode="on", effort=raw, include_thoughts=True)  # shown as reasoning_content


def decode_request(body: JSON, *, model: str | None = None, stream: bool | None = None) -> ChatRequest:
    body = expect_dict(body, "body")
    model = model or req_str(body, "model")
    if "messages" not in body:
        raise FormatError("messages", "is required")
    system: list[str] = []
    messages: list[Message] = []
    for i, raw in enumerate(expect_list(body["messages"], "messages")):
        msg = _decode_message(raw, f"messages[{i}]")
        if msg.role == "system" and not messages:  # before the conversation: the system prompt
            system.append(msg.text())
        else:
            messages.append(msg)
    extra: JSON = {k: v for k, v in body.items() if k not in _KNOWN_REQUEST_KEYS}
    max_tokens = opt_int(body, "max_completion_tokens")
    return ChatRequest(
        model=model,
        messages=messages,
        system="\n\n".join(system) if system else None,
        max_tokens=max_tokens if max_tokens is not None else opt_int(body, "max_tokens"),
        temperature=opt_num(body, "temperature"),
        top_p=opt_num(body, "top_p"),
        stop=str_list(body.get("stop"), "stop"),
        stream=stream if stream is not None else bool(opt_bool(body, "stream")),
        tools=_decode_tools(body["tools"], extra) if body.get("tools") is not None else [],
        tool_choice=_decode_tool_choice(body.get("tool_choice"), extra),
        parallel_tool_calls=opt_bool(body, "parallel_tool_calls"),
        response_format=_decode_response_format(body.get("response_format")),
        user=opt_str(body, "user"),
        include_usage=_decode_stream_options(body.get("stream_options"), extra),
        seed=opt_int(body, "seed"),
        presence_penalty=opt_num(body, "presence_penalty"),
        frequency_penalty=opt_num(body, "frequency_penalty"),
        reasoning=_decode_reasoning(body.get("reasoning_effort")),
        extra={NAME: extra} if extra else {},
        source=NAME,
    )


# --- request encoding ----------------------------------------------------------------


def _encode_image(part: ImagePart) -> JSON:
    url = part.url if part.url is not None else data_url(part.media_type, part.data or "")
    image: JSON = {"url": url}
    if part.detail is not None:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _encode_user_content(parts: list[Part], path: str) -> str | list[JSON]:
    if len(parts) == 1 and isinstance(parts[0], TextPart):
        return parts[0].text
    out: list[JSON] = []
    for j, part in enumerate(parts):
        if isinstance(part, TextPart):
            out.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            out.append(_encode_image(part))
        elif isinstance(part, ThinkingPart):
            continue  # OpenAI takes no thinking in requests
        else:
            out.append(raw_part(part, NAME, f"{path}.content[{j}]"))
    return out


def _encode_text_only(parts: list[Part], path: str, what: str) -> list[str]:
    texts = []
    for j, part in enumerate(parts):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, ImagePart):
            raise UnsupportedFeature(f"{path}.content[{j}]", f"OpenAI {what} cannot contain images")
        elif isinstance(part, ThinkingPart):
            continue  # not sent in requests; answers carry it as reasoning_content
        else:
            raw_part(part, NAME, f"{path}.content[{j}]")  # another format's part raises here
            raise UnsupportedFeature(f"{path}.content[{j}]", f"OpenAI {what} can only contain text")
    return texts


def _text_content(texts: list[str]) -> str | list[JSON]:
    if len(texts) == 1:
        return texts[0]
    return [{"type": "text", "text": t} for t in texts]


def _encode_tool_call(call: ToolCall) -> JSON:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _encode_message(msg: Message, path: str) -> JSON:
    if msg.role == "system":
        return {"role": "system", "content": msg.text()}
    if msg.role == "user":
        out: JSON = {"role": "user", "content": _encode_user_content(msg.parts, path)}
    elif msg.role == "assistant":
        texts = _encode_text_only(msg.parts, path, "assistant messages")
        out = {
            "role": "assistant",
            "content": _text_content(texts) if texts else (None if msg.tool_calls else ""),
        }
        if msg.tool_calls:
            out["tool_calls"] = [_encode_tool_call(c) for c in msg.tool_calls]
    else:
        texts = _encode_text_only(msg.parts, path, "tool results")
        return {
            "role": "tool",
            "tool_call_id": msg.tool_call_id or "",
            "content": _text_content(texts) if texts else "",
        }
    if msg.name is not None:
        out["name"] = msg.name
    return out


def _encode_tool(tool: Tool) -> JSON:
    fn: JSON = {"name": tool.name}
    if tool.description is not None:
        fn["description"] = tool.description
    if tool.parameters:
        fn["parameters"] = tool.parameters
    if tool.strict is not None:
        fn["strict"] = tool.strict
    return {"type": "function", "function": fn}


def _encode_response_format(rf: ResponseFormat) -> JSON:
    if rf.type != "json_schema":
        return {"type": rf.type}
    spec: JSON = {"name": rf.name or "response"}
    if rf.description is not None:
        spec["description"] = rf.description
    if rf.schema is not None:
        spec["schema"] = rf.schema
    if rf.strict is not None:
        spec["strict"] = rf.strict
    return {"type": "json_schema", "json_schema": spec}


def dropped_fields(req: ChatRequest) -> list[str]:
    return losses(req, NAME)


def _encode_reasoning(r: Reasoning) -> str | None:
    """``reasoning_effort``: ``none`` for off, else the effort (or a budget's band, ``medium`` if adaptive)."""
    return "none" if r.mode == "off" else r.level()


def encode_request(req: ChatRequest) -> JSON:
    dropped_fields(req)
    if req.top_k is not None:
        raise UnsupportedFeature("top_k", "OpenAI has no top_k sampling parameter")
    messages: list[JSON] = [{"role": "system", "content": req.system}] if req.system is not None else []
    messages += [_encode_message(m, f"messages[{i}]") for i, m in enumerate(req.messages)]
    body: JSON = {"model": req.model, "messages": messages}
    optional: list[tuple[str, Any]] = [
        ("max_completion_tokens", req.max_tokens),
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("seed", req.seed),
        ("presence_penalty", req.presence_penalty),
        ("frequency_penalty", req.frequency_penalty),
        ("parallel_tool_calls", req.parallel_tool_calls),
        ("user", req.user),
        ("reasoning_effort", _encode_reasoning(req.reasoning) if req.reasoning is not None else None),
    ]
    body.update((k, v) for k, v in optional if v is not None)
    if req.stop:
        body["stop"] = list(req.stop)
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if req.tools:
        body["tools"] = [_encode_tool(t) for t in req.tools]
    if req.tool_choice is not None:
        tc = req.tool_choice
        body["tool_choice"] = tc if isinstance(tc, str) else {"type": "function", "function": {"name": tc["name"]}}
    if req.response_format is not None:
        body["response_format"] = _encode_response_format(req.response_format)
    merge_extra(body, req, NAME)
    return body


# --- responses -----------------------------------------------------------------------


def decode_response(body: JSON) -> ChatResponse:
    body = expect_dict(body, "body")
    choices = expect_list(body.get("choices"), "choices")
    if not choices:
        raise FormatError("choices", "must not be empty")
    choice = expect_dict(choices[0], "choices[0]")
    msg = expect_dict(choice.get("message"), "choices[0].message")
    parts = _decode_content(msg.get("content"), "choices[0].message.content")
    thinking = _reasoning_text(msg)
    if thinking is not None:
        parts.insert(0, ThinkingPart(thinking, format=NAME))
    if isinstance(msg.get("refusal"), str) and msg["refusal"]:
        parts.append(TextPart(msg["refusal"]))
    calls = _decode_tool_calls(msg["tool_calls"], "choices[0].message.tool_calls") if msg.get("tool_calls") else []
    created = body.get("created")
    return ChatResponse(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        created=created if isinstance(created, int) else now(),
        message=Message("assistant", parts, calls),
        finish_reason=_FINISH_IN.get(choice.get("finish_reason"), "stop"),
        usage=usage_from_openai(body.get("usage")),
    )


def encode_response(resp: ChatResponse) -> JSON:
    texts = _encode_text_only(resp.message.parts, "message", "assistant messages")
    message: JSON = {
        "role": "assistant",
        "content": "".join(texts) if texts or not resp.message.tool_calls else None,
        "refusal": None,
    }
    thinking = "".join(p.text for p in resp.message.parts if isinstance(p, ThinkingPart))
    if thinking:
        message["reasoning_content"] = thinking
    if resp.message.tool_calls:
        message["tool_calls"] = [_encode_tool_call(c) for c in resp.message.tool_calls]
    return {
        "id": resp.id,
        "object": "chat.completion",
        "created": resp.created,
        "model": resp.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _FINISH_OUT[resp.finish_reason],
            }
        ],
        "usage": usage_to_openai(resp.usage),
    }


# --- streaming -----------------------------------------------------------------------


class OpenAIStreamDecoder(SSEStreamDecoder):
    """``chat.completion.chunk`` SSE -> canonical events.

    ``MessageEnd`` is held back until ``[DONE]`` (or end of body) because the usage
    chunk (``include_usage``) arrives *after* the chunk carrying ``finish_reason``.
    """

    __slots__ = ("_finish", "_started", "_tools")

    def __init__(self) -> None:
        super().__init__()
        self._started = False
        self._finish: FinishReason | None = None
        self._tools: dict[Any, int] = {}  # provider tool index -> ordinal

    def _at_eof(self, out: list[StreamEvent]) -> None:
        if self._finish is not None:  # finished, only [DONE] is missing
            self._end(out)
        else:
            super()._at_eof(out)

    def _handle(self, data: str, out: list[StreamEvent]) -> None:
        if self._done:
            return
        if data.startswith("[DONE]"):
            self._end(out)
            return
        if self._started and '"usage":{' not in data and '"error"' not in data:
            plain = _PLAIN_TEXT_DELTA.search(data)
            if plain is not None:  # most of a stream: one piece of text for choice 0, and nothing else to read
                text = plain.group(1)
                if "\\" in text:
                    text = json.loads('"' + text + '"')
                if text:
                    out.append(TextDelta(text))
                return
        try:
            obj = json.loads(data)
        except ValueError:
            return  # not JSON: keep-alive noise from some compatible servers
        if not isinstance(obj, dict):
            return
        error = obj.get("error")
        if error:
            self._done = True
            err = error if isinstance(error, dict) else {"message": str(error)}
            out.append(StreamError(str(err.get("message") or "upstream error"), str(err.get("type") or "api_error")))
            return
        if not self._started:
            self._started = True
            out.append(MessageStart(str(obj.get("id") or ""), str(obj.get("model") or "")))
        usage = obj.get("usage")
        if usage:
            self.usage = usage_from_openai(usage)
            out.append(UsageUpdate(self.usage))
        for choice in obj.get("choices") or ():
            if not choice.get("index"):  # with n > 1 other choices interleave; we translate choice 0
                self._choice(choice, out)

    def _choice(self, choice: JSON, out: list[StreamEvent]) -> None:
        delta = choice.get("delta")
        if delta:
            thinking = delta.get("reasoning_content") or delta.get("reasoning")  # see _reasoning_text
            if thinking and isinstance(thinking, str):
                out.append(ThinkingDelta(thinking))
            text = delta.get("content")
            if text:
                out.append(TextDelta(text))
            refusal = delta.get("refusal")
            if refusal:
                out.append(TextDelta(refusal))
            calls = delta.get("tool_calls")
            if calls:
                for call in calls:
                    self._tool(call, out)
        finish = choice.get("finish_reason")
        if finish:
            self._finish = _FINISH_IN.get(finish, "stop")

    def _tool(self, call: JSON, out: list[StreamEvent]) -> None:
        key = call.get("index", 0)
        fn = call.get("function") or {}
        ordinal = self._tools.get(key)
        if ordinal is None:
            ordinal = self._tools[key] = len(self._tools)
            out.append(ToolCallStart(ordinal, call.get("id") or new_id("call_"), fn.get("name") or ""))
        arguments = fn.get("arguments")
        if arguments:
            out.append(ToolCallDelta(ordinal, arguments))

    def _end(self, out: list[StreamEvent]) -> None:
        self._done = True
        if not self._started:
            out.append(StreamError("upstream stream ended without an answer", "api_error"))
            return
        out.append(MessageEnd(self._finish or "stop", self.usage))


class OpenAIStreamEncoder:
    """Canonical events -> ``chat.completion.chunk`` SSE, as the OpenAI SDKs parse it.

    Every chunk shares a prefix (id, created, model), built once, so a text delta
    costs one string escape and a concatenation. The role chunk is sent lazily with
    the first content so it can say ``"content": null`` when the answer is a tool call.
    """

    __slots__ = ("_closed", "_created", "_head", "_id", "_include_usage", "_model", "_thinking", "_usage")

    def __init__(self, req: ChatRequest) -> None:
        self._thinking = req.shows_thinking()
        self._model = req.model
        self._id = ""
        self._include_usage = req.include_usage
        self._created = now()
        self._head = ""
        self._usage: Usage | None = None
        self._closed = False

    def encode(self, event: StreamEvent) -> bytes:
        # Most frequent first: this runs once per upstream event.
        if type(event) is TextDelta:
            return self._start() + self._delta('{"content":' + jstr(event.text) + "}")
        if type(event) is ToolCallDelta:
            args = jstr(event.arguments)
            return self._start() + self._delta(
                f'{{"tool_calls":[{{"index":{event.index},"function":{{"arguments":{args}}}}}]}}'
            )
        if type(event) is ThinkingDelta:
            if not event.text or not self._thinking:
                return b""  # signatures mean nothing here
            return self._start() + self._delta('{"reasoning_content":' + jstr(event.text) + "}")
        if type(event) is ToolCallStart:
            fn = {"name": event.name, "arguments": ""}
            call = {"index": event.index, "id": event.id, "type": "function", "function": fn}
            return self._start("null") + self._delta('{"tool_calls":[' + dumps(call) + "]}")
        if type(event) is MessageStart:
            self._id, self._model = event.id, event.model or self._model
            return b""
        if type(event) is UsageUpdate:
            self._usage = event.usage
            return b""
        if type(event) is MessageEnd:
            return self._end(event)
        if type(event) is StreamError:
            error = {"error": {"message": event.message, "type": event.type, "param": None, "code": None}}
            return b"data: " + utf8(dumps(error)) + b"\n\n"
        return b""

    def close(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        return b"data: [DONE]\n\n"

    def _start(self, content: str = '""') -> bytes:
        """The role chunk, sent with the first content; ``content`` is null when a tool call comes first."""
        if self._head:
            return b""
        self._head = (
            f'data: {{"id":{jstr(self._id or new_id("chatcmpl-"))},"object":"chat.completion.chunk",'
            f'"created":{self._created},"model":{jstr(self._model)},"choices":[{{"index":0,"delta":'
        )
        return self._delta('{"role":"assistant","content":' + content + "}")

    def _delta(self, delta: str) -> bytes:
        return utf8(self._head + delta + ',"logprobs":null,"finish_reason":null}]}\n\n')

    def _end(self, event: MessageEnd) -> bytes:
        out = self._start()
        out += utf8(self._head + '{},"logprobs":null,"finish_reason":"' + _FINISH_OUT[event.finish_reason] + '"}]}\n\n')
        usage = event.usage or self._usage
        if self._include_usage and usage is not None:
            head = self._head[: self._head.index(',"choices":')]
            out += utf8(head + ',"choices":[],"usage":' + dumps(usage_to_openai(usage)) + "}\n\n")
        return out


# --- codec ---------------------------------------------------------------------------


class OpenAICodec:
    name = NAME

    def decode_request(self, body: JSON, *, model: str | None = None, stream: bool | None = None) -> ChatRequest:
        return decode_request(body, model=model, stream=stream)

    def encode_request(self, req: ChatRequest) -> JSON:
        return encode_request(req)

    def dropped_fields(self, req: ChatRequest) -> list[str]:
        return dropped_fields(req)

    def decode_response(self, body: JSON) -> ChatResponse:
        return decode_response(body)

    def encode_response(self, resp: ChatResponse) -> JSON:
        return encode_response(resp)

    def stream_decoder(self) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder()

    def stream_encoder(self, req: ChatRequest) -> OpenAIStreamEncoder:
        return OpenAIStreamEncoder(req)

    def usage_from_response(self, body: JSON) -> Usage | None:
        raw = body.get("usage") if isinstance(body, dict) else None
        return usage_from_openai(raw) if reports_usage(raw, _COUNTERS) else None

    def error_body(self, status: int, message: str, type: str, code: str | None = None) -> JSON:
        return {"error": {"message": message, "type": type, "param": None, "code": code}}

    def decode_error(self, status: int, body: bytes) -> tuple[str, str]:
        return decode_error_body(status, body)


CODEC = OpenAICodec()
