"""Anthropic Messages (``POST /v1/messages``) codec.

Decisions worth knowing:

* ``max_tokens`` is required by Anthropic; when the canonical request has none we
  send ``DEFAULT_MAX_TOKENS`` (4096). The front door accepts a request without it.
* ``tool_result`` blocks inside a user turn become separate canonical ``tool``
  messages (emitted before the turn's other content); on encode, consecutive tool
  messages and the user message right after them are merged back into one user
  turn, tool results first, as Anthropic requires.
* An assistant turn with nothing Anthropic accepts (e.g. OpenAI ``content: ""``) is
  dropped unless it is the last message, since Anthropic rejects empty turns.
* ``tool_use.input`` objects become compact JSON text; canonical arguments that are
  not a JSON object cannot be expressed and raise ``FormatError``.
* JSON mode: ``json_schema`` maps to ``output_config.format`` (structured outputs).
  Schema-less ``json_object`` has no equivalent and raises ``UnsupportedFeature``.
* ``user`` maps to ``metadata.user_id``. ``cache_control`` markers (on blocks, system
  blocks, system messages, tools) are not part of the canonical model: the decoder lists
  their paths in ``ChatRequest.unmodeled`` and a translated request drops them, with the
  other fields on ``droppable.ANTHROPIC`` (``context_management``, ``service_tier`` ...).
  Same-format traffic is passed through untouched.
* Mid-conversation system messages (``{"role": "system", "content": string or text
  blocks}`` inside ``messages``) become canonical ``system`` messages at their position.
  Encoded for Anthropic, canonical system messages (an OpenAI system message after the
  first turn) are appended, in order, to the top-level ``system``: Anthropic takes
  ``role: system`` in ``messages`` only on its newest models and only in some places
  (after a user turn, before an assistant turn), which a translated request cannot know.
* JSON schemas get ``additionalProperties: false`` on every object that does not say
  otherwise (``schema.closed_objects``): structured outputs refuse open objects.
* Documents, server-tool blocks and file images are kept as ``RawPart``s (Anthropic only).
* Reasoning: ``thinking`` (``enabled`` + ``budget_tokens``, ``adaptive``, ``disabled``; ``between_tools``
  is read as ``disabled``; ``display``) and ``output_config.effort`` are ``ChatRequest.reasoning``.
  Encoding for Anthropic, a budget is raised to Anthropic's minimum (1024) and ``max_tokens`` to above
  it; thinking is left out when the request carries what Anthropic refuses with thinking on (a
  ``temperature`` other than 1, ``top_k``, ``top_p`` below 0.95, a forced tool choice) or is in a tool
  loop whose last assistant turn does not start with an Anthropic thinking block (a translated history
  never does). ``thinking``/``redacted_thinking`` blocks are ``ThinkingPart``s; another format's
  thinking is dropped from requests, and answers carry a ``signature`` only when it is Anthropic's
  (``""`` otherwise: the SDKs' ``ThinkingBlock`` requires the field).
* ``presence_penalty``/``frequency_penalty`` cannot be expressed; ``seed`` is
  dropped and reported (Anthropic sampling cannot be seeded).
"""

from __future__ import annotations

import json
from typing import Any

from ._common import (
    JSON,
    SSEStreamDecoder,
    decode_error_body,
    dumps,
    expect_dict,
    expect_list,
    jstr,
    merge_extra,
    new_id,
    now,
    opt_bool,
    opt_int,
    opt_num,
    opt_str,
    parse_arguments,
    raw_part,
    reports_usage,
    req_str,
    str_list,
    token_count,
)
from .canonical import (
    EFFORT_BUDGET,
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
from .schema import closed_objects
from .sse import utf8

NAME = "anthropic"
DEFAULT_MAX_TOKENS = 4096

_KNOWN_REQUEST_KEYS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "metadata",
        "output_config",
        "thinking",
    }
)
#: Block types we do not model but forward to Anthropic verbatim.
_OPAQUE_BLOCKS = frozenset(
    {
        "document",
        "search_result",
        "container_upload",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
    }
)
#: ``output_config.effort`` values (canonical efforts minus ``minimal``).
_EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})
#: Anthropic's floor for ``thinking.budget_tokens``.
MIN_THINKING_BUDGET = 1024

_FINISH_IN: dict[Any, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_FINISH_OUT: dict[FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "error": "end_turn",
}


def _stop_reason(finish: FinishReason, stop_sequence: str | None) -> str:
    return "stop_sequence" if finish == "stop" and stop_sequence else _FINISH_OUT[finish]


# --- usage ---------------------------------------------------------------------------


def usage_from_anthropic(raw: Any) -> Usage:
    """Anthropic's ``input_tokens`` excludes cache reads/writes; canonical input includes them."""
    if not isinstance(raw, dict):
        return Usage()
    cache_read = token_count(raw.get("cache_read_input_tokens"))
    cache_write = token_count(raw.get("cache_creation_input_tokens"))
    details = raw.get("output_tokens_details")
    return Usage(
        input_tokens=token_count(raw.get("input_tokens")) + cache_read + cache_write,
        output_tokens=token_count(raw.get("output_tokens")),
        cached_input_tokens=cache_read,
        cache_creation_input_tokens=cache_write,
        reasoning_tokens=token_count(details.get("thinking_tokens")) if isinstance(details, dict) else 0,
    )


#: The counts without which a usage object reports nothing.
_COUNTERS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def usage_to_anthropic(usage: Usage) -> JSON:
    uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_creation_input_tokens
    out: JSON = {
        "input_tokens": max(uncached, 0),
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
    }
    if usage.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return out


# --- request decoding ----------------------------------------------------------------


def _decode_image(block: JSON, path: str) -> Part:
    source = expect_dict(block.get("source"), f"{path}.source")
    stype = source.get("type")
    if stype == "base64":
        return ImagePart(
            data=req_str(source, "data", f"{path}.source"),
            media_type=opt_str(source, "media_type", f"{path}.source"),
        )
    if stype == "url":
        return ImagePart(url=req_str(source, "url", f"{path}.source"))
    if stype == "file":
        return RawPart(NAME, block)
    raise FormatError(f"{path}.source.type", "must be one of base64, url, file")


def _decode_block(block: JSON, path: str) -> Part:
    btype = block.get("type")
    if btype == "text":
        return TextPart(req_str(block, "text", path))
    if btype == "image":
        return _decode_image(block, path)
    if btype in ("thinking", "redacted_thinking"):
        return _decode_thinking_block(block, path)
    if btype in _OPAQUE_BLOCKS:
        return RawPart(NAME, block)
    raise FormatError(f"{path}.type", f"unknown content block type {btype!r}")


def _decode_thinking_block(block: JSON, path: str) -> ThinkingPart:
    if block.get("type") == "redacted_thinking":
        return ThinkingPart(redacted=req_str(block, "data", path), format=NAME)
    return ThinkingPart(req_str(block, "thinking", path), opt_str(block, "signature", path), format=NAME)


def _decode_tool_result(block: JSON, path: str) -> Message:
    content = block.get("content")
    if content is None:
        parts: list[Part] = []
    elif isinstance(content, str):
        parts = [TextPart(content)]
    else:
        parts = [
            _decode_block(expect_dict(b, f"{path}.content[{k}]"), f"{path}.content[{k}]")
            for k, b in enumerate(expect_list(content, f"{path}.content"))
        ]
    return Message(
        "tool",
        parts,
        tool_call_id=req_str(block, "tool_use_id", path),
        is_error=bool(opt_bool(block, "is_error", path)),
    )


def _decode_blocks(content: Any, path: str) -> list[JSON]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [expect_dict(b, f"{path}[{j}]") for j, b in enumerate(expect_list(content, path))]


def _decode_user(content: Any, path: str) -> list[Message]:
    """A user turn: its tool results become tool messages, placed before the rest of the turn."""
    out: list[Message] = []
    parts: list[Part] = []
    for j, block in enumerate(_decode_blocks(content, path)):
        if block.get("type") == "tool_result":
            out.append(_decode_tool_result(block, f"{path}[{j}]"))
        else:
            parts.append(_decode_block(block, f"{path}[{j}]"))
    if parts or not out:
        out.append(Message("user", parts))
    return out


def _decode_assistant(content: Any, path: str) -> Message:
    msg = Message("assistant")
    for j, block in enumerate(_decode_blocks(content, path)):
        if block.get("type") == "tool_use":
            bpath = f"{path}[{j}]"
            tool_input = expect_dict(block.get("input", {}), f"{bpath}.input")
            msg.tool_calls.append(
                ToolCall(req_str(block, "id", bpath), req_str(block, "name", bpath), dumps(tool_input))
            )
        else:
            msg.parts.append(_decode_block(block, f"{path}[{j}]"))
    return msg


def _decode_system_message(content: Any, path: str) -> Message:
    """A mid-conversation system message: text only, as a string or text blocks (joined as ``system`` is)."""
    texts = []
    for j, block in enumerate(_decode_blocks(content, path)):
        if block.get("type") != "text":
            raise FormatError(f"{path}[{j}].type", "system messages can only contain text blocks")
        texts.append(req_str(block, "text", f"{path}[{j}]"))
    return Message("system", [TextPart("\n\n".join(texts))])


def _decode_messages(raw: Any) -> list[Message]:
    out: list[Message] = []
    for i, msg in enumerate(expect_list(raw, "messages")):
        path = f"messages[{i}]"
        msg = expect_dict(msg, path)
        role = msg.get("role")
        if "content" not in msg:
            raise FormatError(f"{path}.content", "is required")
        if role == "user":
            out += _decode_user(msg["content"], f"{path}.content")
        elif role == "assistant":
            out.append(_decode_assistant(msg["content"], f"{path}.content"))
        elif role == "system":
            out.append(_decode_system_message(msg["content"], f"{path}.content"))
        else:
            raise FormatError(f"{path}.role", "must be one of user, assistant, system")
    return out


#: Tool fields that only tune Anthropic's own tool machinery (all on ``droppable.ANTHROPIC``).
_TOOL_TUNING = ("cache_control", "defer_loading", "eager_input_streaming")
_CACHE = "cache_control"


def _unmodeled(body: JSON) -> list[str]:
    """Paths of the fields inside repeated elements that the canonical model does not carry.

    Runs on a body the decoder has validated, in one walk, so that decoding itself stays a description of
    the format; a path is only built for a field that is there (an agent's history has thousands of blocks).
    """
    out: list[str] = []
    system = body.get("system")
    if isinstance(system, list):
        out += [f"system[{i}].{_CACHE}" for i, block in enumerate(system) if block.get(_CACHE) is not None]
    for i, msg in enumerate(body["messages"]):
        if msg.get(_CACHE) is not None:
            out.append(f"messages[{i}].{_CACHE}")
        content = msg.get("content")
        if not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            if block.get(_CACHE) is not None:
                out.append(f"messages[{i}].content[{j}].{_CACHE}")
            inner = block.get("content") if block.get("type") == "tool_result" else None
            if isinstance(inner, list):
                out += [
                    f"messages[{i}].content[{j}].content[{k}].{_CACHE}"
                    for k, sub in enumerate(inner)
                    if sub.get(_CACHE) is not None
                ]
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        if tool.get("type", "custom") == "custom":  # server tools travel whole, in ``extra``
            out += [f"tools[{i}].{key}" for key in _TOOL_TUNING if tool.get(key) is not None]
    return out


def _decode_system(raw: Any) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    texts = []
    for i, block in enumerate(expect_list(raw, "system")):
        block = expect_dict(block, f"system[{i}]")
        if block.get("type") != "text":
            raise FormatError(f"system[{i}].type", "must be 'text'")
        texts.append(req_str(block, "text", f"system[{i}]"))
    return "\n\n".join(texts)


def _decode_tools(raw: Any, extra: JSON) -> list[Tool]:
    tools, unmodeled = [], []
    for i, tool in enumerate(expect_list(raw, "tools")):
        path = f"tools[{i}]"
        tool = expect_dict(tool, path)
        if tool.get("type", "custom") != "custom":
            unmodeled.append(tool)  # server tools (web_search, bash, ...): Anthropic only
            continue
        tools.append(
            Tool(
                name=req_str(tool, "name", path),
                description=opt_str(tool, "description", path),
                parameters=expect_dict(tool.get("input_schema"), f"{path}.input_schema"),
                strict=opt_bool(tool, "strict", path),
            )
        )
    if unmodeled:
        extra["tools"] = unmodeled
    return tools


def _decode_tool_choice(raw: Any) -> tuple[ToolChoice | None, bool | None]:
    """-> (tool_choice, parallel_tool_calls)."""
    if raw is None:
        return None, None
    raw = expect_dict(raw, "tool_choice")
    disable = opt_bool(raw, "disable_parallel_tool_use", "tool_choice")
    parallel = None if disable is None else not disable
    kind = raw.get("type")
    if kind == "tool":
        return {"name": req_str(raw, "name", "tool_choice")}, parallel
    choice: dict[Any, ToolChoice] = {"auto": "auto", "any": "required", "none": "none"}
    if kind not in choice:
        raise FormatError("tool_choice.type", "must be one of auto, any, tool, none")
    return choice[kind], parallel


def _decode_output_config(raw: Any, extra: JSON) -> ResponseFormat | None:
    if raw is None:
        return None
    raw = expect_dict(raw, "output_config")
    result = None
    for key, value in raw.items():
        if key == "format" and value is not None:
            fmt = expect_dict(value, "output_config.format")
            if fmt.get("type") != "json_schema":
                raise FormatError("output_config.format.type", "must be 'json_schema'")
            result = ResponseFormat("json_schema", schema=expect_dict(fmt.get("schema"), "output_config.format.schema"))
        elif key not in ("format", "effort"):  # effort: see _decode_reasoning
            extra[f"output_config.{key}"] = value
    return result


def _decode_reasoning(thinking: Any, output_config: Any) -> Reasoning | None:
    reasoning = Reasoning()
    if thinking is not None:
        thinking = expect_dict(thinking, "thinking")
        kind = thinking.get("type")
        if kind == "enabled":
            budget = opt_int(thinking, "budget_tokens", "thinking")
            if budget is None:
                raise FormatError("thinking.budget_tokens", "is required")
            reasoning.mode, reasoning.budget_tokens = "on", budget
        elif kind == "adaptive":
            reasoning.mode = "adaptive"
        elif kind in ("disabled", "between_tools"):  # between_tools: thinking off (progress notes aside)
            reasoning.mode = "off"
        else:
            raise FormatError("thinking.type", "must be one of enabled, adaptive, disabled, between_tools")
        display = opt_str(thinking, "display", "thinking")
        if display not in (None, "summarized", "omitted"):
            raise FormatError("thinking.display", "must be one of summarized, omitted")
        if reasoning.mode != "off":
            reasoning.include_thoughts = display != "omitted"
    effort = output_config.get("effort") if isinstance(output_config, dict) else None
    if effort is not None:
        if effort not in _EFFORTS:
            raise FormatError("output_config.effort", "must be one of low, medium, high, xhigh, max")
        reasoning.effort = effort
    return None if reasoning == Reasoning() else reasoning


def decode_request(body: JSON, *, model: str | None = None, stream: bool | None = None) -> ChatRequest:
    body = expect_dict(body, "body")
    model = model or req_str(body, "model")
    if "messages" not in body:
        raise FormatError("messages", "is required")
    extra: JSON = {k: v for k, v in body.items() if k not in _KNOWN_REQUEST_KEYS}
    metadata = expect_dict(body["metadata"], "metadata") if body.get("metadata") is not None else {}
    other_metadata = {k: v for k, v in metadata.items() if k != "user_id"}
    if other_metadata:
        extra["metadata"] = other_metadata
    tool_choice, parallel = _decode_tool_choice(body.get("tool_choice"))
    return ChatRequest(
        model=model,
        messages=_decode_messages(body["messages"]),
        system=_decode_system(body.get("system")),
        max_tokens=opt_int(body, "max_tokens"),
        temperature=opt_num(body, "temperature"),
        top_p=opt_num(body, "top_p"),
        top_k=opt_int(body, "top_k"),
        stop=str_list(body.get("stop_sequences"), "stop_sequences"),
        stream=stream if stream is not None else bool(opt_bool(body, "stream")),
        tools=_decode_tools(body["tools"], extra) if body.get("tools") is not None else [],
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        response_format=_decode_output_config(body.get("output_config"), extra),
        reasoning=_decode_reasoning(body.get("thinking"), body.get("output_config")),
        user=opt_str(metadata, "user_id", "metadata"),
        include_usage=True,  # Anthropic streams always carry usage
        extra={NAME: extra} if extra else {},
        unmodeled=_unmodeled(body),
        source=NAME,
    )


# --- request encoding ----------------------------------------------------------------


def _encode_part(part: Part, path: str) -> JSON | None:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text} if part.text else None  # empty text blocks are rejected
    if isinstance(part, ImagePart):
        if part.url is not None:
            return {"type": "image", "source": {"type": "url", "url": part.url}}
        source = {"type": "base64", "media_type": part.media_type or "image/png", "data": part.data or ""}
        return {"type": "image", "source": source}
    if isinstance(part, ThinkingPart):
        return _encode_thinking(part) if part.format == NAME else None  # another vendor's reasoning: dropped
    return raw_part(part, NAME, path)


def _encode_thinking(part: ThinkingPart) -> JSON:
    """Anthropic's own thinking, as it sent it; the signature only Anthropic can check is kept."""
    if part.redacted is not None:
        return {"type": "redacted_thinking", "data": part.redacted}
    block: JSON = {"type": "thinking", "thinking": part.text}
    if part.signature is not None:
        block["signature"] = part.signature
    return block


def _encode_parts(parts: list[Part], path: str) -> list[JSON]:
    return [b for j, p in enumerate(parts) if (b := _encode_part(p, f"{path}.content[{j}]")) is not None]


def _encode_tool_result(msg: Message, path: str) -> JSON:
    block: JSON = {"type": "tool_result", "tool_use_id": msg.tool_call_id or ""}
    if len(msg.parts) == 1 and isinstance(msg.parts[0], TextPart):
        block["content"] = msg.parts[0].text
    elif msg.parts:
        block["content"] = _encode_parts(msg.parts, path)
    if msg.is_error:
        block["is_error"] = True
    return block


def _encode_assistant(msg: Message, path: str) -> JSON:
    blocks = _encode_parts(msg.parts, path)
    for k, call in enumerate(msg.tool_calls):
        tool_input = parse_arguments(call.arguments, f"{path}.tool_calls[{k}].arguments")
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input})
    return {"role": "assistant", "content": blocks}


def _encode_user(msg: Message, path: str) -> str | list[JSON]:
    if len(msg.parts) == 1 and isinstance(msg.parts[0], TextPart):
        return msg.parts[0].text
    return _encode_parts(msg.parts, path)


def _encode_messages(messages: list[Message]) -> list[JSON]:
    out: list[JSON] = []
    pending: list[JSON] = []  # tool_result blocks waiting for their user turn
    for i, msg in enumerate(messages):
        path = f"messages[{i}]"
        if msg.role == "tool":
            pending.append(_encode_tool_result(msg, path))
        elif msg.role == "system":
            continue  # in the top-level system (``_system``)
        elif msg.role == "user":
            content = _encode_user(msg, path)
            if pending:
                if isinstance(content, str):
                    content = [{"type": "text", "text": content}] if content else []
                content, pending = pending + content, []
            out.append({"role": "user", "content": content})
        else:
            if pending:
                out.append({"role": "user", "content": pending})
                pending = []
            turn = _encode_assistant(msg, path)
            if turn["content"] or i == len(messages) - 1:  # empty turns are rejected, except a final prefill
                out.append(turn)
    if pending:
        out.append({"role": "user", "content": pending})
    return out


def _encode_tool(tool: Tool) -> JSON:
    out: JSON = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["input_schema"] = tool.parameters or {"type": "object", "properties": {}}
    if tool.strict is not None:
        out["strict"] = tool.strict
    return out


def _encode_tool_choice(req: ChatRequest) -> JSON | None:
    tc = req.tool_choice
    if tc is None:
        out: JSON | None = None
    elif isinstance(tc, str):
        out = {"type": {"auto": "auto", "none": "none", "required": "any"}[tc]}
    else:
        out = {"type": "tool", "name": tc["name"]}
    if req.parallel_tool_calls is not None and req.tools:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = not req.parallel_tool_calls
    return out


def _check_expressible(req: ChatRequest) -> None:
    if req.presence_penalty is not None:
        raise UnsupportedFeature("presence_penalty", "Anthropic has no presence penalty")
    if req.frequency_penalty is not None:
        raise UnsupportedFeature("frequency_penalty", "Anthropic has no frequency penalty")
    rf = req.response_format
    if rf is not None and rf.type == "json_object":
        raise UnsupportedFeature("response_format", "Anthropic JSON output needs a schema (use json_schema)")
    if rf is not None and rf.type == "json_schema" and rf.schema is None:
        raise UnsupportedFeature("response_format.json_schema.schema", "Anthropic JSON output needs a schema")


def _system(req: ChatRequest) -> str | None:
    """The top-level system: the system prompt, then the canonical system messages in order."""
    texts = [m.text() for m in req.messages if m.role == "system"]
    if not texts:
        return req.system
    return "\n\n".join([req.system, *texts] if req.system is not None else texts)


def dropped_fields(req: ChatRequest) -> list[str]:
    return losses(req, NAME, ["seed"] if req.seed is not None else [])


def _thinking_refused(req: ChatRequest) -> bool:
    """What Anthropic rejects together with thinking, so that thinking (how the model works toward the
    answer) yields to the request's explicit instructions about the answer rather than making it a 400."""
    if req.temperature not in (None, 1) or req.top_k is not None:
        return True
    if req.top_p is not None and req.top_p < 0.95:
        return True
    if req.tool_choice is not None and req.tool_choice not in ("auto", "none"):
        return True
    # In a tool loop, the assistant turn whose calls are being answered must start with Anthropic's own
    # thinking block; a history from another format has none to give it.
    for i in range(len(req.messages) - 1, -1, -1):
        msg = req.messages[i]
        if msg.role == "assistant":
            if not any(m.role == "tool" for m in req.messages[i + 1 :]):
                return False
            first = msg.parts[0] if msg.parts else None
            return not (isinstance(first, ThinkingPart) and first.format == NAME)
    return False


def _encode_reasoning(req: ChatRequest, body: JSON) -> None:
    """``thinking`` and ``output_config.effort`` (rules in docs/compatibility.md, "Reasoning controls")."""
    r = req.reasoning
    if r is None:
        return
    if r.mode == "off":
        body["thinking"] = {"type": "disabled"}
    elif r.mode is not None and not _thinking_refused(req):
        if r.mode == "adaptive":
            thinking: JSON = {"type": "adaptive"}
        else:
            budget = max(r.budget() or EFFORT_BUDGET["medium"], MIN_THINKING_BUDGET)
            thinking = {"type": "enabled", "budget_tokens": budget}
            if budget >= body["max_tokens"]:  # Anthropic counts thinking in max_tokens; the answer keeps its own
                body["max_tokens"] = budget + (req.max_tokens or DEFAULT_MAX_TOKENS)
        if r.include_thoughts is False:
            thinking["display"] = "omitted"
        body["thinking"] = thinking
    # An effort that only sized the thinking (another format's level, mode "on" without a budget) is not
    # sent: it is in budget_tokens, and older models reject output_config.effort.
    if r.effort in _EFFORTS and not (r.mode == "on" and r.budget_tokens is None):
        body.setdefault("output_config", {})["effort"] = r.effort


def encode_request(req: ChatRequest) -> JSON:
    dropped_fields(req)
    _check_expressible(req)
    body: JSON = {
        "model": req.model,
        "max_tokens": req.max_tokens if req.max_tokens is not None else DEFAULT_MAX_TOKENS,
        "messages": _encode_messages(req.messages),
    }
    system = _system(req)
    if system is not None:
        body["system"] = system
    optional: list[tuple[str, Any]] = [
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("top_k", req.top_k),
    ]
    body.update((k, v) for k, v in optional if v is not None)
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    if req.stream:
        body["stream"] = True
    if req.tools:
        body["tools"] = [_encode_tool(t) for t in req.tools]
    tool_choice = _encode_tool_choice(req)
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if req.response_format is not None and req.response_format.type == "json_schema":
        schema = closed_objects(req.response_format.schema)
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    _encode_reasoning(req, body)
    if req.user is not None:
        body["metadata"] = {"user_id": req.user}
    merge_extra(body, req, NAME)
    return body


# --- responses -----------------------------------------------------------------------


def decode_response(body: JSON) -> ChatResponse:
    body = expect_dict(body, "body")
    msg = Message("assistant")
    for j, block in enumerate(expect_list(body.get("content"), "content")):
        block = expect_dict(block, f"content[{j}]")
        btype = block.get("type")
        if btype == "text":
            msg.parts.append(TextPart(req_str(block, "text", f"content[{j}]")))
        elif btype == "tool_use":
            tool_input = expect_dict(block.get("input", {}), f"content[{j}].input")
            msg.tool_calls.append(
                ToolCall(
                    req_str(block, "id", f"content[{j}]"),
                    req_str(block, "name", f"content[{j}]"),
                    dumps(tool_input),
                )
            )
        elif btype in ("thinking", "redacted_thinking"):
            msg.parts.append(_decode_thinking_block(block, f"content[{j}]"))
        # server-tool blocks are Anthropic-only; same-format traffic is passed through
    stop_sequence = body.get("stop_sequence")
    return ChatResponse(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        created=now(),
        message=msg,
        finish_reason=_FINISH_IN.get(body.get("stop_reason"), "stop"),
        stop_sequence=stop_sequence if isinstance(stop_sequence, str) else None,
        usage=usage_from_anthropic(body.get("usage")),
    )


def _answer_thinking(part: ThinkingPart) -> JSON | None:
    """A thinking block for an answer; the signature is Anthropic's own or ``""`` (the SDKs' ``ThinkingBlock``
    requires the field; sent back, such a block is dropped on its way to the format that made it)."""
    own = part.format == NAME
    if part.redacted is not None:
        return {"type": "redacted_thinking", "data": part.redacted} if own else None
    if not part.text and not own:
        return None  # e.g. a Gemini part that only carried a signature
    signature = part.signature if own and part.signature is not None else ""
    return {"type": "thinking", "thinking": part.text, "signature": signature}


def encode_response(resp: ChatResponse) -> JSON:
    content: list[JSON] = []
    for j, part in enumerate(resp.message.parts):
        if isinstance(part, TextPart):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, ThinkingPart):
            if (block := _answer_thinking(part)) is not None:
                content.append(block)
        elif (block := _encode_part(part, f"message.content[{j}]")) is not None:
            content.append(block)
    for k, call in enumerate(resp.message.tool_calls):
        tool_input = parse_arguments(call.arguments, f"message.tool_calls[{k}].arguments")
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input})
    return {
        "id": resp.id,
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": _stop_reason(resp.finish_reason, resp.stop_sequence),
        "stop_sequence": resp.stop_sequence,
        "usage": usage_to_anthropic(resp.usage),
    }


# --- streaming -----------------------------------------------------------------------


class AnthropicStreamDecoder(SSEStreamDecoder):
    """Messages SSE -> canonical events; dispatches on the JSON ``type`` (the SSE name is redundant)."""

    __slots__ = ("_finish", "_raw_usage", "_stop_sequence", "_tools")

    def __init__(self) -> None:
        super().__init__()
        self._raw_usage: JSON = {}
        self._tools: dict[Any, int] = {}  # content block index -> tool ordinal
        self._finish: FinishReason = "stop"
        self._stop_sequence: str | None = None

    def _handle(self, data: str, out: list[StreamEvent]) -> None:
        if self._done:
            return
        try:
            obj = json.loads(data)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        if kind == "content_block_delta":
            self._delta(obj, out)
        elif kind == "content_block_start":
            self._block_start(obj, out)
        elif kind == "message_start":
            self._message_start(obj.get("message") or {}, out)
        elif kind == "message_delta":
            delta = obj.get("delta") or {}
            self._finish = _FINISH_IN.get(delta.get("stop_reason"), "stop")
            self._stop_sequence = delta.get("stop_sequence")
            self._update_usage(obj.get("usage"), out)
        elif kind == "message_stop":
            self._done = True
            out.append(MessageEnd(self._finish, self.usage, self._stop_sequence))
        elif kind == "error":
            self._done = True
            err = obj.get("error") or {}
            out.append(StreamError(str(err.get("message") or "upstream error"), str(err.get("type") or "api_error")))
        # ping, content_block_stop: nothing to translate

    def _message_start(self, message: JSON, out: list[StreamEvent]) -> None:
        out.append(MessageStart(str(message.get("id") or ""), str(message.get("model") or "")))
        self._update_usage(message.get("usage"), out)

    def _update_usage(self, raw: Any, out: list[StreamEvent]) -> None:
        """Counters are cumulative; a later report may omit some, so merge field by field (as the SDK does)."""
        if not isinstance(raw, dict):
            return
        self._raw_usage.update((k, v) for k, v in raw.items() if v is not None)
        self.usage = usage_from_anthropic(self._raw_usage)
        out.append(UsageUpdate(self.usage))

    def _block_start(self, obj: JSON, out: list[StreamEvent]) -> None:
        block = obj.get("content_block") or {}
        btype = block.get("type")
        if btype == "text":
            if block.get("text"):
                out.append(TextDelta(block["text"]))
        elif btype == "tool_use":
            ordinal = self._tools[obj.get("index")] = len(self._tools)
            out.append(ToolCallStart(ordinal, str(block.get("id") or ""), str(block.get("name") or "")))
            if block.get("input"):
                out.append(ToolCallDelta(ordinal, dumps(block["input"])))
        elif btype == "thinking":
            if block.get("thinking"):
                out.append(ThinkingDelta(block["thinking"]))
            if block.get("signature"):
                out.append(ThinkingDelta(signature=block["signature"], format=NAME))
        # redacted_thinking (no readable text; only an Anthropic client could use it, and its streams from
        # Anthropic are passed through) and server-tool blocks: dropped

    def _delta(self, obj: JSON, out: list[StreamEvent]) -> None:
        delta = obj.get("delta") or {}
        dtype = delta.get("type")
        if dtype == "text_delta":
            text = delta.get("text")
            if text:
                out.append(TextDelta(text))
        elif dtype == "input_json_delta":
            ordinal = self._tools.get(obj.get("index"))
            partial = delta.get("partial_json")
            if ordinal is not None and partial:
                out.append(ToolCallDelta(ordinal, partial))
        elif dtype == "thinking_delta":
            thinking = delta.get("thinking")
            if thinking:
                out.append(ThinkingDelta(thinking))
        elif dtype == "signature_delta":
            signature = delta.get("signature")
            if signature:
                out.append(ThinkingDelta(signature=signature, format=NAME))
        # citations_delta: dropped


class AnthropicStreamEncoder:
    """Canonical events -> Messages SSE (``message_start`` ... ``message_stop``).

    ``message_start`` is sent lazily, at the first content event, so that input usage
    reported right after the start (Gemini's first chunk) can go into it. Blocks are
    opened and closed as the content kind changes; tool ordinals map to block indexes.
    Thinking becomes ``thinking`` blocks only when the client asked to see it.
    """

    __slots__ = ("_block", "_id", "_kind", "_model", "_next", "_started", "_thinking", "_tools", "_usage")

    def __init__(self, req: ChatRequest) -> None:
        self._thinking = req.shows_thinking()
        self._model = req.model
        self._id = ""
        self._started = False
        self._usage: Usage | None = None
        self._block = -1  # open content block index, -1 when none
        self._kind = ""  # "text", "thinking" or "tool" for the open block
        self._next = 0
        self._tools: dict[int, int] = {}

    def encode(self, event: StreamEvent) -> bytes:
        if type(event) is TextDelta:
            if not event.text:
                return b""
            out = self._start() + (self._open("text", '{"type":"text","text":""}') if self._kind != "text" else b"")
            return out + (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
                b'"delta":{"type":"text_delta","text":%s}}\n\n' % (self._block, utf8(jstr(event.text)))
            )
        if type(event) is ToolCallDelta:
            index = self._tools.get(event.index)
            if index is None or not event.arguments:
                return b""
            return b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,' % index + (
                b'"delta":{"type":"input_json_delta","partial_json":%s}}\n\n' % utf8(jstr(event.arguments))
            )
        if type(event) is ThinkingDelta:
            return self._thinking_delta(event) if self._thinking else b""
        if type(event) is ToolCallStart:
            out = self._start()
            block = dumps({"type": "tool_use", "id": event.id, "name": event.name, "input": {}})
            out += self._open("tool", block)
            self._tools[event.index] = self._block
            return out
        if type(event) is MessageStart:
            self._id = event.id
            self._model = event.model or self._model
            return b""
        if type(event) is UsageUpdate:
            self._usage = event.usage
            return b""
        if type(event) is MessageEnd:
            return self._end(event)
        if type(event) is StreamError:
            error = {"type": "error", "error": {"type": event.type, "message": event.message}}
            return b"event: error\ndata: " + utf8(dumps(error)) + b"\n\n"
        return b""

    def close(self) -> bytes:
        return b""

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: JSON = {
            "id": self._id or new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_to_anthropic(self._usage or Usage()),
        }
        return b"event: message_start\ndata: " + utf8(dumps({"type": "message_start", "message": message})) + b"\n\n"

    def _thinking_delta(self, event: ThinkingDelta) -> bytes:
        """``thinking_delta`` for text; ``signature_delta`` for Anthropic's own signature (others are useless)."""
        if event.text:
            delta = '{"type":"thinking_delta","thinking":' + jstr(event.text) + "}"
        elif event.signature and event.format == NAME:
            delta = '{"type":"signature_delta","signature":' + jstr(event.signature) + "}"
        else:
            return b""
        out = self._start()
        if self._kind != "thinking":
            out += self._open("thinking", '{"type":"thinking","thinking":"","signature":""}')
        return out + (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":%s}\n\n'
            % (self._block, utf8(delta))
        )

    def _open(self, kind: str, block_json: str) -> bytes:
        out = self._close_block()
        self._block = self._next
        self._next += 1
        self._kind = kind
        return out + (
            b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,'
            b'"content_block":%s}\n\n' % (self._block, utf8(block_json))
        )

    def _close_block(self) -> bytes:
        if self._block < 0:
            return b""
        index, self._block, self._kind = self._block, -1, ""
        return b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n' % index

    def _end(self, event: MessageEnd) -> bytes:
        out = self._start() + self._close_block()
        usage = event.usage or self._usage or Usage()
        delta = {
            "type": "message_delta",
            "delta": {
                "stop_reason": _stop_reason(event.finish_reason, event.stop_sequence),
                "stop_sequence": event.stop_sequence,
            },
            "usage": usage_to_anthropic(usage),
        }
        out += b"event: message_delta\ndata: " + utf8(dumps(delta)) + b"\n\n"
        return out + b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


# --- codec ---------------------------------------------------------------------------


class AnthropicCodec:
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

    def stream_decoder(self) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder()

    def stream_encoder(self, req: ChatRequest) -> AnthropicStreamEncoder:
        return AnthropicStreamEncoder(req)

    def usage_from_response(self, body: JSON) -> Usage | None:
        raw = body.get("usage") if isinstance(body, dict) else None
        return usage_from_anthropic(raw) if reports_usage(raw, _COUNTERS) else None

    def error_body(self, status: int, message: str, type: str, code: str | None = None) -> JSON:
        return {"type": "error", "error": {"type": type, "message": message}}

    def decode_error(self, status: int, body: bytes) -> tuple[str, str]:
        return decode_error_body(status, body)


CODEC = AnthropicCodec()
