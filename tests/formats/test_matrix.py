"""Every front door to every provider: the official openai, anthropic and google-genai SDKs as clients,
the fake provider upstream speaking OpenAI, Anthropic or Gemini. Text, streams and tool calls."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types

from tests.fakes.provider import FakeProvider
from tests.harness import LIMITED_KEY, TEST_KEY, UPSTREAM_KEYS, Kaixu

# model name in the test policy -> (provider wire format, upstream path fragment, credential header)
PROVIDERS = {
    "gpt-4o-mini": ("openai", "/v1/chat/completions", "authorization"),
    "claude-test": ("anthropic", "/v1/messages", "x-api-key"),
    "gemini-test": ("gemini", "/v1beta/models/gemini-2.5-flash:", "x-goog-api-key"),
}
MODELS = list(PROVIDERS)
PROMPT = "Hello there"
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def assert_upstream(fake: FakeProvider, model: str) -> None:
    wire, path, header = PROVIDERS[model]
    seen = fake.requests[-1]
    assert path in seen.path
    expected = UPSTREAM_KEYS[wire]
    assert seen.headers[header] in (expected, f"Bearer {expected}")
    assert TEST_KEY not in json.dumps(seen.headers)


# --- OpenAI SDK -------------------------------------------------------------------------------------


def openai_client(kaixu: Kaixu) -> openai.OpenAI:
    return openai.OpenAI(base_url=kaixu.url + "/v1", api_key=TEST_KEY, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_openai_front_text(kaixu: Kaixu, fake: FakeProvider, model: str) -> None:
    completion = openai_client(kaixu).chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}],
    )
    assert completion.choices[0].message.content == f"echo: {PROMPT}"
    assert completion.choices[0].finish_reason == "stop"
    assert (
        completion.usage is not None and completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    )
    assert_upstream(fake, model)


@pytest.mark.parametrize("model", MODELS)
def test_openai_front_stream(kaixu: Kaixu, fake: FakeProvider, model: str) -> None:
    stream = openai_client(kaixu).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert text == f"echo: {PROMPT}"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0
    assert_upstream(fake, model)


@pytest.mark.parametrize("model", MODELS)
def test_openai_front_tool_call_round_trip(kaixu: Kaixu, fake: FakeProvider, model: str) -> None:
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}]
    messages: Any = [{"role": "user", "content": "weather in Paris"}]
    client = openai_client(kaixu)
    first = client.chat.completions.create(model=model, messages=messages, tools=tools)
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"echo": "weather in Paris"}  # type: ignore[union-attr]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = client.chat.completions.create(model=model, messages=messages, tools=tools)
    assert second.choices[0].message.content == "tool said: sunny"


@pytest.mark.parametrize("model", MODELS)
def test_openai_front_streamed_parallel_tool_calls(kaixu: Kaixu, model: str) -> None:
    tools: Any = [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}},
        {"type": "function", "function": {"name": "get_time", "parameters": WEATHER_SCHEMA}},
    ]
    stream = openai_client(kaixu).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "parallel please"}], tools=tools, stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            if delta.function and delta.function.name:
                entry["name"] = delta.function.name
            if delta.function and delta.function.arguments:
                entry["arguments"] += delta.function.arguments
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert all(json.loads(c["arguments"]) == {"echo": "parallel please"} for c in calls.values())


PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@pytest.mark.parametrize(
    ("model", "path"), [("claude-test", ("source", "data")), ("gemini-test", ("inlineData", "data"))]
)
def test_openai_front_base64_image_reaches_other_providers(
    kaixu: Kaixu, fake: FakeProvider, model: str, path: tuple[str, str]
) -> None:
    content: Any = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
    ]
    completion = openai_client(kaixu).chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}]
    )
    assert completion.choices[0].message.content == "echo: what is this [image]"
    sent = fake.requests[-1].json
    parts = sent["messages"][0]["content"] if model == "claude-test" else sent["contents"][0]["parts"]
    [image] = [p for p in parts if path[0] in p]
    assert image[path[0]][path[1]] == PIXEL


# --- Anthropic SDK ----------------------------------------------------------------------------------


def anthropic_client(kaixu: Kaixu) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=kaixu.url, api_key=TEST_KEY, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_front_text(kaixu: Kaixu, fake: FakeProvider, model: str) -> None:
    message = anthropic_client(kaixu).messages.create(
        model=model, max_tokens=200, system="Be brief.", messages=[{"role": "user", "content": PROMPT}]
    )
    assert message.content[0].type == "text" and message.content[0].text == f"echo: {PROMPT}"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert_upstream(fake, model)


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_front_stream(kaixu: Kaixu, fake: FakeProvider, model: str) -> None:
    with anthropic_client(kaixu).messages.stream(
        model=model, max_tokens=200, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == f"echo: {PROMPT}"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert_upstream(fake, model)


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_front_tool_use_round_trip(kaixu: Kaixu, model: str) -> None:
    client = anthropic_client(kaixu)
    tools: Any = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}]
    messages: Any = [{"role": "user", "content": "weather in Paris"}]
    first = client.messages.create(model=model, max_tokens=200, tools=tools, messages=messages)
    assert first.stop_reason == "tool_use"
    [use] = [block for block in first.content if block.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"echo": "weather in Paris"}
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
    ]
    second = client.messages.create(model=model, max_tokens=200, tools=tools, messages=messages)
    assert second.content[0].type == "text" and second.content[0].text == "tool said: sunny"


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_front_streamed_tool_use(kaixu: Kaixu, model: str) -> None:
    tools: Any = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}]
    with anthropic_client(kaixu).messages.stream(
        model=model, max_tokens=200, tools=tools, messages=[{"role": "user", "content": "weather in Rome"}]
    ) as stream:
        final = stream.get_final_message()
    [use] = [block for block in final.content if block.type == "tool_use"]
    assert use.input == {"echo": "weather in Rome"} and final.stop_reason == "tool_use"


def test_anthropic_count_tokens(kaixu: Kaixu) -> None:
    client = anthropic_client(kaixu)
    for model in MODELS:
        count = client.messages.count_tokens(model=model, messages=[{"role": "user", "content": PROMPT}])
        assert count.input_tokens > 0


# --- google-genai SDK -------------------------------------------------------------------------------


def gemini_client(kaixu: Kaixu) -> genai.Client:
    return genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(base_url=kaixu.url))


@pytest.mark.parametrize("model", MODELS)
def test_gemini_front_text(kaixu: Kaixu, fake: FakeProvider, model: str) -> None:
    client = gemini_client(kaixu)
    response = client.models.generate_content(
        model=model, contents=PROMPT, config=types.GenerateContentConfig(system_instruction="Be brief.")
    )
    assert response.text == f"echo: {PROMPT}"
    assert response.candidates and response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.usage_metadata and (response.usage_metadata.prompt_token_count or 0) > 0
    assert_upstream(fake, model)


@pytest.mark.parametrize("model", MODELS)
def test_gemini_front_stream(kaixu: Kaixu, fake: FakeProvider, model: str) -> None:
    client = gemini_client(kaixu)
    chunks = list(client.models.generate_content_stream(model=model, contents=PROMPT))
    assert "".join(c.text or "" for c in chunks) == f"echo: {PROMPT}"
    assert chunks[-1].usage_metadata and (chunks[-1].usage_metadata.candidates_token_count or 0) > 0
    assert_upstream(fake, model)


@pytest.mark.parametrize("model", MODELS)
def test_gemini_front_function_call(kaixu: Kaixu, model: str) -> None:
    declaration = types.FunctionDeclaration(name="get_weather", parameters_json_schema=WEATHER_SCHEMA)
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[declaration])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    client = gemini_client(kaixu)
    first = client.models.generate_content(model=model, contents="weather in Oslo", config=config)
    assert first.function_calls and first.function_calls[0].name == "get_weather"
    assert first.function_calls[0].args == {"echo": "weather in Oslo"}
    assert first.candidates and first.candidates[0].content
    contents = [
        types.Content(role="user", parts=[types.Part(text="weather in Oslo")]),
        first.candidates[0].content,
        types.Content(
            role="user",
            parts=[types.Part.from_function_response(name="get_weather", response={"result": "sunny"})],
        ),
    ]
    second = client.models.generate_content(model=model, contents=contents, config=config)
    assert second.text is not None and second.text.startswith("tool said:") and "sunny" in second.text


def test_gemini_key_in_query_string(kaixu: Kaixu) -> None:
    import httpx

    response = httpx.post(
        kaixu.url + f"/v1beta/models/gpt-4o-mini:generateContent?key={TEST_KEY}",
        json={"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["candidates"][0]["content"]["parts"][0]["text"] == f"echo: {PROMPT}"


def test_errors_take_the_front_doors_shape(kaixu: Kaixu) -> None:
    with pytest.raises(anthropic.AuthenticationError) as a_error:
        anthropic.Anthropic(base_url=kaixu.url, api_key="bad", max_retries=0).messages.create(
            model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert a_error.value.body["type"] == "error"  # type: ignore[index]
    assert a_error.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    bad = genai.Client(api_key="bad", http_options=types.HttpOptions(base_url=kaixu.url))
    with pytest.raises(genai.errors.ClientError) as g_error:
        bad.models.generate_content(model="gemini-test", contents="x")
    assert g_error.value.code == 401 and g_error.value.status == "UNAUTHENTICATED"


def test_feature_a_provider_cannot_express_is_a_400_naming_it(kaixu: Kaixu) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(kaixu).chat.completions.create(
            model="claude-test", messages=[{"role": "user", "content": PROMPT}], n=2
        )
    assert "n" in str(info.value)


async def test_concurrent_translated_streams_do_not_mix(kaixu: Kaixu) -> None:
    import asyncio

    async with openai.AsyncOpenAI(base_url=kaixu.url + "/v1", api_key=TEST_KEY, max_retries=0) as client:

        async def one(n: int) -> str:
            model = MODELS[n % 3]
            stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"prompt number {n}"}], stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        texts = await asyncio.gather(*(one(n) for n in range(30)))
    assert texts == [f"echo: prompt number {n}" for n in range(30)]


@pytest.mark.parametrize("model", ["gemini-test", "mock-model"])
def test_gemini_front_embeddings(kaixu: Kaixu, model: str) -> None:
    client = gemini_client(kaixu)
    contents: Any = [types.Content(parts=[types.Part(text="one")]), types.Content(parts=[types.Part(text="two")])]
    result = client.models.embed_content(model=model, contents=contents)
    assert result.embeddings is not None and len(result.embeddings) == 2
    assert all(e.values and len(e.values) == 8 for e in result.embeddings)


def test_openai_front_embeddings_from_the_mock(kaixu: Kaixu) -> None:
    result = openai_client(kaixu).embeddings.create(model="mock-model", input=["a", "b", "c"])
    assert [len(d.embedding) for d in result.data] == [8, 8, 8]


def test_openai_embeddings_translated_to_a_gemini_provider(kaixu: Kaixu, fake: FakeProvider) -> None:
    result = openai_client(kaixu).embeddings.create(model="gemini-test", input=["a", "b"])  # SDK asks for base64
    assert [len(d.embedding) for d in result.data] == [8, 8]
    sent = fake.requests[-1]
    assert sent.path.endswith("/models/gemini-2.5-flash:batchEmbedContents")
    assert [r["content"]["parts"][0]["text"] for r in sent.json["requests"]] == ["a", "b"]
    # the fake derives a vector from the text alone, whatever the format: translation must keep it exactly
    direct = openai_client(kaixu).embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    for translated, native in zip(result.data, direct.data, strict=True):
        assert translated.embedding == pytest.approx(native.embedding, abs=1e-6)


def test_gemini_embeddings_translated_to_an_openai_provider(kaixu: Kaixu, fake: FakeProvider) -> None:
    client = gemini_client(kaixu)
    contents: Any = [types.Content(parts=[types.Part(text="one")]), types.Content(parts=[types.Part(text="two")])]
    result = client.models.embed_content(model="gpt-4o-mini", contents=contents)
    assert result.embeddings is not None and [len(e.values or []) for e in result.embeddings] == [8, 8]
    sent = fake.requests[-1]
    assert sent.path == "/v1/embeddings" and sent.json["input"] == ["one", "two"]


def test_gemini_task_type_cannot_reach_openai_and_says_so(kaixu: Kaixu) -> None:
    client = gemini_client(kaixu)
    with pytest.raises(genai.errors.ClientError) as info:
        client.models.embed_content(
            model="gpt-4o-mini", contents="x", config=types.EmbedContentConfig(task_type="RETRIEVAL_QUERY")
        )
    assert info.value.code == 400 and "taskType" in str(info.value)


def test_each_sdk_retrieves_one_model(kaixu: Kaixu) -> None:
    assert openai_client(kaixu).models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    assert anthropic_client(kaixu).models.retrieve("claude-test").id == "claude-test"
    client = gemini_client(kaixu)
    assert client.models.get(model="gemini-test").name == "models/gemini-test"
    with pytest.raises(openai.NotFoundError):
        openai_client(kaixu).models.retrieve("no-such-model")
    limited = openai.OpenAI(base_url=kaixu.url + "/v1", api_key=LIMITED_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        limited.models.retrieve("claude-test")
