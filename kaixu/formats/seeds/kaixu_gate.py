"""kAIxu Gate (seed 001): ``POST /v1/generate`` (JSON), ``POST /v1/stream`` (SSE), two GETs.

The gate was a Gemini proxy, so its body is Gemini underneath: we build the Gemini
``generateContent`` body the seed would have sent and decode it with the Gemini
codec. ``generationConfig``, ``safetySettings``, ``tools`` and ``toolConfig`` thus
land in the canonical request (or ``extra["gemini"]``) exactly as through Gemini's
own front door, and reach a Gemini provider unchanged.

Decisions worth knowing:

* Exactly one of ``input`` / ``messages`` / ``contents`` (the seed silently took the
  first of contents > messages > input; an ambiguous body is now a 400).
* ``messages[]`` roles: ``user``, ``assistant`` (alias ``model``) and ``system``;
  content is a string; blank turns are skipped (as the seed did).
* System prompt = [``system`` if given, else a Gemini ``systemInstruction`` if
  given, else the gateway's global prompt] + ``messages[]`` system turns + the
  output-format instruction, joined by blank lines. ``system`` *overrides* the
  global prompt, as the seed's directive says.
* ``output.format``: ``json`` sets ``responseMimeType: application/json`` (JSON
  mode); ``text`` / ``markdown`` append ``TEXT_INSTRUCTION`` / ``MARKDOWN_INSTRUCTION``
  to the system prompt, so the choice survives routing to any provider.
  Case-insensitive; anything else is a 400. ``config`` is accepted as the seed's
  alias of ``generationConfig``.
* Response: ``finishReason`` uses Gemini's names (tool calls report ``STOP`` as
  Gemini does); function calls are listed as ``functionCalls: [{name, args}]`` only
  when there are some. Like the seed, an answer cut off by ``MAX_TOKENS`` before
  any text is reported as ``ok: false`` with an explanation (still HTTP 200).
* Stream: each ``data:`` is a raw Gemini ``GenerateContentResponse`` chunk (the
  Gemini stream encoder's), then ``data: [DONE]``, where the documented client
  loops stop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .. import gemini
from .._common import JSON, expect_dict, opt_bool, opt_str, parse_arguments
from ..base import StreamEncoder
from ..canonical import ChatRequest, ChatResponse, FinishReason, StreamEvent
from ..errors import FormatError
from ._front import FrontDoorOnly, chat_turns, join_system
from .context import SeedContext

NAME = "kaixu_gate"

#: Appended to the system prompt for ``output: {format: "text"}``.
TEXT_INSTRUCTION = "Respond in plain text only. Do not use Markdown or any other markup."
#: Appended to the system prompt for ``output: {format: "markdown"}``.
MARKDOWN_INSTRUCTION = "Format your response in Markdown."

_INPUTS = ("input", "messages", "contents")
_GEMINI_NATIVE = ("safetySettings", "tools", "toolConfig")
_FORMAT_INSTRUCTIONS = {"json": None, "text": TEXT_INSTRUCTION, "markdown": MARKDOWN_INSTRUCTION}
#: Gemini's finish reasons, as the Gemini codec encodes them (a test keeps the two in step).
_FINISH: dict[FinishReason, str] = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "tool_calls": "STOP",
    "content_filter": "SAFETY",
    "error": "OTHER",
}
#: The seed's message when thinking used up the budget before any answer text.
EMPTY_MAX_TOKENS_ERROR = (
    "Model hit token limit before producing output. Increase maxOutputTokens "
    "(thinking models like gemini-2.5-pro require a larger budget)."
)


# --- request -------------------------------------------------------------------------


def _which_input(body: JSON) -> str:
    present = [key for key in _INPUTS if body.get(key) is not None]
    if not present:
        raise FormatError("input", "one of input, messages or contents is required")
    if len(present) > 1:
        raise FormatError(present[1], f"send only one of input, messages or contents (got {', '.join(present)})")
    return present[0]


def _input_contents(raw: Any) -> list[JSON]:
    spec = expect_dict(raw, "input")
    kind = spec.get("type", "text")
    if kind != "text":
        raise FormatError("input.type", 'must be "text"')
    content = spec.get("content")
    if not isinstance(content, str):
        raise FormatError("input.content", "is required" if content is None else "must be a string")
    if not content.strip():
        raise FormatError("input.content", "must not be empty")
    return [{"role": "user", "parts": [{"text": content}]}]


def _message_contents(raw: Any, system: list[str]) -> list[JSON]:
    contents: list[JSON] = []
    for role, text in chat_turns(raw, "messages", {"model": "assistant"}):
        if role == "system":
            system.append(text)
        else:
            contents.append({"role": "user" if role == "user" else "model", "parts": [{"text": text}]})
    if not contents:
        raise FormatError("messages", "must contain at least one user or assistant message with text")
    return contents


def _output_format(body: JSON) -> str | None:
    output = body.get("output")
    if output is None:
        return None
    fmt = expect_dict(output, "output").get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, str) or fmt.lower() not in _FORMAT_INSTRUCTIONS:
        raise FormatError("output.format", "must be one of json, text, markdown")
    return fmt.lower()


def _generation_config(body: JSON, fmt: str | None) -> JSON | None:
    key = "generationConfig" if body.get("generationConfig") is not None else "config"
    raw = body.get(key)
    config = dict(expect_dict(raw, key)) if raw is not None else None
    if fmt == "json":
        config = {**(config or {}), "responseMimeType": "application/json"}
    return config


def include_raw(body: JSON) -> bool:
    """The client's ``includeRaw`` flag; put it in ``SeedContext.include_raw``."""
    return bool(opt_bool(expect_dict(body, "body"), "includeRaw"))


def _gemini_body(body: JSON) -> tuple[JSON, list[str]]:
    """The Gemini body a kAIxu Gate body stands for, and its extra system layers.

    The layers (``messages[]`` system turns, the output-format instruction) are
    added to the system prompt after decoding, on top of whichever base prompt
    applies (see ``decode_request``).
    """
    source = _which_input(body)
    layers: list[str] = []
    if source == "input":
        contents: Any = _input_contents(body["input"])
    elif source == "messages":
        contents = _message_contents(body["messages"], layers)
    else:
        contents = body["contents"]  # validated by the Gemini decoder, paths unchanged
    fmt = _output_format(body)
    instruction = _FORMAT_INSTRUCTIONS.get(fmt or "")
    if instruction:
        layers.append(instruction)
    native: JSON = {"contents": contents}
    config = _generation_config(body, fmt)
    if config is not None:
        native["generationConfig"] = config
    native.update((key, body[key]) for key in _GEMINI_NATIVE if body.get(key) is not None)
    if body.get("systemInstruction") is not None:
        native["systemInstruction"] = body["systemInstruction"]
    return native, layers


def decode_request(
    body: JSON,
    *,
    model: str | None = None,
    stream: bool | None = None,
    default_model: str | None = None,
    global_system: str | None = None,
) -> ChatRequest:
    """A kAIxu Gate body -> canonical, via the Gemini codec.

    ``model`` (from the gateway) beats ``body.model``, which beats ``default_model``
    (the policy's default). The base system prompt is ``system``, else a Gemini
    ``systemInstruction``, else ``global_system`` (the gateway's global prompt).
    """
    body = expect_dict(body, "body")
    include_raw(body)  # validate early: a bad flag is the client's 400, not a 500 later
    name = model or opt_str(body, "model") or default_model
    if not name:
        raise FormatError("model", "is required (no default model is configured)")
    system = opt_str(body, "system")
    if system is not None and not system.strip():
        system = None  # blank means "not given", as in the seed: the global prompt applies
    native, layers = _gemini_body(body)
    if system:
        native.pop("systemInstruction", None)
    req = gemini.decode_request(native, model=name, stream=bool(stream))
    base = system or (req.system if "systemInstruction" in native else global_system)
    req.system = join_system(base, *layers)
    return req


# --- response ------------------------------------------------------------------------


def _usage(resp: ChatResponse) -> JSON:
    """The seed's flattened ``usageMetadata`` (``candidatesTokens`` excludes thoughts, as in Gemini)."""
    usage = resp.usage
    return {
        "promptTokens": usage.input_tokens,
        "candidatesTokens": usage.output_tokens - usage.reasoning_tokens,
        "thoughtsTokens": usage.reasoning_tokens,
        "totalTokens": usage.total_tokens,
    }


def _function_calls(resp: ChatResponse) -> list[JSON]:
    return [
        {"name": call.name, "args": parse_arguments(call.arguments, f"message.tool_calls[{k}].arguments")}
        for k, call in enumerate(resp.message.tool_calls)
    ]


def encode_response(resp: ChatResponse, context: SeedContext | None = None) -> JSON:
    """``{ok, model, text, finishReason, usage}`` (+ ``functionCalls``, + ``raw`` on request).

    ``raw`` is the canonical answer in Gemini's ``GenerateContentResponse`` shape
    (the seed forwarded Gemini's own body there).
    """
    ctx = context or SeedContext()
    text = resp.message.text()
    model = ctx.model or resp.model
    finish = _FINISH[resp.finish_reason]
    if resp.finish_reason == "length" and not text and not resp.message.tool_calls:
        return {
            "ok": False,
            "error": EMPTY_MAX_TOKENS_ERROR,
            "model": model,
            "finishReason": finish,
            "usage": _usage(resp),
        }
    out: JSON = {"ok": True, "model": model, "text": text, "finishReason": finish, "usage": _usage(resp)}
    if resp.message.tool_calls:
        out["functionCalls"] = _function_calls(resp)
    if ctx.include_raw:
        out["raw"] = gemini.encode_response(resp)
    return out


# --- streaming -----------------------------------------------------------------------


class KaixuGateStreamEncoder:
    """Gemini SSE chunks, as the seed piped them from Gemini, then ``data: [DONE]``."""

    __slots__ = ("_closed", "_inner")

    def __init__(self, req: ChatRequest) -> None:
        self._inner = gemini.CODEC.stream_encoder(req)
        self._closed = False

    def encode(self, event: StreamEvent) -> bytes:
        return self._inner.encode(event)

    def close(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        return self._inner.close() + b"data: [DONE]\n\n"


# --- GET endpoints and errors --------------------------------------------------------


def health_body(key_configured: bool, auth_configured: bool, open_gate: bool) -> JSON:
    """``GET /v1/health``: the acceptance check clients run before integrating."""
    return {
        "ok": True,
        "keyConfigured": key_configured,
        "authConfigured": auth_configured,
        "openGate": open_gate,
    }


def models_body(names: Iterable[str], default_model: str | None = None) -> JSON:
    """``GET /v1/models``: ``{ok, defaultModel?, models: [{id, label}]}`` as the seed answered."""
    out: JSON = {"ok": True}
    if default_model is not None:
        out["defaultModel"] = default_model
    out["models"] = [{"id": name, "label": name} for name in names]
    return out


def error_body(status: int, message: str, type: str, code: str | None = None) -> JSON:
    """``{ok: false, error}``: the seed's only error shape; the status carries the kind."""
    return {"ok": False, "error": message}


# --- codec ---------------------------------------------------------------------------


class KaixuGateCodec(FrontDoorOnly):
    name = NAME

    def decode_request(
        self,
        body: JSON,
        *,
        model: str | None = None,
        stream: bool | None = None,
        default_model: str | None = None,
        global_system: str | None = None,
    ) -> ChatRequest:
        return decode_request(
            body, model=model, stream=stream, default_model=default_model, global_system=global_system
        )

    def encode_response(self, resp: ChatResponse, context: SeedContext | None = None) -> JSON:
        return encode_response(resp, context)

    def stream_encoder(self, req: ChatRequest, context: SeedContext | None = None) -> KaixuGateStreamEncoder:
        """``context`` is accepted for symmetry with the other seeds; the chunks are pure Gemini."""
        return KaixuGateStreamEncoder(req)

    def error_body(self, status: int, message: str, type: str, code: str | None = None) -> JSON:
        return error_body(status, message, type, code)


CODEC = KaixuGateCodec()

if TYPE_CHECKING:
    from ..base import Codec

    _codec_check: Codec = CODEC
    _encoder_check: StreamEncoder = KaixuGateStreamEncoder(ChatRequest(model=""))
