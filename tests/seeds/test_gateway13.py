"""Kaixu Gateway 13 (seed 000): the runbook's body, response and SSE event shapes."""

from __future__ import annotations

from typing import Any

import pytest

from kaixu.formats.canonical import ChatRequest, Message, MessageStart, StreamError, TextPart, Usage
from kaixu.formats.errors import FormatError
from kaixu.formats.seeds import MonthRollup, SeedContext, gateway13, month_key

from .helpers import FINAL_USAGE, answer, failing_events, happy_events, run, sse_events

RUNBOOK_BODY: dict[str, Any] = {
    "provider": "openai",
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello"}],
    "max_tokens": 1024,
    "temperature": 1,
}
MONTH = MonthRollup(
    "2026-03", customer_cap_cents=5000, customer_spent_cents=1200, key_cap_cents=2000, key_spent_cents=300
)
CONTEXT = SeedContext(
    model="gpt-4o-mini", provider="openai", install_id="install-abc", month=MONTH, price_cents=lambda u: 7
)


def month_json(customer_spent: float, key_spent: float) -> dict[str, Any]:
    return {
        "month": "2026-03",
        "cap_cents": 5000,
        "spent_cents": customer_spent,
        "customer_cap_cents": 5000,
        "customer_spent_cents": customer_spent,
        "key_cap_cents": 2000,
        "key_spent_cents": key_spent,
    }


# --- requests ------------------------------------------------------------------------


def test_runbook_body() -> None:
    req = gateway13.decode_request(RUNBOOK_BODY)
    assert req == ChatRequest(
        model="gpt-4o-mini",
        messages=[Message("user", [TextPart("Say hello")])],
        max_tokens=1024,
        temperature=1,
    )
    assert gateway13.provider_hint(RUNBOOK_BODY) == "openai"


def test_stream_body_is_the_same() -> None:
    assert gateway13.decode_request(RUNBOOK_BODY, stream=True).stream is True


def test_system_messages_defaults_and_hint() -> None:
    body = {
        "provider": " Anthropic ",
        "model": "claude-3-5-sonnet-20241022",
        "messages": [
            {"role": "system", "content": "You are kAIxu."},
            {"role": "User", "content": "Hi"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Still there?"},
        ],
    }
    req = gateway13.decode_request(body)
    assert req.system == "You are kAIxu."
    assert req.messages == [Message("user", [TextPart("Hi")]), Message("user", [TextPart("Still there?")])]
    assert req.max_tokens == gateway13.DEFAULT_MAX_TOKENS
    assert req.temperature is None
    assert gateway13.provider_hint(body) == "anthropic"
    assert gateway13.provider_hint({"provider": ""}) is None
    assert gateway13.provider_hint({}) is None


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"provider": "mistral"}, "provider"),
        ({"provider": 1}, "provider"),
        ({"model": None}, "model"),
        ({"model": "  "}, "model"),
        ({"messages": None}, "messages"),
        ({"messages": {"role": "user"}}, "messages"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]},
            "messages[1].role",
        ),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": {"text": "a"}}]}, "messages[0].content"),
        ({"messages": [{"role": "system", "content": "only system"}]}, "messages"),
        ({"max_tokens": 10.5}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": "1"}, "temperature"),
    ],
)
def test_validation_errors_name_the_field(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(FormatError) as exc:
        gateway13.decode_request({**RUNBOOK_BODY, **patch})
    assert exc.value.field == field


# --- responses -----------------------------------------------------------------------


def test_response_shape_with_context() -> None:
    out = gateway13.encode_response(answer("Hello!", usage=Usage(12, 3)), CONTEXT)
    assert out == {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "output_text": "Hello!",
        "usage": {"input_tokens": 12, "output_tokens": 3, "cost_cents": 7},
        "month": month_json(1207, 307),
        "telemetry": {"install_id": "install-abc"},
    }


def test_known_cost_beats_the_pricer() -> None:
    ctx = SeedContext(month=MONTH, cost_cents=2, price_cents=lambda u: 99)
    assert gateway13.encode_response(answer(), ctx)["usage"]["cost_cents"] == 2


def test_response_defaults_without_context() -> None:
    out = gateway13.encode_response(answer("Hi", usage=Usage(1, 2)))
    assert out["provider"] is None
    assert out["model"] == "gemini-2.5-flash"
    assert out["usage"] == {"input_tokens": 1, "output_tokens": 2, "cost_cents": 0}
    assert out["month"]["month"] == month_key()
    assert out["month"]["customer_spent_cents"] == 0
    assert out["telemetry"] == {"install_id": None}


# --- streaming -----------------------------------------------------------------------


def test_stream_events() -> None:
    seen: list[Usage] = []

    def price(usage: Usage) -> float:
        seen.append(usage)
        return 7

    ctx = SeedContext(provider="openai", install_id="install-abc", month=MONTH, price_cents=price)
    req = gateway13.decode_request(RUNBOOK_BODY, stream=True)
    events = sse_events(run(gateway13.CODEC.stream_encoder(req, ctx), happy_events()))
    assert [name for name, _ in events] == ["meta", "delta", "delta", "delta", "done"]
    assert events[0][1] == {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "telemetry": {"install_id": "install-abc"},
        "month": month_json(1200, 300),
    }
    assert [data for _, data in events[1:4]] == [
        {"text": "Stoicism "},
        {"text": "is a "},
        {"text": "philosophy — ü."},
    ]
    assert events[4][1] == {
        "usage": {"input_tokens": 14, "output_tokens": 120, "cost_cents": 7},
        "month": month_json(1207, 307),
    }
    assert seen == [FINAL_USAGE]


def test_stream_error_event() -> None:
    req = gateway13.decode_request(RUNBOOK_BODY, stream=True)
    events = sse_events(run(gateway13.CODEC.stream_encoder(req, CONTEXT), failing_events()))
    assert [name for name, _ in events] == ["meta", "delta", "error"]
    assert events[2][1] == {"error": "upstream stream ended before the answer was complete"}


def test_meta_comes_first_even_before_an_immediate_error() -> None:
    encoder = gateway13.CODEC.stream_encoder(ChatRequest(model="gpt-4o-mini"), CONTEXT)
    events = sse_events(encoder.encode(StreamError("Provider error")) + encoder.close())
    assert [name for name, _ in events] == ["meta", "error"]


def test_events_after_the_end_are_ignored_and_meta_is_sent_once() -> None:
    encoder = gateway13.CODEC.stream_encoder(ChatRequest(model="m"))
    out = run(encoder, [*happy_events(), MessageStart("again", "m"), StreamError("late")])
    assert [name for name, _ in sse_events(out)] == ["meta", "delta", "delta", "delta", "done"]


def test_a_failing_pricer_still_ends_the_stream() -> None:
    def broken(usage: Usage) -> float:
        raise RuntimeError("no price")

    encoder = gateway13.CODEC.stream_encoder(ChatRequest(model="m"), SeedContext(price_cents=broken))
    events = sse_events(run(encoder, happy_events()))
    assert events[-1][0] == "done"
    assert events[-1][1]["usage"]["cost_cents"] == 0


def test_ping_event() -> None:
    assert gateway13.ping_event(1_700_000_000_000) == b'event: ping\ndata: {"t":1700000000000}\n\n'
    assert sse_events(gateway13.ping_event())[0][0] == "ping"


# --- errors --------------------------------------------------------------------------


def test_error_bodies() -> None:
    assert gateway13.CODEC.error_body(401, "Invalid or revoked key", "authentication_error") == {
        "error": "Invalid or revoked key"
    }
    assert gateway13.CODEC.error_body(409, "Model is not priced", "invalid_request_error", "UNPRICED_MODEL") == {
        "error": "Model is not priced",
        "code": "UNPRICED_MODEL",
    }
    assert gateway13.cap_reached_body("key", MONTH) == {
        "error": "Monthly cap reached",
        "scope": "key",
        "month": month_json(1200, 300),
    }
