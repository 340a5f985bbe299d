"""The Intelligent AI Gateway's session continuity (seed 002, "Session Continuity"), as its quickstart shows it:
the answer of `/v1/chat/completions` carries a `session_id`; a request that sends it back gets the earlier turns,
on whichever provider serves it. Sessions are their key's and expire."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.provider import FakeProvider
from tests.harness import LIMITED_KEY, TEST_KEY, Kaixu, policy_for, wait_for

BEARER = {"authorization": f"Bearer {TEST_KEY}"}


def chat(kaixu: Kaixu, body: dict[str, Any], key: str = TEST_KEY, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(kaixu.url + path, json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)


def said(fake: FakeProvider) -> str:
    """All the text the provider's last request held (whatever its wire format)."""
    return fake.requests[-1].body.decode()


@pytest.fixture(scope="module")
def gateway(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    policy = policy_for(fake.base_url, store={"sqlite": "kaixu.db"}, sessions={"ttl_s": 600})
    kaixu = Kaixu(tmp_path_factory.mktemp("sessions"), policy).start()
    yield kaixu
    kaixu.stop()


def test_the_quickstart_session_across_three_providers(gateway: Kaixu, fake: FakeProvider) -> None:
    first = chat(gateway, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "My name is Alice"}]})
    assert first.status_code == 200
    session_id = first.json()["session_id"]
    assert session_id.startswith("sess_") and first.headers["x-session-id"] == session_id
    assert "session_id" not in said(fake)  # never forwarded to a provider
    # the next turn on an Anthropic-format provider: the earlier turns come first
    body = {
        "model": "claude-test",
        "session_id": session_id,
        "messages": [{"role": "user", "content": "What is my name?"}],
    }
    second = chat(gateway, body)
    assert second.status_code == 200 and second.json()["session_id"] == session_id
    sent = fake.requests[-1].json
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert "My name is Alice" in said(fake) and "echo: My name is Alice" in said(fake)
    assert "session_id" not in sent
    # and on a Gemini-format one, named by the backend in the path (the seed's /v1/{backend}/chat/completions)
    third = chat(gateway, {"session_id": session_id, "messages": [{"role": "user", "content": "And again?"}]},
                 path="/v1/gemini-test/chat/completions")  # fmt: skip
    assert third.status_code == 200 and third.json()["session_id"] == session_id
    contents = fake.requests[-1].json["contents"]
    assert len(contents) == 5 and "What is my name?" in said(fake) and ":generateContent" in fake.requests[-1].path


def test_a_session_is_its_keys_own(gateway: Kaixu) -> None:
    first = chat(gateway, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "secret"}]})
    session_id = first.json()["session_id"]
    again = {"model": "gpt-4o-mini", "session_id": session_id, "messages": [{"role": "user", "content": "x"}]}
    other = chat(gateway, again, key=LIMITED_KEY)
    assert other.status_code == 404 and other.json()["error"]["code"] == "session_not_found"
    unknown = chat(
        gateway, {"model": "gpt-4o-mini", "session_id": "sess_nope", "messages": [{"role": "user", "content": "x"}]}
    )
    assert unknown.status_code == 404
    wrong = chat(gateway, {"model": "gpt-4o-mini", "session_id": 7, "messages": [{"role": "user", "content": "x"}]})
    assert wrong.status_code == 400


def test_the_openai_sdk_reads_and_sends_the_session(gateway: Kaixu, fake: FakeProvider) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY)
    first = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "I like tea"}])
    session_id = (first.model_extra or {})["session_id"]
    second = client.chat.completions.create(
        model="gemini-test",
        messages=[{"role": "user", "content": "What do I like?"}],
        extra_body={"session_id": session_id},
    )
    assert second.choices[0].message.content == "echo: What do I like?"
    assert "I like tea" in said(fake)


def test_a_streamed_turn_is_kept_too(gateway: Kaixu, fake: FakeProvider) -> None:
    body = {"model": "claude-test", "stream": True, "messages": [{"role": "user", "content": "Count to three"}]}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=BEARER, timeout=10) as stream:
        assert stream.status_code == 200
        session_id = stream.headers["x-session-id"]
        text = stream.read().decode()
    assert "[DONE]" in text
    follow = chat(
        gateway, {"model": "gpt-4o-mini", "session_id": session_id, "messages": [{"role": "user", "content": "Again"}]}
    )
    assert follow.status_code == 200
    messages = fake.requests[-1].json["messages"]
    assert messages[1] == {"role": "assistant", "content": "echo: Count to three"}


def test_without_sessions_an_answer_is_as_before(kaixu: Kaixu) -> None:
    answer = chat(kaixu, {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200 and "session_id" not in answer.json() and "x-session-id" not in answer.headers


def test_a_session_expires(fake: FakeProvider, tmp_path: Path) -> None:
    policy = policy_for(fake.base_url, sessions={"ttl_s": 2})
    kaixu = Kaixu(tmp_path, policy).start()
    try:
        session_id = chat(kaixu, {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}).json()[
            "session_id"
        ]
        again = {"model": "mock-model", "session_id": session_id, "messages": [{"role": "user", "content": "again"}]}
        assert chat(kaixu, again).status_code == 200  # used: it lives another 2 s from now
        used = time.monotonic()
        # the clock is what is tested here (a use within the ttl would renew the session, so no polling)
        wait_for(lambda: time.monotonic() - used > 2.1, 5, "the ttl to pass")
        gone = chat(kaixu, again)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"
    finally:
        kaixu.stop()
