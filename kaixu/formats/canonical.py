"""The canonical chat model every wire format is translated through.

One request/response/stream vocabulary means N codecs instead of N*N translators.
The types are plain slotted dataclasses (no validation library): decoders validate
the wire JSON once, and everything downstream trusts these objects.

Token accounting convention (the providers disagree, so we pick one and convert):

* ``Usage.input_tokens`` counts *all* prompt tokens, including tokens read from a
  prompt cache and tokens written to it. This is OpenAI's ``prompt_tokens`` and
  Gemini's ``promptTokenCount``; for Anthropic it is
  ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``.
* ``cached_input_tokens`` / ``cache_creation_input_tokens`` are subsets of it.
* ``Usage.output_tokens`` counts all generated tokens including reasoning/thinking
  (OpenAI ``completion_tokens``, Anthropic ``output_tokens``, Gemini
  ``candidatesTokenCount + thoughtsTokenCount``); ``reasoning_tokens`` is a subset.
* In a stream, each ``UsageUpdate`` (and a decoder's ``usage``) is the whole count so
  far, never an increment: the latest one wins, and an explicit 0 in it stays 0. The
  Anthropic decoder merges its pieces field by field (input and cache counts from
  ``message_start``, the cumulative output count from the last ``message_delta``).

Stream events: a stream decoder turns provider SSE into a sequence of
``MessageStart``, ``UsageUpdate``, ``ThinkingDelta``, ``TextDelta``,
``ToolCallStart``/``ToolCallDelta`` and finally ``MessageEnd`` (or ``StreamError``).
``ToolCallStart.index`` is the ordinal of the tool call within the answer (0, 1, 2 ...),
whatever the provider uses as its own index, so encoders can map it to their own numbering.

Reasoning: ``ChatRequest.reasoning`` is the client's thinking control and
``ThinkingPart``/``ThinkingDelta`` the thinking the model showed; the conversion rules
between the formats' controls are the ``Reasoning`` methods and ``EFFORT_BUDGET``
(table in docs/compatibility.md, "Reasoning controls").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypedDict, get_args

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]
#: How hard to think, the union of the formats' levels (OpenAI's "none" is ``Reasoning.mode == "off"``).
Effort = Literal["minimal", "low", "medium", "high", "xhigh", "max"]
EFFORTS: tuple[Effort, ...] = get_args(Effort)


@dataclass(slots=True)
class TextPart:
    text: str


@dataclass(slots=True)
class ImagePart:
    """An image given by URL or inline base64 ``data`` (never both in practice)."""

    url: str | None = None
    data: str | None = None
    media_type: str | None = None
    detail: str | None = None


@dataclass(slots=True)
class RawPart:
    """A content part only its source format can express (audio, documents, thinking blocks ...).

    Kept verbatim so the same-format encoder can forward it; a different-format
    encoder raises ``UnsupportedFeature``. (Thinking is not raw: it is a ``ThinkingPart``.)
    """

    format: str
    data: dict[str, Any]


@dataclass(slots=True)
class ThinkingPart:
    """Reasoning the model showed: Anthropic ``thinking``/``redacted_thinking`` blocks, Gemini ``thought``
    parts, the ``reasoning_content`` of OpenAI-compatible servers.

    ``signature`` (Anthropic's block signature, Gemini's ``thoughtSignature``) and ``redacted`` (Anthropic's
    encrypted ``redacted_thinking.data``) mean something only to the provider that made them, named by
    ``format``: encoders of any other format leave them out, and a request encoder drops another format's
    thinking altogether (no provider accepts, or needs, a different vendor's reasoning).
    """

    text: str = ""
    signature: str | None = None
    redacted: str | None = None
    format: str | None = None


Part = TextPart | ImagePart | ThinkingPart | RawPart


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, exactly as produced by the model


@dataclass(slots=True)
class Message:
    """One turn. A tool result is ``role="tool"`` with ``tool_call_id`` set.

    ``role="system"`` is a system instruction at that point of the conversation (Anthropic's mid-conversation
    system messages, an OpenAI system message after the first turn): it applies from there on, and its text
    parts are all it has. The system prompt before the whole conversation is ``ChatRequest.system``.
    """

    role: Role
    parts: list[Part] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    is_error: bool = False

    def text(self) -> str:
        """Concatenated text of the text parts (images and raw parts are skipped)."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(slots=True)
class Tool:
    """A tool the model may call. ``custom``: the Responses API's free-form tool, whose input is one string (as
    ``parameters`` says: an object with the string ``input``); ``namespace``: the Responses API's tool group it is
    in. Other formats call both as plain functions."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # JSON Schema of the arguments
    strict: bool | None = None
    custom: bool = False
    namespace: str | None = None


class NamedToolChoice(TypedDict):
    name: str


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


@dataclass(slots=True)
class ResponseFormat:
    """What the answer must look like: plain text, any JSON object, or JSON valid against ``schema``.

    ``schema`` is standard JSON Schema whatever the client sent (Gemini's upper-case dialect is converted on
    decode, ``kaixu/formats/schema.py``); each encoder writes it in its format's field.
    """

    type: Literal["text", "json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None
    description: str | None = None


#: Thinking tokens per effort level, for the formats that size thinking in tokens (Anthropic
#: ``budget_tokens``, Gemini ``thinkingBudget``). Fixed, documented numbers: see ``Reasoning.budget``.
EFFORT_BUDGET: dict[Effort, int] = {
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
    "max": 32768,
}


@dataclass(slots=True)
class Reasoning:
    """The client's thinking control, in canonical terms.

    ``mode``: ``"off"`` no thinking; ``"on"`` think, as much as ``budget_tokens`` and/or ``effort`` say;
    ``"adaptive"`` the model decides whether and how much; ``None`` the client did not say (it gave only
    an ``effort``, e.g. Anthropic ``output_config.effort`` alone, or only ``include_thoughts``).
    ``include_thoughts``: whether the client wants the thinking shown in the answer (Anthropic shows it
    unless ``display: omitted``; Gemini only with ``includeThoughts``); ``None`` when it did not say.
    """

    mode: Literal["off", "on", "adaptive"] | None = None
    budget_tokens: int | None = None
    effort: Effort | None = None
    include_thoughts: bool | None = None

    def budget(self) -> int | None:
        """Thinking tokens for token-sized formats: the explicit budget, else the effort's (``EFFORT_BUDGET``)."""
        if self.budget_tokens is not None:
            return self.budget_tokens
        return EFFORT_BUDGET[self.effort] if self.effort is not None else None

    def level(self) -> Effort | None:
        """Effort for level-sized formats: the explicit effort, else the budget's band, else ``medium`` when
        thinking is on or adaptive with no size given (the default level of the models that have levels).

        Bands: below 4096 tokens ``low``, below 16384 ``medium``, else ``high``; never ``minimal``,
        ``xhigh`` or ``max`` (few models take them), which only pass through as explicit efforts.
        """
        if self.effort is not None:
            return self.effort
        if self.budget_tokens is not None:
            return "low" if self.budget_tokens < 4096 else "medium" if self.budget_tokens < 16384 else "high"
        return "medium" if self.mode in ("adaptive", "on") else None


@dataclass(slots=True)
class ChatRequest:
    """A chat request in canonical form.

    ``extra`` keeps top-level fields the canonical model does not cover, keyed by
    the format they came from (``{"openai": {"logprobs": True}}``); nested ones use
    a dotted key (``"generationConfig.thinkingConfig"``). The same-format encoder
    forwards them; any other encoder drops the ones on their format's table in
    ``droppable`` and raises ``UnsupportedFeature`` for the others.

    ``unmodeled`` lists the paths of fields inside repeated elements that the
    canonical model does not carry (``messages[3].content[0].cache_control``), all
    of them on the source format's droppable table: a translated request loses them.
    ``source`` is the wire format the request was decoded from (None when it was
    built in code), which says how the client spells what a target leaves out.
    """

    model: str
    messages: list[Message] = field(default_factory=list)
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    include_usage: bool = False
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    reasoning: Reasoning | None = None
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    unmodeled: list[str] = field(default_factory=list)
    source: str | None = None

    def shows_thinking(self) -> bool:
        """Whether the client asked to see the model's thinking in its answer (``Reasoning.include_thoughts``:
        Anthropic thinking on, Gemini ``includeThoughts``, OpenAI ``reasoning_effort``).

        Thinking reaches a client only then (``fronts.encode_response``, the stream encoders): one that did
        not ask would read an Anthropic thinking block or a Gemini thought part as the answer."""
        return self.reasoning is not None and bool(self.reasoning.include_thoughts)


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        """Sum of two usages, e.g. to total several upstream calls of one request."""
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


@dataclass(slots=True)
class ChatResponse:
    id: str
    model: str
    created: int
    message: Message
    finish_reason: FinishReason = "stop"
    stop_sequence: str | None = None
    usage: Usage = field(default_factory=Usage)

    def without_thinking(self) -> ChatResponse:
        """This answer minus its ``ThinkingPart``s (for a client that did not ask to see them)."""
        parts: list[Part] = [p for p in self.message.parts if not isinstance(p, ThinkingPart)]
        return replace(self, message=replace(self.message, parts=parts))


# --- stream events -----------------------------------------------------------------


@dataclass(slots=True)
class MessageStart:
    id: str
    model: str


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    """A fragment of the model's visible thinking; with ``signature`` (and the ``format`` that made it), the
    signature that ends the current thinking block (Anthropic ``signature_delta``, Gemini ``thoughtSignature``)."""

    text: str = ""
    signature: str | None = None
    format: str | None = None


@dataclass(slots=True)
class ToolCallStart:
    index: int  # ordinal of the tool call in this answer
    id: str
    name: str


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    arguments: str  # a fragment of the arguments JSON text


@dataclass(slots=True)
class UsageUpdate:
    usage: Usage


@dataclass(slots=True)
class MessageEnd:
    finish_reason: FinishReason
    usage: Usage | None = None
    stop_sequence: str | None = None


@dataclass(slots=True)
class StreamError:
    message: str
    type: str = "api_error"


StreamEvent = (
    MessageStart | TextDelta | ThinkingDelta | ToolCallStart | ToolCallDelta | UsageUpdate | MessageEnd | StreamError
)


# --- token estimate ----------------------------------------------------------------

#: Flat per-image guess: real costs depend on resolution (85..~1600 tokens); we lean high
#: because the estimate reserves budget before the real count is known.
IMAGE_TOKENS = 1000
#: Role markers and separators every provider adds per message.
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(req: ChatRequest) -> int:
    """Rough prompt size (characters / 4) for budget reservation and Anthropic ``count_tokens``.

    Deliberately cheap and provider-independent: a real tokenizer per vendor is
    not worth its weight for a reservation that is corrected by the real usage.
    """
    chars = len(req.system or "")
    tokens = 0
    for msg in req.messages:
        tokens += MESSAGE_OVERHEAD_TOKENS
        for part in msg.parts:
            if isinstance(part, TextPart):
                chars += len(part.text)
            elif isinstance(part, ImagePart):
                tokens += IMAGE_TOKENS
            elif isinstance(part, ThinkingPart):
                chars += len(part.text)
            else:
                chars += len(str(part.data))
        for call in msg.tool_calls:
            chars += len(call.name) + len(call.arguments)
    for tool in req.tools:
        chars += len(tool.name) + len(tool.description or "") + len(repr(tool.parameters))
    return tokens + (chars + 3) // 4
