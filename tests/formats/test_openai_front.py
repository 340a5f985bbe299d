"""The OpenAI front door, driven by the official openai SDK (sync, async, streaming), httpx and curl."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import openai
import pytest

from tests.conftest import Alone
from tests.fakes.provider import FakeProvider, Fault
from tests.harness import LIMITED_KEY, TEST_KEY, UPSTREAM_KEYS, Kaixu
from tests.scrape import tokens_metered

HELLO = [{"role": "user", "content": "Hello there"}]


def client(kaixu: Kaixu, key: str = TEST_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=kaixu.url + "/v1", api_key=key, max_retries=0)


def test_completion_swaps_the_key_and_keeps_the_body(kaixu: Kaixu, fake: FakeProvider) -> None:
    raw = client(kaixu).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: Hello there"
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert raw.headers["x-request-id"] == raw.headers["x-kaixu-request-id"]
    [seen] = fake.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == "Bearer " + UPSTREAM_KEYS["openai"]
    assert TEST_KEY not in json.dumps(seen.headers)
    assert seen.json == {"model": "gpt-4o-mini", "messages": HELLO}


async def test_async_client(kaixu: Kaixu) -> None:
    async with openai.AsyncOpenAI(base_url=kaixu.url + "/v1", api_key=TEST_KEY, max_retries=0) as aclient:
        completion = await aclient.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert completion.choices[0].message.content == "echo: Hello there"


def test_stream_is_passed_through_event_by_event(kaixu: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(event_delay_ms=150))
    arrivals: list[float] = []
    text = ""
    stream = client(kaixu).chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text == "echo: Hello there"
    # Buffering would deliver every event at once; pass-through spreads them like the provider did.
    assert arrivals[-1] - arrivals[0] >= 0.150 * (len(arrivals) - 2)


def test_stream_without_include_usage_is_metered_but_unchanged_for_the_client(kaixu: Kaixu, fake: FakeProvider) -> None:
    before = tokens_metered(kaixu, "oai", "gpt-4o-mini")
    chunks = list(client(kaixu).chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))
    assert fake.requests[-1].json["stream_options"] == {"include_usage": True}
    assert all(chunk.choices for chunk in chunks), "the usage-only chunk the client did not ask for was forwarded"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: Hello there"
    assert tokens_metered(kaixu, "oai", "gpt-4o-mini") > before


def test_async_stream_with_usage(kaixu: Kaixu) -> None:
    async def run() -> tuple[str, int]:
        async with openai.AsyncOpenAI(base_url=kaixu.url + "/v1", api_key=TEST_KEY, max_retries=0) as c:
            stream = await c.chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, stream=True, stream_options={"include_usage": True}
            )
            text, tokens = "", 0
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
            return text, tokens

    import asyncio

    text, tokens = asyncio.run(run())
    assert text == "echo: Hello there" and tokens > 0


def test_alias_rewrites_the_model_upstream(kaixu: Kaixu, fake: FakeProvider) -> None:
    client(kaixu).chat.completions.create(model="alias", messages=HELLO)
    assert fake.requests[0].json["model"] == "gpt-4o-mini-2024-07-18"


def test_embeddings(kaixu: Kaixu, fake: FakeProvider) -> None:
    result = client(kaixu).embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 8
    assert fake.requests[0].path == "/v1/embeddings"


def test_models_lists_what_the_key_may_use(kaixu: Kaixu) -> None:
    every = {m.id for m in client(kaixu).models.list()}
    assert {"gpt-4o-mini", "claude-test", "gemini-test", "mock-model"} <= every
    assert {m.id for m in client(kaixu, LIMITED_KEY).models.list()} == {"gpt-4o-mini"}


def test_client_request_id_is_kept(kaixu: Kaixu) -> None:
    raw = client(kaixu).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers={"x-request-id": "trace-123"}
    )
    assert raw.headers["x-request-id"] == "trace-123"


def test_mock_provider_answers_offline(kaixu: Kaixu, fake: FakeProvider) -> None:
    completion = client(kaixu).chat.completions.create(model="mock-model", messages=HELLO)
    assert completion.choices[0].message.content == "echo: Hello there"
    chunks = list(client(kaixu).chat.completions.create(model="mock-model", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: Hello there"
    assert fake.requests == []


# --- errors: always JSON in OpenAI's shape, with the request id ------------------------------------


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "code"}
    if code is not None:
        assert body["error"]["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def post(kaixu: Kaixu, content: bytes | str, key: str = TEST_KEY, path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    return httpx.post(kaixu.url + path, content=content, headers=headers, timeout=10)


def test_bad_key_is_401_for_the_sdk(kaixu: Kaixu) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        client(kaixu, "sk-wrong").chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert info.value.status_code == 401
    assert "sk-wrong" not in str(info.value.body)


def test_missing_key_is_401(kaixu: Kaixu) -> None:
    response = httpx.post(kaixu.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO})
    assert_openai_error(response, 401, "missing_api_key")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"model": "gpt-4o-mini", "messages": [', "not valid JSON"),
        (b"[1, 2]", "the request body must be a JSON object, got array"),
        (b"", "empty"),
        (b'{"model": 5, "messages": []}', "model"),
        (b'{"model": "gpt-4o-mini", "messages": [], "stream": "yes"}', "stream"),
    ],
)
def test_malformed_bodies_are_400_naming_the_problem(kaixu: Kaixu, body: bytes, needle: str) -> None:
    error = assert_openai_error(post(kaixu, body), 400)
    assert needle in error["error"]["message"]  # type: ignore[index]


def test_unknown_model_is_404(kaixu: Kaixu) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(kaixu).chat.completions.create(model="no-such-model", messages=HELLO)
    assert "no-such-model" in str(info.value)


def test_model_outside_the_keys_list_is_403(kaixu: Kaixu) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        client(kaixu, LIMITED_KEY).chat.completions.create(model="claude-test", messages=HELLO)


def test_wrong_method_is_405(kaixu: Kaixu) -> None:
    response = httpx.get(kaixu.url + "/v1/chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"})
    assert_openai_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


def test_unknown_endpoint_is_404(kaixu: Kaixu) -> None:
    assert_openai_error(post(kaixu, b"{}", path="/v1/nope"), 404, "unknown_endpoint")


def test_body_over_the_limit_is_413(kaixu: Kaixu) -> None:
    big = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 1_200_000}]})
    response = post(kaixu, big)
    assert_openai_error(response, 413, "request_too_large")


def test_answers_larger_than_the_request_limit_pass(kaixu: Kaixu, alone: Alone) -> None:
    inputs = [f"w{i}" for i in range(10_000)]
    with alone():  # 10,000 embeddings within the shared gateway's 2 s upstream timeout
        response = post(kaixu, json.dumps({"model": "text-embedding-3-small", "input": inputs}), path="/v1/embeddings")
    assert response.status_code == 200
    assert len(response.content) > 1_000_000  # the test policy's max_body_bytes
    assert len(response.json()["data"]) == 10_000


def test_dead_provider_is_a_json_502(kaixu: Kaixu) -> None:
    response = post(kaixu, json.dumps({"model": "dead-model", "messages": HELLO}))
    body = assert_openai_error(response, 502, "upstream_connect_error")
    assert "dead" in body["error"]["message"]  # type: ignore[index]
    with pytest.raises(openai.InternalServerError):
        client(kaixu).chat.completions.create(model="dead-model", messages=HELLO)


def test_unresolvable_provider_is_a_json_502(kaixu: Kaixu) -> None:
    response = post(kaixu, json.dumps({"model": "nxdomain-model", "messages": HELLO}))
    body = assert_openai_error(response, 502, "upstream_connect_error")
    assert "nxdomain" in body["error"]["message"]  # type: ignore[index]


def test_slow_provider_is_a_json_504(kaixu: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(latency_ms=6000))
    started = time.monotonic()
    response = post(kaixu, json.dumps({"model": "gpt-4o-mini", "messages": HELLO}))
    assert_openai_error(response, 504, "upstream_timeout")
    assert time.monotonic() - started < 5


def test_provider_disconnect_is_a_json_502(kaixu: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(close_without_response=True))
    assert_openai_error(post(kaixu, json.dumps({"model": "gpt-4o-mini", "messages": HELLO})), 502)


def test_provider_errors_reach_the_client_with_retry_after(kaixu: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=429, retry_after=7))
    response = post(kaixu, json.dumps({"model": "gpt-4o-mini", "messages": HELLO}))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["message"]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-test"])
def test_provider_dropping_a_stream_midway_leaves_the_gateway_serving(
    kaixu: Kaixu, fake: FakeProvider, model: str
) -> None:
    fake.add_fault(Fault(disconnect_after_events=3))
    received = ""
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for chunk in client(kaixu).chat.completions.create(model=model, messages=HELLO, stream=True):
            if chunk.choices:
                received += chunk.choices[0].delta.content or ""
    assert len(received) < len("echo: Hello there")
    completion = client(kaixu).chat.completions.create(model=model, messages=HELLO)
    assert completion.choices[0].message.content == "echo: Hello there"


def test_curl_completion_and_stream(kaixu: Kaixu) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "messages": HELLO})
    common = [
        "curl",
        "-sS",
        "-H",
        f"Authorization: Bearer {TEST_KEY}",
        "-H",
        "content-type: application/json",
    ]
    out = subprocess.run([*common, "-d", body, kaixu.url + "/v1/chat/completions"], capture_output=True, check=True)
    assert json.loads(out.stdout)["choices"][0]["message"]["content"] == "echo: Hello there"
    streamed = json.dumps({"model": "gpt-4o-mini", "messages": HELLO, "stream": True})
    out = subprocess.run(
        [*common, "-N", "-d", streamed, kaixu.url + "/v1/chat/completions"], capture_output=True, check=True
    )
    events = [line[6:] for line in out.stdout.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1] if json.loads(e)["choices"]
    )
    assert text == "echo: Hello there"


@pytest.mark.parametrize("options", ["yes", 1.5, True, ["include_usage"]])
def test_stream_options_that_are_not_an_object_are_a_400_naming_them(
    kaixu: Kaixu, fake: FakeProvider, options: object
) -> None:
    """kaixu adds `include_usage` to a stream's `stream_options` (to meter it): one of the wrong type is the
    client's 400, not an error of kaixu's."""
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True, "stream_options": options}
    response = httpx.post(
        kaixu.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {TEST_KEY}"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"].startswith("stream_options: ") and error["code"] == "invalid_field"
    assert fake.requests == []
