"""Gemini ``generateContent`` / ``streamGenerateContent`` codec.

Decisions worth knowing:

* The model and streaming live in the URL, so ``decode_request`` takes them as
  arguments and ``encode_request`` returns the body only.
* Request keys are accepted in camelCase or snake_case (the REST API takes both);
  we always emit camelCase.
* Gemini function calls carry no ids (newer models may send one; it is used when
  present). We synthesise stable ids: in a request, the n-th call of function
  ``f`` is ``call_f_n`` and the n-th response of ``f`` gets the same id, pairing
  them in order; in a response the id also carries the response id, so ids stay
  unique across turns. When encoding, ids are dropped and a tool result's function
  name is recovered from the earlier tool call with that id.
* Tool results: ``{"output": text}`` / ``{"error": text}`` (the documented keys) map
  to text and ``is_error``; any other ``response`` object becomes its JSON text.
  A result whose text is a JSON object is sent as that object.
* Tools and JSON schemas are sent as ``parametersJsonSchema`` / ``responseJsonSchema``
  (plain JSON Schema, which is what OpenAI and Anthropic clients have). On decode all
  four fields go through ``schema.from_gemini``: the OpenAPI-style dialect (upper-case
  types, ``nullable``, ``propertyOrdering``), which the Gemini CLI also writes in
  ``responseJsonSchema``, becomes standard JSON Schema.
* Gemini has one system instruction, before the conversation. A canonical ``system``
  message at a later position (an Anthropic mid-conversation system message) becomes a
  user text part at that position, marked ``<system>...</system>`` (``SYSTEM_MARK``),
  joined to the user turn it follows. Not appended to ``systemInstruction``: the
  instruction applies from its position on (it may speak of what came just before),
  and ``systemInstruction`` heads the cached prefix (implicit caching, ``cachedContent``)
  that a client adds a mid-conversation message precisely not to change.
* Gemini rejects empty text parts and empty turns, so requests skip them (an OpenAI
  ``content: ""`` says nothing anyway).
* Gemini reports ``STOP`` even when it called functions; we report ``tool_calls``
  whenever the answer contains function calls.
* Reasoning: ``generationConfig.thinkingConfig`` is ``ChatRequest.reasoning``
  (``thinkingBudget`` 0 = off, -1 = adaptive, N = on with N tokens; ``thinkingLevel`` = on
  at that effort; ``includeThoughts``). Other formats' controls are sent as
  ``thinkingBudget`` (which 2.5 and 3 models take; 2.5 models reject ``thinkingLevel``),
  at most 24576, the top of Gemini 2.5 Flash's range.
* Thought parts (``thought: true``) are ``ThinkingPart``s; ``thoughtSignature`` is kept
  on them and dropped elsewhere (function calls, text). Gemini 3 rejects a replayed
  function call without a signature, so the first call of each model turn is sent with
  Google's documented ``skip_thought_signature_validator`` sentinel (older models
  ignore it). Another format's thinking is dropped from requests.
* ``parallel_tool_calls=False`` cannot be expressed and ``user`` has no field (Gemini
  has no end-user id): both are dropped and reported (``droppable``).
* ``cachedContent`` is refused across formats: the cache holds part of the prompt,
  which another provider would never see.
* Streams have two framings: SSE (``?alt=sse``, what the SDKs ask for) and, without
  it, one JSON array streamed element by element (``JsonArrayFraming``). Providers
  are always asked for SSE; a client that wants the array gets the provider's
  events re-framed (``GeminiArrayReframer``) or translated ones in that framing.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Literal

from ._common import (
    GOOGLE_STATUS_TYPES,
    JSON,
    SSEStreamDecoder,
    decode_error_body,
    dumps,
    expect_dict,
    expect_list,
    guess_media_type,
    jstr,
    merge_extra,
    now,
    opt_bool,
    opt_int,
    opt_num,
    parse_arguments,
    raw_part,
    reports_usage,
    safe_id,
    str_list,
    token_count,
)
from .canonical import (
    ChatRequest,
    ChatResponse,
    Effort,
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
from .schema import from_gemini
from .sse import utf8

NAME = "gemini"
#: Google's documented sentinel for replayed function calls whose thought signature is unknown.
SKIP_THOUGHT_SIGNATURE = "skip_thought_signature_validator"
#: How a system message at a position of the conversation reads in a user turn.
SYSTEM_MARK = "<system>\n{}\n</system>"
#: The largest ``thinkingBudget`` every 2.5 model takes (Flash: 0..24576, Pro: 128..32768).
MAX_THINKING_BUDGET = 24576
#: ``thinkingLevel`` values (the enum; the API takes any case) and their canonical effort.
_LEVELS: dict[str, Effort] = {"MINIMAL": "minimal", "LOW": "low", "MEDIUM": "medium", "HIGH": "high", "XHIGH": "xhigh"}

_KNOWN_REQUEST_KEYS = frozenset({"contents", "systemInstruction", "generationConfig", "tools", "toolConfig"})
_KNOWN_GENERATION_KEYS = frozenset(
    {
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "stopSequences",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "thinkingConfig",
    }
)
_OPAQUE_PART_KEYS = ("executableCode", "codeExecutionResult", "toolCall", "toolResponse")
_FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
_FAILED = ("MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS", "MALFORMED_RESPONSE")
_FINISH_IN: dict[Any, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(_FILTERED, "content_filter"),
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    **dict.fromkeys(_FAILED, "error"),
    "MISSING_THOUGHT_SIGNATURE": "error",
}
_FINISH_OUT: dict[FinishReason, str] = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "tool_calls": "STOP",
    "content_filter": "SAFETY",
    "error": "OTHER",
}
_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_TYPE_STATUS = {
    t: s for s, t in GOOGLE_STATUS_TYPES.items() if s not in ("FAILED_PRECONDITION", "OUT_OF_RANGE", "UNKNOWN")
}
_STATUS_HTTP = {s: code for code, s in _HTTP_STATUS.items()}


@lru_cache(maxsize=256)
def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


@lru_cache(maxsize=256)
def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _g(obj: JSON, key: str) -> Any:
    """``obj[key]`` accepting the snake_case spelling the REST API also takes."""
    value = obj.get(key)
    return obj.get(_snake(key)) if value is None else value


def _finish(raw: Any, has_tool_calls: bool) -> FinishReason:
    finish = _FINISH_IN.get(raw, "stop")
    return "tool_calls" if has_tool_calls and finish == "stop" else finish


# --- usage ---------------------------------------------------------------------------


def usage_from_gemini(raw: Any) -> Usage:
    """``promptTokenCount`` already includes cached tokens; thoughts are billed as output."""
    if not isinstance(raw, dict):
        return Usage()
    thoughts = token_count(_g(raw, "thoughtsTokenCount"))
    return Usage(
        input_tokens=token_count(_g(raw, "promptTokenCount")) + token_count(_g(raw, "toolUsePromptTokenCount")),
        output_tokens=token_count(_g(raw, "candidatesTokenCount")) + thoughts,
        cached_input_tokens=token_count(_g(raw, "cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


#: The counts without which ``usageMetadata`` reports nothing. Google omits zero counts (proto3 JSON: an
#: empty answer has no ``candidatesTokenCount``), so within a reported object a missing count *is* 0.
_COUNTERS = ("promptTokenCount", "candidatesTokenCount", "totalTokenCount")


def usage_to_gemini(usage: Usage) -> JSON:
    out: JSON = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": usage.output_tokens - usage.reasoning_tokens,
        "totalTokenCount": usage.total_tokens,
    }
    if usage.cached_input_tokens:
        out["cachedContentTokenCount"] = usage.cached_input_tokens
    if usage.reasoning_tokens:
        out["thoughtsTokenCount"] = usage.reasoning_tokens
    return out


# --- request decoding ----------------------------------------------------------------


class _IdSynth:
    """Stable ids for id-less function calls: the n-th call of ``f`` is ``call_f_n`` (+ suffix)."""

    __slots__ = ("_calls", "_results", "suffix")

    def __init__(self, suffix: str = "") -> None:
        self._calls: dict[str, int] = {}
        self._results: dict[str, int] = {}
        self.suffix = suffix

    def call(self, name: str) -> str:
        return self._next(self._calls, name)

    def result(self, name: str) -> str:
        return self._next(self._results, name)

    def _next(self, counts: dict[str, int], name: str) -> str:
        n = counts.get(name, 0)
        counts[name] = n + 1
        return f"call_{safe_id(name)}_{n}{self.suffix}"


def _decode_media(part: JSON, key: str, path: str) -> Part:
    media = expect_dict(part[key] if key in part else part[_snake(key)], f"{path}.{key}")
    mime = _g(media, "mimeType")
    if mime is not None and not (isinstance(mime, str) and mime.startswith("image/")):
        return RawPart(NAME, part)  # audio, video, PDF ...
    if key == "inlineData":
        data = _g(media, "data")
        if not isinstance(data, str):
            raise FormatError(f"{path}.inlineData.data", "must be a base64 string")
        return ImagePart(data=data, media_type=mime)
    uri = _g(media, "fileUri")
    if not isinstance(uri, str):
        raise FormatError(f"{path}.fileData.fileUri", "must be a string")
    return ImagePart(url=uri, media_type=mime)


def _decode_call(call: Any, path: str, ids: _IdSynth) -> ToolCall:
    call = expect_dict(call, path)
    name = call.get("name")
    if not isinstance(name, str):
        raise FormatError(f"{path}.name", "is required")
    args = call.get("args") or {}
    expect_dict(args, f"{path}.args")
    call_id = call.get("id")
    return ToolCall(call_id if isinstance(call_id, str) and call_id else ids.call(name), name, dumps(args))


def _decode_function_response(raw: Any, path: str, ids: _IdSynth) -> Message:
    raw = expect_dict(raw, path)
    name = raw.get("name")
    if not isinstance(name, str):
        raise FormatError(f"{path}.name", "is required")
    response = raw.get("response") or {}
    expect_dict(response, f"{path}.response")
    is_error = False
    if list(response) == ["output"] and isinstance(response["output"], str):
        text = response["output"]
    elif list(response) == ["error"] and isinstance(response["error"], str):
        text, is_error = response["error"], True
    else:
        text = dumps(response)
    given = raw.get("id")
    call_id = given if isinstance(given, str) and given else ids.result(name)
    return Message("tool", [TextPart(text)], tool_call_id=call_id, name=name, is_error=is_error)


def _decode_part(part: JSON, path: str) -> Part:
    text = part.get("text")
    signature = _g(part, "thoughtSignature")
    signature = signature if isinstance(signature, str) else None
    if isinstance(text, str):
        return ThinkingPart(text, signature, format=NAME) if part.get("thought") else TextPart(text)
    for key in ("inlineData", "fileData"):
        if key in part or _snake(key) in part:
            return _decode_media(part, key, path)
    if any(k in part or _snake(k) in part for k in _OPAQUE_PART_KEYS):
        return RawPart(NAME, part)
    if signature is not None or part.get("thought"):  # a part that only carries a signature
        return ThinkingPart("", signature, format=NAME)
    raise FormatError(path, "unknown part: expected text, inlineData, fileData, functionCall or functionResponse")


def _decode_content(content: Any, path: str, ids: _IdSynth) -> list[Message]:
    content = expect_dict(content, path)
    role = content.get("role") or "user"
    parts = expect_list(content.get("parts"), f"{path}.parts")
    if role == "model":
        msg = Message("assistant")
        for j, part in enumerate(parts):
            part = expect_dict(part, f"{path}.parts[{j}]")
            call = _g(part, "functionCall")
            if call is not None:
                msg.tool_calls.append(_decode_call(call, f"{path}.parts[{j}].functionCall", ids))
            else:
                msg.parts.append(_decode_part(part, f"{path}.parts[{j}]"))
        return [msg]
    if role not in ("user", "function", "tool"):
        raise FormatError(f"{path}.role", "must be one of user, model")
    out: list[Message] = []
    user = Message("user")
    for j, part in enumerate(parts):
        part = expect_dict(part, f"{path}.parts[{j}]")
        response = _g(part, "functionResponse")
        if response is not None:
            out.append(_decode_function_response(response, f"{path}.parts[{j}].functionResponse", ids))
        else:
            user.parts.append(_decode_part(part, f"{path}.parts[{j}]"))
    if user.parts or not out:
        out.append(user)
    return out


def _decode_system(raw: Any) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    raw = expect_dict(raw, "systemInstruction")
    texts = []
    for j, part in enumerate(expect_list(raw.get("parts"), "systemInstruction.parts")):
        text = expect_dict(part, f"systemInstruction.parts[{j}]").get("text")
        if not isinstance(text, str):
            raise FormatError(f"systemInstruction.parts[{j}].text", "is required")
        texts.append(text)
    return "\n\n".join(texts)


def _decode_declaration(decl: Any, path: str) -> Tool:
    decl = expect_dict(decl, path)
    name = decl.get("name")
    if not isinstance(name, str):
        raise FormatError(f"{path}.name", "is required")
    description = decl.get("description")
    key = "parametersJsonSchema" if _g(decl, "parametersJsonSchema") is not None else "parameters"
    schema = _g(decl, key)
    if schema is not None:
        schema = from_gemini(expect_dict(schema, f"{path}.{key}"))
    return Tool(name, description if isinstance(description, str) else None, schema or {})


def _decode_tools(raw: Any, extra: JSON) -> list[Tool]:
    tools, unmodeled = [], []
    for i, entry in enumerate(expect_list(raw, "tools")):
        entry = expect_dict(entry, f"tools[{i}]")
        decls = _g(entry, "functionDeclarations")
        if decls is not None:
            path = f"tools[{i}].functionDeclarations"
            tools += [_decode_declaration(d, f"{path}[{k}]") for k, d in enumerate(expect_list(decls, path))]
        others = {_camel(k): v for k, v in entry.items() if _camel(k) != "functionDeclarations"}
        if others:
            unmodeled.append(others)  # googleSearch, codeExecution, urlContext ...
    if unmodeled:
        extra["tools"] = unmodeled
    return tools


def _decode_tool_config(raw: Any, extra: JSON) -> ToolChoice | None:
    if raw is None:
        return None
    config = _g(expect_dict(raw, "toolConfig"), "functionCallingConfig")
    if config is None:
        extra["toolConfig"] = raw
        return None
    config = expect_dict(config, "toolConfig.functionCallingConfig")
    mode = config.get("mode")
    names = _g(config, "allowedFunctionNames") or []
    if mode in ("AUTO", None) and not names:
        return "auto" if mode else None
    if mode == "NONE":
        return "none"
    if mode == "ANY" and not names:
        return "required"
    if mode == "ANY" and isinstance(names, list) and len(names) == 1 and isinstance(names[0], str):
        return {"name": names[0]}
    extra["toolConfig"] = raw  # VALIDATED mode, several allowed names: Gemini only
    return None


def _decode_response_format(config: JSON, extra: JSON) -> ResponseFormat | None:
    mime = _g(config, "responseMimeType")
    key = "responseJsonSchema" if _g(config, "responseJsonSchema") is not None else "responseSchema"
    schema = _g(config, key)
    if mime is None and schema is None:
        return None
    if mime == "text/plain" and schema is None:
        return ResponseFormat("text")
    if mime in ("application/json", None):  # a schema without a MIME type can only mean JSON
        if schema is None:
            return ResponseFormat("json_object")
        schema = from_gemini(expect_dict(schema, f"generationConfig.{key}"))
        return ResponseFormat("json_schema", schema=schema)
    extra["generationConfig.responseMimeType"] = mime  # e.g. text/x.enum: Gemini only
    if schema is not None:
        extra[f"generationConfig.{key}"] = schema
    return None


def _decode_reasoning(raw: Any) -> Reasoning | None:
    path = "generationConfig.thinkingConfig"
    config = {_camel(k): v for k, v in expect_dict(raw, path).items()}
    reasoning = Reasoning(include_thoughts=opt_bool(config, "includeThoughts", path))
    level = config.get("thinkingLevel")
    if level is not None:
        effort = _LEVELS.get(level.upper()) if isinstance(level, str) else None
        if effort is None and level != "THINKING_LEVEL_UNSPECIFIED":
            raise FormatError(f"{path}.thinkingLevel", "must be one of MINIMAL, LOW, MEDIUM, HIGH, XHIGH")
        reasoning.mode, reasoning.effort = ("on", effort) if effort is not None else (None, None)
    budget = opt_int(config, "thinkingBudget", path)
    if budget == 0:
        reasoning.mode = "off"
    elif budget == -1:
        reasoning.mode = "adaptive"
    elif budget is not None and budget > 0:
        reasoning.mode, reasoning.budget_tokens = "on", budget
    elif budget is not None:
        raise FormatError(f"{path}.thinkingBudget", "must be -1 (dynamic), 0 (off) or a number of tokens")
    return None if reasoning == Reasoning() else reasoning


def decode_request(body: JSON, *, model: str | None = None, stream: bool | None = None) -> ChatRequest:
    body = expect_dict(body, "body")
    if not model:
        raise FormatError("model", "is required (from the URL path)")
    if _g(body, "contents") is None:
        raise FormatError("contents", "is required")
    extra: JSON = {_camel(k): v for k, v in body.items() if _camel(k) not in _KNOWN_REQUEST_KEYS}
    ids = _IdSynth()
    messages: list[Message] = []
    for i, content in enumerate(expect_list(_g(body, "contents"), "contents")):
        messages += _decode_content(content, f"contents[{i}]", ids)
    raw_config = _g(body, "generationConfig")
    config = {_camel(k): v for k, v in expect_dict(raw_config, "generationConfig").items()} if raw_config else {}
    extra.update((f"generationConfig.{k}", v) for k, v in config.items() if k not in _KNOWN_GENERATION_KEYS)
    gc = "generationConfig"
    raw_tools = _g(body, "tools")
    return ChatRequest(
        model=model,
        messages=messages,
        system=_decode_system(_g(body, "systemInstruction")),
        max_tokens=opt_int(config, "maxOutputTokens", gc),
        temperature=opt_num(config, "temperature", gc),
        top_p=opt_num(config, "topP", gc),
        top_k=opt_int(config, "topK", gc),
        stop=str_list(config.get("stopSequences"), f"{gc}.stopSequences"),
        stream=bool(stream),
        tools=_decode_tools(raw_tools, extra) if raw_tools is not None else [],
        tool_choice=_decode_tool_config(_g(body, "toolConfig"), extra),
        response_format=_decode_response_format(config, extra),
        include_usage=True,  # every Gemini chunk carries usageMetadata
        seed=opt_int(config, "seed", gc),
        presence_penalty=opt_num(config, "presencePenalty", gc),
        frequency_penalty=opt_num(config, "frequencyPenalty", gc),
        reasoning=_decode_reasoning(config["thinkingConfig"]) if config.get("thinkingConfig") is not None else None,
        extra={NAME: extra} if extra else {},
        source=NAME,
    )


# --- request encoding ----------------------------------------------------------------


def _encode_part(part: Part, path: str) -> JSON | None:
    if isinstance(part, TextPart):
        return {"text": part.text}
    if isinstance(part, ImagePart):
        if part.url is None:
            return {"inlineData": {"mimeType": part.media_type or "image/png", "data": part.data or ""}}
        file_data: JSON = {"fileUri": part.url}
        mime = part.media_type or guess_media_type(part.url)
        if mime is not None:
            file_data = {"mimeType": mime, "fileUri": part.url}
        return {"fileData": file_data}
    if isinstance(part, ThinkingPart):
        return _encode_thought(part) if part.format == NAME else None  # another vendor's reasoning: dropped
    return raw_part(part, NAME, path)


def _encode_thought(part: ThinkingPart) -> JSON:
    """A thought part; the signature only Gemini's own (only Gemini can check it)."""
    out: JSON = {"text": part.text, "thought": True}
    if part.format == NAME and part.signature:
        out["thoughtSignature"] = part.signature
    return out


def _encode_parts(parts: list[Part], path: str) -> list[JSON]:
    return [p for j, part in enumerate(parts) if (p := _encode_part(part, f"{path}.content[{j}]")) is not None]


def _request_parts(parts: list[Part], path: str) -> list[JSON]:
    """Parts for a request turn: Gemini rejects empty text parts ("empty text parameter")."""
    return [p for p in _encode_parts(parts, path) if p.get("text") != "" or "thoughtSignature" in p]


def _function_response(msg: Message, names: dict[str, str], path: str) -> JSON:
    name = names.get(msg.tool_call_id or "") or msg.name
    if name is None:
        raise FormatError(f"{path}.tool_call_id", "matches no earlier tool call; Gemini needs the function name")
    texts = []
    for j, part in enumerate(msg.parts):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif not isinstance(part, ThinkingPart):
            raise UnsupportedFeature(f"{path}.content[{j}]", "Gemini function responses can only contain text")
    text = "".join(texts)
    if msg.is_error:
        return {"functionResponse": {"name": name, "response": {"error": text}}}
    response: JSON = {"output": text}
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict) and list(value) != ["error"]:
            response = value
    return {"functionResponse": {"name": name, "response": response}}


def _encode_contents(messages: list[Message]) -> list[JSON]:
    out: list[JSON] = []
    names: dict[str, str] = {}  # tool call id -> function name
    pending: list[JSON] = []  # functionResponse parts waiting for their user turn
    for i, msg in enumerate(messages):
        path = f"messages[{i}]"
        if msg.role == "tool":
            pending.append(_function_response(msg, names, path))
            continue
        if msg.role == "system":
            marked = {"text": SYSTEM_MARK.format(msg.text())}
            if pending:
                out.append({"role": "user", "parts": [*pending, marked]})
                pending = []
            elif out and out[-1]["role"] == "user":
                out[-1]["parts"].append(marked)
            else:
                out.append({"role": "user", "parts": [marked]})
            continue
        if msg.role == "user":
            out.append({"role": "user", "parts": pending + _request_parts(msg.parts, path)})
            pending = []
            continue
        if pending:
            out.append({"role": "user", "parts": pending})
            pending = []
        parts = _request_parts(msg.parts, path)
        for k, call in enumerate(msg.tool_calls):
            names[call.id] = call.name
            args = parse_arguments(call.arguments, f"{path}.tool_calls[{k}].arguments")
            part: JSON = {"functionCall": {"name": call.name, "args": args}}
            if k == 0:  # Gemini 3 rejects replayed calls without one; the real one is gone
                part["thoughtSignature"] = SKIP_THOUGHT_SIGNATURE
            parts.append(part)
        if parts:  # an empty model turn (nothing Gemini can express) is rejected; it said nothing
            out.append({"role": "model", "parts": parts})
    if pending:
        out.append({"role": "user", "parts": pending})
    return out


def _encode_declaration(tool: Tool) -> JSON:
    out: JSON = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    if tool.parameters:
        out["parametersJsonSchema"] = tool.parameters
    return out


def _encode_tool_config(tc: ToolChoice) -> JSON:
    if isinstance(tc, str):
        config: JSON = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[tc]}
    else:
        config = {"mode": "ANY", "allowedFunctionNames": [tc["name"]]}
    return {"functionCallingConfig": config}


def _generation_config(req: ChatRequest) -> JSON:
    optional: list[tuple[str, Any]] = [
        ("maxOutputTokens", req.max_tokens),
        ("temperature", req.temperature),
        ("topP", req.top_p),
        ("topK", req.top_k),
        ("seed", req.seed),
        ("presencePenalty", req.presence_penalty),
        ("frequencyPenalty", req.frequency_penalty),
    ]
    config: JSON = {k: v for k, v in optional if v is not None}
    if req.stop:
        config["stopSequences"] = list(req.stop)
    rf = req.response_format
    if rf is not None:
        config["responseMimeType"] = "text/plain" if rf.type == "text" else "application/json"
        if rf.type == "json_schema" and rf.schema is not None:
            config["responseJsonSchema"] = rf.schema
    if req.reasoning is not None and (thinking := _thinking_config(req.reasoning)):
        config["thinkingConfig"] = thinking
    return config


def _thinking_config(r: Reasoning) -> JSON:
    """``thinkingBudget``: 0 for off, else the budget (explicit, else the effort's), -1 when adaptive."""
    config: JSON = {}
    budget = r.budget()
    if r.mode == "off":
        config["thinkingBudget"] = 0
    elif budget is not None:
        config["thinkingBudget"] = min(budget, MAX_THINKING_BUDGET)
    elif r.mode is not None:
        config["thinkingBudget"] = -1
    if r.include_thoughts is not None:
        config["includeThoughts"] = r.include_thoughts
    return config


def dropped_fields(req: ChatRequest) -> list[str]:
    lost = ["user"] if req.user is not None else []
    if req.parallel_tool_calls is False and req.tools:
        lost.append("parallel_tool_calls")  # Gemini cannot be told to avoid parallel function calls
    return losses(req, NAME, lost)


def encode_request(req: ChatRequest) -> JSON:
    dropped_fields(req)
    body: JSON = {"contents": _encode_contents(req.messages)}
    if req.system is not None:
        body["systemInstruction"] = {"parts": [{"text": req.system}]}
    config = _generation_config(req)
    if config:
        body["generationConfig"] = config
    if req.tools:
        body["tools"] = [{"functionDeclarations": [_encode_declaration(t) for t in req.tools]}]
    if req.tool_choice is not None:
        body["toolConfig"] = _encode_tool_config(req.tool_choice)
    merge_extra(body, req, NAME)
    return body


# --- responses -----------------------------------------------------------------------


def _response_message(candidate: JSON, ids: _IdSynth) -> Message:
    msg = Message("assistant")
    content = candidate.get("content") or {}
    for j, part in enumerate(content.get("parts") or []):
        if not isinstance(part, dict):
            continue
        if part.get("thought"):
            text = part.get("text")
            signature = _g(part, "thoughtSignature")
            msg.parts.append(
                ThinkingPart(
                    text if isinstance(text, str) else "",
                    signature if isinstance(signature, str) else None,
                    format=NAME,
                )
            )
            continue
        call = _g(part, "functionCall")
        if call is not None:
            msg.tool_calls.append(_decode_call(call, f"candidates[0].content.parts[{j}].functionCall", ids))
        elif isinstance(part.get("text"), str):
            msg.parts.append(TextPart(part["text"]))
        elif "inlineData" in part or "fileData" in part:
            msg.parts.append(_decode_part(part, f"candidates[0].content.parts[{j}]"))
    return msg


def _response_suffix(response_id: str) -> str:
    return "_" + safe_id(response_id)[:16] if response_id else ""


def decode_response(body: JSON) -> ChatResponse:
    body = expect_dict(body, "body")
    response_id = str(body.get("responseId") or "")
    candidates = body.get("candidates") or []
    if candidates:
        candidate = expect_dict(candidates[0], "candidates[0]")
        message = _response_message(candidate, _IdSynth(_response_suffix(response_id)))
        finish = _finish(candidate.get("finishReason"), bool(message.tool_calls))
    else:  # the prompt itself was blocked
        message, finish = Message("assistant"), "content_filter"
    return ChatResponse(
        id=response_id,
        model=str(body.get("modelVersion") or ""),
        created=now(),
        message=message,
        finish_reason=finish,
        usage=usage_from_gemini(body.get("usageMetadata")),
    )


def encode_response(resp: ChatResponse) -> JSON:
    parts = []
    for j, part in enumerate(resp.message.parts):
        if isinstance(part, ThinkingPart):
            if part.text or (part.format == NAME and part.signature):
                parts.append(_encode_thought(part))
        elif (encoded := _encode_part(part, f"message.content[{j}]")) is not None:
            parts.append(encoded)
    for k, call in enumerate(resp.message.tool_calls):
        args = parse_arguments(call.arguments, f"message.tool_calls[{k}].arguments")
        parts.append({"functionCall": {"name": call.name, "args": args}})
    candidate: JSON = {"content": {"parts": parts, "role": "model"}} if parts else {}
    candidate["finishReason"] = _FINISH_OUT[resp.finish_reason]
    candidate["index"] = 0
    return {
        "candidates": [candidate],
        "usageMetadata": usage_to_gemini(resp.usage),
        "modelVersion": resp.model,
        "responseId": resp.id,
    }


# --- streaming -----------------------------------------------------------------------


class GeminiStreamDecoder(SSEStreamDecoder):
    """``streamGenerateContent?alt=sse`` chunks -> canonical events.

    Each chunk is a whole ``GenerateContentResponse``. A function call arrives whole,
    so it becomes ``ToolCallStart`` plus one ``ToolCallDelta`` with all arguments.
    ``MessageEnd`` is emitted with the chunk carrying ``finishReason`` (its usage is
    final); usage in any later chunk still updates ``usage`` for metering. Every
    chunk repeats ``usageMetadata``; a ``UsageUpdate`` is emitted only when it changes.
    """

    __slots__ = ("_ids", "_raw_usage", "_started", "_tools")

    def __init__(self) -> None:
        super().__init__()
        self._raw_usage: Any = None
        self._started = False
        self._tools = 0
        self._ids = _IdSynth()

    def _handle(self, data: str, out: list[StreamEvent]) -> None:
        try:
            obj = json.loads(data)
        except ValueError:
            return
        if isinstance(obj, dict):
            self._response(obj, data, out)

    def _response(self, obj: JSON, data: str, out: list[StreamEvent]) -> None:
        """One ``GenerateContentResponse`` (``data`` is its text)."""
        raw_usage = obj.get("usageMetadata")
        usage = None
        if raw_usage and raw_usage != self._raw_usage:  # repeated in every chunk, usually unchanged
            self._raw_usage = raw_usage
            self.usage = usage = usage_from_gemini(raw_usage)
        if self._done:
            return
        if "error" in obj:
            self._done = True
            message, etype = decode_error_body(500, data.encode())
            out.append(StreamError(message, etype))
            return
        if not self._started:
            self._started = True
            response_id = str(obj.get("responseId") or "")
            self._ids.suffix = _response_suffix(response_id)
            out.append(MessageStart(response_id, str(obj.get("modelVersion") or "")))
        if usage is not None:
            out.append(UsageUpdate(usage))
        candidates = obj.get("candidates")
        if candidates:
            self._candidate(candidates[0], out)
        elif (obj.get("promptFeedback") or {}).get("blockReason"):
            self._done = True
            out.append(MessageEnd("content_filter", self.usage))

    def _candidate(self, candidate: JSON, out: list[StreamEvent]) -> None:
        content = candidate.get("content")
        if content:
            for part in content.get("parts") or ():
                text = part.get("text")
                if part.get("thought"):
                    if text:
                        out.append(ThinkingDelta(text))
                    signature = part.get("thoughtSignature") or part.get("thought_signature")
                    if signature:
                        out.append(ThinkingDelta(signature=signature, format=NAME))
                    continue
                if text:
                    out.append(TextDelta(text))
                    continue
                call = part.get("functionCall") or part.get("function_call")
                if call:
                    self._call(call, out)
        finish = candidate.get("finishReason")
        if finish:
            self._done = True
            out.append(MessageEnd(_finish(finish, self._tools > 0), self.usage))

    def _call(self, call: JSON, out: list[StreamEvent]) -> None:
        name = str(call.get("name") or "")
        call_id = call.get("id") or self._ids.call(name)
        ordinal = self._tools
        self._tools += 1
        out.append(ToolCallStart(ordinal, call_id, name))
        out.append(ToolCallDelta(ordinal, dumps(call.get("args") or {})))


Framing = Literal["sse", "json_array"]


class SSEFraming:
    """``?alt=sse``: each ``GenerateContentResponse`` is one event, ended by CRLF CRLF as Google does."""

    __slots__ = ()

    def element(self, text: str) -> bytes:
        return utf8("data: " + text + "\r\n\r\n")

    def close(self) -> bytes:
        return b""


class JsonArrayFraming:
    """``:streamGenerateContent`` without ``alt=sse``: one JSON array, sent element by element as Google
    does: ``[`` before the first element, ``\n,\r\n`` before each next one, ``\n]`` at the end, and each
    element indented by two spaces (clients that split on ``}\n,\r\n{`` exist, so the bytes matter)."""

    __slots__ = ("_started",)

    def __init__(self) -> None:
        self._started = False

    def element(self, text: str) -> bytes:
        return self.value(json.loads(text))

    def value(self, obj: Any) -> bytes:
        head = "\n,\r\n" if self._started else "["
        self._started = True
        return utf8(head + json.dumps(obj, ensure_ascii=False, indent=2))

    def close(self) -> bytes:
        return b"\n]" if self._started else b"[]"


class GeminiArrayReframer(GeminiStreamDecoder):
    """A Gemini provider's SSE -> the JSON array a client that called ``:streamGenerateContent`` without
    ``alt=sse`` reads. Each provider event becomes one element as soon as it is complete, keeping every
    field (safety ratings, grounding, thought signatures); the decoder underneath meters usage as on any
    pass-through. A truncated provider stream ends the array, as a pass-through SSE stream just ends."""

    __slots__ = ("_framing", "_ready")

    def __init__(self) -> None:
        super().__init__()
        self._framing = JsonArrayFraming()
        self._ready: list[tuple[bytes, int]] = []
        """Elements not yet handed out, each with how many of the feed's canonical events it carries so far."""

    def reframe(self, chunk: bytes) -> bytes:
        """Provider bytes in, client bytes out (``b""`` until an event completes); ``b""`` in = end of body."""
        return b"".join(out for out, _ in self.reframe_pieces(chunk))

    def reframe_pieces(self, chunk: bytes) -> list[tuple[bytes, list[StreamEvent]]]:
        """``reframe`` element by element, with what the stream step bills: each element's bytes with the
        canonical events its provider event decoded to (a chunk holds many; the stream step stops at one it
        cannot bill), and a last piece of no bytes for events that belong to no element (the end of a stream
        cut short)."""
        if chunk:
            events = self.feed(chunk)
        else:
            events = self.close()
            self._ready.append((self._framing.close(), len(events)))
        pieces: list[tuple[bytes, list[StreamEvent]]] = []
        start = 0
        for out, end in self._ready:
            pieces.append((out, events[start:end]))
            start = end
        if start < len(events):
            pieces.append((b"", events[start:]))
        self._ready.clear()
        return pieces

    def _response(self, obj: JSON, data: str, out: list[StreamEvent]) -> None:
        element = self._framing.value(obj)
        super()._response(obj, data, out)
        self._ready.append((element, len(out)))

    def fail(self, message: str) -> bytes:
        """The provider broke the stream: an error element, then the array's end (what is pending is dropped)."""
        self._ready.clear()
        error = {"error": {"code": 500, "message": message, "status": "INTERNAL"}}
        return self._framing.value(error) + self._framing.close()


_TEXT_HEAD = '{"candidates":[{"content":{"parts":[{"text":'
_TEXT_TAIL = '}],"role":"model"},"index":0}]'
_THOUGHT_TAIL = ',"thought":true' + _TEXT_TAIL


class GeminiStreamEncoder:
    """Canonical events -> Gemini stream chunks (``GenerateContentResponse``), SSE or JSON array framed.

    Text is sent as it comes, and thinking as thought parts when the client asked for
    them (``includeThoughts``). Function calls must reach a Gemini client whole, with
    parsed ``args``, so their argument fragments are collected and the calls are sent
    in the final chunk together with ``finishReason`` and ``usageMetadata``.
    """

    __slots__ = ("_calls", "_framing", "_id", "_model", "_tail", "_thoughts", "_usage")

    def __init__(self, req: ChatRequest, framing: Framing = "sse") -> None:
        self._thoughts = req.shows_thinking()
        self._framing = JsonArrayFraming() if framing == "json_array" else SSEFraming()
        self._model = req.model
        self._id = ""
        self._tail = ""
        self._usage: Usage | None = None
        self._calls: dict[int, tuple[str, list[str]]] = {}  # ordinal -> (name, argument fragments)

    def encode(self, event: StreamEvent) -> bytes:
        if type(event) is TextDelta:
            if not event.text:
                return b""
            return self._framing.element(_TEXT_HEAD + jstr(event.text) + _TEXT_TAIL + self._meta() + "}")
        if type(event) is ThinkingDelta:
            return self._thought(event) if self._thoughts else b""
        if type(event) is ToolCallDelta:
            call = self._calls.get(event.index)
            if call is not None:
                call[1].append(event.arguments)
            return b""
        if type(event) is ToolCallStart:
            self._calls[event.index] = (event.name, [])
            return b""
        if type(event) is MessageStart:
            self._id, self._model = event.id, event.model or self._model
            return b""
        if type(event) is UsageUpdate:
            self._usage = event.usage
            return b""
        if type(event) is MessageEnd:
            return self._end(event)
        if type(event) is StreamError:
            return self._error(event.message, event.type)
        return b""

    def close(self) -> bytes:
        return self._framing.close()

    def _thought(self, event: ThinkingDelta) -> bytes:
        if event.text:
            return self._framing.element(_TEXT_HEAD + jstr(event.text) + _THOUGHT_TAIL + self._meta() + "}")
        if event.signature and event.format == NAME:  # only Gemini's own signature means anything to Gemini
            part = {"text": "", "thought": True, "thoughtSignature": event.signature}
            candidate = {"content": {"parts": [part], "role": "model"}, "index": 0}
            return self._framing.element('{"candidates":[' + dumps(candidate) + "]" + self._meta() + "}")
        return b""

    def _meta(self) -> str:
        if not self._tail:
            self._tail = f',"modelVersion":{jstr(self._model)},"responseId":{jstr(self._id)}'
        return self._tail

    def _end(self, event: MessageEnd) -> bytes:
        parts: list[JSON] = []
        for ordinal in sorted(self._calls):
            name, fragments = self._calls[ordinal]
            try:
                args = parse_arguments("".join(fragments), f"tool_calls[{ordinal}].arguments")
            except FormatError as exc:
                return self._error(str(exc), "api_error")
            parts.append({"functionCall": {"name": name, "args": args}})
        candidate: JSON = {
            "content": {"parts": parts or [{"text": ""}], "role": "model"},
            "finishReason": _FINISH_OUT[event.finish_reason],
            "index": 0,
        }
        chunk = '{"candidates":[' + dumps(candidate) + "]"
        usage = event.usage or self._usage
        if usage is not None:
            chunk += ',"usageMetadata":' + dumps(usage_to_gemini(usage))
        return self._framing.element(chunk + self._meta() + "}")

    def _error(self, message: str, etype: str) -> bytes:
        status = _TYPE_STATUS.get(etype, "INTERNAL")
        error = {"error": {"code": _STATUS_HTTP.get(status, 500), "message": message, "status": status}}
        return self._framing.element(dumps(error))


# --- codec ---------------------------------------------------------------------------


class GeminiCodec:
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

    def stream_decoder(self) -> GeminiStreamDecoder:
        return GeminiStreamDecoder()

    def stream_encoder(self, req: ChatRequest, framing: Framing = "sse") -> GeminiStreamEncoder:
        return GeminiStreamEncoder(req, framing)

    def usage_from_response(self, body: JSON) -> Usage | None:
        raw = body.get("usageMetadata") if isinstance(body, dict) else None
        return usage_from_gemini(raw) if reports_usage(raw, _COUNTERS) else None

    def error_body(self, status: int, message: str, type: str, code: str | None = None) -> JSON:
        google_status = _HTTP_STATUS.get(status) or ("INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
        return {"error": {"code": status, "message": message, "status": google_status}}

    def decode_error(self, status: int, body: bytes) -> tuple[str, str]:
        return decode_error_body(status, body)


CODEC = GeminiCodec()
