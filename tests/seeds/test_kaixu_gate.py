"""kAIxu Gate (seed 001): request examples from the directive, response/stream/error shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kaixu.formats import gemini
from kaixu.formats.canonical import (
    ChatRequest,
    FinishReason,
    Message,
    MessageEnd,
    ResponseFormat,
    TextPart,
    Tool,
    Usage,
)
from kaixu.formats.errors import FormatError
from kaixu.formats.seeds import SeedContext, kaixu_gate
from kaixu.formats.seeds.kaixu_gate import MARKDOWN_INSTRUCTION, TEXT_INSTRUCTION

from .helpers import answer, failing_events, happy_events, run, sse_events, tool_answer

DEFAULT = "gemini-2.5-flash"


def decode(body: dict[str, Any], **kwargs: Any) -> ChatRequest:
    kwargs.setdefault("default_model", DEFAULT)
    return kaixu_gate.decode_request(body, **kwargs)


def user(text: str) -> Message:
    return Message("user", [TextPart(text)])


def expected(*messages: Message, model: str = DEFAULT, **fields: Any) -> ChatRequest:
    """What the Gemini front door produces (it always asks for usage: every chunk carries it)."""
    return ChatRequest(model=model, messages=list(messages), include_usage=True, source="gemini", **fields)


# --- requests: the directive's examples ----------------------------------------------


def test_simplest_call() -> None:
    body = {"input": {"type": "text", "content": "Explain WebSockets in one paragraph."}}
    assert decode(body) == expected(user("Explain WebSockets in one paragraph."))


def test_global_system_applies_without_system() -> None:
    body = {"input": {"type": "text", "content": "What is a REST API?"}}
    assert decode(body, global_system="Be brief.") == expected(user("What is a REST API?"), system="Be brief.")


def test_multi_turn_messages() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "My name is Skye."},
            {"role": "assistant", "content": "Hello Skye, how can I help you?"},
            {"role": "user", "content": "What is my name?"},
        ]
    }
    assert decode(body) == expected(
        user("My name is Skye."),
        Message("assistant", [TextPart("Hello Skye, how can I help you?")]),
        user("What is my name?"),
    )


def test_system_overrides_global_system() -> None:
    body = {
        "system": "You are a concise legal assistant. Answer in plain English. Never give legal advice.",
        "input": {"type": "text", "content": "What is habeas corpus?"},
    }
    req = decode(body, global_system="GLOBAL")
    assert req == expected(user("What is habeas corpus?"), system=body["system"])


def test_blank_system_means_not_given() -> None:
    body = {"system": "  ", "input": {"type": "text", "content": "Hi"}}
    assert decode(body, global_system="GLOBAL").system == "GLOBAL"
    keep = {"system": "Keep my spacing.\n", "input": {"type": "text", "content": "Hi"}}
    assert decode(keep, global_system="GLOBAL").system == "Keep my spacing.\n"


def test_choosing_a_model() -> None:
    body = {
        "model": "gemini-2.5-pro",
        "input": {"type": "text", "content": "Analyse the tradeoffs of microservices vs monoliths."},
    }
    req = decode(body)
    assert req.model == "gemini-2.5-pro"
    assert decode(body, model="routed-model").model == "routed-model"


def test_generation_config_goes_verbatim() -> None:
    body = {
        "input": {"type": "text", "content": "Write me a short poem."},
        "generationConfig": {
            "temperature": 1.2,
            "topP": 0.95,
            "maxOutputTokens": 512,
            "stopSequences": ["END"],
        },
    }
    assert decode(body) == expected(
        user("Write me a short poem."), temperature=1.2, top_p=0.95, max_tokens=512, stop=["END"]
    )


def test_json_output_mode() -> None:
    body = {
        "output": {"format": "json"},
        "input": {
            "type": "text",
            "content": "Return a JSON object with fields: name, capital, population for France.",
        },
    }
    req = decode(body)
    assert req.response_format == ResponseFormat("json_object")
    assert req.system is None


@pytest.mark.parametrize(("fmt", "instruction"), [("text", TEXT_INSTRUCTION), ("Markdown", MARKDOWN_INSTRUCTION)])
def test_text_and_markdown_append_an_instruction(fmt: str, instruction: str) -> None:
    body = {"system": "You are terse.", "output": {"format": fmt}, "input": {"type": "text", "content": "Hi"}}
    req = decode(body)
    assert req.system == f"You are terse.\n\n{instruction}"
    assert req.response_format is None


def test_raw_gemini_contents_pass_through() -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]}
    assert decode(body) == expected(user("Hello"))


def test_openai_migration_example() -> None:
    body = {"system": "You are a helpful assistant.", "messages": [{"role": "user", "content": "Hello"}]}
    assert decode(body) == expected(user("Hello"), system="You are a helpful assistant.")


def test_system_messages_join_the_system_prompt() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello"},
            {"role": "model", "content": "Hi!"},
            {"role": "user", "content": "   "},
        ]
    }
    req = decode(body, global_system="GLOBAL")
    assert req.system == "GLOBAL\n\nYou are a helpful assistant."
    assert req.messages == [user("Hello"), Message("assistant", [TextPart("Hi!")])]


FULL_REFERENCE: dict[str, Any] = {
    "model": "gemini-2.5-flash",
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
    "system": "You are a helpful assistant.",
    "generationConfig": {"temperature": 0.7, "maxOutputTokens": 8192, "topP": 0.9, "stopSequences": []},
    "output": {"format": "json"},
    "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}],
    "tools": [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}},
                }
            ]
        },
        {"googleSearch": {}},
    ],
    "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
    "includeRaw": False,
}


def test_full_reference_body_lands_as_through_the_gemini_front_door() -> None:
    req = decode(FULL_REFERENCE, stream=True)
    native = {
        "contents": [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}],
        "systemInstruction": {"parts": [{"text": "You are a helpful assistant."}]},
        "generationConfig": {**FULL_REFERENCE["generationConfig"], "responseMimeType": "application/json"},
        "safetySettings": FULL_REFERENCE["safetySettings"],
        "tools": FULL_REFERENCE["tools"],
        "toolConfig": FULL_REFERENCE["toolConfig"],
    }
    assert req == gemini.decode_request(native, model="gemini-2.5-flash", stream=True)
    assert req.stream is True
    assert req.tools == [
        Tool(
            "get_weather",
            "Weather for a city",
            {"type": "object", "properties": {"city": {"type": "string"}}},
        )
    ]
    assert req.tool_choice == "required"
    assert req.extra["gemini"]["safetySettings"] == FULL_REFERENCE["safetySettings"]
    assert req.extra["gemini"]["tools"] == [{"googleSearch": {}}]
    # ... and a Gemini provider gets them back unchanged.
    body = gemini.encode_request(req)
    assert body["safetySettings"] == FULL_REFERENCE["safetySettings"]
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    assert body["toolConfig"] == FULL_REFERENCE["toolConfig"]


def test_gemini_system_instruction_is_the_base_unless_system_is_given() -> None:
    contents = [{"role": "user", "parts": [{"text": "Hello"}]}]
    native = {"contents": contents, "systemInstruction": {"parts": [{"text": "Native."}]}}
    assert decode(native, global_system="G").system == "Native."
    assert decode({**native, "system": "Mine."}, global_system="G").system == "Mine."
    fmt = {**native, "output": {"format": "text"}}
    assert decode(fmt).system == f"Native.\n\n{TEXT_INSTRUCTION}"


def test_include_raw_flag() -> None:
    assert kaixu_gate.include_raw({"includeRaw": True}) is True
    assert kaixu_gate.include_raw({}) is False


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "input"),
        ({"input": {"type": "text"}}, "input.content"),
        ({"input": {"type": "text", "content": 42}}, "input.content"),
        ({"input": {"type": "text", "content": ""}}, "input.content"),
        ({"input": {"type": "image", "content": "x"}}, "input.type"),
        ({"input": "Hello"}, "input"),
        ({"input": {"content": "a"}, "messages": [{"role": "user", "content": "b"}]}, "messages"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]},
            "messages[1].role",
        ),
        ({"messages": [{"role": "user", "content": ["a"]}]}, "messages[0].content"),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
        ({"messages": "Hello"}, "messages"),
        ({"contents": [{"role": "user"}]}, "contents[0].parts"),
        (
            {"contents": [{"role": "user", "parts": [{"text": "a"}]}], "generationConfig": []},
            "generationConfig",
        ),
        (
            {"input": {"content": "a"}, "generationConfig": {"temperature": "hot"}},
            "generationConfig.temperature",
        ),
        ({"input": {"content": "a"}, "output": {"format": "xml"}}, "output.format"),
        ({"input": {"content": "a"}, "output": "json"}, "output"),
        ({"input": {"content": "a"}, "includeRaw": "yes"}, "includeRaw"),
        ({"input": {"content": "a"}, "system": 1}, "system"),
        ({"input": {"content": "a"}, "model": 5}, "model"),
    ],
)
def test_validation_errors_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(FormatError) as exc:
        decode(body)
    assert exc.value.field == field


def test_model_required_without_a_default() -> None:
    with pytest.raises(FormatError) as exc:
        kaixu_gate.decode_request({"input": {"content": "a"}})
    assert exc.value.field == "model"


# --- responses -----------------------------------------------------------------------


def test_response_shape() -> None:
    resp = answer(usage=Usage(input_tokens=14, output_tokens=120))
    assert kaixu_gate.encode_response(resp) == {
        "ok": True,
        "model": "gemini-2.5-flash",
        "text": "The answer from the model...",
        "finishReason": "STOP",
        "usage": {"promptTokens": 14, "candidatesTokens": 120, "thoughtsTokens": 0, "totalTokens": 134},
    }


def test_thoughts_are_split_out_of_candidates_and_model_is_echoed() -> None:
    resp = answer(usage=Usage(input_tokens=10, output_tokens=50, reasoning_tokens=30))
    out = kaixu_gate.encode_response(resp, SeedContext(model="gemini-2.5-pro"))
    assert out["model"] == "gemini-2.5-pro"
    assert out["usage"] == {
        "promptTokens": 10,
        "candidatesTokens": 20,
        "thoughtsTokens": 30,
        "totalTokens": 60,
    }


def test_function_calls_only_when_present() -> None:
    out = kaixu_gate.encode_response(tool_answer())
    assert out["finishReason"] == "STOP"
    assert out["text"] == ""
    assert out["functionCalls"] == [{"name": "get_weather", "args": {"location": "Paris"}}]
    assert "functionCalls" not in kaixu_gate.encode_response(answer())


def test_include_raw_adds_the_gemini_response() -> None:
    resp = answer()
    out = kaixu_gate.encode_response(resp, SeedContext(include_raw=True))
    assert out["raw"] == gemini.encode_response(resp)
    assert out["raw"]["candidates"][0]["content"]["parts"] == [{"text": "The answer from the model..."}]


def test_max_tokens_without_text_is_not_ok_like_the_seed() -> None:
    resp = answer("", finish_reason="length", usage=Usage(5, 100, reasoning_tokens=100))
    out = kaixu_gate.encode_response(resp)
    assert out["ok"] is False
    assert out["finishReason"] == "MAX_TOKENS"
    assert "maxOutputTokens" in out["error"]
    assert set(out) == {"ok", "error", "model", "finishReason", "usage"}
    assert kaixu_gate.encode_response(answer("cut", finish_reason="length"))["ok"] is True


@pytest.mark.parametrize("finish", ["stop", "length", "tool_calls", "content_filter", "error"])
def test_finish_reasons_match_the_gemini_codec(finish: FinishReason) -> None:
    resp = answer("x", finish_reason=finish)
    native = gemini.encode_response(resp)["candidates"][0]["finishReason"]
    assert kaixu_gate.encode_response(resp)["finishReason"] == native


# --- streaming -----------------------------------------------------------------------


def documented_python_client(raw: bytes) -> tuple[str, bool]:
    """The directive's httpx loop, verbatim in logic: returns (printed text, saw [DONE])."""
    printed = ""
    buffer = raw.decode()
    while "\n" in buffer:
        line, buffer = buffer.split("\n", 1)
        if not line.startswith("data: "):
            continue
        data_raw = line[6:].strip()
        if data_raw == "[DONE]":
            return printed, True
        try:
            data = json.loads(data_raw)
            parts = data.get("candidates", [{}])[0].get("content", {}).get("parts", [])
            printed += "".join(p.get("text", "") for p in parts if not p.get("thought"))
        except Exception:
            pass
    return printed, False


def test_stream_is_gemini_chunks_then_done() -> None:
    req = decode({"input": {"content": "Write a 500-word essay on stoicism."}}, stream=True)
    raw = run(kaixu_gate.CODEC.stream_encoder(req), happy_events())
    events = sse_events(raw)
    assert events[-1] == (None, "[DONE]")
    chunks = [data for _, data in events[:-1]]
    assert all(name is None for name, _ in events)
    assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks[:3]] == [
        "Stoicism ",
        "is a ",
        "philosophy — ü.",
    ]
    last = chunks[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"] == {
        "promptTokenCount": 14,
        "candidatesTokenCount": 100,
        "totalTokenCount": 134,
        "thoughtsTokenCount": 20,
    }
    assert documented_python_client(raw) == ("Stoicism is a philosophy — ü.", True)


def test_stream_error_is_a_gemini_error_chunk_then_done() -> None:
    req = decode({"input": {"content": "Hi"}}, stream=True)
    events = sse_events(run(kaixu_gate.CODEC.stream_encoder(req), failing_events()))
    assert events[-1] == (None, "[DONE]")
    error = events[-2][1]["error"]
    assert error["status"] == "INTERNAL"
    assert "ended before" in error["message"]


def test_stream_close_is_idempotent() -> None:
    encoder = kaixu_gate.CODEC.stream_encoder(decode({"input": {"content": "Hi"}}))
    encoder.encode(MessageEnd("stop"))
    assert encoder.close().endswith(b"data: [DONE]\n\n")
    assert encoder.close() == b""


# --- GET endpoints, errors, codec ----------------------------------------------------


def test_health_body() -> None:
    assert kaixu_gate.health_body(True, True, False) == {
        "ok": True,
        "keyConfigured": True,
        "authConfigured": True,
        "openGate": False,
    }


def test_models_body() -> None:
    assert kaixu_gate.models_body(["gemini-2.5-flash", "gemini-2.5-pro"], "gemini-2.5-flash") == {
        "ok": True,
        "defaultModel": "gemini-2.5-flash",
        "models": [
            {"id": "gemini-2.5-flash", "label": "gemini-2.5-flash"},
            {"id": "gemini-2.5-pro", "label": "gemini-2.5-pro"},
        ],
    }
    assert "defaultModel" not in kaixu_gate.models_body([])


def test_error_body() -> None:
    assert kaixu_gate.CODEC.error_body(401, "Unauthorized", "authentication_error") == {
        "ok": False,
        "error": "Unauthorized",
    }


def test_provider_half_is_not_implemented() -> None:
    with pytest.raises(NotImplementedError):
        kaixu_gate.CODEC.encode_request(ChatRequest(model="m"))
    with pytest.raises(NotImplementedError):
        kaixu_gate.CODEC.stream_decoder()
