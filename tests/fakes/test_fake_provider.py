"""Tests for the fake LLM provider, with each official SDK pointed straight at it.

Why: the fake is the oracle the gateway is tested against. If the real SDKs cannot parse what it
sends (JSON, SSE, tool calls) then every gateway test built on it proves nothing, so the SDKs are the
judges here. Fault injection is checked with plain httpx, which shows exactly what reaches the wire.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types

from tests.fakes.provider import FakeProvider, Fault
from tests.harness import wait_for
from tests.tls import make_tls_files

REPO_ROOT = Path(__file__).resolve().parents[2]

OPENAI_TOOLS: Any = [  # Any: the SDKs' TypedDicts add nothing to a test fixture
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {"type": "object", "properties": {"echo": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Time in a city.",
            "parameters": {"type": "object", "properties": {"echo": {"type": "string"}}},
        },
    },
]
ANTHROPIC_TOOLS: Any = [
    {"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object"}},
    {"name": "get_time", "description": "Time.", "input_schema": {"type": "object"}},
]


def ntok(text: str) -> int:
    """The fake's documented per-text token estimate."""
    return max(1, math.ceil(len(text) / 4))


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeProvider) -> FakeProvider:
    """The shared server, reset: one bound port for the module keeps the file fast."""
    server.clear()
    server.clear_faults()
    server.default_fault = None
    return server


@pytest.fixture
def oai(fake: FakeProvider) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=fake.base_url + "/v1", api_key="sk-test", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def claude(fake: FakeProvider) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=fake.base_url, api_key="sk-ant-test", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def gemini(fake: FakeProvider) -> genai.Client:
    return genai.Client(api_key="g-test", http_options=types.HttpOptions(base_url=fake.base_url))


def chat_body(text: str = "hello world", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


# ------------------------------------------------------------------------------------------------
# OpenAI
# ------------------------------------------------------------------------------------------------


def test_openai_sync_json(fake: FakeProvider, oai: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello world"},
    ]
    resp = oai.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "gpt-4o-mini"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "echo: hello world"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == (ntok("be brief") + 3) + (ntok("hello world") + 3)
    assert resp.usage.completion_tokens == 3 + 1
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.prompt_tokens_details is not None
    assert resp.usage.prompt_tokens_details.cached_tokens == 0
    assert resp.usage.completion_tokens_details is not None
    assert resp.usage.completion_tokens_details.reasoning_tokens == 0
    (recorded,) = fake.requests
    assert recorded.method == "POST"
    assert recorded.path == "/v1/chat/completions"
    assert recorded.headers["authorization"] == "Bearer sk-test"
    assert recorded.json["messages"][0] == {"role": "system", "content": "be brief"}
    assert json.loads(recorded.body) == recorded.json


async def test_openai_async_json(fake: FakeProvider) -> None:
    client = openai.AsyncOpenAI(base_url=fake.base_url + "/v1", api_key="sk-test", max_retries=0)
    try:
        resp = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "async hi"}])
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "async stream"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    finally:
        await client.close()
    assert resp.choices[0].message.content == "echo: async hi"
    assert text == "echo: async stream"


def test_openai_stream_with_usage(fake: FakeProvider, oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello there world"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 5
    assert "".join(pieces) == "echo: hello there world"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4 + 1
    assert chunks[-1].usage.prompt_tokens == ntok("hello there world") + 3


def test_openai_stream_wire_format(fake: FakeProvider) -> None:
    """The raw bytes: ``data:`` events, ``[DONE]``, chunked encoding; no usage chunk unless asked."""
    with httpx.stream("POST", fake.base_url + "/v1/chat/completions", json=chat_body(stream=True)) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["transfer-encoding"] == "chunked"
        raw = resp.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all("usage" not in p for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


def test_openai_tool_call_json(fake: FakeProvider, oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "weather in Paris"}],
        tools=OPENAI_TOOLS,
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    arguments = call.function.arguments  # type: ignore[union-attr]
    assert json.loads(arguments) == {"echo": "weather in Paris"}
    assert resp.usage is not None
    assert resp.usage.completion_tokens == math.ceil(len(arguments) / 4)
    tools_json = json.dumps(OPENAI_TOOLS, separators=(",", ":"))
    assert resp.usage.prompt_tokens == ntok("weather in Paris") + 3 + ntok(tools_json)


def test_openai_parallel_tool_call_stream_reassembly(fake: FakeProvider, oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "run these in parallel please"}],
        tools=OPENAI_TOOLS,
        stream=True,
    )
    calls: dict[int, dict[str, Any]] = {}
    fragments: dict[int, int] = {}
    finish = None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            slot = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            if delta.id:
                slot["id"] = delta.id
            if delta.function and delta.function.name:
                slot["name"] = delta.function.name
            if delta.function and delta.function.arguments:
                slot["arguments"] += delta.function.arguments
                fragments[delta.index] = fragments.get(delta.index, 0) + 1
    assert finish == "tool_calls"
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert all(c["id"] and c["id"].startswith("call_") for c in calls.values())
    for call in calls.values():
        assert json.loads(call["arguments"]) == {"echo": "run these in parallel please"}
    assert all(n >= 2 for n in fragments.values())


def test_openai_tool_result_and_multimodal(fake: FakeProvider, oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
        ],
        tools=OPENAI_TOOLS,
    )
    assert resp.choices[0].message.content == "tool said: sunny, 21C"
    assert resp.choices[0].finish_reason == "stop"
    multimodal = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ],
    )
    assert multimodal.choices[0].message.content == "echo: describe [image]"


def test_openai_json_mode_max_tokens_and_stop(fake: FakeProvider, oai: openai.OpenAI) -> None:
    as_json = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "give json"}],
        response_format={"type": "json_object"},
    )
    assert json.loads(as_json.choices[0].message.content or "") == {"echo": "give json"}
    cut = oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three four"}], max_tokens=2
    )
    assert cut.choices[0].message.content == "echo: one"
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None
    assert cut.usage.completion_tokens == 2
    stopped = oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "alpha STOP beta"}], stop=["STOP"]
    )
    assert stopped.choices[0].message.content == "echo: alpha "
    assert stopped.choices[0].finish_reason == "stop"


def test_openai_embeddings_and_models(fake: FakeProvider, oai: openai.OpenAI) -> None:
    as_base64 = oai.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    as_float = oai.embeddings.create(model="text-embedding-3-small", input="alpha", encoding_format="float")
    assert fake.requests[0].json["encoding_format"] == "base64"  # the SDK's default
    assert [d.index for d in as_base64.data] == [0, 1]
    assert len(as_float.data[0].embedding) == 8
    assert as_base64.data[0].embedding == pytest.approx(as_float.data[0].embedding, abs=1e-6)
    assert as_base64.data[0].embedding != pytest.approx(as_base64.data[1].embedding)
    assert sum(x * x for x in as_float.data[0].embedding) == pytest.approx(1.0, abs=1e-4)
    assert as_base64.usage.prompt_tokens == ntok("alpha") + ntok("beta")
    models = oai.models.list()
    assert "gpt-4o-mini" in [m.id for m in models.data]
    assert oai.models.retrieve("gpt-4o").id == "gpt-4o"


def test_openai_bad_requests(fake: FakeProvider, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as missing:
        oai.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert missing.value.code is None
    assert missing.value.param == "messages"
    resp = httpx.post(
        fake.base_url + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    assert fake.requests[-1].json is None
    no_model = httpx.post(fake.base_url + "/v1/chat/completions", json={"messages": [{"role": "user"}]})
    assert no_model.status_code == 400
    assert no_model.json()["error"]["param"] == "model"
    unknown = httpx.get(fake.base_url + "/v2/nothing")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "invalid_request_error"


# ------------------------------------------------------------------------------------------------
# Anthropic
# ------------------------------------------------------------------------------------------------


def test_anthropic_create(fake: FakeProvider, claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        system="you are terse",
        messages=[{"role": "user", "content": "hello claude"}],
    )
    assert msg.id.startswith("msg_")
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.model == "claude-haiku-4-5"
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "echo: hello claude"
    assert msg.stop_reason == "end_turn"
    assert msg.stop_sequence is None
    assert msg.usage.input_tokens == (ntok("hello claude") + 3) + (ntok("you are terse") + 3)
    assert msg.usage.output_tokens == 3 + 1
    assert msg.usage.cache_read_input_tokens == 0
    recorded = fake.requests[-1]
    # anthropic>=2 sends the API key as a Bearer token (x-api-key is the documented alternative).
    assert recorded.headers["authorization"] == "Bearer sk-ant-test"
    assert "anthropic-version" in recorded.headers
    assert recorded.json["system"] == "you are terse"


def test_anthropic_stream(fake: FakeProvider, claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "stream to me"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: stream to me"
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 4 + 1
    assert final.usage.input_tokens == ntok("stream to me") + 3


def test_anthropic_stream_event_order(fake: FakeProvider) -> None:
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "order please"}],
    }
    resp = httpx.post(fake.base_url + "/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    names = [line.removeprefix("event: ") for line in resp.text.split("\n") if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 5,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_anthropic_tool_use(fake: FakeProvider, claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        tools=ANTHROPIC_TOOLS,
        messages=[{"role": "user", "content": "parallel lookups"}],
    )
    assert msg.stop_reason == "tool_use"
    assert [b.type for b in msg.content] == ["tool_use", "tool_use"]
    assert [b.name for b in msg.content] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    assert msg.content[0].input == {"echo": "parallel lookups"}  # type: ignore[union-attr]
    assert msg.content[0].id.startswith("toolu_")  # type: ignore[union-attr]
    with claude.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        tools=ANTHROPIC_TOOLS,
        messages=[{"role": "user", "content": "just one"}],
    ) as stream:
        partials = [e.partial_json for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert len(partials) >= 2
    assert json.loads("".join(partials)) == {"echo": "just one"}
    (block,) = final.content
    assert block.type == "tool_use"
    assert block.input == {"echo": "just one"}
    assert final.stop_reason == "tool_use"
    result = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        tools=ANTHROPIC_TOOLS,
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "rainy"}],
            },
        ],
    )
    assert result.content[0].text == "tool said: rainy"  # type: ignore[union-attr]


def test_anthropic_limits_count_tokens_and_models(fake: FakeProvider, claude: anthropic.Anthropic) -> None:
    cut = claude.messages.create(
        model="claude-haiku-4-5", max_tokens=2, messages=[{"role": "user", "content": "a b c d"}]
    )
    assert cut.stop_reason == "max_tokens"
    assert cut.content[0].text == "echo: a"  # type: ignore[union-attr]
    stopped = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        stop_sequences=["END"],
        messages=[{"role": "user", "content": "go END more"}],
    )
    assert stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == "END"
    assert stopped.content[0].text == "echo: go "  # type: ignore[union-attr]
    counted = claude.messages.count_tokens(model="claude-haiku-4-5", messages=[{"role": "user", "content": "count me"}])
    assert counted.input_tokens == ntok("count me") + 3
    assert "claude-haiku-4-5" in [m.id for m in claude.models.list()]
    missing = httpx.post(
        fake.base_url + "/v1/messages",
        json={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "x"}]},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert missing.status_code == 400
    assert missing.json()["type"] == "error"
    assert missing.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }


# ------------------------------------------------------------------------------------------------
# Gemini
# ------------------------------------------------------------------------------------------------

WEATHER_DECL = types.FunctionDeclaration(
    name="get_weather",
    description="Weather for a city.",
    parameters=types.Schema(type=types.Type.OBJECT, properties={"echo": types.Schema(type=types.Type.STRING)}),
)
TIME_DECL = types.FunctionDeclaration(name="get_time", description="Time in a city.")


def test_gemini_generate_content(fake: FakeProvider, gemini: genai.Client) -> None:
    resp = gemini.models.generate_content(
        model="gemini-2.5-flash",
        contents="hello gemini",
        config=types.GenerateContentConfig(system_instruction="be kind"),
    )
    assert resp.text == "echo: hello gemini"
    assert resp.candidates is not None
    assert resp.candidates[0].finish_reason == types.FinishReason.STOP
    assert resp.candidates[0].content is not None
    assert resp.candidates[0].content.role == "model"
    assert resp.model_version == "gemini-2.5-flash"
    assert resp.response_id
    usage = resp.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count == (ntok("hello gemini") + 3) + (ntok("be kind") + 3)
    assert usage.candidates_token_count == 3 + 1
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    recorded = fake.requests[-1]
    assert recorded.path.endswith("/models/gemini-2.5-flash:generateContent")
    assert recorded.headers["x-goog-api-key"] == "g-test"
    assert recorded.json["systemInstruction"]["parts"][0]["text"] == "be kind"


def test_gemini_stream(fake: FakeProvider, gemini: genai.Client) -> None:
    chunks = list(gemini.models.generate_content_stream(model="gemini-2.5-flash", contents="stream it now"))
    assert len(chunks) == 5
    assert "".join(c.text or "" for c in chunks) == "echo: stream it now"
    assert chunks[-1].candidates is not None
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[0].candidates is not None
    assert chunks[0].candidates[0].finish_reason is None
    assert chunks[-1].usage_metadata is not None
    assert chunks[-1].usage_metadata.candidates_token_count == 4 + 1
    assert fake.requests[-1].path.endswith(":streamGenerateContent?alt=sse")


def test_gemini_stream_wire_format_uses_crlf(fake: FakeProvider) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "crlf"}]}]}
    url = fake.base_url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    raw = httpx.post(url, json=body).text
    events = [e for e in raw.split("\r\n\r\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert json.loads(events[-1].removeprefix("data: "))["candidates"][0]["finishReason"] == "STOP"
    as_array = httpx.post(url.removesuffix("?alt=sse"), json=body).json()
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in as_array) == "echo: crlf"


def test_gemini_function_calls(fake: FakeProvider, gemini: genai.Client) -> None:
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER_DECL, TIME_DECL])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    resp = gemini.models.generate_content(model="gemini-2.5-flash", contents="weather in Oslo", config=config)
    assert resp.function_calls is not None
    (call,) = resp.function_calls
    assert call.name == "get_weather"
    assert call.args == {"echo": "weather in Oslo"}
    assert resp.candidates is not None
    assert resp.candidates[0].finish_reason == types.FinishReason.STOP
    chunks = list(
        gemini.models.generate_content_stream(model="gemini-2.5-flash", contents="do both in parallel", config=config)
    )
    assert len(chunks) == 1  # Gemini sends function calls whole
    assert [c.name for c in chunks[0].function_calls or []] == ["get_weather", "get_time"]
    answered = gemini.models.generate_content(
        model="gemini-2.5-flash",
        contents=[
            types.Content(role="user", parts=[types.Part.from_text(text="weather in Oslo")]),
            types.Content(role="model", parts=[types.Part(function_call=call)]),
            types.Content(
                role="user",
                parts=[types.Part.from_function_response(name="get_weather", response={"result": "snow"})],
            ),
        ],
        config=config,
    )
    assert answered.text == "tool said: snow"


def test_a_call_marker_picks_the_tool_and_its_arguments(
    fake: FakeProvider, oai: openai.OpenAI, claude: anthropic.Anthropic, gemini: genai.Client
) -> None:
    """`<<call NAME {json}>>` in the user's text: the fake calls that offered tool with those arguments (what
    bench/real_clients.py uses to make a coding agent read a file), in every format, JSON and streamed."""
    prompt = 'read it <<call get_time {"city": "Oslo", "n": 2}>> please'
    resp = oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], tools=OPENAI_TOOLS
    )
    (call,) = resp.choices[0].message.tool_calls or []
    assert call.function.name == "get_time"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Oslo", "n": 2}  # type: ignore[union-attr]
    with claude.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, tools=ANTHROPIC_TOOLS, messages=[{"role": "user", "content": prompt}]
    ) as stream:
        final = stream.get_final_message()
    (block,) = final.content
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("get_time", {"city": "Oslo", "n": 2})
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER_DECL, TIME_DECL])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    (chunk,) = gemini.models.generate_content_stream(model="gemini-2.5-flash", contents=prompt, config=config)
    assert [(c.name, c.args) for c in chunk.function_calls or []] == [("get_time", {"city": "Oslo", "n": 2})]
    # Without tools the marker is only text; a tool the request does not offer, or arguments that are not a
    # JSON object, are the test's mistake: a 400 that says so.
    plain = oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    assert plain.choices[0].message.content == "echo: " + prompt
    for bad, words in (("<<call get_date {}>>", "get_date"), ("<<call get_time [1]>>", "JSON object")):
        with pytest.raises(openai.BadRequestError, match=words):
            oai.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": bad}], tools=OPENAI_TOOLS
            )


def test_gemini_json_mode_limits_count_embed_models(fake: FakeProvider, gemini: genai.Client) -> None:
    as_json = gemini.models.generate_content(
        model="gemini-2.5-flash",
        contents="json please",
        config=types.GenerateContentConfig(response_mime_type="application/json"),
    )
    assert json.loads(as_json.text or "") == {"echo": "json please"}
    cut = gemini.models.generate_content(
        model="gemini-2.5-flash",
        contents="a b c d e",
        config=types.GenerateContentConfig(max_output_tokens=3),
    )
    assert cut.text == "echo: a b"
    assert cut.candidates is not None
    assert cut.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    counted = gemini.models.count_tokens(model="gemini-2.5-flash", contents="count these")
    assert counted.total_tokens == ntok("count these") + 3
    embedded = gemini.models.embed_content(model="gemini-embedding-001", contents=["x", "y", "x"])
    assert embedded.embeddings is not None
    vectors = [e.values for e in embedded.embeddings]
    assert len(vectors) == 3
    assert vectors[0] == vectors[2] != vectors[1]
    assert vectors[0] is not None
    assert len(vectors[0]) == 8
    assert "models/gemini-2.5-flash" in [m.name for m in gemini.models.list()]


def test_several_answers_are_each_generated_and_billed(
    fake: FakeProvider, oai: openai.OpenAI, gemini: genai.Client
) -> None:
    """OpenAI `n` and Gemini `candidateCount`, as the SDKs read them: the budget tests need an upstream that
    honours them (issue 18)."""
    one = oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a b"}])
    three = oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a b"}], n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.message.content for c in three.choices} == {"echo: a b"}
    assert one.usage is not None and three.usage is not None
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    stream = oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "a b"}], n=2, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    texts: dict[int, str] = {}
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
        usage = chunk.usage or usage
    assert texts == {0: "echo: a b", 1: "echo: a b"}
    assert usage is not None and usage.completion_tokens == 2 * one.usage.completion_tokens
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}], n=0)
    config = types.GenerateContentConfig(candidate_count=2)
    two = gemini.models.generate_content(model="gemini-2.5-flash", contents="a b", config=config)
    single = gemini.models.generate_content(model="gemini-2.5-flash", contents="a b")
    assert two.candidates is not None and len(two.candidates) == 2
    assert two.usage_metadata is not None and single.usage_metadata is not None
    assert two.usage_metadata.candidates_token_count == 2 * (single.usage_metadata.candidates_token_count or 0)


def test_gemini_v1beta_api_version(fake: FakeProvider) -> None:
    client = genai.Client(
        api_key="g-test", http_options=types.HttpOptions(base_url=fake.base_url, api_version="v1beta")
    )
    assert client.models.generate_content(model="gemini-2.5-pro", contents="beta").text == "echo: beta"
    assert fake.requests[-1].path == "/v1beta/models/gemini-2.5-pro:generateContent"


# ------------------------------------------------------------------------------------------------
# Faults
# ------------------------------------------------------------------------------------------------


def test_fault_429_with_retry_after(fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=429, retry_after=7))
    url = fake.base_url + "/v1/chat/completions"
    limited = httpx.post(url, json=chat_body())
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    error = limited.json()["error"]
    assert error["type"] == "requests"
    assert error["code"] == "rate_limit_exceeded"
    assert httpx.post(url, json=chat_body()).status_code == 200
    assert len(fake.requests) == 2


def test_fault_error_shapes_per_provider(fake: FakeProvider) -> None:
    anthropic_body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
    }
    gemini_body = {"contents": [{"parts": [{"text": "x"}]}]}
    gemini_url = fake.base_url + "/v1beta/models/gemini-2.5-flash:generateContent"
    cases: list[tuple[str, dict[str, Any], int, Any]] = [
        ("/v1/messages", anthropic_body, 529, ("error", "overloaded_error")),
        ("/v1/messages", anthropic_body, 429, ("error", "rate_limit_error")),
        ("/v1/messages", anthropic_body, 500, ("error", "api_error")),
        (gemini_url, gemini_body, 503, "UNAVAILABLE"),
        (gemini_url, gemini_body, 429, "RESOURCE_EXHAUSTED"),
        (gemini_url, gemini_body, 500, "INTERNAL"),
        ("/v1/chat/completions", chat_body(), 503, "server_error"),
    ]
    for path, body, status, expected in cases:
        url = path if path.startswith("http") else fake.base_url + path
        resp = httpx.post(url, json=body, headers={"x-fake-status": str(status)})
        assert resp.status_code == status
        payload = resp.json()
        if isinstance(expected, tuple):
            assert payload["type"] == "error"
            assert payload["error"]["type"] == expected[1]
        elif path == gemini_url:
            assert payload["error"]["code"] == status
            assert payload["error"]["status"] == expected
        else:
            assert payload["error"]["type"] == expected


def test_fault_503_twice_then_200(fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=503, times=2, path_contains="/chat/completions"))
    url = fake.base_url + "/v1/chat/completions"
    assert httpx.post(fake.base_url + "/v1/embeddings", json={"model": "m", "input": "x"}).status_code == 200
    assert [httpx.post(url, json=chat_body()).status_code for _ in range(3)] == [503, 503, 200]
    fake.add_fault(Fault(status=503, times=2, retry_after=0.01))
    client = openai.OpenAI(base_url=fake.base_url + "/v1", api_key="sk-test", max_retries=2)
    fake.clear()
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "retry"}])
    client.close()
    assert resp.choices[0].message.content == "echo: retry"
    assert len(fake.requests) == 3


def _read_events(resp: httpx.Response, separator: str = "\n\n") -> tuple[list[str], Exception | None]:
    """Collect SSE events until the stream ends or breaks; return them and the error, if any."""
    buffer = ""
    events: list[str] = []
    try:
        for text in resp.iter_text():
            buffer += text
            while separator in buffer:
                event, buffer = buffer.split(separator, 1)
                events.append(event)
    except httpx.HTTPError as exc:
        return events, exc
    return events, None


def test_fault_disconnect_after_events(fake: FakeProvider) -> None:
    fake.add_fault(Fault(disconnect_after_events=2))
    url = fake.base_url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=chat_body(stream=True)) as resp:
        assert resp.status_code == 200
        events, error = _read_events(resp)
    assert isinstance(error, httpx.RemoteProtocolError)  # incomplete chunked body
    assert len(events) == 2
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
    with httpx.stream("POST", url, json=chat_body(stream=True)) as resp:
        events, error = _read_events(resp)
    assert error is None
    assert events[-1] == "data: [DONE]"


def test_fault_disconnect_via_header_and_sdk(fake: FakeProvider, claude: anthropic.Anthropic) -> None:
    # The SDK surfaces its transport's own RemoteProtocolError (httpx2, not httpx), so match the text.
    with (
        pytest.raises(Exception, match="incomplete chunked read"),
        claude.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=50,
            messages=[{"role": "user", "content": "cut me off"}],
            extra_headers={"x-fake-disconnect-after-events": "3"},
        ) as stream,
    ):
        stream.get_final_message()


def _stream_events(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", url, json=body) as resp:
        events, error = _read_events(resp, "\r\n\r\n" if "streamGenerateContent" in url else "\n\n")
    assert error is None
    payloads = [e.split("data: ", 1)[1] for e in events if "data: " in e]
    return [json.loads(p) for p in payloads if p != "[DONE]"]


def test_fault_usage_replaces_the_reported_usage_in_each_format(fake: FakeProvider) -> None:
    openai_usage = {"prompt_tokens": 9, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 4}}
    fake.add_fault(Fault(usage=openai_usage))
    assert httpx.post(fake.base_url + "/v1/chat/completions", json=chat_body()).json()["usage"] == openai_usage
    fake.add_fault(Fault(usage=openai_usage))
    chunks = _stream_events(
        fake.base_url + "/v1/chat/completions", chat_body(stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1]["usage"] == openai_usage
    # Anthropic: input and cache counts in message_start (with 1 output token), output in message_delta
    anthropic_usage = {"input_tokens": 3, "cache_read_input_tokens": 50, "output_tokens": 7}
    body = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    fake.add_fault(Fault(usage=anthropic_usage))
    assert httpx.post(fake.base_url + "/v1/messages", json=body).json()["usage"] == anthropic_usage
    fake.add_fault(Fault(usage=anthropic_usage))
    events = _stream_events(fake.base_url + "/v1/messages", {**body, "stream": True})
    assert events[0]["message"]["usage"] == {**anthropic_usage, "output_tokens": 1}
    assert [e["usage"] for e in events if e["type"] == "message_delta"] == [{"output_tokens": 7}]
    # Gemini: the prompt's counts in every chunk, the whole object in the last
    gemini_usage = {"promptTokenCount": 5, "cachedContentTokenCount": 2, "candidatesTokenCount": 3}
    url = fake.base_url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    fake.add_fault(Fault(usage=gemini_usage))
    chunks = _stream_events(url, {"contents": [{"parts": [{"text": "one two three four five"}]}]})
    assert [c["usageMetadata"] for c in chunks[:-1]] == [{"promptTokenCount": 5, "cachedContentTokenCount": 2}] * (
        len(chunks) - 1
    )
    assert chunks[-1]["usageMetadata"] == gemini_usage


def test_fault_omit_usage(fake: FakeProvider) -> None:
    fake.add_fault(Fault(omit_usage=True))
    assert "usage" not in httpx.post(fake.base_url + "/v1/chat/completions", json=chat_body()).json()
    fake.add_fault(Fault(omit_usage=True))
    chunks = _stream_events(
        fake.base_url + "/v1/chat/completions", chat_body(stream=True, stream_options={"include_usage": True})
    )
    assert chunks and all(c["choices"] for c in chunks)  # no usage chunk although one was asked for
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    fake.add_fault(Fault(omit_usage=True))
    assert not any(
        "usage" in e or "usage" in e.get("message", {}) for e in _stream_events(fake.base_url + "/v1/messages", body)
    )
    fake.add_fault(Fault(omit_usage=True))
    url = fake.base_url + "/v1beta/models/gemini-2.5-flash:generateContent"
    assert "usageMetadata" not in httpx.post(url, json={"contents": [{"parts": [{"text": "hi"}]}]}).json()


def test_fault_cut_body_after_bytes(fake: FakeProvider) -> None:
    fake.add_fault(Fault(cut_body_after_bytes=10))
    with pytest.raises(httpx.RemoteProtocolError, match="received 10 bytes"):
        httpx.post(fake.base_url + "/v1/chat/completions", json=chat_body())
    assert httpx.post(fake.base_url + "/v1/chat/completions", json=chat_body()).status_code == 200


def test_fault_raw_events_are_sent_as_written(fake: FakeProvider) -> None:
    raw = ['data: {"choices":[{"index":0,"delta":{"content":"\\ud800"}}]}\n\n', "data: [DONE]\n\n"]
    fake.add_fault(Fault(raw_events=raw))
    with httpx.stream("POST", fake.base_url + "/v1/chat/completions", json=chat_body(stream=True)) as resp:
        assert resp.status_code == 200
        assert resp.read() == "".join(raw).encode()
    assert fake.streams[-1].outcome == "complete" and fake.streams[-1].events_sent == 2
    with httpx.stream("POST", fake.base_url + "/v1/chat/completions", json=chat_body(stream=True)) as resp:
        assert b"\\ud800" not in resp.read(), "one request only"


def test_streams_are_recorded_with_how_they_ended(fake: FakeProvider) -> None:
    url = fake.base_url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=chat_body(stream=True)) as resp:
        resp.read()
    fake.add_fault(Fault(disconnect_after_events=2))
    with httpx.stream("POST", url, json=chat_body(stream=True)) as resp:
        _read_events(resp)
    fake.add_fault(Fault(event_delay_ms=100))
    with httpx.stream("POST", url, json=chat_body(stream=True)) as resp:  # the client leaves after one event
        next(resp.iter_raw())
    wait_for(lambda: fake.streams[-1].outcome != "streaming", 10, "the fake to notice its client left")
    complete, cut, left = fake.streams
    assert (complete.outcome, complete.events_sent) == ("complete", complete.events_total)
    assert (cut.outcome, cut.events_sent) == ("cut", 2)
    assert left.outcome == "peer_closed" and left.events_sent < left.events_total  # it stopped generating


def test_fault_close_without_response(fake: FakeProvider) -> None:
    fake.add_fault(Fault(close_without_response=True))
    url = fake.base_url + "/v1/chat/completions"
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(url, json=chat_body())
    assert httpx.post(url, json=chat_body()).status_code == 200
    assert len(fake.requests) == 2


def test_fault_latency_and_default_fault(fake: FakeProvider) -> None:
    url = fake.base_url + "/v1/chat/completions"
    fake.add_fault(Fault(latency_ms=200))
    started = time.perf_counter()
    assert httpx.post(url, json=chat_body()).status_code == 200
    assert time.perf_counter() - started >= 0.2
    fake.default_fault = Fault(latency_ms=100)
    with httpx.Client() as client:
        for _ in range(2):
            started = time.perf_counter()
            assert client.post(url, json=chat_body()).status_code == 200
            assert time.perf_counter() - started >= 0.1
    assert [r.fault.latency_ms if r.fault else None for r in fake.requests] == [200, 100, 100]
    fake.default_fault = None
    assert httpx.post(url, json=chat_body()).status_code == 200
    assert fake.requests[-1].fault is None, "without a default fault, a request is answered undelayed"


def test_fault_stream_pacing(fake: FakeProvider) -> None:
    """Lower bounds only: a loaded machine can make an event late, never early."""
    fake.add_fault(Fault(first_byte_delay_ms=150, event_delay_ms=40))
    url = fake.base_url + "/v1/chat/completions"
    started = time.perf_counter()
    with httpx.stream("POST", url, json=chat_body("a b", stream=True)) as resp:
        stamps: list[float] = []
        for line in resp.iter_lines():
            if line.startswith("data: "):
                stamps.append(time.perf_counter() - started)
    assert len(stamps) >= 3
    assert stamps[0] >= 0.15
    assert stamps[-1] >= 0.15 + 0.04 * (len(stamps) - 1) * 0.9


def test_a_first_byte_delay_comes_after_the_head(fake: FakeProvider) -> None:
    """The head goes out at once, the delay is before the first event: with a minute's delay, the head still
    arrives well within the client's 10 s."""
    fake.add_fault(Fault(first_byte_delay_ms=60_000))
    url = fake.base_url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=chat_body("a b", stream=True), timeout=10) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    assert fake.streams[-1].events_sent == 0


def test_header_overrides_are_one_shot_and_leave_queue(fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=500))
    url = fake.base_url + "/v1/chat/completions"
    resp = httpx.post(url, json=chat_body(), headers={"x-fake-status": "503", "x-fake-retry-after": "2"})
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "2"
    two = httpx.post(url, json=chat_body("a b c d e f", stream=True), headers={"x-fake-stream-events": "2"})
    contents = [
        json.loads(line[6:])["choices"][0]["delta"].get("content")
        for line in two.text.split("\n")
        if line.startswith("data: {")
    ]
    assert [c for c in contents if c] == ["echo: a ", "b c d e f"]
    assert httpx.post(url, json=chat_body()).status_code == 500  # the queued fault is still there
    assert httpx.post(url, json=chat_body()).status_code == 200
    bad = httpx.post(url, json=chat_body(), headers={"x-fake-latency-ms": "soon"})
    assert bad.status_code == 400


def test_echo_headers_quotes_the_credential_in_the_error(fake: FakeProvider) -> None:
    url = fake.base_url + "/v1/chat/completions"
    fake.add_fault(Fault(status=403, echo_headers=True))
    queued = httpx.post(url, json=chat_body(), headers={"authorization": "Bearer sk-secret-1"})
    assert queued.status_code == 403 and "Bearer sk-secret-1" in queued.json()["error"]["message"]
    gemini = fake.base_url + "/v1beta/models/gemini-2.5-flash:generateContent"
    body = {"contents": [{"parts": [{"text": "x"}]}]}
    headers = {"x-goog-api-key": "sk-secret-2", "x-fake-status": "429", "x-fake-echo-headers": "1"}
    by_header = httpx.post(gemini, json=body, headers=headers)
    assert by_header.status_code == 429 and "sk-secret-2" in by_header.json()["error"]["message"]
    plain = httpx.post(url, json=chat_body(), headers={"authorization": "Bearer sk-x", "x-fake-status": "500"})
    assert plain.status_code == 500 and "sk-x" not in plain.text


# ------------------------------------------------------------------------------------------------
# Auth
# ------------------------------------------------------------------------------------------------


def test_require_key_each_provider() -> None:
    with FakeProvider(require_key="secret") as fake:
        base = fake.base_url
        chat = chat_body()
        assert httpx.post(f"{base}/v1/chat/completions", json=chat).status_code == 401
        wrong = httpx.post(f"{base}/v1/chat/completions", json=chat, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        ok = openai.OpenAI(base_url=base + "/v1", api_key="secret", max_retries=0)
        assert ok.chat.completions.create(**chat).choices[0].message.content == "echo: hello world"
        ok.close()

        msg: Any = {
            "model": "claude-haiku-4-5",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "k"}],
        }
        bad = httpx.post(f"{base}/v1/messages", json=msg, headers={"x-api-key": "nope"})
        assert bad.status_code == 401
        assert bad.json()["error"]["type"] == "authentication_error"
        with anthropic.Anthropic(base_url=base, api_key="secret", max_retries=0) as claude:
            assert claude.messages.create(**msg).content[0].text == "echo: k"
            with pytest.raises(anthropic.AuthenticationError):
                claude.with_options(api_key="nope").messages.create(**msg)
        assert fake.requests[-2].headers["authorization"] == "Bearer secret"
        assert fake.requests[-2].headers["anthropic-version"]
        good = httpx.post(f"{base}/v1/messages", json=msg, headers={"x-api-key": "secret"})
        assert good.status_code == 200

        url = f"{base}/v1beta/models/gemini-2.5-flash:generateContent"
        body = {"contents": [{"parts": [{"text": "g"}]}]}
        denied = httpx.post(url, json=body, headers={"x-goog-api-key": "nope"})
        assert denied.status_code == 401
        assert denied.json()["error"]["status"] == "UNAUTHENTICATED"
        assert httpx.post(url, json=body, headers={"x-goog-api-key": "secret"}).status_code == 200
        assert httpx.post(url + "?key=secret", json=body).status_code == 200
        client = genai.Client(api_key="secret", http_options=types.HttpOptions(base_url=base))
        assert client.models.generate_content(model="gemini-2.5-flash", contents="g").text == "echo: g"


# ------------------------------------------------------------------------------------------------
# Control endpoints, HTTP plumbing, CLI
# ------------------------------------------------------------------------------------------------


def test_control_endpoints(fake: FakeProvider) -> None:
    base = fake.base_url
    added = httpx.post(f"{base}/_fake/faults", json={"status": 500, "times": 2, "path_contains": "chat"})
    assert added.status_code == 200
    assert httpx.get(f"{base}/_fake/faults").json()[0]["times"] == 2
    assert httpx.post(f"{base}/v1/chat/completions", json=chat_body()).status_code == 500
    assert httpx.delete(f"{base}/_fake/faults").status_code == 200
    assert httpx.post(f"{base}/v1/chat/completions", json=chat_body("after")).status_code == 200
    assert httpx.post(f"{base}/_fake/faults", json={"stauts": 500}).status_code == 400
    recorded = httpx.get(f"{base}/_fake/requests").json()
    assert [r["path"] for r in recorded] == ["/v1/chat/completions"] * 2
    assert recorded[1]["json"]["messages"][0]["content"] == "after"
    assert recorded[1]["headers"]["content-type"] == "application/json"
    assert httpx.delete(f"{base}/_fake/requests").status_code == 200
    assert httpx.get(f"{base}/_fake/requests").json() == []
    assert fake.requests == []
    assert httpx.put(f"{base}/_fake/default_fault", json={"status": 502}).status_code == 200
    assert httpx.post(f"{base}/v1/chat/completions", json=chat_body()).status_code == 502
    assert httpx.post(f"{base}/v1/chat/completions", json=chat_body()).status_code == 502
    assert httpx.delete(f"{base}/_fake/default_fault").status_code == 200
    assert httpx.post(f"{base}/v1/chat/completions", json=chat_body()).status_code == 200


def test_raw_http_keep_alive_pipelining_and_chunked_body(fake: FakeProvider) -> None:
    """Several requests on one socket, one with a chunked body, then an explicit close."""
    body = json.dumps(chat_body("raw")).encode()
    half = len(body) // 2
    requests = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        + b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
        + b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
        sock.sendall(requests)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 3
    assert received.count(b"echo: raw") == 2
    assert b"Connection: close" in received
    assert [r.path for r in fake.requests] == ["/v1/chat/completions", "/v1/chat/completions", "/v1/models"]
    assert fake.requests[1].json == fake.requests[0].json


def start_cli(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """`python -m tests.fakes.provider` with ``args``, once its port file says where it listens."""
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, *("-m", "tests.fakes.provider", "--port", "0", "--port-file", str(port_file)), *args],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    deadline = time.monotonic() + 15
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the fake provider exited early or wrote no port file within 15 s")
        time.sleep(0.02)
    return proc, int(port_file.read_text())


def test_cli_port_file_and_sigterm(tmp_path: Path) -> None:
    proc, port = start_cli(tmp_path, "--require-key", "cli-key", "--stream-events", "3")
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/_fake/health").json()["port"] == port
        headers = {"authorization": "Bearer cli-key"}
        resp = httpx.post(f"{base}/v1/chat/completions", json=chat_body("from cli"), headers=headers)
        assert resp.json()["choices"][0]["message"]["content"] == "echo: from cli"
        stream = httpx.post(f"{base}/v1/chat/completions", json=chat_body("x y z", stream=True), headers=headers)
        assert stream.text.count('"content":"') == 1 + 3  # the role chunk's "" plus 3 pieces
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serves_tls_and_counts_its_connections(tmp_path: Path) -> None:
    ca_file, _context = make_tls_files(tmp_path)
    proc, port = start_cli(
        tmp_path, "--certfile", str(tmp_path / "server.pem"), "--keyfile", str(tmp_path / "server.key")
    )
    try:
        base = f"https://127.0.0.1:{port}"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca_file))) as client:
            assert client.post(f"{base}/v1/chat/completions", json=chat_body("tls")).status_code == 200
            assert client.get(f"{base}/_fake/connections").json() == {"accepted": 1}, "one kept-alive connection"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca_file))) as client:
            assert client.get(f"{base}/_fake/connections").json() == {"accepted": 2}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


# ------------------------------------------------------------------------------------------------
# Thinking (the docstring's rules: thinks only when asked, counts the thought's words)
# ------------------------------------------------------------------------------------------------

THOUGHT = "considering: hello world"


def test_openai_reasoning_effort_counts_reasoning_tokens(fake: FakeProvider, oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="gpt-4o-mini", messages=chat_body()["messages"])
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0
    completion = oai.chat.completions.create(
        model="gpt-4o-mini", messages=chat_body()["messages"], reasoning_effort="low"
    )
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 3
    assert completion.usage.completion_tokens == 4 + 3  # "echo: hello world" + the thought
    assert getattr(completion.choices[0].message, "reasoning_content", None) is None  # the official API shows none
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="gpt-4o-mini", messages=chat_body()["messages"], reasoning_effort="huge")  # type: ignore[arg-type]


def test_openai_reasoner_shows_reasoning_content(fake: FakeProvider, oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="test-reasoner", messages=chat_body()["messages"])
    assert getattr(completion.choices[0].message, "reasoning_content", None) == THOUGHT
    stream = oai.chat.completions.create(model="test-reasoner", messages=chat_body()["messages"], stream=True)
    pieces = [
        (getattr(c.choices[0].delta, "reasoning_content", None) or "", c.choices[0].delta.content or "")
        for c in stream
        if c.choices
    ]
    assert "".join(r for r, _ in pieces) == THOUGHT and "".join(t for _, t in pieces) == "echo: hello world"


def test_anthropic_thinking_block_signature_and_rules(fake: FakeProvider, claude: anthropic.Anthropic) -> None:
    user: Any = [{"role": "user", "content": "hello world"}]
    message = claude.messages.create(
        model="claude-x", max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024}, messages=user
    )
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == THOUGHT and thinking.signature.startswith("sig_")
    assert text.type == "text" and message.usage.output_tokens == 4 + 3
    with claude.messages.stream(
        model="claude-x", max_tokens=2000, thinking={"type": "adaptive", "display": "omitted"}, messages=user
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking" and final.content[0].thinking == ""
    assert final.content[0].signature.startswith("sig_")
    refused: list[dict[str, Any]] = [
        {"thinking": {"type": "enabled", "budget_tokens": 512}, "max_tokens": 2000},
        {"thinking": {"type": "enabled", "budget_tokens": 2000}, "max_tokens": 2000},
        {"thinking": {"type": "adaptive"}, "max_tokens": 100, "extra_body": {"temperature": 0.5}},
        {"thinking": {"type": "adaptive"}, "max_tokens": 100, "extra_body": {"top_k": 5}},
        {
            "max_tokens": 100,
            "messages": [
                *user,
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "forged"}]},
                {"role": "user", "content": "again"},
            ],
        },
    ]
    for fields in refused:
        with pytest.raises(anthropic.BadRequestError):
            claude.messages.create(**{"model": "claude-x", "messages": user, **fields})


def test_anthropic_thinking_tool_loop_needs_the_thinking_block(fake: FakeProvider, claude: anthropic.Anthropic) -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    messages: Any = [{"role": "user", "content": "weather"}]
    first = claude.messages.create(
        model="claude-x", max_tokens=2000, thinking=thinking, tools=ANTHROPIC_TOOLS[:1], messages=messages
    )
    use = first.content[1]
    assert first.content[0].type == "thinking" and use.type == "tool_use"
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}
    with_block = [*messages, {"role": "assistant", "content": [b.model_dump() for b in first.content]}, result]
    without = [*messages, {"role": "assistant", "content": [use.model_dump()]}, result]
    args: Any = {"model": "claude-x", "max_tokens": 2000, "thinking": thinking, "tools": ANTHROPIC_TOOLS[:1]}
    assert claude.messages.create(**args, messages=with_block).content[-1].type == "text"
    with pytest.raises(anthropic.BadRequestError, match="must start with a thinking block"):
        claude.messages.create(**args, messages=without)


def test_gemini_thinking_config(fake: FakeProvider, gemini: genai.Client) -> None:
    config = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(thinking_budget=512, include_thoughts=True)
    )
    response = gemini.models.generate_content(model="gemini-2.5-flash", contents="hello world", config=config)
    parts = response.candidates[0].content.parts  # type: ignore[index,union-attr]
    assert [(p.text, p.thought) for p in parts or []] == [(THOUGHT, True), ("echo: hello world", None)]
    assert (parts or [])[-1].thought_signature  # the signature rides on the last part
    usage = response.usage_metadata
    assert usage is not None and (usage.thoughts_token_count, usage.candidates_token_count) == (3, 4)
    assert usage.total_token_count == (usage.prompt_token_count or 0) + 4 + 3
    quiet = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=0))
    response = gemini.models.generate_content(model="gemini-2.5-flash", contents="hello world", config=quiet)
    assert response.usage_metadata is not None and response.usage_metadata.thoughts_token_count is None
    for model, bad in [
        ("gemini-2.5-flash", types.ThinkingConfig(thinking_budget=30000)),
        ("gemini-2.5-pro", types.ThinkingConfig(thinking_budget=0)),
        ("gemini-2.5-flash", types.ThinkingConfig(thinking_budget=1024, thinking_level=types.ThinkingLevel.LOW)),
    ]:
        with pytest.raises(genai.errors.ClientError):
            gemini.models.generate_content(
                model=model, contents="hi", config=types.GenerateContentConfig(thinking_config=bad)
            )
