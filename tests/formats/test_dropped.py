"""Vendor extras cannot break a translated request: fields that only tune the source vendor's machinery are
dropped and named (``Codec.dropped_fields``); fields that change the answer stay a 400 naming them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from kaixu.formats import UnsupportedFeature, droppable, get_codec
from kaixu.formats.canonical import ChatRequest, Message, TextPart

DOCS = Path(__file__).resolve().parents[2] / "docs" / "compatibility.md"
TOOL = {"name": "read_file", "description": "Read a file", "input_schema": {"type": "object", "properties": {}}}
EPHEMERAL = {"type": "ephemeral"}

# An agent-style Anthropic request, written from the Messages API reference (not from any client's texts).
AGENT_BODY: dict[str, Any] = {
    "model": "claude-test",
    "max_tokens": 200,
    "stream": True,
    "system": [
        {"type": "text", "text": "You are a coding agent."},
        {"type": "text", "text": "Work in /repo.", "cache_control": EPHEMERAL},
    ],
    "tools": [TOOL, {**TOOL, "name": "write_file", "cache_control": EPHEMERAL, "eager_input_streaming": True}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Fix the bug.", "cache_control": EPHEMERAL}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "read_file", "input": {}}]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [{"type": "text", "text": "def f(): ...", "cache_control": EPHEMERAL}],
                }
            ],
        },
        {"role": "system", "content": "The user prefers small diffs.", "cache_control": EPHEMERAL},
    ],
    "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
    "metadata": {"user_id": "user-1"},
    "service_tier": "auto",
    "cache_control": EPHEMERAL,
}
AGENT_DROPPED = [
    "context_management",
    "service_tier",
    "cache_control",
    "system[1].cache_control",
    "messages[0].content[0].cache_control",
    "messages[2].content[0].content[0].cache_control",
    "messages[3].cache_control",
    "tools[1].cache_control",
    "tools[1].eager_input_streaming",
]


@pytest.mark.parametrize("target", ["openai", "gemini"])
def test_anthropic_agent_extras_are_dropped_and_named(target: str) -> None:
    req = get_codec("anthropic").decode_request(AGENT_BODY)
    codec = get_codec(target)
    expected = AGENT_DROPPED + (["metadata.user_id"] if target == "gemini" else [])  # OpenAI has `user`
    assert codec.dropped_fields(req) == expected
    wire = json.dumps(codec.encode_request(req))
    for name in ("cache_control", "context_management", "service_tier", "eager_input_streaming", "ephemeral"):
        assert name not in wire


def test_same_format_keeps_the_top_level_extras() -> None:
    req = get_codec("anthropic").decode_request(AGENT_BODY)
    body = get_codec("anthropic").encode_request(req)
    assert body["context_management"] == AGENT_BODY["context_management"]
    assert body["cache_control"] == EPHEMERAL


def openai_request(**fields: Any) -> ChatRequest:
    return get_codec("openai").decode_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})


def test_openai_vendor_fields_are_dropped_and_named() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    req = openai_request(
        prompt_cache_key="k",
        safety_identifier="s",
        store=False,
        metadata={"a": "b"},
        service_tier="flex",
        verbosity="low",
        user="u",
        parallel_tool_calls=False,
        tools=tools,
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
        n=1,
    )
    extras = [
        "prompt_cache_key",
        "safety_identifier",
        "store",
        "metadata",
        "service_tier",
        "verbosity",
        "n",
        "stream_options.include_obfuscation",
    ]
    assert get_codec("gemini").dropped_fields(req) == [*extras, "user", "parallel_tool_calls"]
    assert get_codec("anthropic").dropped_fields(req) == extras  # user -> metadata.user_id, parallel -> tool_choice
    body = get_codec("gemini").encode_request(req)
    assert not {"user", "parallel_tool_calls", "store", "metadata", "prompt_cache_key"} & set(body)
    assert get_codec("openai").dropped_fields(req) == []  # nothing is lost on the way to its own format


def test_gemini_vendor_fields_are_dropped_and_named() -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        "labels": {"team": "a"},
        "generationConfig": {"seed": 7, "candidateCount": 1},
    }
    req = get_codec("gemini").decode_request(body, model="g")
    assert get_codec("openai").dropped_fields(req) == ["safetySettings", "labels", "generationConfig.candidateCount"]
    assert get_codec("anthropic").dropped_fields(req) == [
        "safetySettings",
        "labels",
        "generationConfig.candidateCount",
        "generationConfig.seed",  # Anthropic sampling cannot be seeded: spelled as the client spelt it
    ]


def test_anthropic_parallel_tool_use_to_gemini_is_named_as_anthropic_spells_it() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [TOOL],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    }
    req = get_codec("anthropic").decode_request(body)
    assert get_codec("gemini").dropped_fields(req) == ["tool_choice.disable_parallel_tool_use"]


@pytest.mark.parametrize(
    ("fmt", "body", "field"),
    [
        ("openai", {"n": 2}, "n"),
        ("openai", {"logprobs": True}, "logprobs"),
        ("openai", {"web_search_options": {}}, "web_search_options"),
        ("openai", {"some_future_field": 1}, "some_future_field"),  # unknown: never dropped silently
        ("anthropic", {"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "mcp_servers"),
        ("gemini", {"cachedContent": "cachedContents/1"}, "cachedContent"),  # part of the prompt
        ("gemini", {"generationConfig": {"candidateCount": 2}}, "generationConfig.candidateCount"),
    ],
)
def test_fields_that_change_the_answer_stay_a_400(fmt: str, body: dict[str, Any], field: str) -> None:
    if fmt == "gemini":
        req = get_codec(fmt).decode_request({"contents": [{"parts": [{"text": "hi"}]}], **body}, model="g")
    else:
        base = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        req = get_codec(fmt).decode_request({**base, **body})
    target = "anthropic" if fmt != "anthropic" else "openai"
    for method in (get_codec(target).dropped_fields, get_codec(target).encode_request):
        with pytest.raises(UnsupportedFeature) as err:
            method(req)
        assert err.value.field == field


def test_a_request_built_in_code_names_lost_canonical_fields_canonically() -> None:
    req = ChatRequest("m", [Message("user", [TextPart("hi")])], seed=3)
    assert get_codec("anthropic").dropped_fields(req) == ["seed"]


def test_summary_is_bounded() -> None:
    paths = [f"messages[{i}].content[0].cache_control" for i in range(100)]
    text = droppable.summary(paths)
    assert len(text) <= droppable.MAX_SUMMARY
    assert text.startswith("messages[0].content[0].cache_control, messages[1]")
    kept = text.count("cache_control")
    assert text.endswith(f", ... (+{100 - kept} more)")
    assert droppable.summary(["a", "b"]) == "a, b"


def test_refusal_names_every_field() -> None:
    err = droppable.refusal(["context_management", "system[1].cache_control"], "openai")
    assert err.field == "context_management, system[1].cache_control"
    assert "translation.unsupported is reject" in str(err)


def test_every_droppable_field_is_documented() -> None:
    documented = set(re.findall(r"`([^`]+)`", DOCS.read_text()))
    for fmt, table in droppable.TABLES.items():
        missing = [key for key in table if key not in documented]
        assert not missing, f"{fmt} droppable fields missing from docs/compatibility.md: {missing}"
