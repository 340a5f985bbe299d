"""A stream the provider breaks after it began ends with a terminal error event in the client's own format,
which each official SDK raises as an error naming the provider: never a clean end of a truncated answer.

Both paths: a stream mitmproxy forwards itself (no attempt plan: kaixu/mitm.py writes the event and the last
chunk) and one the relay runs (a model with retries: kaixu/providers/relay.py). Both in the provider's own
format and translated. The ledger records the break.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types

from tests.fakes.provider import FakeProvider, Fault
from tests.harness import TEST_KEY, Kaixu, ledger_row, only_record, policy_for

PROMPT = "tell me a long story about seven gulls and a lighthouse keeper"
MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-test", "gemini": "gemini-test"}
GUARDED = {name: f"{name}-guarded" for name in MODEL}


@pytest.fixture(scope="module")
def gw(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"})
    for name, model in MODEL.items():  # the same deployments, with an attempt plan (so: through the relay)
        policy["models"][GUARDED[name]] = {**policy["models"][model], "retries": {"attempts": 2}}
    gateway = Kaixu(tmp_path_factory.mktemp("terminal"), policy).start()
    yield gateway
    gateway.stop()


def read_openai(gw: Kaixu, model: str) -> str:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], stream=True)
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def read_anthropic(gw: Kaixu, model: str) -> str:
    client = anthropic.Anthropic(base_url=gw.url, api_key=TEST_KEY, max_retries=0)
    text = ""
    with client.messages.stream(model=model, max_tokens=200, messages=[{"role": "user", "content": PROMPT}]) as s:
        for event in s:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
    return text


def read_gemini(gw: Kaixu, model: str) -> str:
    client = genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(base_url=gw.url))
    return "".join(chunk.text or "" for chunk in client.models.generate_content_stream(model=model, contents=PROMPT))


READERS: dict[str, Any] = {"openai": read_openai, "anthropic": read_anthropic, "gemini": read_gemini}
#: what each SDK raises on the terminal event (the httpx errors of a cut connection are not among them)
RAISES: dict[str, type[Exception] | tuple[type[Exception], ...]] = {
    "openai": openai.APIError,
    "anthropic": anthropic.APIError,
    "gemini": genai.errors.APIError,
}


@pytest.mark.parametrize("path", ["forwarded", "relayed"])
@pytest.mark.parametrize("provider", list(MODEL))
@pytest.mark.parametrize("sdk", list(READERS))
def test_each_sdk_raises_on_the_terminal_event_of_a_broken_stream(
    gw: Kaixu, fake: FakeProvider, sdk: str, provider: str, path: str
) -> None:
    fake.add_fault(Fault(disconnect_after_events=3))
    model = MODEL[provider] if path == "forwarded" else GUARDED[provider]
    with pytest.raises(RAISES[sdk]) as raised:
        READERS[sdk](gw, model)
    assert "broke" in str(raised.value), raised.value
    provider_name = {"openai": "oai", "anthropic": "ant", "gemini": "gem"}[provider]
    assert f"provider {provider_name!r}" in str(raised.value)
    row = only_record(gw, fake.requests[-1].headers["x-request-id"])
    assert row["status"] == 200 and row["error"] and row["usage_source"] == "estimated"


def test_a_stream_that_ends_whole_has_no_terminal_error(gw: Kaixu, fake: FakeProvider) -> None:
    for model in (MODEL["anthropic"], GUARDED["anthropic"]):
        assert read_openai(gw, model).startswith("echo:")


def test_gateway13_gets_its_own_error_event(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(disconnect_after_events=3))
    body = {"model": "claude-test", "messages": [{"role": "user", "content": PROMPT}]}
    response = httpx.post(gw.url + "/.netlify/functions/gateway-stream", json=body,
                          headers={"authorization": f"Bearer {TEST_KEY}"})  # fmt: skip
    assert response.status_code == 200
    assert "event: error" in response.text and "broke" in response.text, response.text[-400:]
    assert ledger_row(gw, response.headers["x-request-id"])["error"]
