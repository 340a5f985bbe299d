"""System messages at a position of the conversation: Anthropic's mid-conversation ``{"role": "system"}``
entries and OpenAI system messages after the first turn, and what each target makes of them."""

from __future__ import annotations

from typing import Any

import pytest

from kaixu.formats import FormatError, get_codec
from kaixu.formats.canonical import Message, TextPart
from kaixu.formats.gemini import SYSTEM_MARK

# Written from Anthropic's documented fields: a string or text blocks, optional cache_control, placed after a
# user turn and before an assistant turn (or last).
ANTHROPIC_BODY: dict[str, Any] = {
    "model": "claude-test",
    "max_tokens": 100,
    "system": "You are terse.",
    "messages": [
        {"role": "user", "content": "List the files."},
        {"role": "system", "content": "The working directory is now /tmp/b."},
        {"role": "assistant", "content": "a.txt"},
        {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
        {
            "role": "system",
            "content": [{"type": "text", "text": "Answer in French."}, {"type": "text", "text": "Be brief."}],
            "cache_control": {"type": "ephemeral"},
        },
    ],
}


def test_anthropic_system_messages_decode_at_their_position() -> None:
    req = get_codec("anthropic").decode_request(ANTHROPIC_BODY)
    assert req.system == "You are terse."
    assert [m.role for m in req.messages] == ["user", "system", "assistant", "user", "system"]
    assert req.messages[1] == Message("system", [TextPart("The working directory is now /tmp/b.")])
    assert req.messages[4] == Message("system", [TextPart("Answer in French.\n\nBe brief.")])  # as `system` joins
    assert req.unmodeled == ["messages[4].cache_control"]


def test_anthropic_system_messages_hold_text_only() -> None:
    body = {
        **ANTHROPIC_BODY,
        "messages": [ANTHROPIC_BODY["messages"][0], {"role": "system", "content": [{"type": "image"}]}],
    }
    with pytest.raises(FormatError) as err:
        get_codec("anthropic").decode_request(body)
    assert err.value.field == "messages[1].content[0].type"


def test_to_openai_they_are_system_messages_at_the_same_position() -> None:
    req = get_codec("anthropic").decode_request(ANTHROPIC_BODY)
    messages = get_codec("openai").encode_request(req)["messages"]
    assert messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "List the files."},
        {"role": "system", "content": "The working directory is now /tmp/b."},
        {"role": "assistant", "content": "a.txt"},
        {"role": "user", "content": "And now?"},
        {"role": "system", "content": "Answer in French.\n\nBe brief."},
    ]


def test_to_gemini_they_are_marked_user_text_where_they_stood() -> None:
    req = get_codec("anthropic").decode_request(ANTHROPIC_BODY)
    body = get_codec("gemini").encode_request(req)
    assert body["systemInstruction"] == {"parts": [{"text": "You are terse."}]}  # the cached prefix is unchanged
    assert body["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "List the files."},
                {"text": SYSTEM_MARK.format("The working directory is now /tmp/b.")},
            ],
        },
        {"role": "model", "parts": [{"text": "a.txt"}]},
        {
            "role": "user",
            "parts": [{"text": "And now?"}, {"text": "<system>\nAnswer in French.\n\nBe brief.\n</system>"}],
        },
    ]


def test_to_gemini_after_tool_results_and_after_a_model_turn() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
            {"role": "system", "content": "Tools are now read-only."},
        ],
    }
    contents = get_codec("gemini").encode_request(get_codec("anthropic").decode_request(body))["contents"]
    last = contents[-1]
    assert last["role"] == "user"
    assert [next(iter(p)) for p in last["parts"]] == ["functionResponse", "text"]
    assert last["parts"][1]["text"] == SYSTEM_MARK.format("Tools are now read-only.")

    req = get_codec("openai").decode_request(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "system", "content": "Switch to English."},
            ],
        }
    )
    contents = get_codec("gemini").encode_request(req)["contents"]
    assert contents[-1] == {"role": "user", "parts": [{"text": SYSTEM_MARK.format("Switch to English.")}]}


def test_openai_leading_system_messages_are_the_prompt_later_ones_keep_their_place() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "One."},
            {"role": "developer", "content": "Two."},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Three."}]},
        ],
    }
    req = get_codec("openai").decode_request(body)
    assert req.system == "One.\n\nTwo."
    assert [m.role for m in req.messages] == ["user", "system"]
    assert get_codec("openai").encode_request(req)["messages"][-1] == {"role": "system", "content": "Three."}
    # Anthropic takes role: system in messages only on its newest models and in some places: the top level
    # system gets it, in order.
    anthropic = get_codec("anthropic").encode_request(req)
    assert anthropic["system"] == "One.\n\nTwo.\n\nThree."
    assert [m["role"] for m in anthropic["messages"]] == ["user"]
