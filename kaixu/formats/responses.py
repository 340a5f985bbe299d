"""OpenAI Responses API (``POST /v1/responses``) codec: the format of Codex CLI, the Agents SDK and
``client.responses.*``.

Decisions worth knowing:

* ``input`` is a string (one user message) or a list of items. ``message`` items (roles user, assistant,
  system, developer; ``type`` may be left out, as in the SDKs' "easy" messages), ``function_call`` and
  ``function_call_output`` items are the canonical conversation; ``reasoning`` items are ``ThinkingPart``s
  (their summary as text, ``encrypted_content`` as the redacted payload only the Responses API reads back).
  Consecutive assistant messages, reasoning items and function calls are one canonical assistant turn.
  Any other item (``item_reference``, built-in tool calls) is a 400 naming it when translated.
* ``instructions`` and the ``system``/``developer`` messages before the first other item are the system
  prompt (blank line between); a later one is a canonical system message at its place.
* Tools: function tools in the flat form (``{"type": "function", "name", "parameters"}``); other tool types
  (web search, file search, custom tools) are kept for a Responses provider and a 400 for any other.
* ``text.format`` is the response format, ``text.verbosity`` a droppable length hint; ``reasoning.effort``
  the thinking level (``none`` = off), ``reasoning.summary`` asks to see the thinking (as reasoning summaries).
* ``store``, ``previous_response_id`` and ``include`` concern the state kaixu keeps (the stored-responses
  step expands ``previous_response_id`` before a request is translated); they are extras here, dropped on
  translation as their table in ``droppable`` says.
* The response id is ``resp_`` + 32 random hex digits (unguessable: it names a stored response); message
  items ``msg_``, function calls ``fc_``, reasoning items ``rs_``. A function call's ``call_id`` is the
  canonical tool call id.
* Streams are typed SSE events (``event: NAME`` and ``"type": NAME`` in the data) numbered by
  ``sequence_number``: ``response.created``, ``response.in_progress``, then each output item opened
  (``output_item.added``, its content part or summary part), filled (text, summary or arguments deltas) and
  closed (``.done`` events, ``output_item.done``) in order, and last ``response.completed`` with the whole
  output and usage (``response.incomplete`` when cut by the token limit or a content filter,
  ``response.failed`` when the provider failed midway; an ``error`` event when nothing had started).
"""

from __future__ import annotations

import json
import secrets
import time
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
    now,
    openai_style_usage,
    opt_bool,
    opt_int,
    opt_num,
    opt_str,
    raw_part,
    reports_usage,
    req_str,
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
from .openai import CODEC as OPENAI_CODEC
from .sse import SSEParser, utf8

NAME = "responses"

_KNOWN_REQUEST_KEYS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "stream",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "reasoning",
    }
)
_OPAQUE_PART_TYPES = frozenset({"input_file", "input_audio"})


def new_response_id() -> str:
    """A response id nobody can guess: it names a stored response (scoped to its key, but never enumerable)."""
    return "resp_" + secrets.token_hex(16)


def _item_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


# --- usage ---------------------------------------------------------------------------


def usage_from_responses(raw: Any) -> Usage:
    return openai_style_usage(raw, "input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details")


_COUNTERS = ("input_tokens", "output_tokens")


def usage_to_responses(usage: Usage) -> JSON:
    details: JSON = {"cached_tokens": usage.cached_input_tokens}
    if usage.cache_creation_input_tokens:
        details["cache_write_tokens"] = usage.cache_creation_input_tokens
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": details,
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


# --- request decoding ----------------------------------------------------------------


def _decode_part(part: Any, path: str) -> Part:
    part = expect_dict(part, path)
    ptype = part.get("type")
    if ptype in ("input_text", "output_text", "text", "summary_text"):
        return TextPart(req_str(part, "text", path))
    if ptype == "refusal":
        return TextPart(req_str(part, "refusal", path))
    if ptype == "input_image":
        url = opt_str(part, "image_url", path)
        detail = opt_str(part, "detail", path)
        if url is None:
            if part.get("file_id") is not None:
                return RawPart(NAME, part)  # an OpenAI file: only OpenAI can read it
            raise FormatError(f"{path}.image_url", "is required")
        return image_at(url, detail)
    if ptype in _OPAQUE_PART_TYPES:
        return RawPart(NAME, part)
    raise FormatError(f"{path}.type", f"unknown content part type {ptype!r}")


def _decode_content(content: Any, path: str) -> list[Part]:
    return content_parts(content, path, _decode_part)


def _summary_text(item: JSON, path: str) -> str:
    texts = []
    for key in ("summary", "content"):
        for j, part in enumerate(expect_list(item.get(key) or [], f"{path}.{key}")):
            texts.append(req_str(expect_dict(part, f"{path}.{key}[{j}]"), "text", f"{path}.{key}[{j}]"))
        if texts:
            break  # the summary if there is one, else the raw reasoning text
    return "\n\n".join(texts)


class _Conversation:
    """Builds canonical messages from Responses items: a run of assistant items is one assistant turn."""

    __slots__ = ("extra", "messages", "system", "tools")

    def __init__(self, extra: JSON) -> None:
        self.messages: list[Message] = []
        self.system: list[str] = []
        self.tools: list[Tool] = []  # from `additional_tools` items
        self.extra = extra

    def _assistant(self) -> Message:
        last = self.messages[-1] if self.messages else None
        if last is None or last.role != "assistant":
            last = Message("assistant")
            self.messages.append(last)
        return last

    def add(self, raw: Any, path: str) -> None:
        item = expect_dict(raw, path)
        itype = item.get("type", "message" if "role" in item else None)
        if itype == "message":
            self._message(item, path)
        elif itype == "function_call":
            arguments = item.get("arguments", "")
            if not isinstance(arguments, str):
                raise FormatError(f"{path}.arguments", "must be a string of JSON")
            call = ToolCall(req_str(item, "call_id", path), req_str(item, "name", path), arguments)
            self._assistant().tool_calls.append(call)
        elif itype == "custom_tool_call":
            arguments = json.dumps({"input": req_str(item, "input", path)}, ensure_ascii=False)
            self._assistant().tool_calls.append(ToolCall(req_str(item, "call_id", path), req_str(item, "name", path),
                                                         arguments))  # fmt: skip
        elif itype in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            parts = _decode_content(output, f"{path}.output") if output is not None else []
            self.messages.append(Message("tool", parts, tool_call_id=req_str(item, "call_id", path)))
        elif itype == "additional_tools":  # tools offered from here on (Codex CLI sends its tools so)
            self.tools += _decode_tools(item.get("tools") or [], self.extra, f"{path}.tools")
        elif itype == "reasoning":
            redacted = opt_str(item, "encrypted_content", path)
            thinking = ThinkingPart(_summary_text(item, path), redacted=redacted, format=NAME)
            self._assistant().parts.append(thinking)
        else:
            raise UnsupportedFeature(path, f"input items of type {itype!r} are not supported")

    def _message(self, item: JSON, path: str) -> None:
        role = item.get("role")
        parts = _decode_content(item.get("content"), f"{path}.content")
        if role in ("system", "developer"):
            text = "\n\n".join(p.text for p in parts if isinstance(p, TextPart))
            if not self.messages:
                self.system.append(text)
            else:
                self.messages.append(Message("system", [TextPart(text)]))
        elif role == "user":
            self.messages.append(Message("user", parts))
        elif role == "assistant":
            assistant = self._assistant()
            if assistant.tool_calls:  # text after a call is a new turn in every other format
                assistant = Message("assistant")
                self.messages.append(assistant)
            assistant.parts.extend(parts)
        else:
            raise FormatError(f"{path}.role", "must be one of user, assistant, system, developer")


def decode_input(raw: Any, extra: JSON, path: str = "input") -> _Conversation:
    """``input`` (a string or items) -> the system texts before the conversation, the canonical messages, and
    the tools its ``additional_tools`` items offer (built-in ones kept in ``extra``)."""
    conversation = _Conversation(extra)
    if isinstance(raw, str):
        conversation.messages.append(Message("user", [TextPart(raw)]))
    else:
        for i, item in enumerate(expect_list(raw, path)):
            conversation.add(item, f"{path}[{i}]")
    return conversation


def _custom_parameters(tool: JSON) -> JSON:
    """A free-form tool as other formats call it: a function of one string, ``input`` (its grammar described)."""
    fmt = tool.get("format")
    about = "The tool's whole input, as free-form text."
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        about += f" It must match this {fmt.get('syntax', '')} grammar:\n{fmt.get('definition', '')}"
    return {"type": "object", "properties": {"input": {"type": "string", "description": about}}, "required": ["input"]}


def _decode_tool(tool: JSON, path: str, namespace: str | None, out: list[Tool], unmodeled: list[JSON]) -> None:
    ttype = tool.get("type")
    if ttype == "function":
        params = tool.get("parameters")
        out.append(
            Tool(
                name=req_str(tool, "name", path),
                description=opt_str(tool, "description", path),
                parameters=expect_dict(params, f"{path}.parameters") if params is not None else {},
                strict=opt_bool(tool, "strict", path),
                namespace=namespace,
            )
        )
    elif ttype == "custom":
        description = opt_str(tool, "description", path)
        out.append(Tool(req_str(tool, "name", path), description, _custom_parameters(tool), custom=True,
                        namespace=namespace))  # fmt: skip
    elif ttype == "namespace":
        name = req_str(tool, "name", path)
        for j, inner in enumerate(expect_list(tool.get("tools") or [], f"{path}.tools")):
            _decode_tool(expect_dict(inner, f"{path}.tools[{j}]"), f"{path}.tools[{j}]", name, out, unmodeled)
    else:
        unmodeled.append(tool)  # built-in tools (web search, file search...): a Responses provider's only


def _decode_tools(raw: Any, extra: JSON, path: str = "tools") -> list[Tool]:
    tools: list[Tool] = []
    unmodeled: list[JSON] = []
    for i, tool in enumerate(expect_list(raw, path)):
        _decode_tool(expect_dict(tool, f"{path}[{i}]"), f"{path}[{i}]", None, tools, unmodeled)
    if unmodeled:
        extra["tools"] = [*extra.get("tools", []), *unmodeled]
    return tools


def _decode_tool_choice(raw: Any, extra: JSON) -> ToolChoice | None:
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function":
        return {"name": req_str(raw, "name", "tool_choice")}
    if isinstance(raw, dict):
        extra["tool_choice"] = raw  # allowed_tools, a built-in tool: a Responses provider only
        return None
    raise FormatError("tool_choice", "must be 'auto', 'none', 'required' or a tool choice object")


def _decode_text(raw: Any, extra: JSON) -> ResponseFormat | None:
    if raw is None:
        return None
    raw = expect_dict(raw, "text")
    for key, value in raw.items():
        if key != "format":
            extra[f"text.{key}"] = value  # verbosity
    fmt = raw.get("format")
    if fmt is None:
        return None
    fmt = expect_dict(fmt, "text.format")
    ftype = fmt.get("type")
    if ftype in ("text", "json_object"):
        return ResponseFormat(ftype)
    if ftype == "json_schema":
        schema = fmt.get("schema")
        return ResponseFormat(
            "json_schema",
            schema=expect_dict(schema, "text.format.schema") if schema is not None else None,
            name=opt_str(fmt, "name", "text.format"),
            strict=opt_bool(fmt, "strict", "text.format"),
            description=opt_str(fmt, "description", "text.format"),
        )
    raise FormatError("text.format.type", "must be one of text, json_object, json_schema")


def _decode_reasoning(raw: Any, extra: JSON) -> Reasoning | None:
    if raw is None:
        return None
    raw = expect_dict(raw, "reasoning")
    effort = raw.get("effort")
    summary = raw.get("summary", raw.get("generate_summary"))
    if summary is not None and summary not in ("auto", "concise", "detailed", "none"):
        raise FormatError("reasoning.summary", "must be one of auto, concise, detailed, none")
    shown = None if summary is None else summary != "none"
    for key in raw:
        if key not in ("effort", "summary", "generate_summary"):
            extra[f"reasoning.{key}"] = raw[key]
    if effort is None:
        return Reasoning(include_thoughts=shown) if shown is not None else None
    if effort == "none":
        return Reasoning(mode="off", include_thoughts=False)
    if effort not in EFFORTS:
        raise FormatError("reasoning.effort", "must be one of none, minimal, low, medium, high, xhigh, max")
    return Reasoning(mode="on", effort=effort, include_thoughts=shown)


def decode_request(body: JSON, *, model: str | None = None, stream: bool | None = None) -> ChatRequest:
    body = expect_dict(body, "body")
    model = model or req_str(body, "model")
    if "input" not in body:
        raise FormatError("input", "is required")
    extra: JSON = {k: v for k, v in body.items() if k not in _KNOWN_REQUEST_KEYS}
    conversation = decode_input(body["input"], extra)
    system, messages = conversation.system, conversation.messages
    instructions = opt_str(body, "instructions")
    if instructions:
        system.insert(0, instructions)
    tools = _decode_tools(body["tools"], extra) if body.get("tools") is not None else []
    return ChatRequest(
        model=model,
        messages=messages,
        system="\n\n".join(system) if system else None,
        max_tokens=opt_int(body, "max_output_tokens"),
        temperature=opt_num(body, "temperature"),
        top_p=opt_num(body, "top_p"),
        stream=stream if stream is not None else bool(opt_bool(body, "stream")),
        tools=tools + conversation.tools,
        tool_choice=_decode_tool_choice(body.get("tool_choice"), extra),
        parallel_tool_calls=opt_bool(body, "parallel_tool_calls"),
        response_format=_decode_text(body.get("text"), extra),
        include_usage=True,  # every Responses stream ends with its usage
        reasoning=_decode_reasoning(body.get("reasoning"), extra),
        extra={NAME: extra} if extra else {},
        source=NAME,
    )


# --- request encoding (a Responses provider) -------------------------------------------


def _encode_part(part: Part, path: str, assistant: bool) -> JSON | None:
    if isinstance(part, TextPart):
        return {"type": "output_text" if assistant else "input_text", "text": part.text}
    if isinstance(part, ImagePart):
        if assistant:
            raise UnsupportedFeature(path, "Responses assistant messages cannot contain images")
        url = part.url if part.url is not None else data_url(part.media_type, part.data or "")
        return {"type": "input_image", "image_url": url, "detail": part.detail or "auto"}
    if isinstance(part, ThinkingPart):
        return None  # reasoning is an item of its own
    assert isinstance(part, RawPart)
    return raw_part(part, NAME, path)


def _encode_message(msg: Message, path: str, items: list[JSON]) -> None:
    if msg.role == "system":
        items.append({"type": "message", "role": "developer", "content": msg.text()})
        return
    if msg.role == "tool":
        texts = []
        for j, part in enumerate(msg.parts):
            if not isinstance(part, TextPart):
                raise UnsupportedFeature(f"{path}.content[{j}]", "Responses tool results can only contain text")
            texts.append(part.text)
        items.append({"type": "function_call_output", "call_id": msg.tool_call_id or "", "output": "".join(texts)})
        return
    assistant = msg.role == "assistant"
    for part in msg.parts:
        if isinstance(part, ThinkingPart) and part.format == NAME and part.redacted:
            summary = [{"type": "summary_text", "text": part.text}] if part.text else []
            items.append({"type": "reasoning", "summary": summary, "encrypted_content": part.redacted})
    content = [c for j, p in enumerate(msg.parts) if (c := _encode_part(p, f"{path}.content[{j}]", assistant))]
    if content or not msg.tool_calls:
        items.append({"type": "message", "role": msg.role, "content": content})
    for call in msg.tool_calls:
        items.append({"type": "function_call", "call_id": call.id, "name": call.name, "arguments": call.arguments})


def _encode_tool(tool: Tool) -> JSON:
    out: JSON = {"type": "function", "name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["parameters"] = tool.parameters or {"type": "object", "properties": {}}
    if tool.strict is not None:
        out["strict"] = tool.strict
    return out


def _encode_format(rf: ResponseFormat) -> JSON:
    if rf.type != "json_schema":
        return {"type": rf.type}
    out: JSON = {"type": "json_schema", "name": rf.name or "response"}
    if rf.description is not None:
        out["description"] = rf.description
    out["schema"] = rf.schema or {}
    if rf.strict is not None:
        out["strict"] = rf.strict
    return out


def dropped_fields(req: ChatRequest) -> list[str]:
    lost = [n for n in ("seed", "presence_penalty", "frequency_penalty", "user") if getattr(req, n) is not None]
    if req.stop:
        raise UnsupportedFeature("stop", "the Responses API has no stop sequences")
    if req.top_k is not None:
        raise UnsupportedFeature("top_k", "the Responses API has no top_k sampling parameter")
    return losses(req, NAME, lost)


def encode_request(req: ChatRequest) -> JSON:
    dropped_fields(req)
    items: list[JSON] = []
    for i, msg in enumerate(req.messages):
        _encode_message(msg, f"messages[{i}]", items)
    body: JSON = {"model": req.model, "input": items, "store": False}
    if req.system is not None:
        body["instructions"] = req.system
    optional: list[tuple[str, Any]] = [
        ("max_output_tokens", req.max_tokens),
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("parallel_tool_calls", req.parallel_tool_calls),
    ]
    body.update((k, v) for k, v in optional if v is not None)
    if req.stream:
        body["stream"] = True
    if req.tools:
        body["tools"] = [_encode_tool(t) for t in req.tools]
    if req.tool_choice is not None:
        tc = req.tool_choice
        body["tool_choice"] = tc if isinstance(tc, str) else {"type": "function", "name": tc["name"]}
    if req.response_format is not None:
        body["text"] = {"format": _encode_format(req.response_format)}
    if req.reasoning is not None:
        r = req.reasoning
        reasoning: JSON = {"effort": "none" if r.mode == "off" else r.level()}
        if r.include_thoughts and r.mode != "off":
            reasoning["summary"] = "auto"
        if reasoning["effort"] is not None or "summary" in reasoning:
            body["reasoning"] = {k: v for k, v in reasoning.items() if v is not None}
    for key, value in req.extra.get(NAME, {}).items():  # same format: forwarded (dotted keys one level down)
        outer, dot, inner = key.partition(".")
        if dot:
            nested = body.setdefault(outer, {})
            if isinstance(nested, dict):
                nested[inner] = value
        elif key == "tools" and isinstance(value, list):
            body["tools"] = [*body.get("tools", []), *value]
        else:
            body[key] = value
    return body


# --- responses -----------------------------------------------------------------------

_INCOMPLETE: dict[FinishReason, str] = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _finish(status: Any, incomplete: Any, has_calls: bool) -> FinishReason:
    if status == "incomplete":
        reason = incomplete.get("reason") if isinstance(incomplete, dict) else None
        return "content_filter" if reason == "content_filter" else "length"
    if status == "failed":
        return "error"
    return "tool_calls" if has_calls else "stop"


def decode_response(body: JSON) -> ChatResponse:
    body = expect_dict(body, "body")
    parts: list[Part] = []
    calls: list[ToolCall] = []
    for i, raw in enumerate(expect_list(body.get("output") or [], "output")):
        path = f"output[{i}]"
        item = expect_dict(raw, path)
        itype = item.get("type")
        if itype == "message":
            for j, part in enumerate(expect_list(item.get("content") or [], f"{path}.content")):
                part = expect_dict(part, f"{path}.content[{j}]")
                key = "refusal" if part.get("type") == "refusal" else "text"
                parts.append(TextPart(req_str(part, key, f"{path}.content[{j}]")))
        elif itype == "function_call":
            arguments = item.get("arguments") or ""
            calls.append(ToolCall(req_str(item, "call_id", path), req_str(item, "name", path), str(arguments)))
        elif itype == "custom_tool_call":
            arguments = json.dumps({"input": str(item.get("input") or "")}, ensure_ascii=False)
            calls.append(ToolCall(req_str(item, "call_id", path), req_str(item, "name", path), arguments))
        elif itype == "reasoning":
            redacted = opt_str(item, "encrypted_content", path)
            parts.append(ThinkingPart(_summary_text(item, path), redacted=redacted, format=NAME))
        # built-in tool calls (web search...) are the provider's own business: not part of the answer
    created = body.get("created_at")
    return ChatResponse(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        created=int(created) if isinstance(created, int | float) else now(),
        message=Message("assistant", parts, calls),
        finish_reason=_finish(body.get("status"), body.get("incomplete_details"), bool(calls)),
        usage=usage_from_responses(body.get("usage")),
    )


def _reasoning_item(item_id: str, text: str, status: str = "completed", encrypted: str | None = None) -> JSON:
    item: JSON = {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}] if text else [],
    }
    if encrypted is not None:
        item["encrypted_content"] = encrypted
    item["status"] = status
    return item


def _message_item(item_id: str, text: str | None, status: str = "completed") -> JSON:
    content = [] if text is None else [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]
    return {"id": item_id, "type": "message", "status": status, "content": content, "role": "assistant"}


def _custom_input(arguments: str) -> str:
    """A free-form tool's input from the arguments another format's model wrote (``{"input": ...}``); the text
    as it is when the model wrote something else."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return value["input"] if isinstance(value, dict) and isinstance(value.get("input"), str) else arguments


def _call_item(item_id: str, call: ToolCall, status: str = "completed", tool: Tool | None = None) -> JSON:
    """A function call, or a ``custom_tool_call`` when the tool called is free-form; with its namespace."""
    if tool is not None and tool.custom:
        item: JSON = {"id": item_id, "type": "custom_tool_call", "status": status, "call_id": call.id,
                      "name": call.name, "input": _custom_input(call.arguments) if call.arguments else ""}  # fmt: skip
    else:
        item = {"id": item_id, "type": "function_call", "status": status, "arguments": call.arguments,
                "call_id": call.id, "name": call.name}  # fmt: skip
    if tool is not None and tool.namespace is not None:
        item["namespace"] = tool.namespace
    return item


def _tools_by_name(req: ChatRequest | None) -> dict[str, Tool]:
    return {tool.name: tool for tool in req.tools} if req is not None else {}


def output_items(message: Message, req: ChatRequest | None = None) -> list[JSON]:
    """An assistant message as Responses output items: reasoning, then the message, then the tool calls."""
    out: list[JSON] = []
    for part in message.parts:
        if isinstance(part, ThinkingPart) and (part.text or part.redacted):
            encrypted = part.redacted if part.format == NAME else None
            out.append(_reasoning_item(_item_id("rs_"), part.text, encrypted=encrypted))
    texts = [p.text for p in message.parts if isinstance(p, TextPart)]
    if texts or not message.tool_calls:
        out.append(_message_item(_item_id("msg_"), "".join(texts)))
    tools = _tools_by_name(req)
    out.extend(_call_item(_item_id("fc_"), call, tool=tools.get(call.name)) for call in message.tool_calls)
    return out


def _status(finish: FinishReason) -> tuple[str, JSON | None, JSON | None]:
    """(status, incomplete_details, error) of a finished answer."""
    if finish in _INCOMPLETE:
        return "incomplete", {"reason": _INCOMPLETE[finish]}, None
    if finish == "error":
        return "failed", None, {"code": "server_error", "message": "the provider failed"}
    return "completed", None, None


def _request_echo(req: ChatRequest | None) -> JSON:
    """What a response object repeats of its request (the SDKs' models require some of it)."""
    if req is None:
        return {"parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}}}
    tc = req.tool_choice
    choice: Any = "auto" if tc is None else tc if isinstance(tc, str) else {"type": "function", "name": tc["name"]}
    reasoning = None
    if req.reasoning is not None:
        r = req.reasoning
        reasoning = {
            "effort": "none" if r.mode == "off" else r.level(),
            "summary": "auto" if r.include_thoughts else None,
        }
    fmt = _encode_format(req.response_format) if req.response_format is not None else {"type": "text"}
    extra = req.extra.get(NAME, {})
    return {
        "instructions": req.system,
        "max_output_tokens": req.max_tokens,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": extra.get("previous_response_id"),
        "reasoning": reasoning,
        "store": extra.get("store") is not False,
        "temperature": req.temperature,
        "text": {"format": fmt},
        "tool_choice": choice,
        "tools": [_encode_tool(t) for t in req.tools],
        "top_p": req.top_p,
        "truncation": extra.get("truncation") or "disabled",
        "metadata": extra.get("metadata") or {},
    }


def response_object(
    response_id: str,
    model: str,
    created: int,
    status: str,
    output: list[JSON],
    usage: Usage | None,
    req: ChatRequest | None,
    incomplete: JSON | None = None,
    error: JSON | None = None,
) -> JSON:
    body: JSON = {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        **_request_echo(req),
        "usage": usage_to_responses(usage) if usage is not None else None,
    }
    return body


# --- background responses (`background: true`, run as kaixu jobs: kaixu/jobs/runner.py) ---------------------

_BACKGROUND_STATUS = {"queued": "queued", "running": "in_progress", "cancelled": "cancelled", "failed": "failed"}


def background_accepted(job_id: str, model: str | None) -> tuple[int, JSON]:
    """The answer to `background: true`: the response, `queued` (OpenAI answers 200)."""
    body = response_object(job_id, model or "", int(time.time()), "queued", [], None, None)
    return 200, {**body, "background": True}


def background_state(job: JSON, result: str | None, asked: str) -> tuple[int, JSON]:
    """`GET /v1/responses/{id}` (and `POST .../cancel`) of a background response: the response as its run
    answered it once it succeeded, else the job's state as a response's `status`."""
    if job["status"] == "succeeded" and result:
        body = json.loads(result)
        return 200, {**body, "id": job["id"], "background": True}
    status = _BACKGROUND_STATUS.get(job["status"], "failed")
    error = (
        {"code": "server_error", "message": job.get("error") or "the response failed"} if status == "failed" else None
    )
    body = response_object(
        job["id"], job.get("model") or "", int(job["created_at"]), status, [], None, None, error=error
    )
    return 200, {**body, "background": True}


def encode_response(resp: ChatResponse, req: ChatRequest | None = None) -> JSON:
    status, incomplete, error = _status(resp.finish_reason)
    response_id = resp.id if resp.id.startswith("resp_") else new_response_id()
    output = output_items(resp.message, req)
    return response_object(response_id, resp.model, resp.created, status, output, resp.usage, req, incomplete, error)


# --- streaming: decoding a Responses provider -------------------------------------------


class ResponsesStreamDecoder(SSEStreamDecoder):
    """Typed Responses SSE events -> canonical events (the data's ``type`` names the event)."""

    __slots__ = ("_args_seen", "_calls", "_started")

    def __init__(self) -> None:
        super().__init__()
        self._started = False
        self._calls: dict[int, int] = {}  # output_index -> tool call ordinal
        self._args_seen: set[int] = set()

    def _handle(self, data: str, out: list[StreamEvent]) -> None:
        if self._done:
            return
        try:
            obj = json.loads(data)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        etype = obj.get("type")
        if etype == "response.output_text.delta" or etype == "response.refusal.delta":
            out.append(TextDelta(str(obj.get("delta") or "")))
        elif etype == "response.function_call_arguments.delta":
            ordinal = self._calls.get(obj.get("output_index", -1))
            if ordinal is not None and obj.get("delta"):
                self._args_seen.add(ordinal)
                out.append(ToolCallDelta(ordinal, str(obj["delta"])))
        elif etype in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            out.append(ThinkingDelta(str(obj.get("delta") or "")))
        elif etype == "response.output_item.added":
            item = obj.get("item") or {}
            if item.get("type") in ("function_call", "custom_tool_call"):
                ordinal = self._calls[obj.get("output_index", len(self._calls))] = len(self._calls)
                out.append(ToolCallStart(ordinal, str(item.get("call_id") or ""), str(item.get("name") or "")))
        elif etype == "response.output_item.done":
            item = obj.get("item") or {}
            ordinal = self._calls.get(obj.get("output_index", -1))
            whole = item.get("type") == "function_call" and ordinal is not None and ordinal not in self._args_seen
            if whole and ordinal is not None and item.get("arguments"):  # a server that sends the arguments whole
                out.append(ToolCallDelta(ordinal, str(item["arguments"])))
            elif item.get("type") == "custom_tool_call" and ordinal is not None:  # free-form input, as other formats
                arguments = json.dumps({"input": str(item.get("input") or "")}, ensure_ascii=False)  # call tools
                out.append(ToolCallDelta(ordinal, arguments))
        elif etype in ("response.created", "response.in_progress", "response.queued"):
            if not self._started:
                self._started = True
                response = obj.get("response") or {}
                out.append(MessageStart(str(response.get("id") or ""), str(response.get("model") or "")))
        elif etype in ("response.completed", "response.incomplete"):
            self._end(obj.get("response") or {}, out)
        elif etype == "response.failed":
            self._done = True
            error = (obj.get("response") or {}).get("error") or {}
            out.append(StreamError(str(error.get("message") or "the provider's response failed"), "api_error"))
        elif etype == "error":
            self._done = True
            nested = obj.get("error")
            err: JSON = nested if isinstance(nested, dict) else obj
            out.append(StreamError(str(err.get("message") or "upstream error"), str(err.get("type") or "api_error")))

    def _end(self, response: JSON, out: list[StreamEvent]) -> None:
        self._done = True
        if not self._started:
            out.append(MessageStart(str(response.get("id") or ""), str(response.get("model") or "")))
        raw = response.get("usage")
        if reports_usage(raw, _COUNTERS):
            self.usage = usage_from_responses(raw)
            out.append(UsageUpdate(self.usage))
        finish = _finish(response.get("status"), response.get("incomplete_details"), bool(self._calls))
        out.append(MessageEnd(finish, self.usage))


# --- streaming: encoding for a Responses client -----------------------------------------


_TEXT_DELTA = 'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":'


class _Item:
    """An output item being streamed: its kind, id, position and what it has accumulated."""

    __slots__ = ("call", "delta_head", "id", "index", "kind", "text", "tool")

    def __init__(
        self, kind: str, item_id: str, index: int, call: ToolCall | None = None, tool: Tool | None = None
    ) -> None:
        self.kind = kind
        self.id = item_id
        self.index = index
        self.call = call
        self.tool = tool
        self.text: list[str] = []
        self.delta_head = f',"item_id":"{item_id}","output_index":{index},"content_index":0,"delta":'
        """What follows the sequence number in each of its text deltas (built once)."""


class ResponsesStreamEncoder:
    """Canonical events -> typed Responses SSE events, in the order OpenAI sends them.

    One item is open at a time, as OpenAI streams them: an item closes when the next one starts or the answer
    ends, so every item opened is closed, in order, before the terminal event. (The provider decoders give each
    tool call's arguments before the next call starts; a late fragment of a closed call is not sent.)
    ``response.created`` goes out before anything else, whatever the first canonical event.
    """

    __slots__ = (
        "_calls",
        "_created",
        "_done",
        "_id",
        "_model",
        "_open",
        "_output",
        "_req",
        "_seq",
        "_started",
        "_thinking",
        "_tools",
        "_usage",
    )

    def __init__(self, req: ChatRequest) -> None:
        self._req = req
        self._tools = _tools_by_name(req)
        self._thinking = req.shows_thinking()
        self._model = req.model
        self._id = new_response_id()
        self._created = now()
        self._seq = 0
        self._started = False
        self._done = False
        self._usage: Usage | None = None
        self._open: list[_Item] = []  # in output order
        self._calls: dict[int, _Item] = {}
        self._output: list[JSON | None] = []  # the finished items, by output index

    # -- framing

    def _event(self, name: str, fields: str) -> str:
        seq = self._seq
        self._seq += 1
        return f'event: {name}\ndata: {{"type":"{name}","sequence_number":{seq},{fields}}}\n\n'

    def _response(self, status: str, usage: Usage | None = None, **extra: Any) -> str:
        output = [item for item in self._output if item is not None]
        body = response_object(self._id, self._model, self._created, status, output, usage, self._req, **extra)
        return '"response":' + dumps(body)

    def _start(self) -> str:
        if self._started:
            return ""
        self._started = True
        return self._event("response.created", self._response("in_progress")) + self._event(
            "response.in_progress", self._response("in_progress")
        )

    # -- items

    def _open_item(self, kind: str, prefix: str, call: ToolCall | None = None) -> tuple[_Item, str]:
        out = self._close_others()
        tool = self._tools.get(call.name) if call is not None else None
        item = _Item(kind, _item_id(prefix), len(self._output), call, tool)
        self._output.append(None)
        self._open.append(item)
        if kind == "message":
            added = _message_item(item.id, None, "in_progress")
        elif kind == "reasoning":
            added = _reasoning_item(item.id, "", "in_progress")
        else:
            assert call is not None
            added = _call_item(item.id, call, "in_progress", tool)
        out += self._event("response.output_item.added", f'"output_index":{item.index},"item":{dumps(added)}')
        head = f'"item_id":"{item.id}","output_index":{item.index}'
        if kind == "message":
            part = '{"type":"output_text","annotations":[],"logprobs":[],"text":""}'
            out += self._event("response.content_part.added", f'{head},"content_index":0,"part":{part}')
        elif kind == "reasoning":
            part = '{"type":"summary_text","text":""}'
            out += self._event("response.reasoning_summary_part.added", f'{head},"summary_index":0,"part":{part}')
        return item, out

    def _close(self, item: _Item, status: str = "completed") -> str:
        self._open.remove(item)
        head = f'"item_id":"{item.id}","output_index":{item.index}'
        text = "".join(item.text)
        if item.kind == "message":
            part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
            out = self._event(
                "response.output_text.done", f'{head},"content_index":0,"text":{jstr(text)},"logprobs":[]'
            )
            out += self._event("response.content_part.done", f'{head},"content_index":0,"part":{dumps(part)}')
            done = _message_item(item.id, text, status)
        elif item.kind == "reasoning":
            part = {"type": "summary_text", "text": text}
            out = self._event("response.reasoning_summary_text.done", f'{head},"summary_index":0,"text":{jstr(text)}')
            out += self._event("response.reasoning_summary_part.done", f'{head},"summary_index":0,"part":{dumps(part)}')
            done = _reasoning_item(item.id, text, status)
        elif item.tool is not None and item.tool.custom:  # its input whole: it comes as JSON from the provider
            assert item.call is not None
            item.call.arguments = text
            custom = _custom_input(text) if text else ""
            out = (
                self._event("response.custom_tool_call_input.delta", f'{head},"delta":{jstr(custom)}') if custom else ""
            )
            out += self._event("response.custom_tool_call_input.done", f'{head},"input":{jstr(custom)}')
            done = _call_item(item.id, item.call, status, item.tool)
        else:
            assert item.call is not None
            item.call.arguments = text
            out = self._event("response.function_call_arguments.done", f'{head},"arguments":{jstr(text)}')
            done = _call_item(item.id, item.call, status, item.tool)
        self._output[item.index] = done
        return out + self._event("response.output_item.done", f'"output_index":{item.index},"item":{dumps(done)}')

    def _close_others(self, status: str = "completed") -> str:
        return "".join(self._close(item, status) for item in list(self._open))

    def _current(self, kind: str, prefix: str) -> tuple[_Item, str]:
        last = self._open[-1] if self._open else None
        if last is not None and last.kind == kind:
            return last, ""
        return self._open_item(kind, prefix)

    # -- the interface

    def encode(self, event: StreamEvent) -> bytes:
        if self._done:
            return b""
        if type(event) is TextDelta:
            text = event.text
            if not text:
                return b""
            last = self._open[-1] if self._open else None
            if last is not None and last.kind == "message":  # the hot path: one more delta of the open message
                last.text.append(text)
                seq = self._seq
                self._seq = seq + 1
                return utf8(_TEXT_DELTA + str(seq) + last.delta_head + jstr(text) + ',"logprobs":[]}\n\n')
            out = self._start()
            item, opened = self._current("message", "msg_")
            item.text.append(text)
            head = f'"item_id":"{item.id}","output_index":{item.index},"content_index":0'
            return utf8(
                out + opened + self._event("response.output_text.delta", f'{head},"delta":{jstr(text)},"logprobs":[]')
            )
        if type(event) is ToolCallDelta:
            call_item = self._calls.get(event.index)
            if call_item is None or call_item not in self._open or not event.arguments:
                return b""
            call_item.text.append(event.arguments)
            if call_item.tool is not None and call_item.tool.custom:
                return b""  # sent whole when the call closes (`_close`)
            head = f'"item_id":"{call_item.id}","output_index":{call_item.index}'
            return utf8(
                self._event("response.function_call_arguments.delta", f'{head},"delta":{jstr(event.arguments)}')
            )
        if type(event) is ThinkingDelta:
            if not event.text or not self._thinking:
                return b""
            out = self._start()
            item, opened = self._current("reasoning", "rs_")
            item.text.append(event.text)
            head = f'"item_id":"{item.id}","output_index":{item.index},"summary_index":0'
            return utf8(
                out
                + opened
                + self._event("response.reasoning_summary_text.delta", f'{head},"delta":{jstr(event.text)}')
            )
        if type(event) is ToolCallStart:
            out = self._start()
            item, opened = self._open_item("function_call", "fc_", ToolCall(event.id, event.name, ""))
            self._calls[event.index] = item
            return utf8(out + opened)
        if type(event) is MessageStart:
            if event.model:
                self._model = event.model
            return utf8(self._start())
        if type(event) is UsageUpdate:
            self._usage = event.usage
            return b""
        if type(event) is MessageEnd:
            return utf8(self._end(event))
        if type(event) is StreamError:
            return utf8(self._fail(event))
        return b""

    def _end(self, event: MessageEnd) -> str:
        out = self._start()
        usage = event.usage or self._usage
        status, incomplete, error = _status(event.finish_reason)
        out += self._close_others(status="incomplete" if status == "incomplete" else "completed")
        self._done = True
        name = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(status, "response.failed")
        return out + self._event(name, self._response(status, usage, incomplete=incomplete, error=error))

    def _fail(self, event: StreamError) -> str:
        self._done = True
        if not self._started:  # nothing began: a bare error event (its SDK raises on it)
            return self._event("error", f'"code":{jstr(event.type)},"message":{jstr(event.message)},"param":null')
        out = self._close_others(status="incomplete")
        error = {"code": "server_error", "message": event.message}
        return out + self._event("response.failed", self._response("failed", self._usage, error=error))

    def close(self) -> bytes:
        """A stream that ended without its terminal event (no canonical end came) still gets one."""
        if self._done:
            return b""
        return utf8(self._fail(StreamError("the provider's stream ended before the answer was complete")))


# --- codec ---------------------------------------------------------------------------


class ResponsesCodec:
    name = NAME

    def decode_request(self, body: JSON, *, model: str | None = None, stream: bool | None = None) -> ChatRequest:
        return decode_request(body, model=model, stream=stream)

    def encode_request(self, req: ChatRequest) -> JSON:
        return encode_request(req)

    def dropped_fields(self, req: ChatRequest) -> list[str]:
        return dropped_fields(req)

    def decode_response(self, body: JSON) -> ChatResponse:
        return decode_response(body)

    def encode_response(self, resp: ChatResponse, req: ChatRequest | None = None) -> JSON:
        return encode_response(resp, req)

    def stream_decoder(self) -> ResponsesStreamDecoder:
        return ResponsesStreamDecoder()

    def stream_encoder(self, req: ChatRequest) -> ResponsesStreamEncoder:
        return ResponsesStreamEncoder(req)

    def usage_from_response(self, body: JSON) -> Usage | None:
        raw = body.get("usage") if isinstance(body, dict) else None
        return usage_from_responses(raw) if reports_usage(raw, _COUNTERS) else None

    def error_body(self, status: int, message: str, type: str, code: str | None = None) -> JSON:
        return OPENAI_CODEC.error_body(status, message, type, code)  # OpenAI's one error shape

    def decode_error(self, status: int, body: bytes) -> tuple[str, str]:
        return decode_error_body(status, body)


CODEC = ResponsesCodec()


# --- stored responses (kaixu/store/responses.py keeps them; these are their items) ---------------------------


def own_input(raw: Any) -> list[JSON]:
    """A request's ``input`` as items (a string is one user message): what a stored response says it was asked."""
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    return [expect_dict(item, f"input[{i}]") for i, item in enumerate(expect_list(raw, "input"))]


def _as_input(item: JSON) -> JSON:
    """An item of a stored conversation as a new request carries it: without the ids and status the provider
    gave it (a provider that did not store them refuses ids it does not know)."""
    return {k: v for k, v in item.items() if k not in ("id", "status")}


def history(turns: list[tuple[list[JSON], JSON]]) -> list[JSON]:
    """The conversation of stored responses, oldest first ((input items, response object) each): what a request
    with ``previous_response_id`` continues, as input items."""
    out: list[JSON] = []
    for items, response in turns:
        out += (_as_input(item) for item in items)
        out += (_as_input(item) for item in response.get("output") or () if isinstance(item, dict))
    return out


def listed_items(items: list[JSON], response_id: str) -> JSON:
    """``GET /v1/responses/{id}/input_items``: the items, each with an id (stable: derived from the response's)."""
    data = [{"id": item.get("id") or f"item_{response_id[5:]}_{i}", **item} for i, item in enumerate(items)]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": False}


_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class TerminalTap:
    """Reads the Responses stream a client is sent, for its terminal event's response object (what kaixu keeps):
    only that event is parsed as JSON."""

    __slots__ = ("_sse", "answer")

    def __init__(self) -> None:
        self._sse = SSEParser()
        self.answer: JSON | None = None

    def feed(self, chunk: bytes) -> None:
        if self.answer is not None or not chunk:
            return
        try:
            for event in self._sse.feed(chunk):
                if event.event in _TERMINAL or (event.event is None and '"response.' in event.data[:80]):
                    obj = json.loads(event.data)
                    if isinstance(obj, dict) and obj.get("type") in _TERMINAL and isinstance(obj.get("response"), dict):
                        self.answer = obj["response"]
        except (FormatError, ValueError):
            self.answer = {}  # unreadable: nothing is kept
