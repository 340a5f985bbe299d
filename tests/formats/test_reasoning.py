"""Reasoning controls and thinking content, between every pair of formats (docs/compatibility.md,
"Reasoning controls"): the controls each format decodes, what every encoder makes of them, thinking in
request histories (never a 400) and in answers (JSON; streams are in test_cross.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kaixu.formats import FORMATS, FormatError, get_codec
from kaixu.formats.anthropic import DEFAULT_MAX_TOKENS
from kaixu.formats.canonical import (
    EFFORT_BUDGET,
    ChatRequest,
    Message,
    Reasoning,
    TextPart,
    ThinkingPart,
    Tool,
    ToolCall,
)
from kaixu.formats.fronts import encode_response

from .samples import REDACTED_DATA, STREAM_TEXT, THINKING_RESPONSES, THINKING_SIGNATURE, THINKING_TEXT

USER = {"role": "user", "content": "hi"}


def anthropic_req(**fields: Any) -> ChatRequest:
    return get_codec("anthropic").decode_request({"model": "m", "max_tokens": 64000, "messages": [USER], **fields})


def openai_req(**fields: Any) -> ChatRequest:
    return get_codec("openai").decode_request({"model": "m", "messages": [USER], **fields})


def gemini_req(thinking: dict[str, Any], **config: Any) -> ChatRequest:
    body = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"thinkingConfig": thinking, **config}}
    return get_codec("gemini").decode_request(body, model="g")


# --- decoding the controls ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reasoning"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, Reasoning("on", 2048, include_thoughts=True)),
        ({"thinking": {"type": "adaptive"}}, Reasoning("adaptive", include_thoughts=True)),
        ({"thinking": {"type": "adaptive", "display": "omitted"}}, Reasoning("adaptive", include_thoughts=False)),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 4096, "display": "summarized"}},
            Reasoning("on", 4096, include_thoughts=True),
        ),
        ({"thinking": {"type": "disabled"}}, Reasoning("off")),
        ({"thinking": {"type": "between_tools"}}, Reasoning("off")),
        ({"output_config": {"effort": "max"}}, Reasoning(effort="max")),
        (
            {"thinking": {"type": "adaptive"}, "output_config": {"effort": "medium"}},
            Reasoning("adaptive", effort="medium", include_thoughts=True),
        ),
        ({}, None),
    ],
)
def test_anthropic_controls(fields: dict[str, Any], reasoning: Reasoning | None) -> None:
    req = anthropic_req(**fields)
    assert req.reasoning == reasoning
    assert req.extra == {}  # nothing left over for a translation to refuse


@pytest.mark.parametrize(
    ("value", "reasoning"),
    [
        ("none", Reasoning("off")),
        ("minimal", Reasoning("on", effort="minimal", include_thoughts=True)),
        ("high", Reasoning("on", effort="high", include_thoughts=True)),
        ("xhigh", Reasoning("on", effort="xhigh", include_thoughts=True)),
    ],
)
def test_openai_controls(value: str, reasoning: Reasoning) -> None:
    req = openai_req(reasoning_effort=value)
    assert (req.reasoning, req.extra) == (reasoning, {})


@pytest.mark.parametrize(
    ("thinking", "reasoning"),
    [
        ({"thinkingBudget": 0}, Reasoning("off")),
        ({"thinkingBudget": -1}, Reasoning("adaptive")),
        ({"thinkingBudget": 8192, "includeThoughts": True}, Reasoning("on", 8192, include_thoughts=True)),
        ({"thinkingLevel": "HIGH", "includeThoughts": True}, Reasoning("on", effort="high", include_thoughts=True)),
        ({"thinking_level": "low"}, Reasoning("on", effort="low")),  # any case, snake_case keys
        ({"includeThoughts": False}, Reasoning(include_thoughts=False)),
    ],
)
def test_gemini_controls(thinking: dict[str, Any], reasoning: Reasoning) -> None:
    req = gemini_req(thinking)
    assert (req.reasoning, req.extra) == (reasoning, {})


@pytest.mark.parametrize(
    ("fmt", "body", "field"),
    [
        ("anthropic", {"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ("anthropic", {"thinking": {"type": "sometimes"}}, "thinking.type"),
        ("anthropic", {"thinking": {"type": "adaptive", "display": "loud"}}, "thinking.display"),
        ("anthropic", {"output_config": {"effort": "minimal"}}, "output_config.effort"),
        ("openai", {"reasoning_effort": "extreme"}, "reasoning_effort"),
        ("gemini", {"thinkingLevel": "EXTREME"}, "generationConfig.thinkingConfig.thinkingLevel"),
        ("gemini", {"thinkingBudget": -5}, "generationConfig.thinkingConfig.thinkingBudget"),
        ("gemini", {"includeThoughts": "yes"}, "generationConfig.thinkingConfig.includeThoughts"),
    ],
)
def test_malformed_controls_name_the_field(fmt: str, body: dict[str, Any], field: str) -> None:
    with pytest.raises(FormatError) as err:
        if fmt == "anthropic":
            anthropic_req(**body)
        elif fmt == "openai":
            openai_req(**body)
        else:
            gemini_req(body)
    assert err.value.field == field


# --- encoding the controls: the documented table -----------------------------------------

#: canonical control -> (Anthropic thinking, Anthropic output_config.effort, OpenAI reasoning_effort,
#: Gemini thinkingConfig). ``max_tokens`` is large so no budget needs room made for it.
TABLE: list[tuple[Reasoning, dict[str, Any] | None, str | None, str | None, dict[str, Any] | None]] = [
    (Reasoning("off"), {"type": "disabled"}, None, "none", {"thinkingBudget": 0}),
    (Reasoning("adaptive"), {"type": "adaptive"}, None, "medium", {"thinkingBudget": -1}),
    (
        Reasoning("adaptive", effort="low", include_thoughts=True),
        {"type": "adaptive"},
        "low",
        "low",
        {"thinkingBudget": 1024, "includeThoughts": True},
    ),
    (Reasoning("on", 2048), {"type": "enabled", "budget_tokens": 2048}, None, "low", {"thinkingBudget": 2048}),
    (Reasoning("on", 8192), {"type": "enabled", "budget_tokens": 8192}, None, "medium", {"thinkingBudget": 8192}),
    (Reasoning("on", 31999), {"type": "enabled", "budget_tokens": 31999}, None, "high", {"thinkingBudget": 24576}),
    (
        Reasoning("on", effort="minimal"),
        {"type": "enabled", "budget_tokens": 1024},
        None,
        "minimal",
        {"thinkingBudget": 512},
    ),
    (
        Reasoning("on", effort="medium"),
        {"type": "enabled", "budget_tokens": 8192},
        None,
        "medium",
        {"thinkingBudget": 8192},
    ),
    (
        Reasoning("on", effort="high"),
        {"type": "enabled", "budget_tokens": 24576},
        None,
        "high",
        {"thinkingBudget": 24576},
    ),
    (
        Reasoning("on", effort="xhigh"),
        {"type": "enabled", "budget_tokens": 32768},
        None,
        "xhigh",
        {"thinkingBudget": 24576},
    ),
    (
        Reasoning("on", 4096, effort="max", include_thoughts=False),
        {"type": "enabled", "budget_tokens": 4096, "display": "omitted"},
        "max",
        "max",
        {"thinkingBudget": 4096, "includeThoughts": False},
    ),
    (Reasoning(effort="high"), None, "high", "high", {"thinkingBudget": 24576}),
    (Reasoning(include_thoughts=True), None, None, None, {"includeThoughts": True}),
]


@pytest.mark.parametrize(("reasoning", "thinking", "effort", "reasoning_effort", "gemini"), TABLE)
def test_every_encoder_follows_the_table(
    reasoning: Reasoning,
    thinking: dict[str, Any] | None,
    effort: str | None,
    reasoning_effort: str | None,
    gemini: dict[str, Any] | None,
) -> None:
    req = ChatRequest("m", [Message("user", [TextPart("hi")])], max_tokens=64000, reasoning=reasoning)
    body = get_codec("anthropic").encode_request(req)
    assert body.get("thinking") == thinking
    assert body.get("output_config", {}).get("effort") == effort
    assert body["max_tokens"] == 64000
    assert get_codec("openai").encode_request(req).get("reasoning_effort") == reasoning_effort
    assert get_codec("gemini").encode_request(req).get("generationConfig", {}).get("thinkingConfig") == gemini


def test_effort_budgets_are_the_documented_numbers() -> None:
    assert EFFORT_BUDGET == {
        "minimal": 512,
        "low": 1024,
        "medium": 8192,
        "high": 24576,
        "xhigh": 32768,
        "max": 32768,
    }
    bands = {b: Reasoning("on", b).level() for b in (1024, 4095, 4096, 16383, 16384, 100000)}
    assert bands == {1024: "low", 4095: "low", 4096: "medium", 16383: "medium", 16384: "high", 100000: "high"}


@pytest.mark.parametrize(
    ("client", "target", "expected"),
    [
        # An Anthropic agent's usual request: adaptive thinking with an effort.
        (
            anthropic_req(thinking={"type": "adaptive"}, output_config={"effort": "high"}),
            "openai",
            {"reasoning_effort": "high"},
        ),
        (
            anthropic_req(thinking={"type": "adaptive"}, output_config={"effort": "high"}),
            "gemini",
            {"thinkingConfig": {"thinkingBudget": 24576, "includeThoughts": True}},
        ),
        (anthropic_req(thinking={"type": "enabled", "budget_tokens": 2048}), "openai", {"reasoning_effort": "low"}),
        (
            anthropic_req(thinking={"type": "enabled", "budget_tokens": 2048}),
            "gemini",
            {"thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True}},
        ),
        # A Gemini agent's: a level and the thoughts.
        (
            gemini_req({"thinkingLevel": "HIGH", "includeThoughts": True}),
            "anthropic",
            {"thinking": {"type": "enabled", "budget_tokens": 24576}, "max_tokens": 24576 + DEFAULT_MAX_TOKENS},
        ),
        (gemini_req({"thinkingLevel": "HIGH", "includeThoughts": True}), "openai", {"reasoning_effort": "high"}),
        (gemini_req({"thinkingBudget": 0}), "openai", {"reasoning_effort": "none"}),
        (gemini_req({"thinkingBudget": -1}), "anthropic", {"thinking": {"type": "adaptive"}}),
        # An OpenAI client's effort.
        (
            openai_req(reasoning_effort="low", max_completion_tokens=256),
            "anthropic",
            {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 1024 + 256},
        ),
        (
            openai_req(reasoning_effort="medium"),
            "gemini",
            {"thinkingConfig": {"thinkingBudget": 8192, "includeThoughts": True}},
        ),
        (openai_req(reasoning_effort="none"), "anthropic", {"thinking": {"type": "disabled"}}),
    ],
)
def test_translated_controls(client: ChatRequest, target: str, expected: dict[str, Any]) -> None:
    body = get_codec(target).encode_request(client)
    where = body.get("generationConfig", {}) if target == "gemini" else body
    assert {k: where.get(k) for k in expected} == expected


def test_anthropic_budget_is_raised_to_the_minimum_and_max_tokens_above_it() -> None:
    req = openai_req(reasoning_effort="minimal", max_completion_tokens=100)  # 512 tokens elsewhere
    body = get_codec("anthropic").encode_request(req)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["max_tokens"] == 1124
    req = gemini_req({"thinkingBudget": 2000}, maxOutputTokens=9000)  # room enough: untouched
    body = get_codec("anthropic").encode_request(req)
    assert (body["thinking"]["budget_tokens"], body["max_tokens"]) == (2000, 9000)
    req = gemini_req({"thinkingBudget": 5000})  # no limit given: the default answer room above the budget
    assert get_codec("anthropic").encode_request(req)["max_tokens"] == 5000 + DEFAULT_MAX_TOKENS


def _tool_loop(first: list[Any]) -> list[Message]:
    return [
        Message("user", [TextPart("weather?")]),
        Message("assistant", first, [ToolCall("c1", "get_weather", "{}")]),
        Message("tool", [TextPart("sunny")], tool_call_id="c1"),
    ]


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 0.2},
        {"top_k": 40},
        {"top_p": 0.5},
        {"tool_choice": "required", "tools": [Tool("get_weather")]},
        {"tool_choice": {"name": "get_weather"}, "tools": [Tool("get_weather")]},
        {"messages": _tool_loop([TextPart("checking")])},
        {"messages": _tool_loop([ThinkingPart("hm", "sig", format="gemini")])},
    ],
)
def test_thinking_yields_to_what_anthropic_refuses_with_it(fields: dict[str, Any]) -> None:
    fields = {"messages": [Message("user", [TextPart("hi")])], **fields}
    req = ChatRequest("m", reasoning=Reasoning("on", 2048, effort="low"), **fields)
    body = get_codec("anthropic").encode_request(req)
    assert "thinking" not in body
    assert body["max_tokens"] == DEFAULT_MAX_TOKENS
    assert body["output_config"] == {"effort": "low"}  # effort alone is fine


def test_thinking_stays_when_the_loop_starts_with_anthropics_own_block() -> None:
    first = [ThinkingPart("hm", "sig", format="anthropic")]
    req = ChatRequest("m", _tool_loop(first), temperature=1, top_p=0.95, reasoning=Reasoning("adaptive"))
    body = get_codec("anthropic").encode_request(req)
    assert body["thinking"] == {"type": "adaptive"}
    assert body["messages"][1]["content"][0] == {"type": "thinking", "thinking": "hm", "signature": "sig"}


def test_same_format_round_trips() -> None:
    """Decode then encode in the same format keeps the control (same-format traffic is passed through
    untouched anyway; this is the canonical model's fidelity)."""
    body = {
        "model": "m",
        "max_tokens": 9000,
        "messages": [USER],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }
    body["output_config"] = {"effort": "medium"}
    assert get_codec("anthropic").encode_request(get_codec("anthropic").decode_request(body)) == body
    body = {"model": "m", "messages": [USER], "reasoning_effort": "minimal"}
    assert get_codec("openai").encode_request(get_codec("openai").decode_request(body)) == body
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    body["generationConfig"] = {"thinkingConfig": {"thinkingBudget": 300, "includeThoughts": True}}
    assert get_codec("gemini").encode_request(get_codec("gemini").decode_request(body, model="g")) == body


# --- thinking in request histories ---------------------------------------------------------

ANTHROPIC_HISTORY: dict[str, Any] = {
    "model": "m",
    "max_tokens": 100,
    "messages": [
        USER,
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "They said hi.", "signature": "sig-a"},
                {"type": "redacted_thinking", "data": REDACTED_DATA},
                {"type": "text", "text": "hello"},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"}]},
    ],
}
GEMINI_HISTORY: dict[str, Any] = {
    "contents": [
        {"role": "user", "parts": [{"text": "hi"}]},
        {
            "role": "model",
            "parts": [
                {"text": "They said hi.", "thought": True},
                {"text": "hello", "thoughtSignature": "gsig-text"},
                {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "gsig-call"},
                {"thoughtSignature": "gsig-alone"},
            ],
        },
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"output": "done"}}}]},
    ]
}
OPENAI_HISTORY: dict[str, Any] = {
    "model": "m",
    "messages": [
        USER,
        {
            "role": "assistant",
            "content": "hello",
            "reasoning_content": "They said hi.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "done"},
    ],
}
HISTORIES = {"anthropic": ANTHROPIC_HISTORY, "gemini": GEMINI_HISTORY, "openai": OPENAI_HISTORY}


def _history(fmt: str) -> ChatRequest:
    return get_codec(fmt).decode_request(json.loads(json.dumps(HISTORIES[fmt])), model="m")


@pytest.mark.parametrize("source", FORMATS)
def test_history_thinking_is_decoded_as_thinking(source: str) -> None:
    assistant = _history(source).messages[1]
    thinking = [p for p in assistant.parts if isinstance(p, ThinkingPart)]
    assert thinking[0].text == "They said hi." and thinking[0].format == source
    assert assistant.text() == "hello"


@pytest.mark.parametrize(("source", "target"), [(s, t) for s in FORMATS for t in FORMATS if s != t])
def test_history_thinking_of_another_format_is_dropped_never_refused(source: str, target: str) -> None:
    body = get_codec(target).encode_request(_history(source))
    text = json.dumps(body)
    assert "They said hi." not in text and "sig-a" not in text and "gsig" not in text and REDACTED_DATA not in text
    assert "hello" in text and "done" in text


def test_same_format_history_keeps_thinking_and_signatures() -> None:
    body = get_codec("anthropic").encode_request(_history("anthropic"))
    assert body["messages"][1]["content"][:2] == ANTHROPIC_HISTORY["messages"][1]["content"][:2]
    body = get_codec("gemini").encode_request(_history("gemini"))
    parts = body["contents"][1]["parts"]
    assert parts[0] == {"text": "They said hi.", "thought": True}
    assert {"thought": True, "text": "", "thoughtSignature": "gsig-alone"} in parts


# --- thinking in answers ---------------------------------------------------------------------


def _answer(provider: str, client: str, request: ChatRequest | None = None) -> dict[str, Any]:
    resp = get_codec(provider).decode_response(THINKING_RESPONSES[provider])
    return json.loads(json.dumps(encode_response(client, resp, None, request)))


@pytest.mark.parametrize("provider", FORMATS)
def test_answer_thinking_reaches_an_anthropic_client_as_thinking_blocks(provider: str) -> None:
    content = _answer(provider, "anthropic")["content"]
    own = provider == "anthropic"
    expected = [{"type": "thinking", "thinking": THINKING_TEXT, "signature": THINKING_SIGNATURE if own else ""}]
    if own:
        expected.append({"type": "redacted_thinking", "data": REDACTED_DATA})
    assert content == [*expected, {"type": "text", "text": STREAM_TEXT}]


@pytest.mark.parametrize("provider", FORMATS)
def test_answer_thinking_reaches_a_gemini_client_as_thought_parts(provider: str) -> None:
    parts = _answer(provider, "gemini")["candidates"][0]["content"]["parts"]
    thought: dict[str, Any] = {"text": THINKING_TEXT, "thought": True}
    assert parts == [thought, {"text": STREAM_TEXT}]  # signatures stay with their provider's own clients


@pytest.mark.parametrize("provider", FORMATS)
def test_answer_thinking_reaches_an_openai_client_as_reasoning_content(provider: str) -> None:
    message = _answer(provider, "openai")["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == (STREAM_TEXT, THINKING_TEXT)


@pytest.mark.parametrize("client", FORMATS)
@pytest.mark.parametrize("provider", FORMATS)
def test_a_client_that_did_not_ask_sees_no_thinking(client: str, provider: str) -> None:
    quiet = ChatRequest("m", [Message("user", [TextPart("hi")])])
    text = json.dumps(_answer(provider, client, quiet), ensure_ascii=False)
    assert STREAM_TEXT in text
    assert THINKING_TEXT not in text and "reasoning_content" not in text and '"thought"' not in text
    asked = anthropic_req(thinking={"type": "adaptive"})
    assert THINKING_TEXT in json.dumps(_answer(provider, client, asked), ensure_ascii=False)


@pytest.mark.parametrize("provider", FORMATS)
def test_reasoning_tokens_are_counted(provider: str) -> None:
    usage = get_codec(provider).decode_response(THINKING_RESPONSES[provider]).usage
    assert usage.reasoning_tokens == {"openai": 10, "anthropic": 0, "gemini": 10}[provider]
    assert (
        _answer(provider, "openai")["usage"]["completion_tokens_details"]["reasoning_tokens"] == usage.reasoning_tokens
    )
    gemini_usage = _answer(provider, "gemini")["usageMetadata"]
    assert gemini_usage.get("thoughtsTokenCount", 0) == usage.reasoning_tokens
    assert gemini_usage["candidatesTokenCount"] + usage.reasoning_tokens == usage.output_tokens
