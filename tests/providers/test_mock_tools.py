"""The built-in mock calls tools on request: a `mock:tool NAME {JSON}` line of the last user message is answered
with that one tool call, in the request's own wire format, when the request offers that tool; the turn that
carries the tool's result is answered with the result's text. Driven through kaixu with the official SDKs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types

from tests.harness import TEST_KEY, Kaixu, key_hash

SCHEMA = {"type": "object", "properties": {"pattern": {"type": "string"}}}
PROMPT = 'Please look.\n  mock:tool Glob {"pattern": "*.md"}\nmock:tool Read {"file_path": "/x"}'


@pytest.fixture(scope="module")
def kaixu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    policy = {
        "version": 1,
        "listen": [{"host": "127.0.0.1", "port": 0}],
        "store": {"sqlite": ":memory:"},
        "providers": {"mock": {"kind": "mock"}},
        "models": {"mock-model": {"route": [{"provider": "mock"}]}},
        "keys": [{"name": "test", "hash": key_hash(TEST_KEY)}],
    }
    gateway = Kaixu(Path(tmp_path_factory.mktemp("kaixu")), policy).start()
    yield gateway
    gateway.stop()


def _openai_tools(*names: str) -> Any:
    return [{"type": "function", "function": {"name": n, "parameters": SCHEMA}} for n in names]


def test_openai_directive_then_result(kaixu: Kaixu) -> None:
    client = openai.OpenAI(base_url=kaixu.url + "/v1", api_key=TEST_KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": PROMPT}]
    tools = _openai_tools("Read", "Glob")
    first = client.chat.completions.create(model="mock-model", messages=messages, tools=tools)
    assert first.choices[0].finish_reason == "tool_calls"
    calls = first.choices[0].message.tool_calls or []
    assert len(calls) == 1  # the first directive line wins, whatever the order of the tools offered
    call: Any = calls[0]
    assert call.function.name == "Glob" and json.loads(call.function.arguments) == {"pattern": "*.md"}
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "notes.md\nplan.md"},
    ]
    second = client.chat.completions.create(model="mock-model", messages=messages, tools=tools)
    assert second.choices[0].message.content == "tool said: notes.md\nplan.md"


def test_openai_stream_directive(kaixu: Kaixu) -> None:
    client = openai.OpenAI(base_url=kaixu.url + "/v1", api_key=TEST_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": PROMPT}], tools=_openai_tools("Glob"), stream=True
    )
    name, arguments = "", ""
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta.function is not None:
                name += delta.function.name or ""
                arguments += delta.function.arguments or ""
    assert name == "Glob" and json.loads(arguments) == {"pattern": "*.md"}


def test_openai_directive_for_a_tool_not_offered_is_text(kaixu: Kaixu) -> None:
    client = openai.OpenAI(base_url=kaixu.url + "/v1", api_key=TEST_KEY, max_retries=0)
    answer = client.chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": PROMPT}], tools=_openai_tools("Grep")
    )
    assert not answer.choices[0].message.tool_calls
    assert (answer.choices[0].message.content or "").startswith("echo: Please look.")


def test_anthropic_directive_then_result(kaixu: Kaixu) -> None:
    client = anthropic.Anthropic(base_url=kaixu.url, api_key=TEST_KEY, max_retries=0)
    tools: Any = [{"name": n, "input_schema": SCHEMA} for n in ("Read", "Glob")]
    # Claude Code's shape: a reminder block of its own before the person's text
    content: Any = [
        {"type": "text", "text": "<system-reminder>\nctx\n</system-reminder>"},
        {"type": "text", "text": PROMPT},
    ]
    messages: Any = [{"role": "user", "content": content}]
    first = client.messages.create(model="mock-model", max_tokens=100, messages=messages, tools=tools)
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "Glob" and uses[0].input == {"pattern": "*.md"}
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "notes.md"}]},
    ]
    second = client.messages.create(model="mock-model", max_tokens=100, messages=messages, tools=tools)
    assert [b.text for b in second.content if b.type == "text"] == ["tool said: notes.md"]


def test_gemini_directive_then_result(kaixu: Kaixu) -> None:
    client = genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(base_url=kaixu.url, api_version="v1beta"))
    declarations = [types.FunctionDeclaration(name=n, parameters_json_schema=SCHEMA) for n in ("Read", "Glob")]
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=declarations)],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    contents: Any = [types.Content(role="user", parts=[types.Part(text=PROMPT)])]
    first = client.models.generate_content(model="mock-model", contents=contents, config=config)
    calls = first.function_calls or []
    assert len(calls) == 1 and calls[0].name == "Glob" and calls[0].args == {"pattern": "*.md"}
    assert first.candidates and first.candidates[0].content
    contents += [
        first.candidates[0].content,
        types.Content(
            role="user",
            parts=[types.Part(function_response=types.FunctionResponse(name="Glob", response={"output": "notes.md"}))],
        ),
    ]
    second = client.models.generate_content(model="mock-model", contents=contents, config=config)
    assert second.text == "tool said: notes.md"
