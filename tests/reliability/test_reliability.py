"""Reliability (kaixu/reliability/): retries, fallbacks, timeouts, provider queues and broken streams, through
a real kaixu with the official SDKs in front and the fake provider (tests/fakes/provider.py) behind, which
injects the faults.

Each test asserts what the client saw, the answer's `x-kaixu-attempts` (and `x-kaixu-served-by`,
`x-kaixu-degraded`), the attempt metrics, and the one ledger record of the client's request. Backoffs are a
few milliseconds and timeouts well under a second, so the whole file runs in seconds. Every model has its
own upstream model name, so no test's failures count against another's deployment (and the breaker is set
out of reach).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types

from kaixu.config import parse_policy
from tests import scrape
from tests.fakes.provider import FakeProvider, Fault, StreamRecord
from tests.harness import TEST_KEY, Kaixu, key_hash, ledger_row, only_record, policy_for, wait_for
from tests.seeds.test_seed_apis import sse_events

PROMPT = "Tell me about the lighthouse keeper"
ECHO = "echo: " + PROMPT  # the fake's answer to PROMPT, in every wire format
OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
GEMINI_PATH = ":streamGenerateContent"
ATTEMPT = re.compile(r'"(?P<target>[^"]+)";status=(?P<status>\d+);ms=(?P<ms>[0-9.]+)')
TTFB_S = 0.3
IDLE_S = 0.3
BASE_MS = 5
# Callers whose model rules forbid some fallbacks: by the key's `models`, its team's, and a `policies[]` rule.
PERM_KEY, TEAM_KEY, RULE_KEY = "sk-r-perm", "sk-r-perm-team", "sk-r-perm-rule"
# Two keys with the same small budget: one may reach a dear fallback, the other may not.
CHEAP_KEY, DEAR_KEY = "sk-r-cheap-only", "sk-r-may-go-dear"


# --- a provider that says the prompt is too long ----------------------------------------------------------

CONTEXT_ERROR = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 "
        "tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


class _ContextTooLong(BaseHTTPRequestHandler):
    """OpenAI's 400 for a prompt beyond the context window: the fake provider has no way to say it (a
    `Fault(status=400)` answers a generic message), so this tiny server does, and counts its requests."""

    hits = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).hits += 1
        body = json.dumps(CONTEXT_ERROR).encode()
        self.send_response(400)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def too_long() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ContextTooLong)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


# --- the gateway ------------------------------------------------------------------------------------------


def reliability_policy(fake_url: str, too_long_url: str) -> dict[str, Any]:
    policy = policy_for(
        fake_url,
        store={"sqlite": "ledger.db"},
        retries={"attempts": 3, "backoff": {"base_ms": BASE_MS, "max_ms": 200, "jitter": False}},
        routing={"breaker": {"failures": 10_000, "window_s": 1, "cooldown_s": 1}},
    )
    providers = policy["providers"]
    providers["ctx"] = {"kind": "openai", "base_url": too_long_url, "api_key": "sk-ctx"}
    providers["q0"] = {"kind": "openai", "base_url": fake_url + "/v1", "api_key": "sk-q", "max_concurrent": 1,
                       "queue_size": 0}  # fmt: skip
    providers["q1"] = {"kind": "openai", "base_url": fake_url + "/v1", "api_key": "sk-q", "max_concurrent": 1,
                       "queue_size": 1}  # fmt: skip

    providers["notools"] = {"kind": "openai", "base_url": fake_url + "/v1", "api_key": "sk-nt", "supports_tools": False}

    def oai(model: str, **extra: Any) -> dict[str, Any]:
        return {"route": [{"provider": "oai", "model": model}], **extra}

    timeouts = {"ttfb_s": TTFB_S, "idle_s": IDLE_S, "total_s": 5}
    policy["models"].update(
        {
            # the fallback of several models below: another provider, another wire format
            "r-claude": {"route": [{"provider": "ant", "model": "claude-3-5-haiku-latest"}]},
            "r-gpt": oai("gpt-r-fallback-target"),
            "r-retry": oai("gpt-r-retry"),
            "r-after": oai("gpt-r-after"),
            "r-capped": oai("gpt-r-capped", retries={"backoff": {"max_ms": 50}}),
            "r-fallback": oai("gpt-r-fallback", fallbacks=["r-claude"]),
            "r-all-fail": oai("gpt-r-all-fail", fallbacks=["r-claude"]),
            "r-ant-all-fail": {"route": [{"provider": "ant", "model": "claude-r-all-fail"}], "fallbacks": ["r-gpt"]},
            "r-client-error": oai("gpt-r-client-error", fallbacks=["r-claude"]),
            "r-dead": {
                "route": [
                    {"provider": "dead", "model": "gpt-r-dead", "weight": 1_000_000},
                    {"provider": "oai", "model": "gpt-r-dead"},
                ],
            },
            "r-dead-only": {"route": [{"provider": "dead", "model": "gpt-r-dead-only"}], "fallbacks": ["r-claude"]},
            "r-hang": oai("gpt-r-hang", timeouts=timeouts),
            "r-slow-one": {
                "route": [
                    {"provider": "ant", "model": "claude-r-slow", "weight": 1_000_000},
                    {"provider": "oai", "model": "gpt-r-fast"},
                    {"provider": "gem", "model": "gemini-r-fast"},
                ],
                "timeouts": timeouts,
            },
            "r-stall": oai("gpt-r-stall", timeouts=timeouts),
            "r-total": oai("gpt-r-total", timeouts={"total_s": 0.6}),
            "r-cut-openai": oai("gpt-r-cut"),
            "r-cut-anthropic": {"route": [{"provider": "ant", "model": "claude-r-cut"}]},
            "r-cut-gemini": {"route": [{"provider": "gem", "model": "gemini-r-cut"}]},
            "r-stream-retry": oai("gpt-r-stream-retry"),
            "r-leave": oai("gpt-r-leave"),
            "r-queue": {"route": [{"provider": "q0", "model": "gpt-r-queue"}], "retries": {"attempts": 1}},
            "r-queue-fb": {
                "route": [{"provider": "q0", "model": "gpt-r-queue-fb"}],
                "retries": {"attempts": 1},
                "fallbacks": ["r-claude"],
            },
            "r-queue-leave": {"route": [{"provider": "q1", "model": "gpt-r-queue-leave"}], "retries": {"attempts": 1}},
            "r-queue-wait": {"route": [{"provider": "q1", "model": "gpt-r-queue-wait"}], "retries": {"attempts": 1}},
            "r-context": {
                "route": [{"provider": "ctx", "model": "gpt-r-small"}],
                "fallbacks": ["r-claude"],
                "fallback_on": ["context_window"],
            },
            "r-context-no": {"route": [{"provider": "ctx", "model": "gpt-r-small"}], "fallbacks": ["r-claude"]},
            "r-stream-fb": oai("gpt-r-stream-fb", fallbacks=["r-claude"]),
            "r-stream-all-fail": oai("gpt-r-stream-all-fail", fallbacks=["r-claude"]),
            "r-ant-fb": {"route": [{"provider": "ant", "model": "claude-r-ant-fb"}], "fallbacks": ["r-gpt"]},
            "r-g13": oai("gpt-r-g13", fallbacks=["r-claude"]),
            "r-g13-cut": oai("gpt-r-g13-cut"),
            "r-no-tools": {"route": [{"provider": "notools", "model": "gpt-r-no-tools"}], "fallbacks": ["r-claude"]},
            "r-perm-chain": {"route": [{"provider": "dead", "model": "gpt-r-perm-chain"}],
                             "fallbacks": ["r-claude", "r-perm-gpt"]},
            "r-perm-gpt": oai("gpt-r-perm-gpt"),
            "r-perm-cheap": oai("gpt-r-perm-cheap", fallbacks=["r-perm-dear"]),
            "r-perm-dear": oai("gpt-r-perm-dear"),
        }
    )  # fmt: skip
    budget = {"usd": 0.01, "period": "month"}  # the cheap model's bound fits, the dear one's does not
    policy["keys"] += [
        {"name": "r-perm", "hash": key_hash(PERM_KEY), "models": ["r-dead-only", "r-no-tools", "r-perm-*"]},
        {"name": "r-perm-team", "hash": key_hash(TEAM_KEY), "team": "r-perm-team"},
        {"name": "r-perm-rule", "hash": key_hash(RULE_KEY)},
        {"name": "r-cheap-only", "hash": key_hash(CHEAP_KEY), "models": ["r-perm-cheap"], "budget": budget},
        {"name": "r-may-go-dear", "hash": key_hash(DEAR_KEY), "budget": budget},
    ]
    policy["teams"] = {"r-perm-team": {"models": ["r-dead-only"]}}
    policy["policies"] = [{"name": "No Claude fallback", "match": {"key": "r-perm-rule"}, "deny_models": ["r-claude"]}]
    policy["pricing"] = {"models": {"openai/gpt-r-perm-cheap": {"input": 0.1, "output": 0.1},
                                    "openai/gpt-r-perm-dear": {"input": 1000, "output": 1000}}}  # fmt: skip
    return policy


@pytest.fixture(scope="module")
def gw(fake: FakeProvider, too_long: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    gateway = Kaixu(tmp_path_factory.mktemp("reliability"), reliability_policy(fake.base_url, too_long)).start()
    yield gateway
    gateway.stop()


# --- helpers ----------------------------------------------------------------------------------------------


def attempts(headers: Any) -> list[tuple[str, int]]:
    """`x-kaixu-attempts` as (provider/model, status) pairs; the header must be a well-formed list."""
    value = headers.get("x-kaixu-attempts")
    assert value, f"no x-kaixu-attempts in {dict(headers)}"
    items = [item.strip() for item in value.split(",")]
    parsed = [ATTEMPT.fullmatch(item) for item in items]
    assert all(parsed), value
    return [(m["target"], int(m["status"])) for m in parsed if m is not None]


def recorded_attempts(row: dict[str, Any]) -> list[tuple[str, str, int]]:
    assert row["attempts"], row
    return [(a["provider"], a["model"], a["status"]) for a in json.loads(row["attempts"])]


class Metrics:
    """The attempt counters before a test's request, to read what it added."""

    def __init__(self, gw: Kaixu) -> None:
        self.gw = gw
        self.before = scrape.samples(gw)

    def added(self, name: str, **labels: str) -> float:
        return scrape.total(scrape.samples(self.gw), name, **labels) - scrape.total(self.before, name, **labels)

    def attempts(self, provider: str, outcome: str) -> float:
        return self.added("kaixu_upstream_attempts_total", provider=provider, outcome=outcome)


def oai_client(gw: Kaixu, timeout: float = 10, key: str = TEST_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=timeout)


def ant_client(gw: Kaixu, timeout: float = 10) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=TEST_KEY, max_retries=0, timeout=timeout)


def gem_client(gw: Kaixu, timeout: float = 10) -> genai.Client:
    options = types.HttpOptions(
        base_url=gw.url, timeout=int(timeout * 1000), retry_options=types.HttpRetryOptions(attempts=1)
    )
    return genai.Client(api_key=TEST_KEY, http_options=options)


MESSAGES: Any = [{"role": "user", "content": PROMPT}]


def chat(gw: Kaixu, model: str) -> Any:
    """An OpenAI chat completion, raw (headers and parsed body)."""
    return oai_client(gw).chat.completions.with_raw_response.create(model=model, messages=MESSAGES)


def upstream(fake: FakeProvider, path: str) -> list[str]:
    """The upstream models the fake was asked for on one wire format's path, in order."""
    found = []
    for r in fake.requests:
        if path in r.path:
            found.append((r.json or {}).get("model") or r.path.rsplit("/", 1)[-1].split(":")[0])
    return found


def finished_stream(fake: FakeProvider) -> StreamRecord:
    wait_for(lambda: fake.streams and fake.streams[-1].outcome != "streaming", 10, "the fake's stream to end")
    return fake.streams[-1]


# --- retries ----------------------------------------------------------------------------------------------


def test_a_burst_of_500_and_503_is_retried_until_it_passes(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=500, path_contains=OPENAI_PATH))
    fake.add_fault(Fault(status=503, path_contains=OPENAI_PATH))
    metrics = Metrics(gw)
    raw = chat(gw, "r-retry")
    completion = raw.parse()
    assert raw.status_code == 200 and completion.choices[0].message.content == ECHO
    assert attempts(raw.headers) == [("oai/gpt-r-retry", 500), ("oai/gpt-r-retry", 503), ("oai/gpt-r-retry", 200)]
    assert raw.headers["x-kaixu-served-by"] == "oai/gpt-r-retry"
    assert "x-kaixu-degraded" not in raw.headers
    assert "degraded" not in json.loads(raw.text)
    assert upstream(fake, OPENAI_PATH) == ["gpt-r-retry"] * 3
    assert metrics.attempts("oai", "retried") == 2 and metrics.attempts("oai", "ok") == 1
    assert metrics.attempts("oai", "final") == 0
    row = only_record(gw, raw.headers["x-request-id"])
    assert row["status"] == 200 and row["degraded"] == 0
    assert recorded_attempts(row) == [("oai", "gpt-r-retry", 500), ("oai", "gpt-r-retry", 503),
                                      ("oai", "gpt-r-retry", 200)]  # fmt: skip


def test_a_429_is_retried_after_its_retry_after(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=429, retry_after=0.15, path_contains=OPENAI_PATH))
    metrics = Metrics(gw)
    started = time.monotonic()
    raw = chat(gw, "r-after")
    elapsed = time.monotonic() - started
    assert raw.status_code == 200 and raw.parse().choices[0].message.content == ECHO
    assert elapsed >= 0.15, f"the provider asked for 150 ms, kaixu waited {elapsed * 1000:.0f} ms in all"
    assert attempts(raw.headers) == [("oai/gpt-r-after", 429), ("oai/gpt-r-after", 200)]
    assert metrics.attempts("oai", "retried") == 1 and metrics.attempts("oai", "ok") == 1
    row = only_record(gw, raw.headers["x-request-id"])
    assert recorded_attempts(row) == [("oai", "gpt-r-after", 429), ("oai", "gpt-r-after", 200)]
    assert row["status"] == 200


def test_a_retry_after_beyond_max_ms_is_not_waited_for(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=429, retry_after=30, times=2, path_contains=OPENAI_PATH))
    started = time.monotonic()
    raw = chat(gw, "r-capped")  # backoff.max_ms: 50
    elapsed = time.monotonic() - started
    assert raw.status_code == 200
    assert elapsed < 2, f"a Retry-After of 30 s was capped at 50 ms, yet the answer took {elapsed:.1f} s"
    assert attempts(raw.headers) == [("oai/gpt-r-capped", 429)] * 2 + [("oai/gpt-r-capped", 200)]
    row = only_record(gw, raw.headers["x-request-id"])
    assert [a[2] for a in recorded_attempts(row)] == [429, 429, 200]


def test_the_clients_own_4xx_is_never_retried(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=400, path_contains=OPENAI_PATH))
    metrics = Metrics(gw)
    with pytest.raises(openai.BadRequestError) as caught:
        chat(gw, "r-client-error")  # has a fallback: a client error does not go there either
    error = caught.value
    assert error.status_code == 400 and "Injected fault: HTTP 400" in error.message
    assert len(fake.requests) == 1, "exactly one upstream request"
    assert attempts(error.response.headers) == [("oai/gpt-r-client-error", 400)]
    assert metrics.attempts("oai", "final") == 1 and metrics.attempts("oai", "retried") == 0
    assert metrics.added("kaixu_fallbacks_total", model="r-client-error") == 0
    row = only_record(gw, error.response.headers["x-request-id"])
    assert row["status"] == 400 and row["degraded"] == 0
    assert recorded_attempts(row) == [("oai", "gpt-r-client-error", 400)]


# --- fallbacks --------------------------------------------------------------------------------------------


def test_a_burst_longer_than_the_attempts_falls_back_to_another_wire_format(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=503, times=3, path_contains=OPENAI_PATH))
    metrics = Metrics(gw)
    raw = chat(gw, "r-fallback")
    body = json.loads(raw.text)
    assert raw.status_code == 200
    assert raw.parse().choices[0].message.content == ECHO, "the Anthropic answer, translated for the OpenAI client"
    assert body["object"] == "chat.completion" and body["degraded"] is True
    assert raw.headers["x-kaixu-degraded"] == "true"
    assert raw.headers["x-kaixu-served-by"] == "ant/claude-3-5-haiku-latest"
    assert attempts(raw.headers) == [("oai/gpt-r-fallback", 503)] * 3 + [("ant/claude-3-5-haiku-latest", 200)]
    assert upstream(fake, OPENAI_PATH) == ["gpt-r-fallback"] * 3
    assert upstream(fake, ANTHROPIC_PATH) == ["claude-3-5-haiku-latest"]
    assert fake.requests[-1].headers["x-api-key"] == "sk-up-anthropic", "the fallback's own credential"
    assert metrics.attempts("oai", "retried") == 2 and metrics.attempts("oai", "fallback") == 1
    assert metrics.attempts("ant", "ok") == 1
    assert metrics.added("kaixu_fallbacks_total", model="r-fallback") == 1
    row = only_record(gw, raw.headers["x-request-id"])
    assert row["status"] == 200 and row["degraded"] == 1
    assert row["provider"] == "ant"
    assert recorded_attempts(row) == [("oai", "gpt-r-fallback", 503)] * 3 + [("ant", "claude-3-5-haiku-latest", 200)]


def test_when_everything_fails_the_client_gets_the_last_failure_in_its_own_shape(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=503, times=3, path_contains=OPENAI_PATH))
    fake.add_fault(Fault(status=500, times=3, path_contains=ANTHROPIC_PATH))
    metrics = Metrics(gw)
    with pytest.raises(openai.InternalServerError) as caught:
        chat(gw, "r-all-fail")
    error = caught.value
    assert error.status_code == 500, "the last failure: the fallback's"
    body = error.response.json()
    assert set(body) >= {"error"} and isinstance(body["error"], dict), body  # OpenAI's shape
    assert "Injected fault: HTTP 500 from the fake anthropic provider" in body["error"]["message"]
    headers = error.response.headers
    assert attempts(headers) == [("oai/gpt-r-all-fail", 503)] * 3 + [("ant/claude-3-5-haiku-latest", 500)] * 3
    assert "x-kaixu-degraded" not in headers
    assert metrics.attempts("oai", "retried") == 2 and metrics.attempts("oai", "fallback") == 1
    assert metrics.attempts("ant", "retried") == 2 and metrics.attempts("ant", "final") == 1
    assert metrics.added("kaixu_fallbacks_total", model="r-all-fail") == 0
    row = only_record(gw, headers["x-request-id"])
    assert row["status"] == 500 and row["degraded"] == 0
    assert [a[2] for a in recorded_attempts(row)] == [503, 503, 503, 500, 500, 500]


def test_an_anthropic_client_gets_the_last_failure_as_an_anthropic_error(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=529, times=1, path_contains=ANTHROPIC_PATH))  # not in on_status: falls back
    fake.add_fault(Fault(status=503, times=3, path_contains=OPENAI_PATH))
    with pytest.raises(anthropic.APIStatusError) as caught:
        ant_client(gw).messages.create(model="r-ant-all-fail", max_tokens=50, messages=MESSAGES)
    error = caught.value
    assert error.status_code == 503
    body = error.response.json()
    assert body["type"] == "error" and "Injected fault: HTTP 503 from the fake openai" in body["error"]["message"]
    assert (
        attempts(error.response.headers) == [("ant/claude-r-all-fail", 529)] + [("oai/gpt-r-fallback-target", 503)] * 3
    )
    row = only_record(gw, error.response.headers["x-request-id"])
    assert [a[2] for a in recorded_attempts(row)] == [529, 503, 503, 503]


def test_a_prompt_too_long_for_the_context_window_falls_back(gw: Kaixu, fake: FakeProvider) -> None:
    _ContextTooLong.hits = 0
    metrics = Metrics(gw)
    raw = chat(gw, "r-context")
    assert raw.status_code == 200 and raw.parse().choices[0].message.content == ECHO
    assert _ContextTooLong.hits == 1, "a 400 is never retried on the same model"
    assert attempts(raw.headers) == [("ctx/gpt-r-small", 400), ("ant/claude-3-5-haiku-latest", 200)]
    assert raw.headers["x-kaixu-degraded"] == "true" and json.loads(raw.text)["degraded"] is True
    assert metrics.attempts("ctx", "fallback") == 1 and metrics.attempts("ant", "ok") == 1
    assert metrics.added("kaixu_fallbacks_total", model="r-context") == 1
    row = only_record(gw, raw.headers["x-request-id"])
    assert row["degraded"] == 1 and [a[2] for a in recorded_attempts(row)] == [400, 200]


def test_without_fallback_on_the_context_error_is_the_clients(gw: Kaixu, fake: FakeProvider) -> None:
    _ContextTooLong.hits = 0
    with pytest.raises(openai.BadRequestError) as caught:
        chat(gw, "r-context-no")
    assert "maximum context length" in caught.value.message
    assert _ContextTooLong.hits == 1 and fake.requests == []
    assert attempts(caught.value.response.headers) == [("ctx/gpt-r-small", 400)]


# --- unreachable and slow providers -----------------------------------------------------------------------


def test_a_refused_connection_moves_to_a_healthy_deployment(gw: Kaixu, fake: FakeProvider) -> None:
    metrics = Metrics(gw)
    raw = chat(gw, "r-dead")  # the dead deployment weighs a million times more: it is tried first
    assert raw.status_code == 200 and raw.parse().choices[0].message.content == ECHO
    assert attempts(raw.headers) == [("dead/gpt-r-dead", 502), ("oai/gpt-r-dead", 200)]
    assert raw.headers["x-kaixu-served-by"] == "oai/gpt-r-dead"
    assert "x-kaixu-degraded" not in raw.headers, "another deployment of the same model is not a fallback"
    assert metrics.attempts("dead", "retried") == 1 and metrics.attempts("oai", "ok") == 1
    row = only_record(gw, raw.headers["x-request-id"])
    (dead, served) = json.loads(row["attempts"])
    assert dead["provider"] == "dead" and dead["status"] == 502 and "unreachable" in dead["error"]
    assert served["provider"] == "oai" and "error" not in served
    assert row["degraded"] == 0


def test_a_model_whose_only_deployment_refuses_connections_falls_back(gw: Kaixu, fake: FakeProvider) -> None:
    raw = chat(gw, "r-dead-only")
    assert raw.status_code == 200 and raw.headers["x-kaixu-degraded"] == "true"
    assert attempts(raw.headers) == [("dead/gpt-r-dead-only", 502)] * 3 + [("ant/claude-3-5-haiku-latest", 200)]
    row = only_record(gw, raw.headers["x-request-id"])
    assert row["degraded"] == 1 and row["status"] == 200


def test_a_provider_that_hangs_before_its_headers_is_given_up_on(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(latency_ms=3000, path_contains=OPENAI_PATH))
    metrics = Metrics(gw)
    started = time.monotonic()
    raw = chat(gw, "r-hang")
    elapsed = time.monotonic() - started
    assert raw.status_code == 200 and raw.parse().choices[0].message.content == ECHO
    assert elapsed < 2, f"the first attempt should have been dropped after {TTFB_S} s, the answer took {elapsed}"
    assert attempts(raw.headers) == [("oai/gpt-r-hang", 504), ("oai/gpt-r-hang", 200)]
    assert metrics.attempts("oai", "retried") == 1
    row = only_record(gw, raw.headers["x-request-id"])
    first = json.loads(row["attempts"])[0]
    assert first["status"] == 504 and "did not answer within 0.3 s" in first["error"]
    assert first["ms"] >= TTFB_S * 1000 * 0.9


def test_one_slow_deployment_among_fast_ones(gw: Kaixu, fake: FakeProvider) -> None:
    fake.default_fault = Fault(latency_ms=3000, path_contains=ANTHROPIC_PATH)  # the Anthropic one always hangs
    client = oai_client(gw)
    started = time.monotonic()
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="r-slow-one", messages=MESSAGES)
        assert raw.status_code == 200 and raw.parse().choices[0].message.content == ECHO
        tried = attempts(raw.headers)
        assert tried[0] == ("ant/claude-r-slow", 504), tried
        assert tried[1][0] in ("oai/gpt-r-fast", "gemini/gemini-r-fast", "gem/gemini-r-fast") and tried[1][1] == 200
        assert len(tried) == 2
    assert time.monotonic() - started < 3 * (TTFB_S + 0.7)
    row = only_record(gw, raw.headers["x-request-id"])
    assert [a[2] for a in recorded_attempts(row)] == [504, 200]


# --- streams ----------------------------------------------------------------------------------------------


def test_a_stream_that_fails_before_its_first_byte_is_retried_without_a_splice(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=503, path_contains=OPENAI_PATH))
    fake.add_fault(Fault(disconnect_after_events=0, path_contains=OPENAI_PATH))  # a 200 head, then nothing
    metrics = Metrics(gw)
    with oai_client(gw).chat.completions.with_streaming_response.create(
        model="r-stream-retry", messages=MESSAGES, stream=True
    ) as response:
        headers = response.headers
        text = "".join((c.choices[0].delta.content or "") for c in response.parse() if c.choices)
    assert text == ECHO, "exactly one answer's text"
    assert attempts(headers) == [("oai/gpt-r-stream-retry", 503), ("oai/gpt-r-stream-retry", 502),
                                 ("oai/gpt-r-stream-retry", 200)]  # fmt: skip
    assert metrics.attempts("oai", "retried") == 2 and metrics.attempts("oai", "ok") == 1
    assert finished_stream(fake).outcome == "complete"
    row = only_record(gw, headers["x-request-id"])
    assert row["status"] == 200 and row["stream"] == 1 and row["error"] is None
    assert [a[2] for a in recorded_attempts(row)] == [503, 502, 200]


def test_a_stream_that_stalls_midway_ends_with_an_error_event(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(stall_after_events=2, path_contains=OPENAI_PATH))
    text = ""
    started = time.monotonic()
    with oai_client(gw).chat.completions.with_streaming_response.create(
        model="r-stall", messages=MESSAGES, stream=True
    ) as response:
        headers = response.headers
        with pytest.raises(openai.APIError) as caught:
            for chunk in response.parse():
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
    assert time.monotonic() - started < 3
    assert text and ECHO.startswith(text) and text != ECHO, text
    assert "no data within 0.3 s" in str(caught.value)
    assert attempts(headers) == [("oai/gpt-r-stall", 200)], "a stream begun is never retried"
    assert finished_stream(fake).outcome == "peer_closed", "kaixu hung up on the silent provider"
    assert len(fake.requests) == 1
    row = only_record(gw, headers["x-request-id"])
    assert row["status"] == 200 and row["stream"] == 1
    assert row["error"] and "no data within 0.3 s" in row["error"]


def _raw_sse(gw: Kaixu, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[httpx.Headers, str]:
    with httpx.stream("POST", gw.url + path, json=body, headers=headers, timeout=10) as response:
        return response.headers, response.read().decode()


def test_openai_sdk_raises_on_a_stream_cut_midway(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(disconnect_after_events=2, path_contains=OPENAI_PATH))
    metrics = Metrics(gw)
    text = ""
    with oai_client(gw).chat.completions.with_streaming_response.create(
        model="r-cut-openai", messages=MESSAGES, stream=True
    ) as response:
        headers = response.headers
        with pytest.raises(openai.APIError):
            for chunk in response.parse():
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
    assert text and text != ECHO and ECHO.startswith(text)
    assert attempts(headers) == [("oai/gpt-r-cut", 200)]
    assert metrics.attempts("oai", "ok") == 1 and metrics.attempts("oai", "retried") == 0
    assert finished_stream(fake).outcome == "cut" and len(fake.requests) == 1
    row = only_record(gw, headers["x-request-id"])
    assert row["error"] and "broke" in row["error"]
    # the terminal event on the wire: an OpenAI error chunk, then nothing
    fake.add_fault(Fault(disconnect_after_events=2, path_contains=OPENAI_PATH))
    _, wire = _raw_sse(gw, "/v1/chat/completions", {"model": "r-cut-openai", "messages": MESSAGES, "stream": True},
                       {"authorization": f"Bearer {TEST_KEY}"})  # fmt: skip
    events = [e for e in wire.split("\n\n") if e.startswith("data: ")]
    assert "[DONE]" not in wire
    last = json.loads(events[-1].removeprefix("data: "))
    assert "error" in last and "broke" in last["error"]["message"], wire


def test_anthropic_sdk_raises_on_a_stream_cut_midway(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(disconnect_after_events=4, path_contains=ANTHROPIC_PATH))
    text = ""
    with ant_client(gw).messages.with_streaming_response.create(
        model="r-cut-anthropic", max_tokens=50, messages=MESSAGES, stream=True
    ) as response:
        headers = response.headers
        with pytest.raises(anthropic.APIError) as caught:
            for event in response.parse():
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    text += event.delta.text
    assert "broke" in str(caught.value)
    assert text and text != ECHO and ECHO.startswith(text), text
    assert attempts(headers) == [("ant/claude-r-cut", 200)]
    assert finished_stream(fake).outcome == "cut"
    row = only_record(gw, headers["x-request-id"])
    assert row["error"] and "broke" in row["error"]
    fake.add_fault(Fault(disconnect_after_events=4, path_contains=ANTHROPIC_PATH))
    _, wire = _raw_sse(gw, "/v1/messages",
                       {"model": "r-cut-anthropic", "max_tokens": 50, "messages": MESSAGES, "stream": True},
                       {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"})  # fmt: skip
    last = [e for e in wire.split("\n\n") if e.strip() and not e.startswith(":")][-1]  # cost comments aside
    assert last.startswith("event: error"), wire
    assert "message_stop" not in wire


def test_google_genai_raises_on_a_stream_cut_midway(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(disconnect_after_events=2, path_contains=GEMINI_PATH))
    text = ""
    client = gem_client(gw)  # kept: a client left to the garbage collector closes its connections
    with pytest.raises(genai.errors.APIError) as caught:
        for chunk in client.models.generate_content_stream(model="r-cut-gemini", contents=PROMPT):
            text += chunk.text or ""
    assert "broke" in str(caught.value), repr(caught.value)
    assert text and text != ECHO and ECHO.startswith(text), text
    request_id = fake.requests[-1].headers["x-request-id"]
    assert finished_stream(fake).outcome == "cut" and len(fake.requests) == 1
    row = only_record(gw, request_id)
    assert row["error"] and "broke" in row["error"]
    attempts_row = recorded_attempts(row)
    assert attempts_row == [("gem", "gemini-r-cut", 200)]


def test_a_client_that_leaves_a_relayed_stream_cancels_the_provider(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(event_delay_ms=300, path_contains=OPENAI_PATH))
    with oai_client(gw).chat.completions.with_streaming_response.create(
        model="r-leave", messages=MESSAGES, stream=True
    ) as response:
        headers = response.headers
        for chunk in response.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                break  # the client goes away after the first text
    record = finished_stream(fake)
    assert record.outcome == "peer_closed" and record.events_sent < record.events_total, record
    row = only_record(gw, headers["x-request-id"])
    assert (row["status"], row["client_disconnected"]) == (499, 1)
    assert recorded_attempts(row) == [("oai", "gpt-r-leave", 200)]


# --- provider queues --------------------------------------------------------------------------------------


def _hold(gw: Kaixu, fake: FakeProvider, model: str, pool: ThreadPoolExecutor) -> tuple[Future[Any], threading.Event]:
    """Start a request that holds its provider's only slot until the test sets the returned event (the fake
    answers it then; at most after 30 s, should the test fail first: a loaded machine can take 10 s over
    the requests a test makes meanwhile), and wait until the fake has it."""
    release = threading.Event()
    fake.add_fault(Fault(latency_ms=30_000, until=release, path_contains=OPENAI_PATH))
    sent = len(fake.requests)
    client = oai_client(gw, timeout=30)  # as long as the hold: the default 10 s could end it first, under load
    held = pool.submit(client.chat.completions.with_raw_response.create, model=model, messages=MESSAGES)
    wait_for(lambda: len(fake.requests) == sent + 1, 5, "the first request to reach the provider")
    return held, release


def test_a_full_queue_without_a_fallback_is_a_503(gw: Kaixu, fake: FakeProvider) -> None:
    metrics = Metrics(gw)
    with ThreadPoolExecutor(2) as pool:
        held, release = _hold(gw, fake, "r-queue", pool)
        with pytest.raises(openai.InternalServerError) as caught:
            chat(gw, "r-queue")
        assert not held.done(), "the refusal came at once, not after a slot came free"
        release.set()
        assert held.result().status_code == 200
    error = caught.value
    assert error.status_code == 503 and "Process pool queue full" in error.message
    assert error.response.headers["retry-after"] == "1"
    assert attempts(error.response.headers) == [("q0/gpt-r-queue", 503)]
    assert len(fake.requests) == 1, "the refused request never reached the provider"
    assert metrics.attempts("q0", "final") == 1
    row = only_record(gw, error.response.headers["x-request-id"])
    assert row["status"] == 503 and recorded_attempts(row) == [("q0", "gpt-r-queue", 503)]


def test_a_full_queue_with_a_fallback_is_served_degraded(gw: Kaixu, fake: FakeProvider) -> None:
    metrics = Metrics(gw)
    with ThreadPoolExecutor(2) as pool:
        held, release = _hold(gw, fake, "r-queue-fb", pool)
        raw = chat(gw, "r-queue-fb")
        assert not held.done()
        release.set()
        assert held.result().status_code == 200
    assert raw.status_code == 200 and raw.parse().choices[0].message.content == ECHO
    assert raw.headers["x-kaixu-degraded"] == "true" and json.loads(raw.text)["degraded"] is True
    assert attempts(raw.headers) == [("q0/gpt-r-queue-fb", 503), ("ant/claude-3-5-haiku-latest", 200)]
    assert metrics.added("kaixu_fallbacks_total", model="r-queue-fb") == 1
    row = only_record(gw, raw.headers["x-request-id"])
    assert row["degraded"] == 1 and [a[2] for a in recorded_attempts(row)] == [503, 200]


def test_queue_status_counts_the_waiting_request(gw: Kaixu, fake: FakeProvider) -> None:
    def pool_status() -> dict[str, Any]:
        answer = httpx.get(gw.url + "/queue/status")
        assert answer.status_code == 200
        return answer.json()["processPool"]

    before = pool_status()
    assert {"active", "queued", "maxConcurrent", "maxQueue", "utilization", "totalProcessed", "totalQueued",
            "totalFailed"} <= set(before)  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        held, release = _hold(gw, fake, "r-queue-wait", pool)
        waiting = pool.submit(chat, gw, "r-queue-wait")
        try:
            wait_for(lambda: pool_status()["queued"] == 1, 5, "the second request to wait in the queue")
            during = pool_status()
            assert during["totalQueued"] == before["totalQueued"] + 1
            assert during["maxQueue"] >= 1  # q1's queue_size (q0's is 0)
            assert during["active"] >= 1
        finally:
            release.set()
            held.result()
            second = waiting.result()
    assert second.status_code == 200, "a queued request is served once the slot is free"
    assert attempts(second.headers) == [("q1/gpt-r-queue-wait", 200)]
    after = pool_status()
    assert after["queued"] == 0 and after["totalProcessed"] >= before["totalProcessed"] + 2


# --- streams that fall back, and streams of the other front doors -------------------------------------------


def test_a_stream_falls_back_to_another_wire_format_before_its_first_byte(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=503, times=3, path_contains=OPENAI_PATH))
    metrics = Metrics(gw)
    with oai_client(gw).chat.completions.with_streaming_response.create(
        model="r-stream-fb", messages=MESSAGES, stream=True
    ) as response:
        headers = response.headers
        text = "".join((c.choices[0].delta.content or "") for c in response.parse() if c.choices)
    assert text == ECHO, "the Anthropic stream, translated, and nothing of the failed attempts"
    assert headers["x-kaixu-degraded"] == "true" and headers["x-kaixu-served-by"] == "ant/claude-3-5-haiku-latest"
    assert attempts(headers) == [("oai/gpt-r-stream-fb", 503)] * 3 + [("ant/claude-3-5-haiku-latest", 200)]
    assert finished_stream(fake).outcome == "complete" and fake.streams[-1].path == ANTHROPIC_PATH
    assert metrics.added("kaixu_fallbacks_total", model="r-stream-fb") == 1
    row = only_record(gw, headers["x-request-id"])
    assert row["degraded"] == 1 and row["status"] == 200 and row["stream"] == 1 and row["error"] is None


def test_a_stream_whose_every_attempt_fails_is_an_error_answer(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=503, times=3, path_contains=OPENAI_PATH))
    fake.add_fault(Fault(status=500, times=3, path_contains=ANTHROPIC_PATH))
    with pytest.raises(openai.InternalServerError) as caught:
        oai_client(gw).chat.completions.create(model="r-stream-all-fail", messages=MESSAGES, stream=True)
    error = caught.value
    assert error.status_code == 500 and "fake anthropic provider" in error.message
    assert isinstance(error.response.json()["error"], dict)  # OpenAI's shape, not Anthropic's
    assert (
        attempts(error.response.headers)
        == [("oai/gpt-r-stream-all-fail", 503)] * 3 + [("ant/claude-3-5-haiku-latest", 500)] * 3
    )
    assert fake.streams == []
    row = only_record(gw, error.response.headers["x-request-id"])
    assert row["status"] == 500 and [a[2] for a in recorded_attempts(row)] == [503] * 3 + [500] * 3


def test_an_anthropic_client_is_served_by_an_openai_fallback(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=529, path_contains=ANTHROPIC_PATH))  # outside on_status: straight to the fallback
    raw = ant_client(gw).messages.with_raw_response.create(model="r-ant-fb", max_tokens=50, messages=MESSAGES)
    message = raw.parse()
    assert [b.text for b in message.content if b.type == "text"] == [ECHO]
    assert raw.headers["x-kaixu-degraded"] == "true"
    assert "degraded" not in raw.http_response.json(), "the body flag is the OpenAI chat answer's only"
    assert attempts(raw.headers) == [("ant/claude-r-ant-fb", 529), ("oai/gpt-r-fallback-target", 200)]
    assert upstream(fake, ANTHROPIC_PATH) == ["claude-r-ant-fb"] and upstream(fake, OPENAI_PATH) == [
        "gpt-r-fallback-target"
    ]
    row = only_record(gw, raw.headers["x-request-id"])
    assert row["degraded"] == 1 and row["provider"] == "oai"


def test_a_request_with_tools_skips_a_provider_without_tools(gw: Kaixu, fake: FakeProvider) -> None:
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    raw = oai_client(gw).chat.completions.with_raw_response.create(model="r-no-tools", messages=MESSAGES, tools=tools)
    assert raw.status_code == 200
    assert raw.headers["x-kaixu-served-by"] == "ant/claude-3-5-haiku-latest"
    assert upstream(fake, OPENAI_PATH) == [], "the provider that says supports_tools: false was never asked"
    plain = chat(gw, "r-no-tools")
    assert plain.headers["x-kaixu-served-by"] == "notools/gpt-r-no-tools" and "x-kaixu-degraded" not in plain.headers


# --- fallbacks obey the caller's model rules ----------------------------------------------------------


@pytest.mark.parametrize("key", [PERM_KEY, TEAM_KEY, RULE_KEY], ids=["key-models", "team-models", "policy-deny"])
def test_a_fallback_the_caller_may_not_call_is_never_tried(gw: Kaixu, fake: FakeProvider, key: str) -> None:
    """`r-dead-only` falls back to `r-claude`, which this caller may not call: it gets the first model's own
    failure, as if the model had no fallback, buffered and streamed, and the fallback's provider is never asked."""
    with pytest.raises(openai.APIStatusError) as caught:
        oai_client(gw, key=key).chat.completions.create(model="r-dead-only", messages=MESSAGES)
    error = caught.value
    assert error.status_code == 502, error.response.text
    headers = error.response.headers
    assert attempts(headers) == [("dead/gpt-r-dead-only", 502)] * 3
    assert "x-kaixu-degraded" not in headers
    row = only_record(gw, headers["x-request-id"])
    assert row["status"] == 502 and row["degraded"] == 0 and row["provider"] == "dead"
    with pytest.raises(openai.APIStatusError) as streamed:
        oai_client(gw, key=key).chat.completions.create(model="r-dead-only", messages=MESSAGES, stream=True)
    assert streamed.value.status_code == 502
    assert attempts(streamed.value.response.headers) == [("dead/gpt-r-dead-only", 502)] * 3
    assert upstream(fake, ANTHROPIC_PATH) == [] and fake.streams == []


def test_a_plan_falls_back_past_a_forbidden_model_to_an_allowed_one(gw: Kaixu, fake: FakeProvider) -> None:
    raw = oai_client(gw, key=PERM_KEY).chat.completions.with_raw_response.create(
        model="r-perm-chain", messages=MESSAGES
    )
    assert raw.status_code == 200 and raw.parse().choices[0].message.content == ECHO
    assert raw.headers["x-kaixu-degraded"] == "true" and raw.headers["x-kaixu-served-by"] == "oai/gpt-r-perm-gpt"
    assert attempts(raw.headers) == [("dead/gpt-r-perm-chain", 502)] * 3 + [("oai/gpt-r-perm-gpt", 200)]
    assert upstream(fake, ANTHROPIC_PATH) == []
    # a caller who may call every model is served by the first fallback
    assert chat(gw, "r-perm-chain").headers["x-kaixu-served-by"] == "ant/claude-3-5-haiku-latest"


def test_with_no_fallback_allowed_the_caller_gets_the_first_models_refusal(gw: Kaixu, fake: FakeProvider) -> None:
    """`r-no-tools` cannot take tools and its fallback may not be called: the first model's 400."""
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as caught:
        oai_client(gw, key=PERM_KEY).chat.completions.create(model="r-no-tools", messages=MESSAGES, tools=tools)
    assert caught.value.response.json()["error"]["code"] == "tools_not_supported"
    assert fake.requests == []


def test_a_fallback_the_caller_may_not_call_reserves_nothing_of_its_budget(gw: Kaixu, fake: FakeProvider) -> None:
    """Budgets reserve the dearest deployment a plan may reach: for a key that may not call the dear fallback,
    only the cheap model, which its budget covers."""
    raw = oai_client(gw, key=CHEAP_KEY).chat.completions.with_raw_response.create(
        model="r-perm-cheap", messages=MESSAGES
    )
    assert raw.status_code == 200 and raw.headers["x-kaixu-served-by"] == "oai/gpt-r-perm-cheap"
    with pytest.raises(openai.APIStatusError) as caught:  # the same budget, the dear fallback reachable
        oai_client(gw, key=DEAR_KEY).chat.completions.create(model="r-perm-cheap", messages=MESSAGES)
    assert caught.value.status_code == 402, caught.value.response.text
    assert upstream(fake, OPENAI_PATH) == ["gpt-r-perm-cheap"]


GW13_HEADERS = {"authorization": f"Bearer {TEST_KEY}", "x-kaixu-install-id": "install-r"}


def gw13_stream(gw: Kaixu, model: str) -> tuple[httpx.Headers, list[tuple[str | None, str]]]:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    response = httpx.post(gw.url + "/.netlify/functions/gateway-stream", json=body, headers=GW13_HEADERS, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    return response.headers, sse_events(response.text)


def test_a_gateway13_stream_falls_back_before_its_first_byte(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=503, times=3, path_contains=OPENAI_PATH))
    headers, events = gw13_stream(gw, "r-g13")
    names = [name for name, _ in events]
    assert names[0] == "meta" and names[-1] == "done" and "error" not in names, events
    assert "".join(json.loads(d)["text"] for n, d in events if n == "delta") == ECHO
    request_id = headers["x-request-id"]
    row = only_record(gw, request_id)
    assert row["degraded"] == 1 and row["status"] == 200
    assert [a[2] for a in recorded_attempts(row)] == [503, 503, 503, 200]


def test_a_gateway13_stream_cut_midway_ends_with_an_error_event(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(disconnect_after_events=2, path_contains=OPENAI_PATH))
    headers, events = gw13_stream(gw, "r-g13-cut")
    names = [name for name, _ in events]
    assert names[0] == "meta" and "delta" in names and names[-1] == "error", events
    assert "done" not in names
    assert "broke" in json.loads(events[-1][1])["error"]
    row = only_record(gw, headers["x-request-id"])
    assert row["error"] and "broke" in row["error"]


def test_a_translated_stream_cut_midway_ends_with_the_clients_error_event(gw: Kaixu, fake: FakeProvider) -> None:
    """An OpenAI client on an Anthropic deployment: the terminal event is OpenAI's, with the relay's reason."""
    fake.add_fault(Fault(disconnect_after_events=4, path_contains=ANTHROPIC_PATH))
    text = ""
    with oai_client(gw).chat.completions.with_streaming_response.create(
        model="r-cut-anthropic", messages=MESSAGES, stream=True
    ) as response:
        headers = response.headers
        with pytest.raises(openai.APIError) as caught:
            for chunk in response.parse():
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
    assert "broke" in str(caught.value), repr(caught.value)
    assert text and text != ECHO and ECHO.startswith(text), text
    assert attempts(headers) == [("ant/claude-r-cut", 200)]
    row = only_record(gw, headers["x-request-id"])
    assert row["error"] and "broke" in row["error"]


def test_an_anthropic_client_on_an_openai_stream_cut_midway_gets_an_error_event(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(disconnect_after_events=2, path_contains=OPENAI_PATH))
    text = ""
    with ant_client(gw).messages.with_streaming_response.create(
        model="r-cut-openai", max_tokens=50, messages=MESSAGES, stream=True
    ) as response:
        headers = response.headers
        with pytest.raises(anthropic.APIError) as caught:
            for event in response.parse():
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    text += event.delta.text
    assert "broke" in str(caught.value), repr(caught.value)
    assert text and text != ECHO and ECHO.startswith(text), text
    assert attempts(headers) == [("oai/gpt-r-cut", 200)]
    row = only_record(gw, headers["x-request-id"])
    assert row["error"] and "broke" in row["error"]


def test_a_stream_whose_first_event_is_late_is_retried(gw: Kaixu, fake: FakeProvider) -> None:
    """`ttfb_s` counts to a stream's first event, not only its headers."""
    fake.add_fault(Fault(first_byte_delay_ms=3000, path_contains=OPENAI_PATH))
    started = time.monotonic()
    with oai_client(gw).chat.completions.with_streaming_response.create(
        model="r-hang", messages=MESSAGES, stream=True
    ) as response:
        headers = response.headers
        text = "".join((c.choices[0].delta.content or "") for c in response.parse() if c.choices)
    assert time.monotonic() - started < 2
    assert text == ECHO
    assert attempts(headers) == [("oai/gpt-r-hang", 504), ("oai/gpt-r-hang", 200)]
    row = only_record(gw, headers["x-request-id"])
    assert [a[2] for a in recorded_attempts(row)] == [504, 200] and row["error"] is None


def test_a_client_that_leaves_the_queue_is_never_sent(gw: Kaixu, fake: FakeProvider) -> None:
    """A buffered request waiting for its provider's slot whose client gives up leaves the queue: it must not
    reach the provider once the slot comes free."""
    request_id = "reliability-queue-leaver"
    with ThreadPoolExecutor(2) as pool:
        held, release = _hold(gw, fake, "r-queue-leave", pool)
        with pytest.raises(openai.APITimeoutError):
            oai_client(gw, timeout=0.2).chat.completions.create(
                model="r-queue-leave", messages=MESSAGES, extra_headers={"x-request-id": request_id}
            )
        row = ledger_row(gw, request_id)  # kaixu saw the client go while its request still waited for the slot
        release.set()
        assert held.result().status_code == 200
    row = only_record(gw, request_id)
    assert (row["status"], row["client_disconnected"]) == (499, 1), row
    assert len(fake.requests) == 1, [r.headers.get("x-request-id") for r in fake.requests]


# --- the bookkeeping behind it ------------------------------------------------------------------------------


def test_every_attempt_gives_its_deployment_back(gw: Kaixu, fake: FakeProvider) -> None:
    """Retried, fallen back, refused by a queue, stalled, cut: once all are answered, no deployment counts a
    request in flight (`/health`'s `in_flight`, what `least_busy` picks by)."""
    fake.add_fault(Fault(status=503, times=3, path_contains=OPENAI_PATH))
    assert chat(gw, "r-fallback").status_code == 200
    fake.add_fault(Fault(stall_after_events=2, path_contains=OPENAI_PATH))
    with pytest.raises(openai.APIError):
        for _ in oai_client(gw).chat.completions.create(model="r-stall", messages=MESSAGES, stream=True):
            pass
    with ThreadPoolExecutor(2) as pool:
        held, release = _hold(gw, fake, "r-queue-fb", pool)
        assert chat(gw, "r-queue-fb").headers["x-kaixu-degraded"] == "true"
        release.set()
        held.result()
    gw13_stream(gw, "r-g13")

    def busy() -> list[dict[str, Any]]:
        return [d for d in gw.health()["deployments"] if d["in_flight"]]

    wait_for(lambda: not busy(), 5, "every deployment to have no request in flight")


def test_a_queue_refusal_is_not_a_provider_failure(fake: FakeProvider, too_long: str, tmp_path: Path) -> None:
    """A request kaixu refused itself because the provider's queue was full never reached the provider: it
    must not count towards that deployment's breaker (else a busy, healthy provider is taken out)."""
    policy = reliability_policy(fake.base_url, too_long)
    policy["routing"] = {"breaker": {"failures": 2, "window_s": 60, "cooldown_s": 600}}
    gateway = Kaixu(tmp_path, policy).start()
    try:
        with ThreadPoolExecutor(2) as pool:
            held, release = _hold(gateway, fake, "r-queue-fb", pool)
            for _ in range(3):
                assert chat(gateway, "r-queue-fb").headers["x-kaixu-degraded"] == "true"
            # while the first request still holds the slot (its success would close the breaker again)
            (state,) = [d for d in gateway.health()["deployments"] if d["provider"] == "q0"]
            found = scrape.total(scrape.samples(gateway), "kaixu_deployment_state", provider="q0")
            assert not held.done(), "the provider answered too early for this test to see the breaker"
            release.set()
            assert held.result().status_code == 200
        assert (state["state"], state["recent_failures"]) == ("closed", 0), state
        assert found == 0, "kaixu_deployment_state: 0 closed, 2 open"
        raw = chat(gateway, "r-queue-fb")
        assert raw.headers["x-kaixu-served-by"] == "q0/gpt-r-queue-fb", "the free provider is used again"
    finally:
        gateway.stop()


# --- the policy's knobs, and a policy without them -----------------------------------------------------------


def test_a_models_retries_replace_the_global_fields_one_by_one() -> None:
    policy = parse_policy(
        "providers: {mock: {kind: mock}}\n"
        "retries: {attempts: 1, backoff: {base_ms: 7, max_ms: 70, jitter: false}, on_status: [500]}\n"
        "models:\n"
        "  own: {route: [{provider: mock}], retries: {attempts: 4}}\n"
        "  plain: {route: [{provider: mock}]}\n"
    )
    plain, own = policy.resolve_model("plain"), policy.resolve_model("own")
    assert plain is not None and own is not None
    assert (plain.retries.attempts, plain.retries.base_ms, plain.retries.on_status) == (1, 7, frozenset({500}))
    retries = own.retries
    assert retries.attempts == 4
    assert (retries.base_ms, retries.max_ms, retries.jitter, retries.on_status) == (7, 70, False, frozenset({500})), (
        "only `attempts` is the model's own: the backoff and the statuses are the global ones"
    )


def test_without_a_retries_section_a_model_is_tried_once(kaixu: Kaixu, fake: FakeProvider) -> None:
    """The session gateway's policy has no `retries:`: a 503 is the client's at once, from one request."""
    fake.add_fault(Fault(status=503, path_contains=OPENAI_PATH))
    with pytest.raises(openai.InternalServerError) as caught:
        chat(kaixu, "gpt-4o-mini")
    assert caught.value.status_code == 503 and len(fake.requests) == 1
    assert attempts(caught.value.response.headers) == [("oai/gpt-4o-mini", 503)]
    assert "x-kaixu-degraded" not in caught.value.response.headers
    raw = chat(kaixu, "gpt-4o-mini")
    assert attempts(raw.headers) == [("oai/gpt-4o-mini", 200)] and raw.headers["x-kaixu-served-by"] == "oai/gpt-4o-mini"


@pytest.mark.parametrize(("model", "path"), [("r-cut-gemini", GEMINI_PATH), ("r-cut-openai", OPENAI_PATH)],
                         ids=["gemini-deployment", "openai-deployment"])  # fmt: skip
def test_a_gemini_json_array_stream_cut_midway_ends_with_an_error_element(
    gw: Kaixu, fake: FakeProvider, model: str, path: str
) -> None:
    """Gemini without `alt=sse` reads one JSON array: a stream cut midway still ends as valid JSON, its last
    element an error, never a silently short array."""
    fake.add_fault(Fault(disconnect_after_events=2, path_contains=path))
    response = httpx.post(
        gw.url + f"/v1beta/models/{model}:streamGenerateContent",
        json={"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]},
        headers={"x-goog-api-key": TEST_KEY},
        timeout=10,
    )
    assert response.status_code == 200
    elements = json.loads(response.text)
    assert isinstance(elements, list) and elements, response.text
    assert "error" in elements[-1] and "broke" in elements[-1]["error"]["message"], response.text
    text = "".join(p.get("text", "") for e in elements[:-1] for c in e.get("candidates", []) for p in
                   c["content"]["parts"])  # fmt: skip
    assert text and ECHO.startswith(text) and text != ECHO


def test_total_s_ends_a_stream_that_outlasts_it(gw: Kaixu, fake: FakeProvider) -> None:
    """`timeouts.total_s` bounds a whole attempt, its stream included: a provider that keeps sending, slowly,
    is cut at the total, with an error event."""
    fake.add_fault(Fault(event_delay_ms=250, path_contains=OPENAI_PATH))  # 5 events: over a second in all
    started = time.monotonic()
    with pytest.raises(openai.APIError) as caught:
        for _ in oai_client(gw).chat.completions.create(model="r-total", messages=MESSAGES, stream=True):
            pass
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    assert "0.6 s" in str(caught.value), f"the message should name the total that was exceeded: {caught.value}"


def test_a_client_that_leaves_before_the_first_byte_cancels_the_attempt(gw: Kaixu, fake: FakeProvider) -> None:
    """The relay holds the client's answer until an attempt's first event: a client that gives up meanwhile
    cancels that attempt (the provider sees its connection closed, sends nothing)."""
    fake.add_fault(Fault(first_byte_delay_ms=1000, path_contains=OPENAI_PATH))
    request_id = "reliability-left-before-first-byte"
    with pytest.raises(openai.APITimeoutError):
        oai_client(gw, timeout=0.3).chat.completions.create(
            model="r-leave", messages=MESSAGES, stream=True, extra_headers={"x-request-id": request_id}
        )
    record = finished_stream(fake)
    assert (record.outcome, record.events_sent) == ("peer_closed", 0), record
    row = only_record(gw, request_id)
    assert (row["status"], row["client_disconnected"]) == (499, 1), row
    assert len(fake.requests) == 1


def test_a_buffered_answer_cut_midway_is_retried_before_any_of_it_reaches_the_client(
    gw: Kaixu, fake: FakeProvider
) -> None:
    fake.add_fault(Fault(cut_body_after_bytes=40, path_contains=OPENAI_PATH))
    raw = chat(gw, "r-retry")
    assert raw.status_code == 200 and raw.parse().choices[0].message.content == ECHO
    assert [status for _, status in attempts(raw.headers)] == [502, 200]
    row = only_record(gw, raw.headers["x-request-id"])
    first = json.loads(row["attempts"])[0]
    assert first["status"] == 502 and "closed the connection without a complete response" in first["error"]
