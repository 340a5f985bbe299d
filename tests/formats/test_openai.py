"""Golden tests for the OpenAI Chat Completions codec."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kaixu.formats import get_codec
from kaixu.formats import openai as openai_mod
from kaixu.formats.canonical import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    MessageEnd,
    MessageStart,
    ResponseFormat,
    StreamError,
    StreamEvent,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageUpdate,
)

from .clients import decode_stream, random_chunks, split_events
from .samples import (
    IMAGE_URL,
    OPENAI_REQUEST,
    OPENAI_RESPONSE,
    OPENAI_RESPONSE_USAGE,
    OPENAI_STREAM_USAGE,
    OPENAI_TEXT_STREAM,
    OPENAI_TOOL_STREAM,
    PNG_B64,
    WEATHER_SCHEMA,
)

codec = get_codec("openai")

CANONICAL = ChatRequest(
    model="gpt-4o",
    system="You are a weather bot.\n\nAnswer in English.",
    messages=[
        Message(
            "user",
            [
                TextPart("Weather where this photo was taken, and in Tokyo?"),
                ImagePart(url=IMAGE_URL, detail="low"),
                ImagePart(data=PNG_B64, media_type="image/png"),
            ],
            name="alice",
        ),
        Message(
            "assistant",
            [],
            [
                ToolCall("call_abc", "get_weather", '{"location":"Paris"}'),
                ToolCall("call_def", "get_weather", '{"location":"Tokyo"}'),
            ],
        ),
        Message("tool", [TextPart('{"temp_c":21}')], tool_call_id="call_abc"),
        Message("tool", [TextPart("rainy")], tool_call_id="call_def"),
        Message("user", [TextPart("Thanks! Summarise.")]),
    ],
    max_tokens=256,
    temperature=0.3,
    top_p=0.9,
    stop=["\n\nEND"],
    stream=True,
    tools=[Tool("get_weather", "Current weather", WEATHER_SCHEMA)],
    tool_choice="auto",
    parallel_tool_calls=True,
    user="user-42",
    include_usage=True,
    seed=7,
    extra={"openai": {"store": False, "logprobs": True}},
    source="openai",
)


def test_decode_request() -> None:
    assert codec.decode_request(OPENAI_REQUEST) == CANONICAL


def test_encode_request_exact() -> None:
    body = codec.encode_request(CANONICAL)
    expected = {k: v for k, v in OPENAI_REQUEST.items() if k != "max_completion_tokens"}
    expected["max_completion_tokens"] = 256
    expected["messages"] = [
        {"role": "system", "content": "You are a weather bot.\n\nAnswer in English."},
        *OPENAI_REQUEST["messages"][2:],
    ]
    assert body == expected


def test_legacy_max_tokens_and_string_stop() -> None:
    req = codec.decode_request(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9, "stop": "x"}
    )
    assert req.max_tokens == 9 and req.stop == ["x"] and not req.stream


def test_named_tool_choice_and_json_schema() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA, "strict": True},
        },
    }
    req = codec.decode_request(body)
    assert req.tool_choice == {"name": "get_weather"}
    assert req.response_format == ResponseFormat("json_schema", WEATHER_SCHEMA, "weather", strict=True)
    assert codec.encode_request(req) == body


def test_unmodeled_fields_are_forwarded_to_openai() -> None:
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}],
            }
        ],
        "tools": [{"type": "custom", "name": "grammar"}],
        "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}},
        "stream_options": {"include_usage": True, "include_obfuscation": False},
        "stream": True,
        "reasoning_effort": "low",
    }
    assert codec.encode_request(codec.decode_request(body)) == body


def test_decode_response() -> None:
    resp = codec.decode_response(OPENAI_RESPONSE)
    assert resp == ChatResponse(
        id="chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        model="gpt-4o-2024-08-06",
        created=1741570283,
        message=Message(
            "assistant",
            [TextPart("Let me check both cities.")],
            [
                ToolCall("call_abc", "get_weather", '{"location":"Paris"}'),
                ToolCall("call_def", "get_weather", '{"location":"Tokyo"}'),
            ],
        ),
        finish_reason="tool_calls",
        usage=OPENAI_RESPONSE_USAGE,
    )
    assert codec.usage_from_response(OPENAI_RESPONSE) == OPENAI_RESPONSE_USAGE


def test_encode_response_exact() -> None:
    resp = codec.decode_response(OPENAI_RESPONSE)
    choice = OPENAI_RESPONSE["choices"][0]
    message = {k: v for k, v in choice["message"].items() if k != "annotations"}
    assert codec.encode_response(resp) == {
        "id": OPENAI_RESPONSE["id"],
        "object": "chat.completion",
        "created": OPENAI_RESPONSE["created"],
        "model": OPENAI_RESPONSE["model"],
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}],
        "usage": {
            "prompt_tokens": 1117,
            "completion_tokens": 46,
            "total_tokens": 1163,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 10},
        },
    }


def test_stream_decode_text() -> None:
    events, decoder = decode_stream("openai", [OPENAI_TEXT_STREAM])
    assert events == [
        MessageStart("chatcmpl-123", "gpt-4o-mini-2024-07-18"),
        TextDelta("Hello"),
        TextDelta(" wörld, "),
        TextDelta("你好 👋"),
        UsageUpdate(OPENAI_STREAM_USAGE),
        MessageEnd("stop", OPENAI_STREAM_USAGE),
    ]
    assert decoder.usage == OPENAI_STREAM_USAGE


def test_stream_decode_parallel_tools_any_chunking() -> None:
    import random

    expected = [
        MessageStart("chatcmpl-123", "gpt-4o-mini-2024-07-18"),
        ToolCallStart(0, "call_abc", "get_weather"),
        ToolCallDelta(0, '{"lo'),
        ToolCallDelta(0, 'cation": "Paris"}'),
        ToolCallStart(1, "call_def", "get_weather"),
        ToolCallDelta(1, '{"location": "Tokyo"}'),
        UsageUpdate(OPENAI_STREAM_USAGE),
        MessageEnd("tool_calls", OPENAI_STREAM_USAGE),
    ]
    rng = random.Random(5)
    for _ in range(20):
        assert decode_stream("openai", random_chunks(OPENAI_TOOL_STREAM, rng))[0] == expected


def test_stream_decode_truncated_and_error() -> None:
    head = OPENAI_TEXT_STREAM[: OPENAI_TEXT_STREAM.index(b"finish_reason") - 200]
    events, _ = decode_stream("openai", [head])
    assert isinstance(events[-1], StreamError)
    events, _ = decode_stream("openai", [b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'])
    assert events == [StreamError("overloaded", "server_error")]
    # finish_reason seen but no [DONE] (some compatible servers): still a clean end
    no_done = OPENAI_TEXT_STREAM.replace(b"data: [DONE]\n\n", b"")
    assert decode_stream("openai", [no_done])[0][-1] == MessageEnd("stop", OPENAI_STREAM_USAGE)


def _chunks(raw: bytes) -> list[Any]:
    return [data if data == "[DONE]" else json.loads(data) for _, data in split_events(raw)]


def test_stream_encode_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_mod, "now", lambda: 1700000000)
    encoder = codec.stream_encoder(ChatRequest(model="gpt-4o", include_usage=True))
    events: list[StreamEvent] = [
        MessageStart("chatcmpl-1", "gpt-4o-2024-08-06"),
        UsageUpdate(Usage(5)),
        TextDelta("Hi"),
        ToolCallStart(0, "call_1", "f"),
        ToolCallDelta(0, '{"a":'),
        ToolCallDelta(0, "1}"),
        MessageEnd("tool_calls", Usage(5, 3, 2)),
    ]
    raw = b"".join(encoder.encode(e) for e in events) + encoder.close()
    head = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-2024-08-06",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    assert _chunks(raw) == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hi"}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk({}, "tool_calls"),
        {
            **head,
            "choices": [],
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": 3,
                "total_tokens": 8,
                "prompt_tokens_details": {"cached_tokens": 2},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        },
        "[DONE]",
    ]


def test_stream_encode_without_include_usage_and_error() -> None:
    encoder = codec.stream_encoder(ChatRequest(model="m"))
    raw = encoder.encode(TextDelta("x")) + encoder.encode(MessageEnd("stop", Usage(1, 1))) + encoder.close()
    assert all(c == "[DONE]" or c["choices"] for c in _chunks(raw))
    error = codec.stream_encoder(ChatRequest(model="m")).encode(StreamError("boom", "api_error"))
    assert _chunks(error) == [{"error": {"message": "boom", "type": "api_error", "param": None, "code": None}}]


def test_error_body_and_decode_error() -> None:
    body = codec.error_body(429, "slow down", "rate_limit_error", "rate_limit_exceeded")
    assert body == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert codec.decode_error(429, json.dumps(body).encode()) == ("slow down", "rate_limit_error")
    assert codec.decode_error(502, b"<html>Bad gateway</html>") == ("<html>Bad gateway</html>", "api_error")
    assert codec.decode_error(500, b"") == ("HTTP 500", "api_error")
    assert codec.decode_error(400, b'{"error": "bad"}') == ("bad", "invalid_request_error")


def test_stream_decode_with_several_choices_translates_choice_zero() -> None:
    def chunk(index: int, content: str) -> bytes:
        body = {"id": "c", "model": "m", "choices": [{"index": index, "delta": {"content": content}}]}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    raw = chunk(0, "a") + chunk(1, "X") + chunk(0, "b") + b"data: [DONE]\n\n"
    events, _ = decode_stream("openai", [raw])
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a", "b"]


def _chunk_event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    event = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice], **extra}
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


@given(st.text(), st.booleans())
def test_a_plain_text_chunk_read_without_decoding_its_json_gives_what_decoding_gives(
    text: str, ascii_only: bool
) -> None:
    # the decoder reads a chunk of one piece of text for choice 0 with a regular expression (openai.py
    # `_PLAIN_TEXT_DELTA`): whatever the text holds (quotes, backslashes, escapes, non-ASCII), the events are
    # those of the chunk decoded as JSON
    first = _chunk_event({"role": "assistant", "content": ""})
    event = _chunk_event({"content": text})
    if ascii_only:
        event = json.dumps(json.loads(event), separators=(",", ":"))
    assert (openai_mod._PLAIN_TEXT_DELTA.search(event) is not None) is True
    decoder = get_codec("openai").stream_decoder()
    events = decoder.feed(f"data: {first}\n\ndata: {event}\n\n".encode())
    assert [e for e in events if isinstance(e, TextDelta)] == ([TextDelta(text)] if text else [])


@pytest.mark.parametrize(
    "event",
    [
        _chunk_event({"content": "a"}, finish="stop"),
        _chunk_event({"content": "a"}, usage={"prompt_tokens": 1, "completion_tokens": 1}),
        _chunk_event({"content": "a", "tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        _chunk_event({"content": "a", "reasoning_content": "r"}),
        json.dumps({"choices": [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]}),
    ],
)
def test_a_chunk_that_carries_more_than_text_is_decoded_in_full(event: str) -> None:
    assert openai_mod._PLAIN_TEXT_DELTA.search(event) is None or '"usage":{' in event
