"""Golden tests for the Anthropic Messages codec."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from typing import Any

from kaixu.formats import get_codec
from kaixu.formats.anthropic import DEFAULT_MAX_TOKENS
from kaixu.formats.canonical import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    MessageEnd,
    MessageStart,
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
    Usage,
    UsageUpdate,
)

from .clients import decode_stream, random_chunks, split_events
from .samples import (
    ANTHROPIC_REQUEST,
    ANTHROPIC_RESPONSE,
    ANTHROPIC_RESPONSE_USAGE,
    ANTHROPIC_STREAM_USAGE,
    ANTHROPIC_TEXT_STREAM,
    ANTHROPIC_TOOL_STREAM,
    IMAGE_URL,
    PNG_B64,
    WEATHER_SCHEMA,
)

codec = get_codec("anthropic")

CANONICAL = ChatRequest(
    model="claude-sonnet-4-5",
    system="You are a weather bot.\n\nAnswer in English.",
    messages=[
        Message(
            "user",
            [
                TextPart("Weather where this photo was taken, and in Tokyo?"),
                ImagePart(url=IMAGE_URL),
                ImagePart(data=PNG_B64, media_type="image/png"),
            ],
        ),
        Message(
            "assistant",
            [TextPart("Let me check both cities.")],
            [
                ToolCall("toolu_01A", "get_weather", '{"location":"Paris"}'),
                ToolCall("toolu_01B", "get_weather", '{"location":"Tokyo"}'),
            ],
        ),
        Message("tool", [TextPart('{"temp_c":21}')], tool_call_id="toolu_01A"),
        Message("tool", [TextPart("service unavailable")], tool_call_id="toolu_01B", is_error=True),
        Message("user", [TextPart("Thanks! Summarise.")]),
    ],
    max_tokens=1024,
    temperature=0.3,
    top_k=40,
    stop=["\n\nEND"],
    stream=True,
    tools=[Tool("get_weather", "Current weather", WEATHER_SCHEMA)],
    tool_choice="auto",
    parallel_tool_calls=True,
    user="user-42",
    include_usage=True,
    reasoning=Reasoning(mode="on", budget_tokens=2048, include_thoughts=True),
    unmodeled=["system[1].cache_control"],
    source="anthropic",
)


def test_decode_request() -> None:
    assert codec.decode_request(ANTHROPIC_REQUEST) == CANONICAL


def test_encode_request_exact() -> None:
    messages = json.loads(json.dumps(ANTHROPIC_REQUEST["messages"]))
    messages[2]["content"][1]["content"] = "service unavailable"  # one text block is sent as a string
    expected = {
        **ANTHROPIC_REQUEST,
        "system": "You are a weather bot.\n\nAnswer in English.",  # cache_control markers are not modelled
        "messages": messages,
    }
    # Thinking yields: Anthropic refuses it with temperature 0.3 and top_k, and in a tool loop whose
    # assistant turn starts without a thinking block (test_thinking_yields_to_what_anthropic_refuses_with_it).
    del expected["thinking"]
    assert codec.encode_request(CANONICAL) == expected


def test_default_max_tokens_and_tool_choice_variants() -> None:
    req = ChatRequest(model="m", messages=[Message("user", [TextPart("hi")])])
    assert codec.encode_request(req)["max_tokens"] == DEFAULT_MAX_TOKENS == 4096
    req.tools = [Tool("f", None, {"type": "object"})]
    for choice, wire in [
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"name": "f"}, {"type": "tool", "name": "f"}),
    ]:
        req.tool_choice = choice  # type: ignore[assignment]
        assert codec.encode_request(req)["tool_choice"] == wire
        assert codec.decode_request(codec.encode_request(req)).tool_choice == choice
    req.tool_choice, req.parallel_tool_calls = None, False
    assert codec.encode_request(req)["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_structured_output_maps_to_output_config() -> None:
    req = ChatRequest(model="m", messages=[Message("user", [TextPart("hi")])])
    req.response_format = ResponseFormat("json_schema", WEATHER_SCHEMA, "weather")
    body = codec.encode_request(req)
    closed = {**WEATHER_SCHEMA, "additionalProperties": False}  # structured outputs refuse open objects
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": closed}}
    assert codec.decode_request(body).response_format == ResponseFormat("json_schema", closed)


def test_history_thinking_documents_and_server_tools_are_kept_for_anthropic() -> None:
    body: dict[str, Any] = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x"}}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "ok"},
                ],
            },
        ],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
        "output_config": {"effort": "low"},
    }
    req = codec.decode_request(body)
    assert req.messages[1].parts[0] == ThinkingPart("hmm", "sig", format="anthropic")
    assert req.reasoning == Reasoning(effort="low")
    assert req.extra == {"anthropic": {"tools": body["tools"]}}
    assert codec.encode_request(req) == body


def test_decode_and_encode_response() -> None:
    resp = codec.decode_response(ANTHROPIC_RESPONSE)
    assert replace(resp, created=0) == ChatResponse(
        id="msg_01XFDUDYJgAACzvnptvVoYEL",
        model="claude-sonnet-4-5-20250929",
        created=0,
        message=Message(
            "assistant",
            [TextPart("Let me check both cities.")],
            [
                ToolCall("toolu_01A", "get_weather", '{"location":"Paris"}'),
                ToolCall("toolu_01B", "get_weather", '{"location":"Tokyo"}'),
            ],
        ),
        finish_reason="tool_calls",
        usage=ANTHROPIC_RESPONSE_USAGE,
    )
    assert codec.usage_from_response(ANTHROPIC_RESPONSE) == ANTHROPIC_RESPONSE_USAGE
    assert codec.encode_response(resp) == {
        **ANTHROPIC_RESPONSE,
        "usage": {
            "input_tokens": 93,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 1024,
            "output_tokens": 46,
        },
    }


def test_stop_sequence_round_trip() -> None:
    body = {**ANTHROPIC_RESPONSE, "stop_reason": "stop_sequence", "stop_sequence": "END", "content": []}
    resp = codec.decode_response(body)
    assert (resp.finish_reason, resp.stop_sequence) == ("stop", "END")
    assert codec.encode_response(resp)["stop_reason"] == "stop_sequence"


def test_stream_decode_text() -> None:
    start_usage = Usage(40, 1, 12, 3)
    events, decoder = decode_stream("anthropic", [ANTHROPIC_TEXT_STREAM])
    assert events == [
        MessageStart("msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "claude-sonnet-4-5-20250929"),
        UsageUpdate(start_usage),
        TextDelta("Hello"),
        TextDelta(" wörld, "),
        TextDelta("你好 👋"),
        UsageUpdate(ANTHROPIC_STREAM_USAGE),
        MessageEnd("stop", ANTHROPIC_STREAM_USAGE),
    ]
    assert decoder.usage == ANTHROPIC_STREAM_USAGE


def test_stream_decode_parallel_tools_after_thinking() -> None:
    rng = random.Random(9)
    for _ in range(20):
        events, _ = decode_stream("anthropic", random_chunks(ANTHROPIC_TOOL_STREAM, rng))
        assert events[2:-2] == [
            ThinkingDelta("Two cities."),
            ThinkingDelta(signature="EqQBCgIYAhIM", format="anthropic"),
            ToolCallStart(0, "toolu_01A", "get_weather"),
            ToolCallDelta(0, '{"lo'),
            ToolCallDelta(0, 'cation": "Paris"}'),
            ToolCallStart(1, "toolu_01B", "get_weather"),
            ToolCallDelta(1, '{"location": "Tokyo"}'),
        ]
        assert events[-1] == MessageEnd("tool_calls", ANTHROPIC_STREAM_USAGE)


def test_stream_decode_error_and_truncation() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    err = b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
    assert decode_stream("anthropic", [err])[0] == [StreamError("Overloaded", "overloaded_error")]
    cut = ANTHROPIC_TEXT_STREAM[: ANTHROPIC_TEXT_STREAM.index(b"event: message_delta")]
    assert isinstance(decode_stream("anthropic", [cut])[0][-1], StreamError)


def _events(raw: bytes) -> list[tuple[str | None, Any]]:
    return [(name, json.loads(data)) for name, data in split_events(raw)]


def test_stream_encode_exact() -> None:
    encoder = codec.stream_encoder(ChatRequest(model="claude-x"))
    events: list[StreamEvent] = [
        MessageStart("msg_1", "claude-x-1"),
        UsageUpdate(Usage(30, 0, 10)),
        TextDelta("Hi"),
        TextDelta("!"),
        ToolCallStart(0, "toolu_1", "f"),
        ToolCallDelta(0, '{"a":1}'),
        ToolCallStart(1, "toolu_2", "g"),
        MessageEnd("tool_calls", Usage(30, 7, 10)),
    ]
    raw = b"".join(encoder.encode(e) for e in events) + encoder.close()
    usage = {"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 10}

    def block_start(index: int, block: dict[str, Any]) -> tuple[str, Any]:
        return "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}

    def delta(index: int, value: dict[str, Any]) -> tuple[str, Any]:
        return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": value}

    def stop(index: int) -> tuple[str, Any]:
        return "content_block_stop", {"type": "content_block_stop", "index": index}

    message: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x-1",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 0},
    }
    assert _events(raw) == [
        ("message_start", {"type": "message_start", "message": message}),
        block_start(0, {"type": "text", "text": ""}),
        delta(0, {"type": "text_delta", "text": "Hi"}),
        delta(0, {"type": "text_delta", "text": "!"}),
        stop(0),
        block_start(1, {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}),
        delta(1, {"type": "input_json_delta", "partial_json": '{"a":1}'}),
        stop(1),
        block_start(2, {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}}),
        stop(2),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {**usage, "output_tokens": 7},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_stream_encode_stop_sequence_and_error() -> None:
    encoder = codec.stream_encoder(ChatRequest(model="m"))
    raw = encoder.encode(TextDelta("x")) + encoder.encode(MessageEnd("stop", None, "END"))
    assert _events(raw)[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    error = codec.stream_encoder(ChatRequest(model="m")).encode(StreamError("Overloaded", "overloaded_error"))
    assert _events(error) == [
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    ]


def test_error_body_and_decode_error() -> None:
    body = codec.error_body(529, "Overloaded", "overloaded_error")
    assert body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert codec.decode_error(529, json.dumps(body).encode()) == ("Overloaded", "overloaded_error")
    assert codec.decode_error(529, b"not json") == ("not json", "overloaded_error")


def test_stream_usage_merges_field_by_field() -> None:
    """A message_delta repeating input_tokens without the cache fields keeps the cached counts."""
    start = {
        "type": "message_start",
        "message": {"id": "m", "model": "c", "usage": {"input_tokens": 5, "cache_read_input_tokens": 100}},
    }
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 5, "output_tokens": 7},
    }
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in (start, delta, {"type": "message_stop"}))
    events, decoder = decode_stream("anthropic", [raw])
    assert events[-1] == MessageEnd("stop", Usage(105, 7, 100))
    assert decoder.usage == Usage(105, 7, 100)
