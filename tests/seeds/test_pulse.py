"""Pulse AI Gateway (seed 003): the setup guide's requests, response and error shapes."""

from __future__ import annotations

from typing import Any

import pytest

from kaixu.formats.canonical import ChatRequest, Message, TextPart, Usage
from kaixu.formats.errors import FormatError
from kaixu.formats.seeds import SeedContext, pulse

from .helpers import answer

CURL_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "prompt": "Say hello",
    "teamId": "team-123",
    "projectId": "project-456",
}
SDK_BODY: dict[str, Any] = {
    "orgId": "org-id",
    "actorUserId": "user-id",
    "model": "gpt-4o-mini",
    "input": "Say hello",
    "metadata": {
        "teamId": "team-123",
        "projectId": "project-456",
        "appId": "app-789",
        "taskType": "code-review",
    },
    "maxTokens": 1000,
    "temperature": 0.7,
}
CHAT_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "input": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "metadata": {"teamId": "team-123"},
}


def user(text: str) -> Message:
    return Message("user", [TextPart(text)])


# --- requests ------------------------------------------------------------------------


def test_curl_example() -> None:
    assert pulse.decode_request(CURL_BODY) == ChatRequest(model="gpt-4o-mini", messages=[user("Say hello")])
    assert pulse.attribution(CURL_BODY) == {
        "teamId": "team-123",
        "projectId": "project-456",
        "appId": None,
        "clientId": None,
        "userId": None,
    }


def test_sdk_example() -> None:
    assert pulse.decode_request(SDK_BODY) == ChatRequest(
        model="gpt-4o-mini", messages=[user("Say hello")], max_tokens=1000, temperature=0.7
    )
    assert pulse.attribution(SDK_BODY) == {
        "teamId": "team-123",
        "projectId": "project-456",
        "appId": "app-789",
        "clientId": None,
        "userId": None,
    }


def test_chat_format_example() -> None:
    req = pulse.decode_request(CHAT_BODY)
    assert req == ChatRequest(
        model="gpt-4o-mini", messages=[user("What is 2+2?")], system="You are a helpful assistant."
    )
    assert pulse.attribution(CHAT_BODY)["teamId"] == "team-123"


def test_messages_alias_and_top_level_attribution_wins() -> None:
    body = {
        "model": "claude-3-haiku-20240307",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        "teamId": "top",
        "userId": "u-1",
        "metadata": {"teamId": "meta", "clientId": "c-9"},
    }
    req = pulse.decode_request(body)
    assert req.messages == [user("Hi"), Message("assistant", [TextPart("Hello")])]
    assert pulse.attribution(body) == {
        "teamId": "top",
        "projectId": None,
        "appId": None,
        "clientId": "c-9",
        "userId": "u-1",
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "m"}, "prompt"),
        ({"prompt": "hi"}, "model"),
        ({"model": "m", "prompt": "a", "input": "b"}, "input"),
        ({"model": "m", "prompt": ["a"]}, "prompt"),
        ({"model": "m", "prompt": " "}, "prompt"),
        ({"model": "m", "input": 5}, "input"),
        (
            {"model": "m", "input": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]},
            "input[1].role",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": 1}]}, "messages[0].content"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "prompt": "a", "maxTokens": "100"}, "maxTokens"),
        ({"model": "m", "prompt": "a", "maxTokens": -1}, "maxTokens"),
        ({"model": "m", "prompt": "a", "temperature": "warm"}, "temperature"),
        ({"model": "m", "prompt": "a", "metadata": "team-123"}, "metadata"),
        ({"model": "m", "prompt": "a", "metadata": {"teamId": 123}}, "metadata.teamId"),
        ({"model": "m", "prompt": "a", "projectId": 456}, "projectId"),
    ],
)
def test_validation_errors_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(FormatError) as exc:
        pulse.decode_request(body)
    assert exc.value.field == field


def test_streaming_is_refused() -> None:
    with pytest.raises(FormatError) as exc:
        pulse.decode_request(CURL_BODY, stream=True)
    assert exc.value.field == "stream"
    with pytest.raises(NotImplementedError):
        pulse.CODEC.stream_encoder(ChatRequest(model="m"))


# --- responses and errors ------------------------------------------------------------


def test_response_shape() -> None:
    out = pulse.encode_response(answer("Hello!", usage=Usage(9, 3)), SeedContext(model="gpt-4o-mini"))
    assert out == {
        "success": True,
        "content": "Hello!",
        "model": "gpt-4o-mini",
        "usage": {"inputTokens": 9, "outputTokens": 3, "totalTokens": 12},
    }


def test_response_with_cost_and_request_id() -> None:
    ctx = SeedContext(cost_eur=0.000123, request_id="req-42")
    out = pulse.encode_response(answer("Hello!"), ctx)
    assert out["estimatedCostEur"] == 0.000123
    assert out["requestId"] == "req-42"


def test_policy_error_body() -> None:
    message = pulse.policy_error("gpt-4", "Production Policy")
    assert pulse.CODEC.error_body(403, message, "permission_error") == {
        "success": False,
        "error": 'Model gpt-4 is blocked by policy "Production Policy"',
    }
