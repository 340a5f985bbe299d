"""Golden tests for the Gemini generateContent codec."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from typing import Any

import pytest

from kaixu.formats import get_codec
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
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageUpdate,
)
from kaixu.formats.errors import FormatError
from kaixu.formats.gemini import GeminiArrayReframer, GeminiStreamEncoder

from .clients import decode_stream, random_chunks
from .samples import (
    GEMINI_REQUEST,
    GEMINI_RESPONSE,
    GEMINI_RESPONSE_USAGE,
    GEMINI_STREAM_USAGE,
    GEMINI_TEXT_STREAM,
    GEMINI_TOOL_STREAM,
    IMAGE_URL,
    PNG_B64,
    WEATHER_SCHEMA,
)

codec = get_codec("gemini")

CANONICAL = ChatRequest(
    model="gemini-2.5-flash",
    system="You are a weather bot.\n\nAnswer in English.",
    messages=[
        Message(
            "user",
            [
                TextPart("Weather where this photo was taken, and in Tokyo?"),
                ImagePart(url=IMAGE_URL, media_type="image/jpeg"),
                ImagePart(data=PNG_B64, media_type="image/png"),
            ],
        ),
        Message(
            "assistant",
            [TextPart("Let me check both cities.")],
            [
                ToolCall("call_get_weather_0", "get_weather", '{"location":"Paris"}'),
                ToolCall("call_get_weather_1", "get_weather", '{"location":"Tokyo"}'),
            ],
        ),
        Message("tool", [TextPart('{"temp_c":21}')], tool_call_id="call_get_weather_0", name="get_weather"),
        Message("tool", [TextPart("rainy")], tool_call_id="call_get_weather_1", name="get_weather"),
        Message("user", [TextPart("Thanks! Summarise.")]),
    ],
    max_tokens=256,
    temperature=0.3,
    top_p=0.9,
    top_k=40,
    stop=["\n\nEND"],
    stream=True,
    tools=[Tool("get_weather", "Current weather", WEATHER_SCHEMA)],
    tool_choice="auto",
    include_usage=True,
    reasoning=Reasoning(mode="on", budget_tokens=1024),
    extra={"gemini": {"safetySettings": GEMINI_REQUEST["safetySettings"]}},
    source="gemini",
)


def test_decode_request_model_and_stream_come_from_the_url() -> None:
    assert codec.decode_request(GEMINI_REQUEST, model="gemini-2.5-flash", stream=True) == CANONICAL


def test_encode_request_exact() -> None:
    model_turn = json.loads(json.dumps(GEMINI_REQUEST["contents"][1]))
    model_turn["parts"][1]["thoughtSignature"] = "skip_thought_signature_validator"  # first call of the turn
    assert codec.encode_request(CANONICAL) == {
        "contents": [GEMINI_REQUEST["contents"][0], model_turn, GEMINI_REQUEST["contents"][2]],
        "systemInstruction": {"parts": [{"text": "You are a weather bot.\n\nAnswer in English."}]},
        "generationConfig": {
            "maxOutputTokens": 256,
            "temperature": 0.3,
            "topP": 0.9,
            "topK": 40,
            "stopSequences": ["\n\nEND"],
            "thinkingConfig": {"thinkingBudget": 1024},
        },
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Current weather",
                        "parametersJsonSchema": WEATHER_SCHEMA,
                    }
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        "safetySettings": GEMINI_REQUEST["safetySettings"],
    }


def test_snake_case_request_is_accepted() -> None:
    body = {
        "system_instruction": {"parts": [{"text": "sys"}]},
        "contents": [
            {
                "role": "user",
                "parts": [{"text": "hi"}, {"inline_data": {"mime_type": "image/png", "data": "AA=="}}],
            }
        ],
        "generation_config": {"max_output_tokens": 5, "response_mime_type": "application/json"},
        "safety_settings": [],
    }
    req = codec.decode_request(body, model="g")
    assert req.system == "sys" and req.max_tokens == 5
    assert req.messages == [Message("user", [TextPart("hi"), ImagePart(data="AA==", media_type="image/png")])]
    assert req.response_format == ResponseFormat("json_object")
    assert req.extra == {"gemini": {"safetySettings": []}}
    assert not req.stream


def test_function_response_shapes_and_given_ids() -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "go"}]},
            {"role": "model", "parts": [{"functionCall": {"id": "fc-1", "name": "f", "args": {}}}]},
            {
                "role": "user",
                "parts": [{"functionResponse": {"id": "fc-1", "name": "f", "response": {"error": "boom"}}}],
            },
        ]
    }
    req = codec.decode_request(body, model="g")
    assert req.messages[1].tool_calls == [ToolCall("fc-1", "f", "{}")]
    assert req.messages[2] == Message("tool", [TextPart("boom")], tool_call_id="fc-1", name="f", is_error=True)


def test_tool_results_are_matched_to_calls_by_id() -> None:
    req = ChatRequest(
        model="g",
        messages=[
            Message("user", [TextPart("go")]),
            Message("assistant", [], [ToolCall("call_1", "lookup", '{"q":"a"}')]),
            Message("tool", [TextPart('{"hits": 3}')], tool_call_id="call_1"),
        ],
    )
    contents = codec.encode_request(req)["contents"]
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "lookup", "response": {"hits": 3}}}],
    }
    req.messages[2].tool_call_id = "call_unknown"
    with pytest.raises(FormatError) as err:
        codec.encode_request(req)
    assert err.value.field == "messages[2].tool_call_id"


@pytest.mark.parametrize(
    ("config", "choice"),
    [
        ({"mode": "NONE"}, "none"),
        ({"mode": "ANY"}, "required"),
        ({"mode": "ANY", "allowedFunctionNames": ["f"]}, {"name": "f"}),
    ],
)
def test_tool_config(config: dict[str, Any], choice: Any) -> None:
    body = {"contents": [], "toolConfig": {"functionCallingConfig": config}}
    req = codec.decode_request(body, model="g")
    assert req.tool_choice == choice
    assert codec.encode_request(req)["toolConfig"] == body["toolConfig"]


def test_tool_config_gemini_only_modes_stay_in_extra() -> None:
    body = {
        "contents": [],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f", "g"]}},
    }
    req = codec.decode_request(body, model="g")
    assert req.tool_choice is None and req.extra == {"gemini": {"toolConfig": body["toolConfig"]}}
    assert codec.encode_request(req) == body


def test_decode_and_encode_response() -> None:
    resp = codec.decode_response(GEMINI_RESPONSE)
    assert replace(resp, created=0) == ChatResponse(
        id="mAitaLmkHPPlz7IPvtfUqQ4",
        model="gemini-2.5-flash",
        created=0,
        message=Message(
            "assistant",
            [TextPart("Let me check both cities.")],
            [
                ToolCall("call_get_weather_0_mAitaLmkHPPlz7IP", "get_weather", '{"location":"Paris"}'),
                ToolCall("call_get_weather_1_mAitaLmkHPPlz7IP", "get_weather", '{"location":"Tokyo"}'),
            ],
        ),
        finish_reason="tool_calls",
        usage=GEMINI_RESPONSE_USAGE,
    )
    assert codec.usage_from_response(GEMINI_RESPONSE) == GEMINI_RESPONSE_USAGE
    candidate = {k: v for k, v in GEMINI_RESPONSE["candidates"][0].items() if k != "safetyRatings"}
    usage = {k: v for k, v in GEMINI_RESPONSE["usageMetadata"].items() if k != "promptTokensDetails"}
    assert codec.encode_response(resp) == {
        **GEMINI_RESPONSE,
        "candidates": [candidate],
        "usageMetadata": usage,
    }


def test_blocked_prompt_and_safety_finish() -> None:
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}}
    resp = codec.decode_response(blocked)
    assert resp.finish_reason == "content_filter" and resp.message.parts == []
    assert codec.encode_response(resp)["candidates"] == [{"finishReason": "SAFETY", "index": 0}]
    maxed = {"candidates": [{"content": {"parts": [{"text": "cut"}], "role": "model"}, "finishReason": "MAX_TOKENS"}]}
    assert codec.decode_response(maxed).finish_reason == "length"


def test_stream_decode_text() -> None:
    prompt_only = UsageUpdate(Usage(19))
    events, decoder = decode_stream("gemini", [GEMINI_TEXT_STREAM])
    assert events == [
        MessageStart("tTCwacuEBMvnitYP06qsgQY", "gemini-2.5-flash"),
        prompt_only,  # repeated unchanged usageMetadata is reported once
        TextDelta("Hello"),
        TextDelta(" wörld, "),
        TextDelta("你好 👋"),
        UsageUpdate(GEMINI_STREAM_USAGE),
        MessageEnd("stop", GEMINI_STREAM_USAGE),
    ]
    assert decoder.usage == GEMINI_STREAM_USAGE


def test_stream_decode_parallel_calls_come_whole() -> None:
    rng = random.Random(11)
    for _ in range(20):
        events, _ = decode_stream("gemini", random_chunks(GEMINI_TOOL_STREAM, rng))
        calls = [e for e in events if isinstance(e, ToolCallStart | ToolCallDelta)]
        assert calls == [
            ToolCallStart(0, "call_get_weather_0_tTCwacuEBMvnitYP", "get_weather"),
            ToolCallDelta(0, '{"location":"Paris"}'),
            ToolCallStart(1, "call_get_weather_1_tTCwacuEBMvnitYP", "get_weather"),
            ToolCallDelta(1, '{"location":"Tokyo"}'),
        ]
        assert not any(isinstance(e, TextDelta) for e in events), "thought parts are not answer text"
        assert [e for e in events if isinstance(e, ThinkingDelta)] == [ThinkingDelta("Plan: two lookups.")]
        assert events[-1] == MessageEnd("tool_calls", GEMINI_STREAM_USAGE)


def test_stream_decode_error_and_truncation() -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    err = b"data: " + json.dumps(error).encode() + b"\r\n\r\n"
    assert decode_stream("gemini", [err])[0] == [StreamError("The model is overloaded.", "overloaded_error")]
    cut = GEMINI_TEXT_STREAM[: GEMINI_TEXT_STREAM.rindex(b"data:")]
    assert isinstance(decode_stream("gemini", [cut])[0][-1], StreamError)


def _chunks(raw: bytes) -> list[Any]:
    assert raw.endswith(b"\r\n\r\n")
    return [json.loads(block[6:]) for block in raw.decode().split("\r\n\r\n") if block]


def test_stream_encode_exact() -> None:
    encoder = codec.stream_encoder(ChatRequest(model="gemini-x"))
    events: list[StreamEvent] = [
        MessageStart("r1", "gemini-x-001"),
        TextDelta("Hi"),
        ToolCallStart(0, "c1", "f"),
        ToolCallDelta(0, '{"a":'),
        ToolCallDelta(0, "1}"),
        ToolCallStart(1, "c2", "g"),
        MessageEnd("tool_calls", Usage(5, 3, 0, 0, 1)),
    ]
    raw = b"".join(encoder.encode(e) for e in events) + encoder.close()
    meta = {"modelVersion": "gemini-x-001", "responseId": "r1"}
    calls = [{"functionCall": {"name": "f", "args": {"a": 1}}}, {"functionCall": {"name": "g", "args": {}}}]
    assert _chunks(raw) == [
        {"candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"}, "index": 0}], **meta},
        {
            "candidates": [{"content": {"parts": calls, "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {
                "promptTokenCount": 5,
                "candidatesTokenCount": 2,
                "totalTokenCount": 8,
                "thoughtsTokenCount": 1,
            },
            **meta,
        },
    ]


def test_stream_encode_bad_arguments_and_errors() -> None:
    encoder = codec.stream_encoder(ChatRequest(model="g"))
    events: list[StreamEvent] = [ToolCallStart(0, "c", "f"), ToolCallDelta(0, "{not json")]
    for event in events:
        assert encoder.encode(event) == b""
    error = _chunks(encoder.encode(MessageEnd("tool_calls")))[0]
    assert error["error"]["code"] == 500 and "tool_calls[0].arguments" in error["error"]["message"]
    limited = _chunks(codec.stream_encoder(ChatRequest(model="g")).encode(StreamError("slow down", "rate_limit_error")))
    assert limited == [{"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}]


def test_error_body_and_decode_error() -> None:
    body = codec.error_body(429, "Quota exceeded", "rate_limit_error")
    assert body == {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}
    assert codec.decode_error(429, json.dumps(body).encode()) == ("Quota exceeded", "rate_limit_error")
    assert codec.decode_error(400, json.dumps([body]).encode()) == ("Quota exceeded", "rate_limit_error")
    assert codec.decode_error(503, b"\xff\xfe garbage")[1] == "overloaded_error"


# --- JSON array framing (:streamGenerateContent without alt=sse) -----------------------------------


def _array(raw: bytes) -> list[Any]:
    """Google's framing, checked byte for byte: `[`, `\\n,\\r\\n` between elements, `\\n]`, 2-space indent."""
    assert raw.startswith(b'[{\n  "') and raw.endswith(b"\n}\n]")
    elements = json.loads(raw)
    assert raw.count(b"\n}\n,\r\n{\n") == len(elements) - 1
    return elements


def test_stream_encode_json_array_framing() -> None:
    events: list[StreamEvent] = [
        MessageStart("r1", "gemini-x-001"),
        TextDelta("Hi"),
        TextDelta(" there"),
        MessageEnd("stop", Usage(5, 3)),
    ]
    sse = codec.stream_encoder(ChatRequest(model="gemini-x"))
    array = GeminiStreamEncoder(ChatRequest(model="gemini-x"), framing="json_array")
    pieces = [array.encode(e) for e in events]
    assert pieces[0] == b"" and pieces[1].startswith(b'[{\n  "candidates": [') and pieces[2].startswith(b"\n,\r\n{")
    raw = b"".join(pieces) + array.close()
    assert _array(raw) == _chunks(b"".join(sse.encode(e) for e in events) + sse.close())
    failed = GeminiStreamEncoder(ChatRequest(model="g"), framing="json_array")
    raw = failed.encode(TextDelta("a")) + failed.encode(StreamError("slow down", "rate_limit_error")) + failed.close()
    assert _array(raw)[1] == {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}
    assert json.loads(GeminiStreamEncoder(ChatRequest(model="g"), framing="json_array").close()) == []


def test_array_reframer_keeps_every_event_and_meters_usage_at_any_split() -> None:
    expected = _chunks(GEMINI_TOOL_STREAM) + _chunks(GEMINI_TEXT_STREAM)
    whole = GEMINI_TOOL_STREAM + GEMINI_TEXT_STREAM
    rng = random.Random(5)
    for _ in range(20):
        reframer = GeminiArrayReframer()
        raw = b"".join(reframer.reframe(chunk) for chunk in random_chunks(whole, rng)) + reframer.reframe(b"")
        assert _array(raw) == expected  # thought parts and signatures included: nothing is dropped
        assert reframer.usage == GEMINI_STREAM_USAGE
    first_event = GEMINI_TEXT_STREAM[: GEMINI_TEXT_STREAM.index(b"\r\n\r\n") + 4]
    streaming = GeminiArrayReframer()
    assert json.loads(streaming.reframe(first_event)[1:]) == _chunks(GEMINI_TEXT_STREAM)[0]  # at once
