"""The Responses API front door end to end: the official openai SDK's `client.responses.*` against kaixu, which
forwards to a Responses provider byte for byte or translates to Chat Completions, Anthropic Messages and Gemini
(the fake provider speaking each), and to the mock. JSON and streams, sync and async, tools with a tool-result
round trip, structured output, the SDK's stream helpers, usage and cost in the ledger."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.provider import FakeProvider
from tests.harness import LIMITED_KEY, TEST_KEY, UPSTREAM_KEYS, Kaixu, ledger_row, policy_for

# model -> (the upstream path it reaches, the format the fake speaks there)
PROVIDERS = {
    "gpt-resp": "/v1/responses",
    "gpt-4o-mini": "/v1/chat/completions",
    "claude-test": "/v1/messages",
    "gemini-test": "/v1beta/models/gemini-2.5-flash:",
}
MODELS = list(PROVIDERS)
TOOLS: Any = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
CITY_SCHEMA = {
    "type": "object",
    "properties": {"echo": {"type": "string"}},
    "required": ["echo"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def gateway(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"})
    policy["providers"]["oair"] = {
        "kind": "openai",
        "api": "responses",
        "base_url": fake.base_url + "/v1",
        "api_key": UPSTREAM_KEYS["openai"],
    }
    policy["models"]["gpt-resp"] = {"route": [{"provider": "oair", "model": "gpt-4o-mini"}]}
    policy["providers"]["openai-itself"] = {**policy["providers"]["oair"], "keeps_responses": True}
    policy["models"]["gpt-keeps"] = {"route": [{"provider": "openai-itself", "model": "gpt-4o-mini"}]}
    kaixu = Kaixu(tmp_path_factory.mktemp("responses"), policy).start()
    yield kaixu
    kaixu.stop()


def client(gateway: Kaixu) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)


def upstream(fake: FakeProvider, model: str) -> Any:
    seen = fake.requests[-1]
    assert PROVIDERS[model] in seen.path
    assert TEST_KEY not in json.dumps(seen.headers)
    return seen


@pytest.mark.parametrize("model", MODELS)
def test_json_answer(gateway: Kaixu, fake: FakeProvider, model: str) -> None:
    raw = client(gateway).responses.with_raw_response.create(
        model=model,
        instructions="Be brief.",
        input=[{"role": "developer", "content": "no markdown"}, {"role": "user", "content": "Hello there"}],
        max_output_tokens=100,
    )
    response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_")
    if model != "gpt-resp":  # kaixu's own id (a Responses provider's passes through)
        assert len(response.id) == 37
    assert response.output_text == "echo: Hello there"
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    upstream(fake, model)
    row = ledger_row(gateway, raw.headers["x-request-id"])
    assert row["front"] == "responses" and row["status"] == 200
    assert row["input_tokens"] == response.usage.input_tokens
    assert row["output_tokens"] == response.usage.output_tokens
    assert row["cost_micros"] is not None and row["cost_micros"] > 0


def test_a_responses_provider_gets_the_clients_bytes(gateway: Kaixu, fake: FakeProvider) -> None:
    body = {"model": "gpt-resp", "input": "Hi", "store": False, "include": ["reasoning.encrypted_content"],
            "text": {"verbosity": "low"}, "prompt_cache_key": "k", "client_metadata": {"a": "b"}}  # fmt: skip
    raw = json.dumps(body, separators=(",", ":")).encode()
    headers = {"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"}
    answer = httpx.post(gateway.url + "/v1/responses", content=raw, headers=headers)  # fmt: skip
    assert answer.status_code == 200, answer.text
    seen = upstream(fake, "gpt-resp")
    assert json.loads(seen.body) == {**body, "model": "gpt-4o-mini"}  # only the aliased model changed
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEYS['openai']}"
    assert "x-kaixu-dropped" not in answer.headers


@pytest.mark.parametrize("model", ["claude-test", "gemini-test", "gpt-4o-mini"])
def test_codex_fields_are_accepted_and_named_when_dropped(gateway: Kaixu, fake: FakeProvider, model: str) -> None:
    body = {
        "model": model,
        "instructions": "You are Codex.",
        "input": [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
                  {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello"}]}],
        "tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False,
        "reasoning": {"effort": "low", "summary": "auto"}, "store": False, "stream": True,
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "session-1",
        "text": {"verbosity": "low"}, "client_metadata": {"turn": "1"},
    }  # fmt: skip
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body,
                      headers={"authorization": f"Bearer {TEST_KEY}"}) as answer:  # fmt: skip
        text = answer.read().decode()
        assert answer.status_code == 200, text
        dropped = answer.headers["x-kaixu-dropped"]
    for field in ("store", "include", "prompt_cache_key", "client_metadata", "text.verbosity"):
        assert field in dropped
    assert text.startswith("event: response.created\n")
    assert "event: response.completed\n" in text


def test_a_field_no_target_can_honour_is_a_400_naming_it(gateway: Kaixu) -> None:
    body = {"model": "claude-test", "input": "x", "include": ["message.output_text.logprobs"]}
    answer = httpx.post(gateway.url + "/v1/responses", headers={"authorization": f"Bearer {TEST_KEY}"}, json=body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "include" in error["message"] and error["type"] == "invalid_request_error"
    unauth = httpx.post(gateway.url + "/v1/responses", json={"model": "claude-test", "input": "x"})
    assert unauth.status_code == 401 and "error" in unauth.json()


@pytest.mark.parametrize("model", MODELS)
def test_stream_events_and_the_sdk_helper(gateway: Kaixu, fake: FakeProvider, model: str) -> None:
    names: list[str] = []
    with client(gateway).responses.stream(model=model, input="Hello there") as stream:
        text = ""
        for event in stream:
            names.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert text == "echo: Hello there" == final.output_text
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert names[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]  # fmt: skip
    assert final.usage is not None and final.usage.output_tokens > 0
    upstream(fake, model)


@pytest.mark.parametrize("model", MODELS)
def test_tool_call_round_trip(gateway: Kaixu, fake: FakeProvider, model: str) -> None:
    sdk = client(gateway)
    first = sdk.responses.create(model=model, input="weather in Paris", tools=TOOLS)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"echo": "weather in Paris"}
    history: Any = [
        {"role": "user", "content": "weather in Paris"},
        {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"},
    ]
    with sdk.responses.stream(model=model, input=history, tools=TOOLS) as stream:
        second = stream.get_final_response()
    assert second.output_text == "tool said: sunny, 21 C"


@pytest.mark.parametrize("model", MODELS)
def test_streamed_tool_call(gateway: Kaixu, fake: FakeProvider, model: str) -> None:
    with client(gateway).responses.stream(model=model, input="weather in Paris", tools=TOOLS) as stream:
        arguments = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [json.loads(c.arguments) for c in calls] == [{"echo": "weather in Paris"}] == [json.loads(arguments)]


@pytest.mark.parametrize("model", MODELS)
def test_structured_output(gateway: Kaixu, fake: FakeProvider, model: str) -> None:
    response = client(gateway).responses.create(
        model=model,
        input="Paris",
        text={"format": {"type": "json_schema", "name": "echo", "schema": CITY_SCHEMA, "strict": True}},
    )
    assert json.loads(response.output_text) == {"echo": "Paris"}


def test_async_client_json_and_stream(gateway: Kaixu) -> None:
    async def run() -> tuple[str, str]:
        sdk = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)
        answer = await sdk.responses.create(model="claude-test", input="async hello")
        stream = await sdk.responses.create(model="gemini-test", input="async stream", stream=True)
        text = ""
        async for event in stream:
            if event.type == "response.output_text.delta":
                text += event.delta
        await sdk.close()
        return answer.output_text, text

    assert asyncio.run(run()) == ("echo: async hello", "echo: async stream")


def test_the_mock_answers_the_responses_door(gateway: Kaixu) -> None:
    sdk = client(gateway)
    assert sdk.responses.create(model="mock-model", input="hi mock").output_text == "echo: hi mock"
    with sdk.responses.stream(model="mock-model", input="hi stream") as stream:
        assert stream.get_final_response().output_text == "echo: hi stream"


def test_input_tokens_count(gateway: Kaixu) -> None:
    for model in ("claude-test", "mock-model"):
        answer = httpx.post(gateway.url + "/v1/responses/input_tokens", headers={"authorization": f"Bearer {TEST_KEY}"},
                            json={"model": model, "input": "count these words please"})  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert answer.json()["input_tokens"] > 0


def test_reasoning_tokens_are_recorded(gateway: Kaixu) -> None:
    raw = client(gateway).responses.with_raw_response.create(
        model="gpt-resp", input="think first", reasoning={"effort": "low", "summary": "auto"}
    )
    response = raw.parse()
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens > 0
    row = ledger_row(gateway, raw.headers["x-request-id"])
    assert row["reasoning_tokens"] == response.usage.output_tokens_details.reasoning_tokens


def test_previous_response_id_continues_the_conversation_on_any_provider(gateway: Kaixu, fake: FakeProvider) -> None:
    sdk = client(gateway)
    first = sdk.responses.create(model="claude-test", input="my name is Ada")
    assert first.output_text == "echo: my name is Ada"
    with sdk.responses.stream(model="gemini-test", input="what is my name?", previous_response_id=first.id) as s:
        second = s.get_final_response()
    sent = json.loads(upstream(fake, "gemini-test").body)
    texts = [p.get("text") for c in sent["contents"] for p in c["parts"]]
    assert texts == ["my name is Ada", "echo: my name is Ada", "what is my name?"]
    assert [c["role"] for c in sent["contents"]] == ["user", "model", "user"]
    third = sdk.responses.create(model="gpt-resp", input="and again?", previous_response_id=second.id)
    forwarded = json.loads(upstream(fake, "gpt-resp").body)
    assert "previous_response_id" not in forwarded  # expanded by kaixu, even for a Responses provider
    assert [i.get("role", i.get("type")) for i in forwarded["input"]] == ["user", "assistant", "user", "assistant",
                                                                          "user"]  # fmt: skip
    assert all("id" not in item for item in forwarded["input"])
    assert third.output_text == "echo: and again?"
    unknown = httpx.post(gateway.url + "/v1/responses", headers={"authorization": f"Bearer {TEST_KEY}"},
                         json={"model": "claude-test", "input": "x", "previous_response_id": "resp_nope"})  # fmt: skip
    assert unknown.status_code == 400 and "previous_response_id" in unknown.json()["error"]["message"]


def test_stored_responses_are_read_back_and_deleted_by_their_key_only(gateway: Kaixu) -> None:
    sdk = client(gateway)
    with sdk.responses.stream(model="gemini-test", input="keep me") as stream:
        made = stream.get_final_response()
    again = sdk.responses.retrieve(made.id)
    assert again.id == made.id and again.output_text == "echo: keep me" and again.usage == made.usage
    items = sdk.responses.input_items.list(made.id)
    assert [item.type for item in items.data] == ["message"]
    assert items.data[0].content[0].text == "keep me"  # type: ignore[union-attr]
    other = openai.OpenAI(base_url=gateway.url + "/v1", api_key=LIMITED_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(made.id)
    with pytest.raises(openai.BadRequestError):
        other.responses.create(model="gpt-4o-mini", input="x", previous_response_id=made.id)
    sdk.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(made.id)
    anonymous = httpx.get(f"{gateway.url}/v1/responses/{made.id}")
    assert anonymous.status_code == 401 and "error" in anonymous.json()
    unstored = sdk.responses.create(model="claude-test", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(unstored.id)


# --- a Responses provider behind the other doors (`kind: openai`, `api: responses`) --------------------------


def test_chat_completions_door_to_a_responses_provider(gateway: Kaixu, fake: FakeProvider) -> None:
    sdk = client(gateway)
    answer = sdk.chat.completions.create(model="gpt-resp", messages=[{"role": "user", "content": "via chat"}])
    assert answer.choices[0].message.content == "echo: via chat" and answer.usage is not None
    assert answer.usage.prompt_tokens > 0
    sent = json.loads(upstream(fake, "gpt-resp").body)
    assert sent["input"] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "via chat"}]}
    ]
    stream = sdk.chat.completions.create(
        model="gpt-resp",
        messages=[{"role": "user", "content": "weather"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": TOOLS[0]["parameters"]}}],
        stream=True,
        stream_options={"include_usage": True},
    )
    arguments, usage = "", None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                arguments += (call.function.arguments or "") if call.function else ""
    assert json.loads(arguments) == {"echo": "weather"} and usage is not None and usage.completion_tokens > 0


def test_anthropic_and_gemini_doors_to_a_responses_provider(gateway: Kaixu, fake: FakeProvider) -> None:
    import anthropic
    from google import genai

    claude = anthropic.Anthropic(base_url=gateway.url, api_key=TEST_KEY, max_retries=0)
    with claude.messages.stream(
        model="gpt-resp", max_tokens=50, messages=[{"role": "user", "content": "via anthropic"}]
    ) as stream:
        message = stream.get_final_message()
    assert message.content[0].type == "text" and message.content[0].text == "echo: via anthropic"
    assert message.usage.output_tokens > 0
    gemini = genai.Client(api_key=TEST_KEY, http_options={"base_url": gateway.url})
    answer = gemini.models.generate_content(model="gpt-resp", contents="via gemini")
    assert answer.text == "echo: via gemini"
    upstream(fake, "gpt-resp")


def test_anthropic_thinking_comes_back_as_a_reasoning_summary(gateway: Kaixu, fake: FakeProvider) -> None:
    sdk = client(gateway)
    with sdk.responses.stream(
        model="claude-test", input="think about it", reasoning={"effort": "low", "summary": "auto"}
    ) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.reasoning_summary_text.delta")
        final = stream.get_final_response()
    sent = json.loads(upstream(fake, "claude-test").body)
    assert sent["thinking"]["type"] == "enabled"
    reasoning = [item for item in final.output if item.type == "reasoning"]
    assert len(reasoning) == 1 and reasoning[0].summary[0].text == deltas == "considering: think about it"
    assert final.output_text == "echo: think about it"
    hidden = sdk.responses.create(model="claude-test", input="think quietly", reasoning={"effort": "low"})
    assert [item.type for item in hidden.output] == ["message"]  # no summary asked for: none shown


def test_a_provider_that_keeps_its_responses_gets_previous_response_id(gateway: Kaixu, fake: FakeProvider) -> None:
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    body = {"model": "gpt-keeps", "input": "and then?", "previous_response_id": "resp_made_at_openai"}
    answer = httpx.post(gateway.url + "/v1/responses", headers=headers, json=body)
    assert answer.status_code == 400 and "resp_made_at_openai" in answer.json()["error"]["message"]  # the provider's
    sent = json.loads(fake.requests[-1].body)
    assert sent["previous_response_id"] == "resp_made_at_openai" and sent["input"] == "and then?"
    made = client(gateway).responses.create(model="gpt-keeps", input="not kept by kaixu")
    with pytest.raises(openai.NotFoundError):
        client(gateway).responses.retrieve(made.id)
