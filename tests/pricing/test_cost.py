"""The cost on every answer: priced by what was served, shown in the headers, the seeds' own cost fields and
the ledger; an unknown price is unknown (never 0), and `pricing.require` refuses it before forwarding."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.provider import FakeProvider
from tests.harness import TEST_KEY, Kaixu, ledger_row, policy_for

BEARER = {"authorization": f"Bearer {TEST_KEY}"}
# USD per 1M tokens, chosen so a few tokens cost a round number of micro-dollars.
PRICES = {
    "mock/mock-model": {"input": 2, "output": 10},
    "mock/free-model": {"input": 0, "output": 0},
    "openai/gpt-4o-mini": {"input": 1, "output": 4},
}


def _policy(fake: FakeProvider, **pricing: Any) -> dict[str, Any]:
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"})
    policy["models"].update(
        {
            "free-model": {"route": [{"provider": "mock"}]},
            "unpriced-model": {"route": [{"provider": "mock"}]},
        }
    )
    policy["pricing"] = {"models": PRICES, **pricing}
    return policy


@pytest.fixture(scope="module")
def gateway(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    kaixu = Kaixu(tmp_path_factory.mktemp("cost"), _policy(fake, eur_per_usd=0.5)).start()
    yield kaixu
    kaixu.stop()


def _micros(usage: dict[str, int], input_rate: int, output_rate: int) -> int:
    # integer rates per 1M tokens: tokens x rate is micro-dollars, exactly
    return usage["prompt_tokens"] * input_rate + usage["completion_tokens"] * output_rate


def test_a_json_answer_carries_its_cost(gateway: Kaixu) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY)
    raw = client.chat.completions.with_raw_response.create(
        model="mock-model", messages=[{"role": "user", "content": "what does this cost"}]
    )
    answer = raw.parse()
    assert answer.usage is not None
    usage = answer.usage.model_dump()
    micros = _micros(usage, 2, 10)
    assert micros > 0
    expected = f"0.{micros:06d}"
    assert raw.headers["x-cost-usd"] == expected and raw.headers["x-kaixu-cost-usd"] == expected
    assert raw.headers["x-kaixu-usage"] == (
        f"input={usage['prompt_tokens']}, output={usage['completion_tokens']}, cached=0, cache_write=0, reasoning=0"
    )
    row = ledger_row(gateway, raw.headers["x-request-id"])
    assert row["cost_micros"] == micros and row["unpriced"] == 0 and row["usage_source"] == "provider"
    assert row["model"] == "mock-model" and row["provider"] == "mock"


def test_the_price_is_the_served_models_not_the_alias(gateway: Kaixu, fake: FakeProvider) -> None:
    """`alias` routes to the fake's gpt-4o-mini-2024-07-18: priced as openai/gpt-4o-mini (dated suffix)."""
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "alias", "messages": [{"role": "user", "content": "hi"}]},
        headers=BEARER,
    )
    assert response.status_code == 200, response.text
    micros = _micros(response.json()["usage"], 1, 4)
    assert response.headers["x-cost-usd"] == f"0.{micros:06d}"
    row = ledger_row(gateway, response.headers["x-request-id"])
    assert row["model"] == "alias" and row["upstream_model"] == "gpt-4o-mini-2024-07-18"
    assert row["cost_micros"] == micros


def test_an_explicit_zero_price_is_free_not_unknown(gateway: Kaixu) -> None:
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "free-model", "messages": [{"role": "user", "content": "hi"}]},
        headers=BEARER,
    )
    assert response.headers["x-cost-usd"] == "0.000000"
    row = ledger_row(gateway, response.headers["x-request-id"])
    assert row["cost_micros"] == 0 and row["unpriced"] == 0


def test_an_unpriced_model_costs_unknown_never_zero(gateway: Kaixu) -> None:
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "unpriced-model", "messages": [{"role": "user", "content": "hi"}]},
        headers=BEARER,
    )
    assert response.status_code == 200
    assert "x-cost-usd" not in response.headers  # clients parse it as a number
    assert response.headers["x-kaixu-cost-usd"] == "unknown"
    row = ledger_row(gateway, response.headers["x-request-id"])
    assert row["cost_micros"] is None and row["unpriced"] == 1 and row["input_tokens"] > 0


def _comments(text: str) -> dict[str, str]:
    lines = [line[2:] for line in text.splitlines() if line.startswith(": kaixu-")]
    return dict(line.split("=", 1) for line in lines)


def test_streams_end_with_the_cost_and_the_sdks_still_parse_them(gateway: Kaixu) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY)
    stream = client.chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": "stream me"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: stream me"

    claude = anthropic.Anthropic(base_url=gateway.url, api_key=TEST_KEY)
    with claude.messages.stream(
        model="mock-model", max_tokens=50, messages=[{"role": "user", "content": "stream me"}]
    ) as events:
        assert events.get_final_text() == "echo: stream me"

    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={"model": "mock-model", "messages": [{"role": "user", "content": "stream me"}], "stream": True},
        headers=BEARER,
    ) as response:
        text = response.read().decode()
        request_id = response.headers["x-request-id"]
    comments = _comments(text)
    assert text.rstrip().endswith(f"kaixu-usage={comments['kaixu-usage']}")  # after data: [DONE]
    row = ledger_row(gateway, request_id)
    assert comments["kaixu-cost-usd"] == f"0.{row['cost_micros']:06d}" and row["cost_micros"] > 0
    assert row["ttft_ms"] is not None and 0 <= row["ttft_ms"] <= row["latency_ms"]


def test_the_seeds_cost_fields_are_real_numbers(gateway: Kaixu) -> None:
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "Hi"}]}
    chat = httpx.post(gateway.url + "/.netlify/functions/gateway-chat", json=body, headers=BEARER)
    assert chat.status_code == 200, chat.text
    row = ledger_row(gateway, chat.headers["x-request-id"])
    assert chat.json()["usage"]["cost_cents"] == pytest.approx(row["cost_micros"] / 10_000)
    assert row["cost_micros"] > 0

    stream = httpx.post(gateway.url + "/.netlify/functions/gateway-stream", json=body, headers=BEARER)
    done = [block for block in stream.text.split("\n\n") if block.startswith("event: done")]
    cost_cents = json.loads(done[0].split("data:", 1)[1])["usage"]["cost_cents"]
    row = ledger_row(gateway, stream.headers["x-request-id"])
    assert cost_cents == pytest.approx(row["cost_micros"] / 10_000) and cost_cents > 0

    pulse = httpx.post(gateway.url + "/api/ai/request", json={"model": "mock-model", "prompt": "Hi"}, headers=BEARER)
    assert pulse.status_code == 200, pulse.text
    row = ledger_row(gateway, pulse.headers["x-request-id"])
    assert pulse.json()["estimatedCostEur"] == pytest.approx(row["cost_micros"] * 0.5 / 1_000_000)


@pytest.fixture(scope="module")
def strict(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    kaixu = Kaixu(tmp_path_factory.mktemp("strict"), _policy(fake, require=True)).start()
    yield kaixu
    kaixu.stop()


@pytest.mark.parametrize(
    ("path", "body", "code_of"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, lambda b: b["error"]["code"]),
        ("/v1/messages", {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, None),
        ("/.netlify/functions/gateway-chat", {"messages": [{"role": "user", "content": "x"}]}, lambda b: b["code"]),
    ],
    ids=["openai", "anthropic", "gateway13"],
)
def test_pricing_require_refuses_an_unpriced_model_before_forwarding(
    strict: Kaixu, fake: FakeProvider, path: str, body: dict[str, Any], code_of: Any
) -> None:
    fake.clear()
    response = httpx.post(strict.url + path, json={"model": "unpriced-model", **body}, headers=BEARER)
    assert response.status_code == 409, response.text
    data = response.json()
    if path == "/v1/messages":
        assert data["type"] == "error" and "no price" in data["error"]["message"]
    else:
        assert code_of(data) == "UNPRICED_MODEL"
    priced = httpx.post(strict.url + path, json={"model": "mock-model", **body}, headers=BEARER)
    assert priced.status_code == 200, priced.text


def test_pricing_require_on_gemini_door(strict: Kaixu) -> None:
    response = httpx.post(
        strict.url + "/v1beta/models/unpriced-model:generateContent",
        json={"contents": [{"parts": [{"text": "x"}]}]},
        headers={"x-goog-api-key": TEST_KEY},
    )
    assert response.status_code == 409
    assert response.json()["error"]["status"] in ("FAILED_PRECONDITION", "ABORTED", "ALREADY_EXISTS")


def test_a_bad_price_in_the_policy_is_a_check_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    policy = policy_for("http://127.0.0.1:9", pricing={"models": {"mock/x": {"input": -1}}})
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(policy))
    result = subprocess.run(
        [sys.executable, "-m", "kaixu", "check", str(tmp_path / "proxy.yaml")], capture_output=True, text=True
    )
    assert result.returncode != 0 and "pricing" in (result.stdout + result.stderr)
