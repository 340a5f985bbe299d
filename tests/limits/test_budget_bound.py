"""What a budget reserves before a request leaves (kaixu/addons/budgets.py) and what it answers when it cannot:
every answer a request asks for is reserved (OpenAI `n`, Gemini `candidateCount`), a budget held only by
requests in flight is a 429 to retry (402 means spent), a model's own output cap bounds what it can cost, and
an output limit that is not a positive number is refused before anything is reserved or forwarded.

Through a real kaixu on its default store, against the fake provider, which honours `n` and `candidateCount`
(each answer generated and billed) as the real APIs do."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from tests import hostile
from tests.fakes.provider import FakeProvider, Fault
from tests.harness import Kaixu, key_hash, ledger_row, policy_for, wait_for

WORDS = " ".join(f"w{i}" for i in range(40))
"""A prompt whose echo is longer than the output limits below: every answer is cut at its limit."""
LONG = [{"role": "user", "content": WORDS}]
HI = [{"role": "user", "content": "hi"}]


class Gateway:
    """A kaixu whose policy the tests add budgeted keys to (each reload waited for)."""

    def __init__(self, kaixu: Kaixu, policy: dict[str, Any]) -> None:
        self.kaixu, self.policy = kaixu, policy
        self.url = kaixu.url

    def add_key(self, name: str, usd: Decimal | float, **extra: Any) -> str:
        secret = f"sk-{name}"
        self.policy["keys"].append(
            {"name": name, "hash": key_hash(secret), "budget": {"usd": float(usd), "period": "total"}, **extra}
        )
        self.reload()
        return secret

    def reload(self) -> None:
        generation = self.kaixu.health()["policy"]["generation"]
        self.kaixu.write_policy(self.policy)
        wait_for(lambda: self.kaixu.health()["policy"]["generation"] > generation, 10, "the policy to load")


@pytest.fixture(scope="module")
def gw(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("budget-bound")
    policy = policy_for(fake.base_url, store={"sqlite": str(work / "ledger.db")})
    policy["limits"]["upstream_timeout_s"] = 10  # the request held in flight below waits 5 s at the provider
    kaixu = Kaixu(work, policy).start()
    yield Gateway(kaixu, copy.deepcopy(policy))
    kaixu.stop()


def post(gw: Gateway, path: str, body: dict[str, Any], key: str = "sk-test") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "x-kaixu-app": "t"}
    return httpx.post(gw.url + path, json=body, headers=headers, timeout=30)


def cost(response: httpx.Response) -> Decimal:
    assert response.status_code == 200, response.text
    return Decimal(response.headers["x-kaixu-cost-usd"])


# --- every answer is reserved ----------------------------------------------------------------------------------


def test_n_answers_are_reserved_so_concurrent_requests_never_overspend(gw: Gateway, fake: FakeProvider) -> None:
    """The issue's attack: same-format OpenAI requests with `n: 50, max_tokens: 20`, at once, on a budget that
    covers three of them. Reserving one answer's worth admitted them all."""
    body = {"model": "gpt-4o-mini", "messages": LONG, "max_tokens": 20, "n": 50}
    calibrate = post(gw, "/v1/chat/completions", body)
    assert len(calibrate.json()["choices"]) == 50 and calibrate.json()["usage"]["completion_tokens"] == 1000
    one = cost(calibrate)
    cap = one * 3
    key = gw.add_key("n-racer", cap)

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.url, limits=httpx.Limits(max_connections=30), timeout=30) as client:
            headers = {"authorization": f"Bearer {key}"}
            return await asyncio.gather(
                *(client.post("/v1/chat/completions", json=body, headers=headers) for _ in range(30))
            )

    answers = asyncio.run(race())
    assert {a.status_code for a in answers} <= {200, 402, 429}, [a.text for a in answers if a.status_code >= 500]
    admitted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    spent = sum(cost(a) for a in admitted)
    reserve = max((Decimal(a.json()["budget"]["request_reserve_usd"]) for a in refused), default=Decimal(0))
    assert spent <= cap + reserve, (
        f"{len(admitted)} of 30 admitted spent {spent} USD of a {cap} USD budget (one reservation: {reserve})"
    )
    assert admitted, "the budget is used, not refused early"
    assert reserve >= one, f"a request that asks for 50 answers reserves {reserve} USD; 50 answers cost {one}"
    ledger = sum(Decimal(ledger_row(gw.kaixu, a.headers["x-request-id"])["cost_micros"]) for a in admitted)
    assert ledger / 1_000_000 == spent


GEMINI_CHAT = "/v1beta/models/gemini-test:generateContent"


@pytest.mark.parametrize(
    ("door", "path", "body"),
    [
        ("openai n", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": LONG, "max_tokens": 20, "n": 40}),
        ("openai n, stream", "/v1/chat/completions",
         {"model": "gpt-4o-mini", "messages": LONG, "max_completion_tokens": 20, "n": 40, "stream": True}),
        ("gemini candidateCount", GEMINI_CHAT,
         {"contents": [{"role": "user", "parts": [{"text": WORDS}]}],
          "generationConfig": {"maxOutputTokens": 20, "candidateCount": 8}}),
        ("gemini candidate_count", GEMINI_CHAT,
         {"contents": [{"role": "user", "parts": [{"text": WORDS}]}],
          "generationConfig": {"maxOutputTokens": 20, "candidate_count": 8}}),
        ("gemini generation_config", GEMINI_CHAT,
         {"contents": [{"role": "user", "parts": [{"text": WORDS}]}],
          "generation_config": {"max_output_tokens": 20, "candidate_count": 8}}),
        ("kaixu gate generationConfig", "/v1/generate",
         {"model": "gemini-test", "input": {"type": "text", "content": WORDS},
          "generationConfig": {"maxOutputTokens": 20, "candidateCount": 8}}),
        ("kaixu gate config", "/v1/generate",
         {"model": "gemini-test", "input": {"type": "text", "content": WORDS},
          "config": {"maxOutputTokens": 20, "candidateCount": 8}}),
    ],
)  # fmt: skip
def test_every_answer_a_request_asks_for_is_reserved_at_every_door(
    gw: Gateway, fake: FakeProvider, door: str, path: str, body: dict[str, Any]
) -> None:
    """A budget of half what the answers cost, more than one answer's worth: the request must not be admitted
    (it was, and spent twice the budget)."""
    if body.get("stream"):
        stream = post(gw, path, {**body, "stream": False})  # the same answers, priced in the header
        full = cost(stream)
    else:
        full = cost(post(gw, path, body))
    key = gw.add_key(f"answers-{len(gw.policy['keys'])}", full / 2)
    fake.clear()
    refused = post(gw, path, body, key)
    assert refused.status_code == 402, f"{door}: {refused.status_code} {refused.text[:300]}"
    assert not fake.requests, "a refused request is never forwarded"
    assert Decimal(refused.json()["budget"]["request_reserve_usd"]) >= full


# --- a budget held by requests in flight -----------------------------------------------------------------------

HELD = [
    ("openai", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 100}),
    ("anthropic", "/v1/messages", {"model": "claude-test", "messages": HI, "max_tokens": 100}),
    ("gemini", GEMINI_CHAT,
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 100}}),
    ("gateway13", "/.netlify/functions/gateway-chat",
     {"provider": "openai", "model": "gpt-4o-mini", "messages": HI, "max_tokens": 100}),
    ("pulse", "/api/ai/request", {"model": "gpt-4o-mini", "prompt": "hi", "maxTokens": 100, "teamId": "t",
                                  "projectId": "p"}),
    ("kaixu_gate", "/v1/generate", {"model": "gemini-test", "input": {"type": "text", "content": "hi"},
                                    "generationConfig": {"maxOutputTokens": 100}}),
]  # fmt: skip


def test_a_budget_held_by_requests_in_flight_is_a_429_to_retry_in_each_doors_shape(
    gw: Gateway, fake: FakeProvider
) -> None:
    """One request in flight holds almost all of a 0.001 USD budget; nothing is spent yet. Every door's next
    request fits the budget but not beside that hold: a 429 with a short Retry-After, in the door's own error
    shape, that says the budget is held by requests in flight (not a rate limit). Once the first one settles,
    the same requests are served. (They were 402 "budget exhausted" with nothing spent.)"""
    key = gw.add_key("held", Decimal("0.001"))
    holder = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 1600}  # reserves about 0.00097 USD
    fake.add_fault(Fault(latency_ms=5000, path_contains="/chat/completions"))

    async def hold_then_probe() -> tuple[httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            headers = {"authorization": f"Bearer {key}"}
            first = asyncio.create_task(client.post("/v1/chat/completions", json=holder, headers=headers))
            await asyncio.to_thread(wait_for, lambda: len(fake.requests) >= 1, 10, "the first request in flight")
            probes = [await asyncio.to_thread(post, gw, path, body, key) for _, path, body in HELD]
            return await first, probes

    fake.clear()
    first, probes = asyncio.run(hold_then_probe())
    assert first.status_code == 200
    for (front, _, _), answer in zip(HELD, probes, strict=True):
        assert answer.status_code == 429, f"{front}: {answer.status_code} {answer.text[:300]}"
        assert 1 <= int(answer.headers["retry-after"]) <= 2, front
        body = answer.json()
        assert hostile.shape_problem(front, 429, body) is None, f"{front}: {body}"
        assert body["budget"]["reason"] == "in_flight", f"{front}: {body}"
        assert Decimal(body["budget"]["spent_usd"]) == 0 and Decimal(body["budget"]["reserved_usd"]) > 0
        assert "held by requests in flight" in answer.text, front
        assert "rate limit" not in answer.text, f"{front}: must not read as a rate limit"
        assert ledger_row(gw.kaixu, answer.headers["x-request-id"])["status"] == 429
    openai_body = probes[0].json()["error"]
    assert openai_body["code"] == "budget_in_flight" and openai_body["type"] == "rate_limit_error"
    assert probes[3].json()["code"] == "budget_in_flight"  # Kaixu Gateway 13's `{error, code}`
    assert len(fake.requests) == 1, "a request refused for the budget is never forwarded"
    for front, path, body in HELD:
        wait_for(lambda p=path, b=body: post(gw, p, b, key).status_code == 200, 10, f"{front} served once settled")


def test_an_sdk_retries_a_budget_held_in_flight_and_is_served(gw: Gateway, fake: FakeProvider) -> None:
    """What the 429 is for: the OpenAI SDK retries it (after Retry-After), where it gives up on a 402."""
    key = gw.add_key("sdk-held", Decimal("0.001"))
    fake.add_fault(Fault(latency_ms=1500, path_contains="/chat/completions"))

    async def hold_then_call() -> tuple[httpx.Response, Any]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            body = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 1600}
            first = asyncio.create_task(
                client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
            )
            await asyncio.to_thread(wait_for, lambda: len(fake.requests) >= 1, 10, "the first request in flight")
            sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=3)
            raw = await asyncio.to_thread(
                sdk.chat.completions.with_raw_response.create, model="gpt-4o-mini", messages=HI, max_tokens=100
            )
            return await first, raw

    fake.clear()
    first, raw = asyncio.run(hold_then_call())
    assert first.status_code == 200 and raw.http_response.status_code == 200
    assert raw.retries_taken >= 1, "it was held, then served on a retry"


def test_a_spent_budget_is_still_a_402(gw: Gateway, fake: FakeProvider) -> None:
    """Nothing in flight, and the request does not fit what is left: spent, 402, as before."""
    key = gw.add_key("small", Decimal("0.00005"))
    refused = post(gw, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 1000}, key)
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.json()["budget"]["reason"] == "spent" and "retry-after" not in refused.headers


# --- a model's own output cap ----------------------------------------------------------------------------------


def test_the_models_output_cap_bounds_a_request_that_sets_none(gw: Gateway, fake: FakeProvider) -> None:
    """A request without max_tokens reserves 32,768 output tokens, unless its price entry says the model
    answers at most `max_output_tokens` (here 64): a budget of 100 such answers then admits it."""
    price = {"input": 0.15, "output": 0.6, "max_output_tokens": 64}
    gw.policy.setdefault("pricing", {}).setdefault("models", {})["openai/capped-model"] = price
    gw.policy["models"]["capped"] = {"route": [{"provider": "oai", "model": "capped-model"}]}
    key = gw.add_key("capped", Decimal("0.004"))  # 100 x (64 x 0.6 + input) micro-dollars; 32,768 x 0.6 is 0.0197
    answer = post(gw, "/v1/chat/completions", {"model": "capped", "messages": HI}, key)
    assert answer.status_code == 200, answer.text
    over = post(gw, "/v1/chat/completions", {"model": "capped", "messages": HI, "max_tokens": 100_000}, key)
    assert over.status_code == 200, f"a max_tokens above the model's cap reserves the cap: {over.text[:300]}"


# --- output limits that are not a positive number --------------------------------------------------------------

BAD_LIMITS = [
    ("openai", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HI}, ("max_tokens",)),
    ("openai", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HI}, ("max_completion_tokens",)),
    ("openai", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HI}, ("n",)),
    ("openai", "/v1/chat/completions", {"model": "claude-test", "messages": HI}, ("max_tokens",)),
    ("anthropic", "/v1/messages", {"model": "claude-test", "messages": HI}, ("max_tokens",)),
    ("anthropic", "/v1/messages", {"model": "gpt-4o-mini", "messages": HI}, ("max_tokens",)),
    ("gemini", GEMINI_CHAT, {"contents": [{"parts": [{"text": "hi"}]}]}, ("generationConfig", "maxOutputTokens")),
    ("gemini", GEMINI_CHAT, {"contents": [{"parts": [{"text": "hi"}]}]}, ("generation_config", "max_output_tokens")),
    ("gemini", GEMINI_CHAT, {"contents": [{"parts": [{"text": "hi"}]}]}, ("generationConfig", "candidateCount")),
    ("gemini", "/v1beta/models/gpt-4o-mini:streamGenerateContent?alt=sse", {"contents": [{"parts": [{"text": "hi"}]}]},
     ("generationConfig", "maxOutputTokens")),
    ("kaixu_gate", "/v1/generate", {"model": "gemini-test", "input": {"type": "text", "content": "hi"}},
     ("generationConfig", "maxOutputTokens")),
    ("kaixu_gate", "/v1/generate", {"model": "gemini-test", "input": {"type": "text", "content": "hi"}},
     ("config", "maxOutputTokens")),
    ("gateway13", "/.netlify/functions/gateway-chat", {"model": "gpt-4o-mini", "messages": HI}, ("max_tokens",)),
    ("pulse", "/api/ai/request", {"model": "gpt-4o-mini", "prompt": "hi", "teamId": "t", "projectId": "p"},
     ("maxTokens",)),
]  # fmt: skip


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize(("front", "path", "body", "field"), BAD_LIMITS)
def test_an_output_limit_that_is_not_positive_is_a_400_naming_the_field(
    gw: Gateway, fake: FakeProvider, front: str, path: str, body: dict[str, Any], field: tuple[str, ...], value: int
) -> None:
    """OpenAI-compatible servers (llama.cpp, Ollama) read -1 as "no limit": forwarded, it would spend without
    bound, and kaixu reserved the input only. Refused before anything is reserved or forwarded, by every door."""
    sent = copy.deepcopy(body)
    parent = sent
    for name in field[:-1]:
        parent = parent.setdefault(name, {})
    parent[field[-1]] = value
    fake.clear()
    answer = post(gw, path, sent)
    assert answer.status_code == 400, f"{front} {'.'.join(field)}={value}: {answer.status_code} {answer.text[:300]}"
    assert hostile.shape_problem(front, 400, answer.json()) is None, answer.text
    assert ".".join(field) in answer.text or field[-1] in answer.text, answer.text
    assert not fake.requests, "nothing is forwarded"


def test_a_positive_output_limit_and_one_answer_still_pass(gw: Gateway, fake: FakeProvider) -> None:
    body = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 1, "n": 1}
    assert post(gw, "/v1/chat/completions", body).status_code == 200
    gemini = {
        "contents": [{"parts": [{"text": "hi"}]}],
        "generationConfig": {"maxOutputTokens": 1, "candidateCount": 1},
    }
    assert post(gw, GEMINI_CHAT, gemini).status_code == 200
