"""What coding agents send, end to end through kaixu with the real SDKs: mid-conversation system messages,
vendor-only extras (dropped and named in `x-kaixu-dropped` and the ledger, or refused under
`translation.unsupported: reject`), and structured output schemas across formats. The fake provider records
what it received; the request bodies are written from the APIs' documented fields."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types

from tests.fakes.provider import FakeProvider
from tests.harness import TEST_KEY, Kaixu, ledger_row, policy_for

EPHEMERAL: Any = {"type": "ephemeral"}
BETAS = "mid-conversation-system-2026-04-07,context-management-2025-06-27"
SYSTEM: Any = [
    {"type": "text", "text": "You are a coding agent."},
    {"type": "text", "text": "Work in /repo.", "cache_control": EPHEMERAL},
]
TOOLS: Any = [
    {
        "name": "read_file",
        "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
        "cache_control": EPHEMERAL,
    }
]
MID_SYSTEM = "The user prefers small diffs."
MESSAGES: Any = [
    {"role": "user", "content": [{"type": "text", "text": "Fix the bug.", "cache_control": EPHEMERAL}]},
    {"role": "system", "content": MID_SYSTEM},
]
EXTRA_BODY = {"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}}
DROPPED = {
    "context_management",
    "system[1].cache_control",
    "messages[0].content[0].cache_control",
    "tools[0].cache_control",
    "headers.anthropic-beta",
}


@pytest.fixture(scope="module")
def gw(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"})
    policy["models"]["claude-direct"] = {"route": [{"provider": "ant"}]}  # no alias: the body is not rewritten
    gateway = Kaixu(tmp_path_factory.mktemp("agents"), policy).start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def strict(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    gateway = Kaixu(tmp_path_factory.mktemp("strict"), policy_for(fake.base_url, translation={"unsupported": "reject"}))
    yield gateway.start()
    gateway.stop()


def claude(gateway: Kaixu) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=TEST_KEY, max_retries=0)


def agent_request(**overrides: Any) -> dict[str, Any]:
    return {
        "max_tokens": 100,
        "system": SYSTEM,
        "tools": TOOLS,
        "tool_choice": {"type": "none"},
        "messages": MESSAGES,
        "metadata": {"user_id": "user-1"},
        "extra_body": EXTRA_BODY,
        "extra_headers": {"anthropic-beta": BETAS},
        **overrides,
    }


def dropped(headers: Any) -> set[str]:
    return set(headers["x-kaixu-dropped"].split(", "))


def assert_nothing_vendor_only(seen: Any) -> None:
    text = seen.body.decode()
    for name in ("cache_control", "context_management", "ephemeral"):
        assert name not in text
    assert "anthropic-beta" not in seen.headers and "anthropic-version" not in seen.headers


def test_claude_agent_request_to_an_openai_provider(gw: Kaixu, fake: FakeProvider) -> None:
    raw = claude(gw).messages.with_raw_response.create(model="gpt-4o-mini", **agent_request())
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == "echo: Fix the bug."
    assert dropped(raw.headers) == DROPPED

    seen = fake.requests[-1]
    assert "/v1/chat/completions" in seen.path
    assert seen.json["messages"] == [
        {"role": "system", "content": "You are a coding agent.\n\nWork in /repo."},
        {"role": "user", "content": "Fix the bug."},
        {"role": "system", "content": MID_SYSTEM},  # where the client put it
    ]
    assert seen.json["user"] == "user-1"
    assert_nothing_vendor_only(seen)
    assert ledger_row(gw, raw.headers["x-request-id"])["dropped"] == raw.headers["x-kaixu-dropped"]


def test_claude_agent_stream_to_a_gemini_provider(gw: Kaixu, fake: FakeProvider) -> None:
    with claude(gw).messages.stream(model="gemini-test", **agent_request()) as stream:
        headers = stream.response.headers
        text = stream.get_final_text()
    assert text.startswith("echo: Fix the bug.")
    assert dropped(headers) == DROPPED | {"metadata.user_id"}  # Gemini has no end-user id

    seen = fake.requests[-1]
    assert ":streamGenerateContent" in seen.path
    assert seen.json["systemInstruction"] == {"parts": [{"text": "You are a coding agent.\n\nWork in /repo."}]}
    [turn] = seen.json["contents"]
    assert turn["parts"] == [{"text": "Fix the bug."}, {"text": f"<system>\n{MID_SYSTEM}\n</system>"}]
    assert_nothing_vendor_only(seen)
    assert ledger_row(gw, headers["x-request-id"])["dropped"] == headers["x-kaixu-dropped"]


def test_same_format_is_forwarded_byte_for_byte(gw: Kaixu, fake: FakeProvider) -> None:
    body = {"model": "claude-direct", **agent_request(), **EXTRA_BODY}
    del body["extra_body"], body["extra_headers"]
    sent = json.dumps(body).encode()
    headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01", "anthropic-beta": BETAS}
    response = httpx.post(gw.url + "/v1/messages", content=sent, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert "x-kaixu-dropped" not in response.headers
    seen = fake.requests[-1]
    assert seen.body == sent
    assert seen.headers["anthropic-beta"] == BETAS


def test_reject_policy_refuses_and_names_every_field(strict: Kaixu, fake: FakeProvider) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        claude(strict).messages.create(model="gpt-4o-mini", **agent_request())
    message = str(err.value)
    for field in DROPPED:
        assert field in message
    assert "translation.unsupported is reject" in message
    assert "x-kaixu-dropped" not in err.value.response.headers  # nothing was sent, so nothing was dropped
    assert fake.requests == []
    # Nothing to drop: the same request goes through.
    plain = claude(strict).messages.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert plain.parse().content[0].type == "text" and "x-kaixu-dropped" not in plain.headers


def test_openai_agent_fields_to_a_gemini_provider(gw: Kaixu, fake: FakeProvider) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gemini-test",
        messages=[{"role": "user", "content": "hi"}],
        prompt_cache_key="session-1",
        safety_identifier="hash-1",
        store=False,
        service_tier="auto",
        user="user-1",
    )
    assert raw.parse().choices[0].message.content == "echo: hi"
    assert dropped(raw.headers) == {"prompt_cache_key", "safety_identifier", "store", "service_tier", "user"}
    sent = fake.requests[-1].body.decode()
    assert "session-1" not in sent and "hash-1" not in sent and "user-1" not in sent


# Gemini's upper-case dialect, as the Gemini CLI writes it in responseJsonSchema.
ROUTER_SCHEMA = {
    "type": "OBJECT",
    "properties": {
        "reasoning": {"type": "STRING"},
        "model_choice": {"type": "STRING", "enum": ["flash", "pro"]},
    },
    "required": ["reasoning", "model_choice"],
}


def test_gemini_response_json_schema_to_an_anthropic_provider(gw: Kaixu, fake: FakeProvider) -> None:
    client = genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(base_url=gw.url))
    config = types.GenerateContentConfig(response_mime_type="application/json", response_json_schema=ROUTER_SCHEMA)
    response = client.models.generate_content(model="claude-direct", contents="pick a model", config=config)
    assert json.loads(response.text or "") == {"echo": "pick a model"}
    seen = fake.requests[-1].json
    assert seen["output_config"] == {
        "format": {
            "type": "json_schema",
            "schema": {
                "type": "object",
                "properties": {
                    "reasoning": {"type": "string"},
                    "model_choice": {"type": "string", "enum": ["flash", "pro"]},
                },
                "required": ["reasoning", "model_choice"],
                "additionalProperties": False,
            },
        }
    }


def test_openai_json_schema_to_a_gemini_provider(gw: Kaixu, fake: FakeProvider) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
    completion = client.chat.completions.create(
        model="gemini-test",
        messages=[{"role": "user", "content": "a city"}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
    )
    assert json.loads(completion.choices[0].message.content or "") == {"echo": "a city"}
    config = fake.requests[-1].json["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseJsonSchema": schema}
