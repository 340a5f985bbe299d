"""Reasoning through the gateway: the official SDKs with their thinking controls against the fake provider
in another wire format (which enforces each provider's documented thinking rules), answers parsed by the
SDKs, multi-turn histories with thinking sent back. The mapping rules are in docs/compatibility.md."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types

from tests.fakes.provider import FakeProvider
from tests.harness import TEST_KEY, Kaixu, policy_for

PROMPT = "Hello there"
THOUGHT = f"considering: {PROMPT}"  # the fake's thought (tests/fakes/provider.py)
THOUGHT_TOKENS = 3  # its words
ANSWER_TOKENS = 4  # "echo: Hello there": words + 1
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}}
#: Anthropic thinking as an agent sends it: a budget, and room for the answer above it.
ENABLED: Any = {"type": "enabled", "budget_tokens": 2048}


def anthropic_client(kaixu: Kaixu) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=kaixu.url, api_key=TEST_KEY, max_retries=0)


def thinking_message(client: anthropic.Anthropic, model: str, stream: bool) -> Any:
    """The final message of an Anthropic request with thinking on, streamed or not."""
    args: Any = {
        "model": model,
        "max_tokens": 4096,
        "thinking": ENABLED,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    if stream:
        with client.messages.stream(**args) as events:
            return events.get_final_message()
    return client.messages.create(**args)


def gemini_client(kaixu: Kaixu) -> genai.Client:
    return genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(base_url=kaixu.url))


def openai_client(kaixu: Kaixu) -> openai.OpenAI:
    return openai.OpenAI(base_url=kaixu.url + "/v1", api_key=TEST_KEY, max_retries=0)


def upstream(fake: FakeProvider) -> Any:
    return fake.requests[-1].json


# --- Anthropic SDK, thinking enabled, to OpenAI and Gemini providers ---------------------------------


def test_anthropic_thinking_to_an_openai_provider(kaixu: Kaixu, fake: FakeProvider) -> None:
    message = anthropic_client(kaixu).messages.create(
        model="gpt-4o-mini", max_tokens=4096, thinking=ENABLED, messages=[{"role": "user", "content": PROMPT}]
    )
    assert upstream(fake)["reasoning_effort"] == "low"  # a 2048-token budget is in the low band
    assert [b.type for b in message.content] == ["text"]  # the official OpenAI API shows no thinking
    assert message.content[0].type == "text" and message.content[0].text == f"echo: {PROMPT}"
    assert message.usage.output_tokens == ANSWER_TOKENS + THOUGHT_TOKENS
    assert message.usage.output_tokens_details is not None
    assert message.usage.output_tokens_details.thinking_tokens == THOUGHT_TOKENS


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_thinking_to_a_gemini_provider(kaixu: Kaixu, fake: FakeProvider, stream: bool) -> None:
    client = anthropic_client(kaixu)
    message = thinking_message(client, "gemini-test", stream)
    config = upstream(fake)["generationConfig"]
    assert config["thinkingConfig"] == {"thinkingBudget": 2048, "includeThoughts": True}
    thinking, text = message.content
    assert thinking.type == "thinking" and (thinking.thinking, thinking.signature) == (THOUGHT, "")
    assert text.type == "text" and text.text == f"echo: {PROMPT}"
    assert message.usage.output_tokens == ANSWER_TOKENS + THOUGHT_TOKENS


def test_anthropic_history_with_translated_thinking_is_accepted(kaixu: Kaixu, fake: FakeProvider) -> None:
    """An agent sends the last answer back as it got it, thinking block (signature "") and tool use included."""
    client = anthropic_client(kaixu)
    tools: Any = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}]
    for model in ("gemini-test", "gpt-4o-mini"):
        messages: Any = [{"role": "user", "content": "weather in Paris"}]
        first = client.messages.create(model=model, max_tokens=4096, thinking=ENABLED, tools=tools, messages=messages)
        [use] = [b for b in first.content if b.type == "tool_use"]
        messages += [
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
        ]
        second = client.messages.create(model=model, max_tokens=4096, thinking=ENABLED, tools=tools, messages=messages)
        assert [b.text for b in second.content if b.type == "text"] == ["tool said: sunny"]
        assert "thinking" not in str(upstream(fake)["contents" if model == "gemini-test" else "messages"][1])


def test_anthropic_thinking_same_format_keeps_signatures(kaixu: Kaixu, fake: FakeProvider) -> None:
    """Anthropic to Anthropic is passed through: the provider's signature comes back and verifies."""
    client = anthropic_client(kaixu)
    tools: Any = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}]
    messages: Any = [{"role": "user", "content": "weather in Rome"}]
    first = client.messages.create(
        model="claude-test", max_tokens=4096, thinking=ENABLED, tools=tools, messages=messages
    )
    assert first.content[0].type == "thinking" and first.content[0].signature.startswith("sig_")
    [use] = [b for b in first.content if b.type == "tool_use"]
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "rain"}]},
    ]
    second = client.messages.create(
        model="claude-test", max_tokens=4096, thinking=ENABLED, tools=tools, messages=messages
    )
    assert [b.type for b in second.content] == ["thinking", "text"]


# --- google-genai SDK with thinkingConfig to an Anthropic provider -----------------------------------


def parts_of(answers: list[types.GenerateContentResponse]) -> list[types.Part]:
    out: list[types.Part] = []
    for answer in answers:
        content = answer.candidates[0].content if answer.candidates else None
        out += (content.parts or []) if content else []
    return out


def thinking_config(**extra: Any) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_level=types.ThinkingLevel.HIGH), **extra
    )


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_thinking_to_an_anthropic_provider(kaixu: Kaixu, fake: FakeProvider, stream: bool) -> None:
    client = gemini_client(kaixu)  # keep the client alive: its models share its HTTP connection
    models = client.models
    if stream:
        answers = list(models.generate_content_stream(model="claude-test", contents=PROMPT, config=thinking_config()))
    else:
        answers = [models.generate_content(model="claude-test", contents=PROMPT, config=thinking_config())]
    sent = upstream(fake)
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 24576}  # the "high" budget
    assert sent["max_tokens"] == 24576 + 4096  # above the budget, the answer's default room on top
    assert "".join(p.text or "" for p in parts_of(answers) if p.thought) == THOUGHT
    assert "".join(a.text or "" for a in answers) == f"echo: {PROMPT}"
    usage = answers[-1].usage_metadata
    assert usage is not None and usage.thoughts_token_count is None  # Anthropic does not count them apart
    assert usage.candidates_token_count == ANSWER_TOKENS + THOUGHT_TOKENS


def test_gemini_thinking_tool_loop_to_an_anthropic_provider(kaixu: Kaixu, fake: FakeProvider) -> None:
    """The second turn answers a function call: Anthropic would want its own thinking block at the start of
    that turn, which a Gemini history cannot have, so thinking yields for that request (the fake enforces it)."""
    declaration = types.FunctionDeclaration(name="get_weather", parameters_json_schema=WEATHER)
    config = thinking_config(
        tools=[types.Tool(function_declarations=[declaration])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    client = gemini_client(kaixu)
    first = client.models.generate_content(model="claude-test", contents="weather in Oslo", config=config)
    assert first.candidates and first.candidates[0].content and first.function_calls
    assert [bool(p.thought) for p in parts_of([first])] == [True, False]
    contents = [
        types.Content(role="user", parts=[types.Part(text="weather in Oslo")]),
        first.candidates[0].content,  # the thought part goes back too
        types.Content(
            role="user", parts=[types.Part.from_function_response(name="get_weather", response={"output": "sunny"})]
        ),
    ]
    second = client.models.generate_content(model="claude-test", contents=contents, config=config)
    assert second.text == "tool said: sunny"
    sent = upstream(fake)
    assert "thinking" not in sent and sent["max_tokens"] == 4096
    assert [b["type"] for b in sent["messages"][1]["content"]] == ["tool_use"]


def test_gemini_thinking_to_an_openai_provider(kaixu: Kaixu, fake: FakeProvider) -> None:
    client = gemini_client(kaixu)
    response = client.models.generate_content(model="gpt-4o-mini", contents=PROMPT, config=thinking_config())
    assert upstream(fake)["reasoning_effort"] == "high"
    assert response.text == f"echo: {PROMPT}"
    assert response.usage_metadata is not None and response.usage_metadata.thoughts_token_count == THOUGHT_TOKENS


# --- OpenAI SDK with reasoning_effort --------------------------------------------------------------


def test_openai_reasoning_effort_to_anthropic_and_gemini(kaixu: Kaixu, fake: FakeProvider) -> None:
    client = openai_client(kaixu)
    messages: Any = [{"role": "user", "content": PROMPT}]
    completion = client.chat.completions.create(
        model="claude-test", messages=messages, reasoning_effort="medium", max_completion_tokens=1000
    )
    sent = upstream(fake)
    assert (sent["thinking"], sent["max_tokens"]) == ({"type": "enabled", "budget_tokens": 8192}, 8192 + 1000)
    message = completion.choices[0].message
    assert message.content == f"echo: {PROMPT}"
    assert getattr(message, "reasoning_content", None) == THOUGHT  # an extra field the SDK keeps
    completion = client.chat.completions.create(model="gemini-test", messages=messages, reasoning_effort="none")
    assert upstream(fake)["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0}
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0
    stream = client.chat.completions.create(
        model="gemini-test",
        messages=messages,
        reasoning_effort="low",
        stream=True,
        stream_options={"include_usage": True},
    )
    thinking, text, usage = "", "", None
    for chunk in stream:
        if chunk.choices:
            thinking += getattr(chunk.choices[0].delta, "reasoning_content", None) or ""
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert (thinking, text) == (THOUGHT, f"echo: {PROMPT}")
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == THOUGHT_TOKENS
    assert usage.completion_tokens == ANSWER_TOKENS + THOUGHT_TOKENS


# --- an OpenAI-compatible server that returns reasoning_content ---------------------------------------


@pytest.fixture(scope="module")
def reasoner(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    policy = policy_for(fake.base_url)
    policy["models"]["reasoner-test"] = {"route": [{"provider": "oai", "model": "test-reasoner"}]}
    gateway = Kaixu(Path(tmp_path_factory.mktemp("reasoner")), policy).start()
    yield gateway
    gateway.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_content_reaches_anthropic_and_gemini_clients(reasoner: Kaixu, stream: bool) -> None:
    client = anthropic_client(reasoner)
    message = thinking_message(client, "reasoner-test", stream)
    assert [(b.type, getattr(b, "thinking", None)) for b in message.content] == [("thinking", THOUGHT), ("text", None)]

    gemini = gemini_client(reasoner)
    models = gemini.models
    if stream:
        answers = list(models.generate_content_stream(model="reasoner-test", contents=PROMPT, config=thinking_config()))
    else:
        answers = [models.generate_content(model="reasoner-test", contents=PROMPT, config=thinking_config())]
    assert "".join(p.text or "" for p in parts_of(answers) if p.thought) == THOUGHT
    assert "".join(a.text or "" for a in answers) == f"echo: {PROMPT}"


def test_a_client_that_did_not_ask_gets_no_thinking(reasoner: Kaixu) -> None:
    message = anthropic_client(reasoner).messages.create(
        model="reasoner-test", max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
    )
    assert [b.type for b in message.content] == ["text"]
    gemini = gemini_client(reasoner)
    response = gemini.models.generate_content(model="reasoner-test", contents=PROMPT)
    assert [p.thought for p in parts_of([response])] == [None]
