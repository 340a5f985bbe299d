"""The seed gateways' client APIs, exercised as their own docs show (../shared/seeds/): curl-style httpx
calls, the documented bodies, headers, SSE event names and error statuses."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.provider import FakeProvider, Fault
from tests.harness import LIMITED_KEY, ROOT, TEST_KEY, Kaixu, policy_for, wait_for
from tests.scrape import samples, total

BEARER = {"authorization": f"Bearer {TEST_KEY}"}


def sse_events(text: str) -> list[tuple[str | None, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, "\n".join(data)))
    return events


# --- kAIxu Gate (seed 001) ---------------------------------------------------------------------------


def gate(kaixu: Kaixu, path: str, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    headers = BEARER if headers is None else headers
    if body is None:
        return httpx.get(kaixu.url + path, headers=headers)
    return httpx.post(kaixu.url + path, json=body, headers=headers, timeout=10)


def test_gate_health_checks_the_token(kaixu: Kaixu) -> None:
    assert gate(kaixu, "/v1/health").json() == {
        "ok": True,
        "keyConfigured": True,
        "authConfigured": True,
        "openGate": False,
    }
    assert gate(kaixu, "/v1/health", headers={"x-kaixu-token": TEST_KEY}).status_code == 200
    bad = gate(kaixu, "/v1/health", headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["ok"] is False and bad.json()["error"]


def test_gate_models(kaixu: Kaixu) -> None:
    models = gate(kaixu, "/v1/models").json()["models"]
    assert "gemini-test" in {m["id"] for m in models}


def test_gate_generate_simple_input_defaults_to_the_default_model(kaixu: Kaixu, fake: FakeProvider) -> None:
    data = gate(kaixu, "/v1/generate", {"input": {"type": "text", "content": "Explain WebSockets."}}).json()
    assert data["ok"] is True and data["text"] == "echo: Explain WebSockets."
    assert data["model"] == "gemini-test" and data["finishReason"] == "STOP"
    usage = data["usage"]
    assert set(usage) == {"promptTokens", "candidatesTokens", "thoughtsTokens", "totalTokens"}
    assert usage["totalTokens"] == usage["promptTokens"] + usage["candidatesTokens"] + usage["thoughtsTokens"]
    assert ":generateContent" in fake.requests[-1].path


def test_gate_messages_and_system_routed_to_another_provider(kaixu: Kaixu, fake: FakeProvider) -> None:
    body = {
        "model": "claude-test",
        "system": "You are a helpful assistant.",
        "messages": [
            {"role": "user", "content": "My name is Skye."},
            {"role": "assistant", "content": "Hello Skye"},
            {"role": "user", "content": "What is my name?"},
        ],
    }
    data = gate(kaixu, "/v1/generate", body).json()
    assert data["ok"] and data["text"] == "echo: What is my name?"
    sent = fake.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.json["system"] == "You are a helpful assistant." and len(sent.json["messages"]) == 3


def test_gate_gemini_native_fields_pass_verbatim(kaixu: Kaixu, fake: FakeProvider) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
        "generationConfig": {"temperature": 1.2, "topP": 0.95, "maxOutputTokens": 512, "stopSequences": ["END"]},
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    }
    data = gate(kaixu, "/v1/generate", body).json()
    assert data["ok"] and data["text"] == "echo: Hello"
    sent = fake.requests[-1].json
    assert sent["generationConfig"] == body["generationConfig"]
    assert sent["safetySettings"] == body["safetySettings"]


def test_gate_json_output_and_raw(kaixu: Kaixu, fake: FakeProvider) -> None:
    body = {"output": {"format": "json"}, "includeRaw": True, "input": {"type": "text", "content": "France"}}
    data = gate(kaixu, "/v1/generate", body).json()
    assert json.loads(data["text"]) == {"echo": "France"}
    assert fake.requests[-1].json["generationConfig"]["responseMimeType"] == "application/json"
    assert data["raw"]["candidates"][0]["content"]["parts"][0]["text"] == data["text"]


def test_gate_stream_is_raw_gemini_chunks_then_done(kaixu: Kaixu) -> None:
    with httpx.stream(
        "POST", kaixu.url + "/v1/stream", headers=BEARER, json={"input": {"type": "text", "content": "Hi"}}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    datas = [data for _, data in sse_events(text)]
    assert datas[-1] == "[DONE]"
    # the doc's own client loop
    out = ""
    for raw in datas[:-1]:
        chunk = json.loads(raw)
        parts = chunk.get("candidates", [{}])[0].get("content", {}).get("parts", [])
        out += "".join(p.get("text", "") for p in parts if not p.get("thought"))
    assert out == "echo: Hi"


def test_gate_stream_to_an_openai_provider(kaixu: Kaixu) -> None:
    response = gate(kaixu, "/v1/stream", {"model": "gpt-4o-mini", "input": {"type": "text", "content": "Yo"}})
    datas = [data for _, data in sse_events(response.text)]
    text = "".join(p.get("text", "") for d in datas[:-1] for p in json.loads(d)["candidates"][0]["content"]["parts"])
    assert text == "echo: Yo" and datas[-1] == "[DONE]"


@pytest.mark.parametrize(
    ("method", "body", "status"),
    [
        ("POST", {}, 400),
        ("POST", {"input": {"type": "text"}}, 400),
        ("POST", {"messages": [{"role": "wizard", "content": "x"}]}, 400),
        ("POST", {"input": {"type": "text", "content": "x"}, "output": {"format": "yaml"}}, 400),
        ("GET", None, 405),
    ],
)
def test_gate_errors(kaixu: Kaixu, method: str, body: Any, status: int) -> None:
    response = httpx.request(method, kaixu.url + "/v1/generate", json=body, headers=BEARER)
    assert response.status_code == status
    assert response.json()["ok"] is False and response.json()["error"]


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/stream"])
def test_gate_include_raw_of_the_wrong_type_is_a_400_naming_it(kaixu: Kaixu, fake: FakeProvider, path: str) -> None:
    body = {"input": {"type": "text", "content": "hi"}, "includeRaw": "yes"}
    response = gate(kaixu, path, body)
    assert response.status_code == 400, response.text
    assert response.json()["ok"] is False and response.json()["error"].startswith("includeRaw: ")
    assert fake.requests == []


def test_gate_401_413_and_upstream_failure(kaixu: Kaixu) -> None:
    unauthorized = gate(kaixu, "/v1/generate", {"input": {"type": "text", "content": "x"}}, headers={})
    assert unauthorized.status_code == 401 and unauthorized.json()["ok"] is False
    huge = gate(kaixu, "/v1/generate", {"input": {"type": "text", "content": "x" * 1_100_000}})
    assert huge.status_code == 413 and huge.json()["ok"] is False
    dead = gate(kaixu, "/v1/generate", {"model": "dead-model", "input": {"type": "text", "content": "x"}})
    assert dead.status_code == 502 and dead.json()["ok"] is False
    assert dead.json()["request_id"] == dead.headers["x-request-id"]
    misconfigured = gate(kaixu, "/v1/generate", {"model": "nokey-model", "input": {"type": "text", "content": "x"}})
    assert misconfigured.status_code == 500 and misconfigured.json() == {
        "ok": False,
        "error": "provider 'nokey' has no API key configured",
        "request_id": misconfigured.headers["x-request-id"],
    }


# --- Kaixu Gateway 13 (seed 000) ---------------------------------------------------------------------

GW13_HEADERS = {**BEARER, "x-kaixu-app": "demo", "x-kaixu-build": "b1", "x-kaixu-install-id": "install-42"}


def test_gateway13_chat(kaixu: Kaixu, fake: FakeProvider) -> None:
    body = {
        "provider": "anthropic",
        "model": "claude-test",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 100,
        "temperature": 1,
    }
    response = httpx.post(
        kaixu.url + "/.netlify/functions/gateway-chat",
        json=body,
        headers={**GW13_HEADERS, "x-kaixu-request-id": "req-gw13"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-kaixu-request-id"] == "req-gw13"
    data = response.json()
    assert data["provider"] == "anthropic" and data["model"] == "claude-test" and data["output_text"] == "echo: Hi"
    assert data["usage"]["input_tokens"] > 0 and data["usage"]["output_tokens"] > 0 and "cost_cents" in data["usage"]
    assert set(data["month"]) >= {
        "month",
        "customer_cap_cents",
        "customer_spent_cents",
        "key_cap_cents",
        "key_spent_cents",
    }
    assert data["telemetry"] == {"install_id": "install-42"}
    assert fake.requests[-1].json["max_tokens"] == 100


def test_gateway13_stream_events(kaixu: Kaixu) -> None:
    body = {"provider": "openai", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello you"}]}
    response = httpx.post(kaixu.url + "/.netlify/functions/gateway-stream", json=body, headers=GW13_HEADERS)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[0] == "meta" and names[-1] == "done" and "delta" in names
    assert "".join(json.loads(d)["text"] for n, d in events if n == "delta") == "echo: Hello you"
    done = json.loads(events[-1][1])
    assert done["usage"]["output_tokens"] > 0


def gw13_stream(kaixu: Kaixu, model: str) -> list[tuple[str | None, str]]:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello you"}]}
    response = httpx.post(kaixu.url + "/.netlify/functions/gateway-stream", json=body, headers=GW13_HEADERS, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    return sse_events(response.text)


@pytest.mark.parametrize(
    "fault", [Fault(latency_ms=1200), Fault(first_byte_delay_ms=1200)], ids=["before-headers", "before-first-event"]
)
def test_gateway13_pings_while_the_provider_thinks(kaixu: Kaixu, fake: FakeProvider, fault: Fault) -> None:
    fake.add_fault(fault)
    events = gw13_stream(kaixu, "claude-test")  # translated from Anthropic's stream, through the relay
    names = [name for name, _ in events]
    assert names[0] == "meta" and names[-1] == "done"
    first_delta = names.index("delta")
    assert names[1:first_delta].count("ping") >= 3 and set(names[1:first_delta]) == {"ping"}
    assert "ping" not in names[first_delta:]
    assert "".join(json.loads(d)["text"] for n, d in events if n == "delta") == "echo: Hello you"
    assert fake.requests[-1].headers["x-api-key"] == "sk-up-anthropic"


def test_gateway13_provider_error_before_the_first_byte_is_an_error_event(kaixu: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=429, retry_after=3))
    events = gw13_stream(kaixu, "gpt-4o-mini")
    assert [name for name, _ in events] == ["meta", "error"]
    assert json.loads(events[1][1])["error"]
    labels = {"front": "gateway13", "model": "gpt-4o-mini", "operation": "chat", "provider": "oai", "status": "429"}
    assert total(samples(kaixu), "kaixu_requests_total", **labels) >= 1


def test_gateway13_dead_or_silent_provider_is_an_error_event(kaixu: Kaixu, fake: FakeProvider) -> None:
    events = gw13_stream(kaixu, "dead-model")
    assert [name for name, _ in events] == ["meta", "error"] and "unreachable" in json.loads(events[1][1])["error"]
    fake.add_fault(Fault(latency_ms=4000))
    events = gw13_stream(kaixu, "gpt-4o-mini")
    names = [name for name, _ in events]
    assert names[0] == "meta" and names[-1] == "error" and "ping" in names
    assert "did not answer within 2 s" in json.loads(events[-1][1])["error"]


def test_gateway13_provider_hint_must_serve_the_model(kaixu: Kaixu) -> None:
    body = {"provider": "gemini", "model": "claude-test", "messages": [{"role": "user", "content": "x"}]}
    response = httpx.post(kaixu.url + "/.netlify/functions/gateway-chat", json=body, headers=GW13_HEADERS)
    assert response.status_code == 403 and "gemini" in response.json()["error"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    """kaixu on the repository's own proxy.yaml, as `make run` starts it: every model on the built-in mock."""
    workdir = tmp_path_factory.mktemp("shipped")
    gateway = Kaixu(workdir, (ROOT / "proxy.yaml").read_text()).start()
    yield gateway
    gateway.stop()


SHIPPED_KEY = {"authorization": "Bearer sk-kaixu-demo"}
# The runbook's body, for each provider it lists, with a model the shipped policy serves.
RUNBOOK_BODIES = {
    provider: {
        "provider": provider,
        "model": model,
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 1024,
        "temperature": 1,
    }
    for provider, model in (
        ("openai", "gpt-4o-mini"),
        ("anthropic", "claude-3-5-haiku-latest"),
        ("gemini", "gemini-2.5-flash"),
    )
}


@pytest.mark.parametrize("provider", list(RUNBOOK_BODIES))
def test_gateway13_runbook_body_on_the_shipped_policy(shipped: Kaixu, provider: str) -> None:
    body = RUNBOOK_BODIES[provider]
    chat = httpx.post(shipped.url + "/.netlify/functions/gateway-chat", json=body, headers=SHIPPED_KEY, timeout=10)
    assert chat.status_code == 200, chat.text
    data = chat.json()
    assert data["provider"] == provider and data["model"] == body["model"]
    assert data["output_text"] == "echo: Say hello"
    stream = httpx.post(shipped.url + "/.netlify/functions/gateway-stream", json=body, headers=SHIPPED_KEY, timeout=10)
    assert stream.status_code == 200, stream.text
    events = sse_events(stream.text)
    assert events[0][0] == "meta" and json.loads(events[0][1])["provider"] == provider
    assert "".join(json.loads(d)["text"] for n, d in events if n == "delta") == "echo: Say hello"
    assert events[-1][0] == "done"


@pytest.mark.parametrize("door", ["gateway-chat", "gateway-stream"])
def test_gateway13_unknown_model_is_the_seeds_403(kaixu: Kaixu, door: str) -> None:
    body = {"provider": "openai", "model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}
    response = httpx.post(kaixu.url + f"/.netlify/functions/{door}", json=body, headers=GW13_HEADERS, timeout=10)
    assert response.status_code == 403
    assert response.json() == {
        "error": "model 'no-such-model' is not served by this gateway",
        "code": "model_not_allowed",
        "request_id": response.headers["x-kaixu-request-id"],
    }
    # the other front doors keep their 404
    openai_front = httpx.post(kaixu.url + "/v1/chat/completions", json=body, headers=BEARER)
    assert openai_front.status_code == 404 and openai_front.json()["error"]["code"] == "model_not_found"


def test_gateway13_errors_and_health(kaixu: Kaixu) -> None:
    body = {"model": "claude-test", "messages": [{"role": "user", "content": "x"}]}
    unauthorized = httpx.post(kaixu.url + "/.netlify/functions/gateway-chat", json=body)
    assert unauthorized.status_code == 401 and "error" in unauthorized.json()
    bad = httpx.post(kaixu.url + "/.netlify/functions/gateway-chat", json={**body, "provider": "aws"}, headers=BEARER)
    assert bad.status_code == 400 and "provider" in bad.json()["error"]
    health = httpx.get(kaixu.url + "/.netlify/functions/health").json()
    assert health["status"] == "ok" and health["providers"]["ant"]["key_configured"] is True


# --- Intelligent AI Gateway (seed 002) ---------------------------------------------------------------


def test_backend_in_the_path_picks_the_provider(kaixu: Kaixu, fake: FakeProvider) -> None:
    response = httpx.post(
        kaixu.url + "/v1/ant/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
        headers=BEARER,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: Hello"
    assert fake.requests[-1].path == "/v1/messages"


def test_a_model_restricted_key_cannot_leave_the_models_route_by_backend(kaixu: Kaixu, fake: FakeProvider) -> None:
    """A key limited to some models is limited to where the policy routes them: naming another provider (path or
    body `backend`) is refused before anything is forwarded; a backend the route has is fine."""
    limited = {"authorization": f"Bearer {LIMITED_KEY}"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
    fake.clear()
    for response in (
        httpx.post(kaixu.url + "/v1/ant/chat/completions", json=body, headers=limited),
        httpx.post(kaixu.url + "/v1/chat/completions", json={**body, "backend": "gem"}, headers=limited),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "provider_not_allowed"
    # a path naming a model in place of the body's: that model must be one the key may call (kaixu/permission.py)
    renamed = httpx.post(kaixu.url + "/v1/claude-test/chat/completions", json=body, headers=limited)
    assert renamed.status_code == 403 and renamed.json()["error"]["code"] == "model_not_allowed", renamed.text
    assert fake.requests == []
    inside = httpx.post(kaixu.url + "/v1/oai/chat/completions", json=body, headers=limited)
    assert inside.status_code == 200, inside.text


def test_backend_in_the_body_is_stripped_before_forwarding(kaixu: Kaixu, fake: FakeProvider) -> None:
    response = httpx.post(
        kaixu.url + "/v1/chat/completions",
        json={"backend": "oai", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
        headers=BEARER,
    )
    assert response.status_code == 200
    assert "backend" not in fake.requests[-1].json


def test_backend_may_name_a_model_and_the_model_may_be_omitted(kaixu: Kaixu, fake: FakeProvider) -> None:
    response = httpx.post(
        kaixu.url + "/v1/claude-test/chat/completions",
        json={"messages": [{"role": "user", "content": "Hello"}]},
        headers=BEARER,
    )
    assert response.status_code == 200, response.text
    assert fake.requests[-1].path == "/v1/messages"


def test_unknown_backend_is_404(kaixu: Kaixu) -> None:
    response = httpx.post(
        kaixu.url + "/v1/nowhere/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        headers=BEARER,
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "backend_not_found"


def test_queue_status_and_health_uptime(kaixu: Kaixu) -> None:
    status = httpx.get(kaixu.url + "/queue/status").json()
    assert {"processPool", "backends"} <= set(status) and status["processPool"]["queued"] == 0
    health = httpx.get(kaixu.url + "/health").json()
    assert health["status"] == "ok" and health["uptime_seconds"] >= 0 and "routing" in health


def test_health_and_queue_status_carry_the_seeds_pool_numbers(fake: FakeProvider, workdir: Path) -> None:
    gateway = Kaixu(workdir, policy_for(fake.base_url)).start()
    try:
        health = gateway.health()
        assert health["backend"] == "intelligent-gateway" and health["status"] == "ok"
        pool = health["routing"]["processPool"]
        assert pool["maxConcurrent"] == 10 and pool["utilization"] == 0.0 and pool["active"] == 0
        status = httpx.get(gateway.url + "/queue/status").json()["processPool"]
        assert {k: status[k] for k in ("totalProcessed", "totalQueued", "totalFailed")} == {
            "totalProcessed": 0,
            "totalQueued": 0,
            "totalFailed": 0,
        }
        hello = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
        chat = gateway.url + "/v1/chat/completions"
        assert httpx.post(chat, json=hello, headers=BEARER).status_code == 200
        assert httpx.post(chat, json={**hello, "stream": True}, headers=BEARER).status_code == 200
        fake.add_fault(Fault(status=500))
        assert httpx.post(chat, json=hello, headers=BEARER).status_code == 500
        assert httpx.post(chat, json={**hello, "model": "dead-model"}, headers=BEARER).status_code == 502
        fake.add_fault(Fault(status=429))
        assert httpx.post(chat, json=hello, headers=BEARER).status_code == 429
        # answered by kaixu itself: never reached a provider
        assert httpx.post(chat, json={**hello, "model": "nope"}, headers=BEARER).status_code == 404
        assert httpx.get(gateway.url + "/v1/models", headers=BEARER).status_code == 200

        def totals() -> dict[str, Any]:
            pool = httpx.get(gateway.url + "/queue/status").json()["processPool"]
            return {k: pool[k] for k in ("active", "totalProcessed", "totalQueued", "totalFailed")}

        wait_for(lambda: totals()["totalProcessed"] == 5, 5, "five forwarded requests to settle")
        assert totals() == {"active": 0, "totalProcessed": 5, "totalQueued": 0, "totalFailed": 2}

        # a request in flight is active: utilization = active / maxConcurrent
        fake.add_fault(Fault(latency_ms=1500))
        slow = threading.Thread(target=lambda: httpx.post(chat, json=hello, headers=BEARER, timeout=10))
        slow.start()
        try:
            wait_for(lambda: totals()["active"] == 1, 5, "the slow request to be in flight")
            pool = httpx.get(gateway.url + "/queue/status").json()["processPool"]
            assert pool["utilization"] == 0.1 and pool["maxConcurrent"] == 10
        finally:
            slow.join()
        wait_for(lambda: totals()["totalProcessed"] == 6, 5, "the slow request to settle")
        assert totals()["active"] == 0
    finally:
        gateway.stop()


# --- Pulse (seed 003) --------------------------------------------------------------------------------


def test_pulse_request(kaixu: Kaixu, fake: FakeProvider) -> None:
    body = {"model": "gpt-4o-mini", "prompt": "Say hello", "teamId": "team-123", "projectId": "project-456"}
    response = httpx.post(kaixu.url + "/api/ai/request", json=body, headers={"x-pulse-key": TEST_KEY})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["success"] is True and data["content"] == "echo: Say hello"
    assert data["usage"]["inputTokens"] > 0
    assert "teamId" not in fake.requests[-1].json


def test_pulse_messages_input(kaixu: Kaixu) -> None:
    body = {
        "model": "claude-test",
        "input": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is 2+2?"},
        ],
        "teamId": "t",
    }
    data = httpx.post(kaixu.url + "/api/ai/request", json=body, headers=BEARER).json()
    assert data["success"] and data["content"] == "echo: What is 2+2?"


def test_pulse_errors(kaixu: Kaixu) -> None:
    body = {"model": "claude-test", "prompt": "x"}
    forbidden = httpx.post(kaixu.url + "/api/ai/request", json=body, headers={"x-pulse-key": LIMITED_KEY})
    assert forbidden.status_code == 403 and forbidden.json()["success"] is False
    assert "claude-test" in forbidden.json()["error"]
    missing = httpx.post(kaixu.url + "/api/ai/request", json={"model": "gpt-4o-mini"}, headers=BEARER)
    assert missing.status_code == 400 and missing.json()["success"] is False
    assert httpx.post(kaixu.url + "/api/ai/request", json=body).status_code == 401


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"teamId": 0}, "teamId"),
        ({"userId": ["a"]}, "userId"),
        ({"projectId": {"id": "p"}}, "projectId"),
        ({"appId": True}, "appId"),
        ({"clientId": 1.5}, "clientId"),
        ({"metadata": "team-a"}, "metadata"),
        ({"metadata": {"teamId": 7}}, "metadata.teamId"),
    ],
)
def test_pulse_attribution_of_the_wrong_type_is_a_400_naming_the_field(
    kaixu: Kaixu, fake: FakeProvider, extra: dict[str, Any], field: str
) -> None:
    body = {"model": "gpt-4o-mini", "prompt": "hi", **extra}
    response = httpx.post(kaixu.url + "/api/ai/request", json=body, headers={"x-pulse-key": TEST_KEY})
    assert response.status_code == 400, response.text
    data = response.json()
    assert data["success"] is False and data["error"].startswith(f"{field}: "), data
    assert response.headers["x-request-id"]
    assert fake.requests == []


# --- AI Gateway (node, seed 004) ----------------------------------------------------------------------


def test_node_gateway_request_id_header(kaixu: Kaixu) -> None:
    response = httpx.post(
        kaixu.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
        headers={**BEARER, "X-Request-Id": "node-1"},
    )
    assert response.headers["X-Request-Id"] == "node-1"
