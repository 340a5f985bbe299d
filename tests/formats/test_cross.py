"""The 3x3 matrix: every front door against every provider, for requests, responses and streams."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from kaixu.formats import FORMATS, get_codec
from kaixu.formats.canonical import ChatRequest, ChatResponse, ImagePart, Reasoning, TextPart, Usage

from .clients import READERS, random_chunks, translate_stream
from .samples import (
    ANTHROPIC_REQUEST,
    ANTHROPIC_RESPONSE,
    GEMINI_REQUEST,
    GEMINI_RESPONSE,
    OPENAI_REQUEST,
    OPENAI_RESPONSE,
    STREAM_TEXT,
    STREAM_TOOL_ARGS,
    STREAMS,
    THINKING_SIGNATURE,
    THINKING_STREAMS,
    THINKING_TEXT,
)

PAIRS = [(front, provider) for front in FORMATS for provider in FORMATS]


def portable_request(front: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The golden request of ``front`` minus the fields only its own format can express."""
    if front == "openai":
        body = copy.deepcopy(OPENAI_REQUEST)
        del body["logprobs"]
        return body, {}
    if front == "anthropic":
        body = copy.deepcopy(ANTHROPIC_REQUEST)
        del body["thinking"], body["top_k"]
        return body, {}
    body = copy.deepcopy(GEMINI_REQUEST)
    del body["safetySettings"], body["generationConfig"]["thinkingConfig"], body["generationConfig"]["topK"]
    return body, {"model": "gemini-2.5-flash", "stream": True}


def summary(req: ChatRequest, *, with_error_flags: bool = True) -> dict[str, Any]:
    """What must survive any translation: ids are replaced by (function name, call ordinal)."""
    calls: dict[str, tuple[str, int]] = {}
    messages = []
    for msg in req.messages:
        for call in msg.tool_calls:
            calls[call.id] = (call.name, len(calls))
        parts: list[Any] = []
        for part in msg.parts:
            if isinstance(part, TextPart):
                parts.append(("text", part.text))
            else:
                assert isinstance(part, ImagePart)
                parts.append(("url", part.url) if part.url else ("data", part.data, part.media_type))
        messages.append(
            (
                msg.role,
                parts,
                [(c.name, json.loads(c.arguments)) for c in msg.tool_calls],
                calls[msg.tool_call_id] if msg.tool_call_id else None,
                msg.is_error if with_error_flags else None,
            )
        )
    return {
        "system": req.system,
        "messages": messages,
        "tools": [(t.name, t.description, t.parameters) for t in req.tools],
        "tool_choice": req.tool_choice,
        "sampling": (req.max_tokens, req.temperature, req.top_p, req.stop, req.stream),
    }


@pytest.mark.parametrize(("front", "provider"), PAIRS)
def test_request_matrix(front: str, provider: str) -> None:
    body, url = portable_request(front)
    req = get_codec(front).decode_request(body, **url)
    assert len(req.messages) == 5 and req.tools and req.system
    assert any(isinstance(p, ImagePart) and p.url for p in req.messages[0].parts)
    assert any(isinstance(p, ImagePart) and p.data for p in req.messages[0].parts)

    wire = get_codec(provider).encode_request(req)
    json.dumps(wire)  # plain JSON all the way down
    back = get_codec(provider).decode_request(wire, model=req.model, stream=req.stream)
    keep_errors = provider != "openai"  # OpenAI tool results have no error flag
    assert summary(back, with_error_flags=keep_errors) == summary(req, with_error_flags=keep_errors)


def test_request_matrix_provider_shapes() -> None:
    """Spot-check the provider-native structure the matrix relies on."""
    req = get_codec("openai").decode_request(portable_request("openai")[0])
    anthropic = get_codec("anthropic").encode_request(req)
    assert [m["role"] for m in anthropic["messages"]] == ["user", "assistant", "user"]
    assert [b["type"] for b in anthropic["messages"][2]["content"]] == ["tool_result", "tool_result", "text"]
    url_image = req.messages[0].parts[1]
    assert isinstance(url_image, ImagePart)
    assert anthropic["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "url", "url": url_image.url},
    }
    gemini = get_codec("gemini").encode_request(req)
    assert [c["role"] for c in gemini["contents"]] == ["user", "model", "user"]
    assert [next(iter(p)) for p in gemini["contents"][2]["parts"]] == [
        "functionResponse",
        "functionResponse",
        "text",
    ]
    assert gemini["contents"][0]["parts"][1]["fileData"]["mimeType"] == "image/jpeg"  # guessed from the URL


RESPONSES = {"openai": OPENAI_RESPONSE, "anthropic": ANTHROPIC_RESPONSE, "gemini": GEMINI_RESPONSE}


def response_summary(resp: ChatResponse) -> tuple[Any, ...]:
    calls = [(c.name, json.loads(c.arguments)) for c in resp.message.tool_calls]
    return resp.message.text(), calls, resp.finish_reason, resp.usage


@pytest.mark.parametrize(("client", "provider"), PAIRS)
def test_response_matrix(client: str, provider: str) -> None:
    resp = get_codec(provider).decode_response(RESPONSES[provider])
    assert resp.finish_reason == "tool_calls" and len(resp.message.tool_calls) == 2
    wire = get_codec(client).encode_response(resp)
    back = get_codec(client).decode_response(json.loads(json.dumps(wire)))
    assert response_summary(back) == response_summary(resp)
    assert all(c.id for c in back.message.tool_calls)


def native_usage_ok(client: str, native: dict[str, Any] | None, usage: Usage) -> None:
    """The client sees the provider's counts, converted to its own accounting convention."""
    assert native is not None
    if client == "openai":
        assert (native["prompt_tokens"], native["completion_tokens"]) == (
            usage.input_tokens,
            usage.output_tokens,
        )
        assert native["prompt_tokens_details"]["cached_tokens"] == usage.cached_input_tokens
        assert native["completion_tokens_details"]["reasoning_tokens"] == usage.reasoning_tokens
    elif client == "anthropic":
        uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_creation_input_tokens
        assert native["input_tokens"] == uncached
        assert native["cache_read_input_tokens"] == usage.cached_input_tokens
        assert native["cache_creation_input_tokens"] == usage.cache_creation_input_tokens
        assert native["output_tokens"] == usage.output_tokens
    else:
        assert native["promptTokenCount"] == usage.input_tokens
        assert native["candidatesTokenCount"] + native.get("thoughtsTokenCount", 0) == usage.output_tokens
        assert native.get("cachedContentTokenCount", 0) == usage.cached_input_tokens


FINISH = {
    "openai": {"stop": "stop", "tool_calls": "tool_calls"},
    "anthropic": {"stop": "end_turn", "tool_calls": "tool_use"},
    "gemini": {"stop": "STOP", "tool_calls": "STOP"},
}


@pytest.mark.parametrize(("client", "provider"), PAIRS)
def test_stream_text_matrix(client: str, provider: str) -> None:
    text_stream, _, usage = STREAMS[provider]
    rng = random.Random(f"{client}-{provider}-text")
    req = ChatRequest(model="client-model", stream=True, include_usage=True)
    for _ in range(5):
        result = READERS[client](translate_stream(provider, client, random_chunks(text_stream, rng), req))
        assert result.error is None
        assert result.text == STREAM_TEXT
        assert result.tool_calls == []
        assert result.finish == FINISH[client]["stop"]
        native_usage_ok(client, result.usage, usage)


@pytest.mark.parametrize(("client", "provider"), PAIRS)
def test_stream_parallel_tools_matrix(client: str, provider: str) -> None:
    _, tool_stream, usage = STREAMS[provider]
    rng = random.Random(f"{client}-{provider}-tools")
    req = ChatRequest(model="client-model", stream=True, include_usage=True)
    for _ in range(5):
        result = READERS[client](translate_stream(provider, client, random_chunks(tool_stream, rng), req))
        assert result.error is None
        assert result.text == ""
        assert [name for _, name, _ in result.tool_calls] == ["get_weather", "get_weather"]
        assert result.tool_args() == STREAM_TOOL_ARGS
        if client != "gemini":  # Gemini clients get no ids; the others need distinct ones
            ids = [call_id for call_id, _, _ in result.tool_calls]
            assert all(ids) and len(set(ids)) == 2
        assert result.finish == FINISH[client]["tool_calls"]
        native_usage_ok(client, result.usage, usage)


@pytest.mark.parametrize("client", FORMATS)
@pytest.mark.parametrize("provider", FORMATS)
def test_stream_truncated_upstream_reaches_the_client_as_an_error(client: str, provider: str) -> None:
    text_stream = STREAMS[provider][0]
    cut = text_stream[: len(text_stream) // 2]
    raw = translate_stream(provider, client, [cut], ChatRequest(model="m", stream=True))
    assert READERS[client](raw).error is not None


@pytest.mark.parametrize(("client", "provider"), PAIRS)
def test_stream_thinking_matrix(client: str, provider: str) -> None:
    """Thinking reaches each client in its own form (Anthropic thinking blocks, Gemini thought parts, OpenAI
    reasoning_content), signatures only from the provider that can check them; not at all when not asked."""
    stream, reasoning_tokens = THINKING_STREAMS[provider]
    rng = random.Random(f"{client}-{provider}-thinking")
    asked = ChatRequest(
        model="client-model", stream=True, include_usage=True, reasoning=Reasoning("on", 2048, include_thoughts=True)
    )
    quiet = ChatRequest(model="client-model", stream=True, include_usage=True)
    for _ in range(5):
        result = READERS[client](translate_stream(provider, client, random_chunks(stream, rng), asked))
        assert result.error is None
        assert (result.thinking, result.text, result.finish) == (THINKING_TEXT, STREAM_TEXT, FINISH[client]["stop"])
        if client == "anthropic":
            assert result.signatures == [THINKING_SIGNATURE if provider == "anthropic" else ""]
        else:
            assert result.signatures == []  # Gemini's sample signs its answer part, which canonical text drops
        assert result.usage is not None
        if client == "openai":
            assert result.usage["completion_tokens_details"]["reasoning_tokens"] == reasoning_tokens
        elif client == "gemini":
            assert result.usage.get("thoughtsTokenCount", 0) == reasoning_tokens
        else:
            assert result.usage.get("output_tokens_details", {}).get("thinking_tokens", 0) == reasoning_tokens

        result = READERS[client](translate_stream(provider, client, random_chunks(stream, rng), quiet))
        assert (result.thinking, result.text, result.error) == ("", STREAM_TEXT, None)
