"""The official SDKs parse what our encoders produce (the real contract with clients).

Each SDK client gets an in-process mock HTTP transport that returns our bytes, so
nothing leaves the process. Every provider sample stream is translated for every
client and read back with the SDK's own stream accumulator.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import anthropic as anthropic_sdk
import httpx2
import openai as openai_sdk
import pytest
from google import genai
from google.genai import types as genai_types

from kaixu.formats import FORMATS, get_codec
from kaixu.formats.canonical import ChatRequest, Reasoning, StreamError, TextDelta
from kaixu.formats.fronts import encode_response

from .clients import random_chunks, translate_stream
from .samples import (
    ANTHROPIC_RESPONSE,
    GEMINI_RESPONSE,
    OPENAI_RESPONSE,
    STREAM_TEXT,
    STREAM_TOOL_ARGS,
    STREAMS,
    THINKING_RESPONSES,
    THINKING_SIGNATURE,
    THINKING_STREAMS,
    THINKING_TEXT,
)

REQ = ChatRequest(model="client-model", stream=True, include_usage=True)
RESPONSES = {"openai": OPENAI_RESPONSE, "anthropic": ANTHROPIC_RESPONSE, "gemini": GEMINI_RESPONSE}


def _http(body: bytes, content_type: str, status: int = 200) -> Any:
    def handler(request: Any) -> Any:
        return httpx2.Response(status, headers={"content-type": content_type}, content=body)

    return httpx2.Client(transport=httpx2.MockTransport(handler))


def openai_client(body: bytes, content_type: str = "text/event-stream", status: int = 200) -> Any:
    http = _http(body, content_type, status)
    return openai_sdk.OpenAI(api_key="test", base_url="http://kaixu.test/v1", http_client=http, max_retries=0)


def anthropic_client(body: bytes, content_type: str = "text/event-stream", status: int = 200) -> Any:
    http = _http(body, content_type, status)
    return anthropic_sdk.Anthropic(api_key="test", base_url="http://kaixu.test", http_client=http, max_retries=0)


def gemini_client(body: bytes, content_type: str = "text/event-stream", status: int = 200) -> Any:
    options = genai_types.HttpOptions(base_url="http://kaixu.test", httpx_client=_http(body, content_type, status))
    return genai.Client(api_key="test", http_options=options)


def read_openai(body: bytes) -> tuple[str, list[tuple[str, Any]], str, Any]:
    messages = [{"role": "user", "content": "hi"}]
    with openai_client(body).chat.completions.stream(model="m", messages=messages) as stream:
        completion = stream.get_final_completion()
    choice = completion.choices[0]
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []]
    assert all(c.id for c in choice.message.tool_calls or [])
    return choice.message.content or "", calls, choice.finish_reason, completion.usage.prompt_tokens


def read_anthropic(body: bytes) -> tuple[str, list[tuple[str, Any]], str, Any]:
    messages = [{"role": "user", "content": "hi"}]
    with anthropic_client(body).messages.stream(model="m", max_tokens=10, messages=messages) as stream:
        message = stream.get_final_message()
    text = "".join(b.text for b in message.content if b.type == "text")
    calls = [(b.name, b.input) for b in message.content if b.type == "tool_use"]
    usage = message.usage
    total_input = usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
    return text, calls, message.stop_reason, total_input


def read_gemini(body: bytes) -> tuple[str, list[tuple[str, Any]], str, Any]:
    chunks = list(gemini_client(body).models.generate_content_stream(model="m", contents="hi"))
    text = "".join(p.text for c in chunks for p in (c.candidates[0].content.parts or []) if p.text)
    calls = [(f.name, f.args) for c in chunks for f in (c.function_calls or [])]
    return (
        text,
        calls,
        chunks[-1].candidates[0].finish_reason.value,
        chunks[-1].usage_metadata.prompt_token_count,
    )


SDK_READERS: dict[str, Callable[[bytes], tuple[str, list[tuple[str, Any]], str, Any]]] = {
    "openai": read_openai,
    "anthropic": read_anthropic,
    "gemini": read_gemini,
}
FINISH = {"openai": ("stop", "tool_calls"), "anthropic": ("end_turn", "tool_use"), "gemini": ("STOP", "STOP")}


@pytest.mark.parametrize("client", FORMATS)
@pytest.mark.parametrize("provider", FORMATS)
def test_sdk_reads_translated_streams(client: str, provider: str) -> None:
    text_stream, tool_stream, usage = STREAMS[provider]
    rng = random.Random(f"sdk-{client}-{provider}")
    read = SDK_READERS[client]

    text, calls, finish, prompt = read(translate_stream(provider, client, random_chunks(text_stream, rng), REQ))
    assert (text, calls, finish, prompt) == (STREAM_TEXT, [], FINISH[client][0], usage.input_tokens)

    text, calls, finish, prompt = read(translate_stream(provider, client, random_chunks(tool_stream, rng), REQ))
    assert text == ""
    assert calls == [("get_weather", args) for args in STREAM_TOOL_ARGS]
    assert (finish, prompt) == (FINISH[client][1], usage.input_tokens)


@pytest.mark.parametrize("client", FORMATS)
def test_sdk_raises_on_stream_errors(client: str) -> None:
    encoder = get_codec(client).stream_encoder(REQ)
    body = encoder.encode(TextDelta("partial")) + encoder.encode(StreamError("upstream exploded", "api_error"))
    body += encoder.close()
    with pytest.raises(Exception, match="upstream exploded"):
        SDK_READERS[client](body)


@pytest.mark.parametrize("client", FORMATS)
@pytest.mark.parametrize("provider", FORMATS)
def test_sdk_reads_translated_responses(client: str, provider: str) -> None:
    resp = get_codec(provider).decode_response(RESPONSES[provider])
    body = json.dumps(get_codec(client).encode_response(resp)).encode()
    if client == "openai":
        completion = openai_client(body, "application/json").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        message = completion.choices[0].message
        text = message.content
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]
        prompt = completion.usage.prompt_tokens
    elif client == "anthropic":
        msg = anthropic_client(body, "application/json").messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        text = "".join(b.text for b in msg.content if b.type == "text")
        calls = [(b.name, b.input) for b in msg.content if b.type == "tool_use"]
        prompt = msg.usage.input_tokens + msg.usage.cache_read_input_tokens + msg.usage.cache_creation_input_tokens
    else:
        result = gemini_client(body, "application/json").models.generate_content(model="m", contents="hi")
        text = "".join(p.text for p in result.candidates[0].content.parts if p.text)
        calls = [(f.name, f.args) for f in result.function_calls]
        prompt = result.usage_metadata.prompt_token_count
    assert text == "Let me check both cities."
    assert calls == [("get_weather", {"location": "Paris"}), ("get_weather", {"location": "Tokyo"})]
    assert prompt == 1117


@pytest.mark.parametrize("client", FORMATS)
def test_sdk_reads_gateway_error_bodies(client: str) -> None:
    body = json.dumps(get_codec(client).error_body(429, "budget exhausted", "rate_limit_error")).encode()
    sdk_errors: dict[str, Any] = {
        "openai": openai_sdk.RateLimitError,
        "anthropic": anthropic_sdk.RateLimitError,
        "gemini": genai.errors.ClientError,
    }
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(sdk_errors[client], match="budget exhausted"):
        if client == "openai":
            openai_client(body, "application/json", 429).chat.completions.create(model="m", messages=user)
        elif client == "anthropic":
            anthropic_client(body, "application/json", 429).messages.create(model="m", max_tokens=5, messages=user)
        else:
            gemini_client(body, "application/json", 429).models.generate_content(model="m", contents="hi")


THINKING_REQ = ChatRequest(
    model="client-model", stream=True, include_usage=True, reasoning=Reasoning("on", 2048, include_thoughts=True)
)
USER = [{"role": "user", "content": "hi"}]


def sdk_thinking(client: str, body: bytes, *, stream: bool) -> tuple[str, str, list[str]]:
    """(thinking, answer text, signatures) as the client's SDK hands them to its caller."""
    content_type = "text/event-stream" if stream else "application/json"
    if client == "openai":
        sdk = openai_client(body, content_type).chat.completions
        if stream:
            with sdk.stream(model="m", messages=USER) as events:
                message = events.get_final_completion().choices[0].message
        else:
            message = sdk.create(model="m", messages=USER).choices[0].message
        return str(getattr(message, "reasoning_content", "")), message.content or "", []  # an SDK extra field
    if client == "anthropic":
        messages = anthropic_client(body, content_type).messages
        if stream:
            with messages.stream(model="m", max_tokens=10, messages=USER) as events:
                blocks = events.get_final_message().content
        else:
            blocks = messages.create(model="m", max_tokens=10, messages=USER).content
        thinking = [b for b in blocks if b.type == "thinking"]
        text = "".join(b.text for b in blocks if b.type == "text")
        return "".join(b.thinking for b in thinking), text, [b.signature for b in thinking]
    models = gemini_client(body, content_type).models
    answers = (
        list(models.generate_content_stream(model="m", contents="hi"))
        if stream
        else [models.generate_content(model="m", contents="hi")]
    )
    parts = [p for a in answers for p in (a.candidates[0].content.parts or [])]
    text = "".join(a.text or "" for a in answers)  # the SDK's .text leaves thoughts out
    return "".join(p.text or "" for p in parts if p.thought), text, [p.thought_signature for p in parts if p.thought]


@pytest.mark.parametrize("client", FORMATS)
@pytest.mark.parametrize("provider", FORMATS)
def test_sdk_reads_translated_thinking(client: str, provider: str) -> None:
    rng = random.Random(f"sdk-thinking-{client}-{provider}")
    body = translate_stream(provider, client, random_chunks(THINKING_STREAMS[provider][0], rng), THINKING_REQ)
    thinking, text, signatures = sdk_thinking(client, body, stream=True)
    assert (thinking, text) == (THINKING_TEXT, STREAM_TEXT)
    own_signature = THINKING_SIGNATURE if provider == "anthropic" else ""
    assert signatures == {"openai": [], "anthropic": [own_signature], "gemini": [None, None]}[client]

    answer = get_codec(provider).decode_response(THINKING_RESPONSES[provider])
    body = json.dumps(encode_response(client, answer, None, THINKING_REQ)).encode()
    thinking, text, signatures = sdk_thinking(client, body, stream=False)
    assert (thinking, text) == (THINKING_TEXT, STREAM_TEXT)
    assert signatures == {"openai": [], "anthropic": [own_signature], "gemini": [None]}[client]
