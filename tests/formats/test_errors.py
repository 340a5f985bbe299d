"""Malformed bodies raise ``FormatError`` and untranslatable ones ``UnsupportedFeature``, naming the field."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kaixu.formats import FormatError, UnsupportedFeature, get_codec
from kaixu.formats.canonical import (
    ChatRequest,
    ImagePart,
    Message,
    ResponseFormat,
    StreamError,
    TextPart,
    ToolCall,
)
from kaixu.formats.fronts import error_body

USER = {"role": "user", "content": "hi"}


def decode_error(fmt: str, body: Any, **url: Any) -> FormatError:
    with pytest.raises(FormatError) as err:
        get_codec(fmt).decode_request(body, **url)
    return err.value


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"messages": [USER]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": {"role": "user"}}, "messages"),
        ({"model": "m", "messages": [USER, {"role": "robot", "content": "x"}]}, "messages[1].role"),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video"}]}],
            },
            "messages[0].content[1].type",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "m", "messages": [USER], "temperature": "hot"}, "temperature"),
        ({"model": "m", "messages": [USER], "max_tokens": 1.5}, "max_tokens"),
        ({"model": "m", "messages": [USER], "stop": ["a", 1]}, "stop[1]"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}],
                    }
                ],
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"model": "m", "messages": [USER], "response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {"model": "m", "messages": [USER], "tools": [{"type": "function", "function": {}}]},
            "tools[0].function.name",
        ),
    ],
)
def test_openai_malformed(body: Any, field: str) -> None:
    err = decode_error("openai", body)
    assert err.field == field
    assert str(err) == f"{field}: {err.message}"
    assert not isinstance(err, UnsupportedFeature)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tokens": 5, "messages": [USER]}, "model"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": [{"role": "developer", "content": "x"}]}, "messages[0].role"),
        (
            {"model": "m", "messages": [USER, {"role": "system", "content": [{"type": "image"}]}]},
            "messages[1].content[0].type",
        ),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "gif"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "ftp"}}]}],
            },
            "messages[0].content[0].source.type",
        ),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}],
            },
            "messages[0].content[0].tool_use_id",
        ),
        ({"model": "m", "messages": [USER], "system": [{"type": "image"}]}, "system[0].type"),
        ({"model": "m", "messages": [USER], "tool_choice": {"type": "maybe"}}, "tool_choice.type"),
        ({"model": "m", "messages": [USER], "tools": [{"name": "f"}]}, "tools[0].input_schema"),
    ],
)
def test_anthropic_malformed(body: Any, field: str) -> None:
    assert decode_error("anthropic", body).field == field


@pytest.mark.parametrize(
    ("body", "url", "field"),
    [
        ({"contents": []}, {}, "model"),
        ({"contents": {"parts": []}}, {"model": "g"}, "contents"),
        ({}, {"model": "g"}, "contents"),
        ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, {"model": "g"}, "contents[0].role"),
        ({"contents": [{"role": "user", "parts": [{"blob": 1}]}]}, {"model": "g"}, "contents[0].parts[0]"),
        ({"contents": [{"role": "user"}]}, {"model": "g"}, "contents[0].parts"),
        (
            {"contents": [{"role": "model", "parts": [{"functionCall": {"args": {}}}]}]},
            {"model": "g"},
            "contents[0].parts[0].functionCall.name",
        ),
        ({"contents": [], "generationConfig": {"topK": "many"}}, {"model": "g"}, "generationConfig.topK"),
    ],
)
def test_gemini_malformed(body: Any, url: dict[str, Any], field: str) -> None:
    assert decode_error("gemini", body, **url).field == field


def unsupported(fmt: str, req: ChatRequest) -> UnsupportedFeature:
    with pytest.raises(UnsupportedFeature) as err:
        get_codec(fmt).encode_request(req)
    return err.value


def openai_req(**extra: Any) -> ChatRequest:
    return get_codec("openai").decode_request({"model": "m", "messages": [USER], **extra})


@pytest.mark.parametrize("target", ["anthropic", "gemini"])
def test_openai_only_fields(target: str) -> None:
    assert unsupported(target, openai_req(n=2)).field == "n"
    assert unsupported(target, openai_req(logprobs=True, top_logprobs=2)).field == "logprobs"
    audio = {
        "role": "user",
        "content": [{"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}],
    }
    req = get_codec("openai").decode_request({"model": "m", "messages": [audio]})
    err = unsupported(target, req)
    assert err.field == "messages[0].content[0]" and "input_audio" in err.message


@pytest.mark.parametrize("target", ["anthropic", "gemini"])
def test_harmless_openai_fields_are_dropped(target: str) -> None:
    req = openai_req(n=1, store=True, metadata={"k": "v"}, service_tier="flex", logprobs=False, seed=3)
    body = get_codec(target).encode_request(req)
    for key in ("n", "store", "metadata", "service_tier", "logprobs"):
        assert key not in body


def test_gemini_only_fields() -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "cachedContent": "cachedContents/abc",  # part of the prompt lives in Google's cache
    }
    req = get_codec("gemini").decode_request(body, model="g")
    assert unsupported("openai", req).field == "cachedContent"
    assert unsupported("anthropic", req).field == "cachedContent"
    audio = {"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "audio/wav", "data": "AA=="}}]}]}
    assert unsupported("openai", get_codec("gemini").decode_request(audio, model="g")).field == "messages[0].content[0]"


def test_anthropic_only_fields() -> None:
    base = {"model": "m", "max_tokens": 5, "messages": [USER]}
    req = get_codec("anthropic").decode_request(
        {**base, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    )
    assert unsupported("gemini", req).field == "tools"
    harmless = {
        **base,
        "metadata": {"user_id": "u"},
        "service_tier": "auto",
        "cache_control": {"type": "ephemeral"},
    }
    assert "service_tier" not in get_codec("openai").encode_request(get_codec("anthropic").decode_request(harmless))


def test_thinking_history_is_dropped_for_other_providers() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            USER,
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "t", "signature": "s"},
                    {"type": "text", "text": "a"},
                ],
            },
            USER,
        ],
    }
    req = get_codec("anthropic").decode_request(body)
    assert get_codec("openai").encode_request(req)["messages"][1] == {"role": "assistant", "content": "a"}


def test_canonical_features_a_target_cannot_express() -> None:
    msgs = [Message("user", [TextPart("hi")])]
    assert unsupported("openai", ChatRequest("m", msgs, top_k=5)).field == "top_k"
    assert unsupported("anthropic", ChatRequest("m", msgs, response_format=ResponseFormat("json_object"))).field == (
        "response_format"
    )
    assert unsupported("anthropic", ChatRequest("m", msgs, presence_penalty=0.5)).field == "presence_penalty"
    image_result = [
        *msgs,
        Message("assistant", [], [ToolCall("c1", "f", "{}")]),
        Message("tool", [ImagePart(url="https://x/y.png")], tool_call_id="c1"),
    ]
    assert unsupported("openai", ChatRequest("m", image_result)).field == "messages[2].content[0]"
    assert unsupported("gemini", ChatRequest("m", image_result)).field == "messages[2].content[0]"
    get_codec("anthropic").encode_request(ChatRequest("m", image_result))  # Anthropic can


def test_decode_time_unsupported_legacy_openai() -> None:
    err = decode_error("openai", {"model": "m", "messages": [{"role": "function", "name": "f", "content": "x"}]})
    assert isinstance(err, UnsupportedFeature) and err.field == "messages[0].role"


@pytest.mark.parametrize("target", ["anthropic", "gemini"])
def test_tool_arguments_that_are_not_an_object(target: str) -> None:
    req = ChatRequest("m", [Message("user", [TextPart("hi")]), Message("assistant", [], [ToolCall("c", "f", "[1]")])])
    with pytest.raises(FormatError) as err:
        get_codec(target).encode_request(req)
    assert err.value.field == "messages[1].tool_calls[0].arguments"


def test_module_error_body_defaults_to_openai_shape() -> None:
    assert error_body("anthropic", 400, "bad", "invalid_request_error")["type"] == "error"
    assert error_body("cohere", 400, "bad", "invalid_request_error") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}
    }
    with pytest.raises(KeyError):
        get_codec("cohere")


def test_empty_assistant_turns_are_dropped_where_rejected() -> None:
    body = {
        "model": "m",
        "messages": [USER, {"role": "assistant", "content": ""}, USER, {"role": "assistant", "content": ""}],
    }
    req = get_codec("openai").decode_request(body)
    anthropic = get_codec("anthropic").encode_request(req)["messages"]
    assert [m["role"] for m in anthropic] == ["user", "user", "assistant"]  # a final empty turn is a prefill
    gemini = get_codec("gemini").encode_request(req)["contents"]
    assert [c["role"] for c in gemini] == ["user", "user"]  # Gemini rejects empty text parts and turns


@pytest.mark.parametrize(
    ("fmt", "body", "message"),
    [
        ("openai", None, "body: must be a JSON object, got null"),
        ("openai", {"model": "m", "messages": ["hi"]}, "messages[0]: must be a JSON object, got string"),
        ("openai", {"model": "m", "messages": {"role": "user"}}, "messages: must be an array, got object"),
        ("anthropic", {"model": "m", "max_tokens": 5, "messages": [[USER]]}, "must be a JSON object, got array"),
    ],
)
def test_messages_name_json_types_not_python_ones(fmt: str, body: Any, message: str) -> None:
    text = str(decode_error(fmt, body))
    assert message in text
    assert not re.search(r"\b(NoneType|dict|list|str|int|float|bool)\b", text)


@pytest.mark.parametrize(
    ("fmt", "event"),
    [
        ("openai", b'data: {"choices": ["x"]}\n\n'),
        ("anthropic", b'event: message_start\ndata: {"type": "message_start", "message": 5}\n\n'),
        ("gemini", b'data: {"candidates": [5]}\n\n'),
    ],
)
def test_a_malformed_upstream_event_is_described_without_python_words(fmt: str, event: bytes) -> None:
    decoder = get_codec(fmt).stream_decoder()
    events = decoder.feed(event) + decoder.close()
    errors = [event for event in events if isinstance(event, StreamError)]
    assert errors and errors[0].message.startswith("malformed upstream stream event"), events
    for word in ("Error:", "NoneType", "'list'", "object has no attribute", "Traceback"):
        assert word not in errors[0].message
