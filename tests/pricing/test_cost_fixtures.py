"""Hand-computed costs, end to end: the fake provider reports a known usage (cache reads, cache writes and
reasoning tokens included) in each provider's own spelling, the policy sets explicit prices, and the cost
kaixu records and shows (ledger `cost_micros`, `X-Cost-USD` on a JSON answer, the final SSE comment of a
stream, Gateway 13's `done` event) is the one computed here by hand, in integers.

A rate in USD per 1M tokens times a token count is micro-dollars; the rates below are chosen so that each
product is exact in hundredths of a micro-dollar, and the total is rounded half up once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.provider import FakeProvider, Fault
from tests.harness import TEST_KEY, Kaixu, ledger_row, policy_for

PRICES = {
    "openai/gpt-4o-mini": {"input": 2, "cached_input": 0.5, "output": 8, "reasoning": 10},
    "anthropic/claude-3-5-haiku-latest": {
        "input": 1,
        "cached_input": 0.1,
        "cache_write_5m": 1.25,
        "output": 5,
        "reasoning": 6,
    },
    "gemini/gemini-2.5-flash": {"input": 0.3, "cached_input": 0.03, "output": 2.5, "reasoning": 3.5},
}


def half_up(hundredths: int) -> int:
    """Hundredths of a micro-dollar -> micro-dollars, rounded half up."""
    return (hundredths + 50) // 100


# provider wire format -> (the model routed to it, what it reports, the cost by hand, the ledger's tokens)
FIXTURES: dict[str, tuple[str, dict[str, Any], int, tuple[int, int, int, int, int]]] = {
    "openai": (
        "gpt-4o-mini",
        {
            "prompt_tokens": 12_000,
            "completion_tokens": 3_000,
            "total_tokens": 15_000,
            "prompt_tokens_details": {"cached_tokens": 8_000},
            "completion_tokens_details": {"reasoning_tokens": 2_000},
        },
        # 4,000 uncached x 2 + 8,000 cached x 0.50 + 1,000 visible output x 8 + 2,000 reasoning x 10
        half_up(4_000 * 200 + 8_000 * 50 + 1_000 * 800 + 2_000 * 1_000),  # 40,000
        (12_000, 3_000, 8_000, 0, 2_000),
    ),
    "anthropic": (
        "claude-test",
        {
            "input_tokens": 2_000,
            "cache_read_input_tokens": 50_000,
            "cache_creation_input_tokens": 10_000,
            "output_tokens": 4_000,
            "output_tokens_details": {"thinking_tokens": 1_500},
        },
        # 2,000 uncached x 1 + 50,000 cache reads x 0.10 + 10,000 cache writes x 1.25
        # + 2,500 visible output x 5 + 1,500 thinking x 6
        half_up(2_000 * 100 + 50_000 * 10 + 10_000 * 125 + 2_500 * 500 + 1_500 * 600),  # 41,000
        (62_000, 4_000, 50_000, 10_000, 1_500),
    ),
    "gemini": (
        "gemini-test",
        {
            "promptTokenCount": 20_000,
            "cachedContentTokenCount": 16_000,
            "candidatesTokenCount": 1_000,
            "thoughtsTokenCount": 3_001,
            "totalTokenCount": 24_001,
        },
        # 4,000 uncached x 0.30 + 16,000 cached x 0.03 + 1,000 visible output x 2.50 + 3,001 thoughts x 3.50
        # = 1,200 + 480 + 2,500 + 10,503.5 = 14,683.5 -> 14,684
        half_up(4_000 * 30 + 16_000 * 3 + 1_000 * 250 + 3_001 * 350),
        (20_000, 4_001, 16_000, 0, 3_001),
    ),
}
EXPECTED_MICROS = {"openai": 40_000, "anthropic": 41_000, "gemini": 14_684}
TRANSLATED_DOOR = {"openai": "anthropic", "anthropic": "gemini", "gemini": "openai"}
PROMPT = "What does this cost?"


@pytest.fixture(scope="module")
def gw(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"}, pricing={"models": PRICES})
    gateway = Kaixu(tmp_path_factory.mktemp("costs"), policy).start()
    yield gateway
    gateway.stop()


def post(gw: Kaixu, door: str, model: str, stream: bool) -> httpx.Response:
    """One request through a front door, the way that door's clients send it."""
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    if door == "gemini":
        verb = "streamGenerateContent?alt=sse" if stream else "generateContent"
        body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
        return httpx.post(
            f"{gw.url}/v1beta/models/{model}:{verb}", json=body, headers={"x-goog-api-key": TEST_KEY}, timeout=10
        )
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream}
    if door == "anthropic":
        body["max_tokens"] = 500
        return httpx.post(gw.url + "/v1/messages", json=body, headers=headers, timeout=10)
    return httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=10)


def usd(micros: int) -> str:
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def test_the_fixtures_are_what_the_comments_say() -> None:
    assert {wire: fixture[2] for wire, fixture in FIXTURES.items()} == EXPECTED_MICROS


@pytest.mark.parametrize("mode", ["json", "stream"])
@pytest.mark.parametrize("door", ["same", "translated"])
@pytest.mark.parametrize("provider", list(FIXTURES))
def test_the_recorded_and_shown_cost_is_the_hand_computed_one(
    gw: Kaixu, fake: FakeProvider, provider: str, door: str, mode: str
) -> None:
    model, reported, micros, recorded = FIXTURES[provider]
    front = provider if door == "same" else TRANSLATED_DOOR[provider]
    fake.add_fault(Fault(usage=reported))
    response = post(gw, front, model, mode == "stream")
    assert response.status_code == 200, response.text
    row = ledger_row(gw, response.headers["x-request-id"])
    columns = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens")
    assert tuple(row[c] for c in columns) == recorded
    assert (row["cost_micros"], row["usage_source"], row["unpriced"]) == (micros, "provider", 0)
    input_, output, cached, cache_write, reasoning = recorded
    summary = f"input={input_}, output={output}, cached={cached}, cache_write={cache_write}, reasoning={reasoning}"
    if mode == "json":
        assert response.headers["X-Cost-USD"] == response.headers["x-kaixu-cost-usd"] == usd(micros)
        assert response.headers["x-kaixu-usage"] == summary
    elif front == "gemini":
        assert b"\n:" not in response.content  # no comment where google-genai would choke on it
    else:
        assert response.content.endswith(f": kaixu-cost-usd={usd(micros)}\n: kaixu-usage={summary}\n\n".encode())


def test_gateway13_reports_the_hand_computed_cost_in_cents(gw: Kaixu, fake: FakeProvider) -> None:
    model, reported, micros, _ = FIXTURES["openai"]
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    fake.add_fault(Fault(usage=reported))
    chat = httpx.post(gw.url + "/.netlify/functions/gateway-chat", json=body, headers=headers, timeout=10)
    assert chat.json()["usage"]["cost_cents"] == 4.0  # 40,000 micro-dollars
    fake.add_fault(Fault(usage=reported))
    stream = httpx.post(gw.url + "/.netlify/functions/gateway-stream", json=body, headers=headers, timeout=10)
    blocks = [b for b in stream.text.split("\n\n") if b.startswith("event: done")]
    assert len(blocks) == 1
    done = json.loads(blocks[0].split("data:", 1)[1])
    assert done["usage"]["cost_cents"] == 4.0
    assert ledger_row(gw, stream.headers["x-request-id"])["cost_micros"] == micros
