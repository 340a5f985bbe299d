"""The ledger's text columns: the prompt's SHA-256 on every record, the prompt and answer text only when
`ledger.content.enabled`, redacted (built-in rules, the policy's regexes, the provider keys) and cut.

Every check reads the SQLite rows a real kaixu wrote after real requests (official SDKs and httpx) through
the fake provider, which answers "echo: <the user's text>": what is redacted in the prompt must be redacted
in the answer too. The hash is recomputed here from its definition in docs/ledger.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types

from kaixu.config import parse_policy
from kaixu.content import prompt_sha256
from kaixu.redact import CONTENT_REDACTED as REDACTED
from kaixu.redact import luhn
from tests.fakes.provider import FakeProvider
from tests.harness import TEST_KEY, UPSTREAM_KEYS, Kaixu, ledger_row, policy_for

MAX_CHARS = 600
EMAIL = "jane.doe+billing@example.co.uk"
CARD = "4111 1111 1111 1111"  # the Visa test number: passes Luhn
CARD_DASHES = "5555-5555-5555-4444"
NOT_A_CARD = "1234 5678 9012 3456"  # 16 digits, fails Luhn: an order number stays
API_KEY = "sk-proj-" + "A1b2C3d4E5f6G7h8"
CUSTOM = "PROJECT-4242"
SECRETS = (EMAIL, CARD, CARD_DASHES, API_KEY, CUSTOM, *UPSTREAM_KEYS.values())
TEXT = (
    f"mail {EMAIL}, pay with {CARD} or {CARD_DASHES}, order {NOT_A_CARD}, key {API_KEY}, "
    f"codename {CUSTOM}, and the provider key {UPSTREAM_KEYS['openai']}"
)
CONTENT = {"enabled": True, "max_chars": MAX_CHARS, "redact": [r"PROJECT-\d+"]}


def canonical_sha256(fields: dict[str, Any]) -> str:
    """docs/ledger.md, written out: SHA-256 of the prompt fields as sorted, compact, ASCII JSON."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@pytest.fixture(scope="module")
def logged(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    work = tmp_path_factory.mktemp("content-on")
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"}, ledger={"content": CONTENT})
    gateway = Kaixu(work, policy).start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def unlogged(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    work = tmp_path_factory.mktemp("content-off")
    gateway = Kaixu(work, policy_for(fake.base_url, store={"sqlite": "ledger.db"})).start()
    yield gateway
    gateway.stop()


def assert_redacted(row: dict[str, Any]) -> None:
    for column in ("prompt", "answer"):
        text = row[column]
        assert text, f"{column} was not stored: {row}"
        for secret in SECRETS:
            assert secret not in text, f"{column} keeps {secret!r}: {text!r}"
        assert NOT_A_CARD in text, f"{column} lost a number that is not a card: {text!r}"
        assert text.count(REDACTED) >= 5, text
        assert len(text) <= MAX_CHARS


def openai_client(gateway: Kaixu) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-test", "gemini-test", "mock-model"])
def test_openai_door_stores_redacted_text(logged: Kaixu, model: str) -> None:
    """Same format (gpt-4o-mini), translated (claude-test, gemini-test) and the built-in mock."""
    messages: list[Any] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": TEXT}]
    raw = openai_client(logged).chat.completions.with_raw_response.create(
        model=model, messages=messages, temperature=0.2
    )
    answer = raw.parse().choices[0].message.content
    assert answer is not None and EMAIL in answer  # the client gets its answer untouched
    row = ledger_row(logged, raw.headers["x-request-id"])
    assert_redacted(row)
    assert row["prompt"].startswith("system: be brief\nuser: mail [REDACTED]")
    assert row["answer"].startswith("echo: mail [REDACTED]")
    assert row["prompt_sha256"] == canonical_sha256({"messages": messages})


def test_anthropic_door_stores_redacted_text(logged: Kaixu) -> None:
    client = anthropic.Anthropic(base_url=logged.url, api_key=TEST_KEY, max_retries=0)
    messages: list[Any] = [{"role": "user", "content": [{"type": "text", "text": TEXT}]}]
    raw = client.messages.with_raw_response.create(
        model="claude-test", max_tokens=100, system="be brief", messages=messages
    )
    row = ledger_row(logged, raw.headers["x-request-id"])
    assert_redacted(row)
    assert row["prompt"].startswith("system: be brief\nuser: mail [REDACTED]")
    assert row["prompt_sha256"] == canonical_sha256({"system": "be brief", "messages": messages})


def test_gemini_door_stores_redacted_text(logged: Kaixu) -> None:
    client = genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(base_url=logged.url))
    reply = client.models.generate_content(
        model="gemini-test",
        contents=TEXT,
        config=types.GenerateContentConfig(system_instruction="be brief", temperature=0.5),
    )
    assert reply.sdk_http_response is not None and reply.sdk_http_response.headers is not None
    row = ledger_row(logged, reply.sdk_http_response.headers["x-request-id"])
    assert_redacted(row)
    assert row["prompt"].startswith("system: be brief\nuser: mail [REDACTED]")
    assert row["answer"].startswith("echo: mail [REDACTED]")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/ai/request", {"model": "gpt-4o-mini", "prompt": TEXT, "teamId": "team-1"}),
        ("/v1/generate", {"model": "claude-test", "input": {"type": "text", "content": TEXT}}),
        ("/.netlify/functions/gateway-chat", {"model": "gemini-test", "messages": [{"role": "user", "content": TEXT}]}),
    ],
)
def test_seed_doors_store_redacted_text(logged: Kaixu, path: str, body: dict[str, Any]) -> None:
    response = httpx.post(logged.url + path, json=body, headers={"authorization": f"Bearer {TEST_KEY}"})
    assert response.status_code == 200, response.text
    row = ledger_row(logged, response.headers["x-request-id"])
    assert_redacted(row)
    prompt_fields = {k: v for k, v in body.items() if k in ("prompt", "input", "messages")}
    assert row["prompt_sha256"] == canonical_sha256(prompt_fields)


def test_redaction_happens_before_the_cut(logged: Kaixu) -> None:
    """An email that straddles `max_chars` is not kept in part: it is replaced first, then the text is cut."""
    padding = "x" * (MAX_CHARS - len("user: ") - 10)
    text = f"{padding} {EMAIL} and more text after it " * 3
    raw = openai_client(logged).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
    )
    row = ledger_row(logged, raw.headers["x-request-id"])
    # the email starts 9 characters before the cut: the marker is cut, the address was never there
    assert row["prompt"] == f"user: {padding} {REDACTED}"[:MAX_CHARS]
    assert row["prompt"].endswith(" [REDACTED")
    assert "jane" not in row["prompt"] and "jane" not in row["answer"]


def test_same_conversation_hashes_the_same_whatever_the_knobs(logged: Kaixu) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is 2+2?"}]
    client = openai_client(logged)
    plain = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    tuned = client.chat.completions.with_raw_response.create(
        model="alias", messages=messages, temperature=1.5, max_tokens=7, stream=True
    )
    for _ in tuned.parse():
        pass
    other = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "What is 2+3?"}]
    )
    digests = [ledger_row(logged, r.headers["x-request-id"])["prompt_sha256"] for r in (plain, tuned, other)]
    assert digests[0] == digests[1] == canonical_sha256({"messages": messages})
    assert digests[2] != digests[0]
    assert ledger_row(logged, tuned.headers["x-request-id"])["prompt"] == "user: What is 2+2?"


def test_content_off_stores_only_the_hash(unlogged: Kaixu) -> None:
    messages: list[Any] = [{"role": "user", "content": TEXT}]
    raw = openai_client(unlogged).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    row = ledger_row(unlogged, raw.headers["x-request-id"])
    assert row["prompt"] is None and row["answer"] is None
    assert row["prompt_sha256"] == canonical_sha256({"messages": messages})
    stored = json.dumps(row)
    assert all(secret not in stored for secret in SECRETS)


def test_embeddings_hash_their_input_and_store_no_answer(logged: Kaixu) -> None:
    raw = openai_client(logged).embeddings.with_raw_response.create(model="text-embedding-3-small", input=TEXT)
    row = ledger_row(logged, raw.headers["x-request-id"])
    assert row["prompt_sha256"] == canonical_sha256({"input": TEXT})
    assert row["prompt"] is not None and EMAIL not in row["prompt"] and row["answer"] is None


def test_a_request_without_a_body_has_no_hash(logged: Kaixu) -> None:
    response = httpx.get(logged.url + "/v1/models/gpt-4o-mini", headers={"authorization": f"Bearer {TEST_KEY}"})
    assert response.status_code == 200
    refused = httpx.post(logged.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []})
    assert refused.status_code == 401
    assert ledger_row(logged, refused.headers["x-request-id"])["prompt_sha256"] is None


# --- the rules themselves, on a policy as `build_policy` compiles it ------------------------------------------


def content_rules(**content: Any) -> Any:
    policy = parse_policy(
        json.dumps(
            {
                "providers": {"oai": {"kind": "openai", "api_key": "up-key-without-a-shape-123"}},
                "ledger": {"content": {"enabled": True, **content}},
            }
        )
    )
    assert policy.ledger.content.redactor is not None
    return policy.ledger.content.redactor


def test_builtin_rules() -> None:
    clean = content_rules().clean
    assert clean("write to a.b@example.com now") == f"write to {REDACTED} now"
    assert clean("cards 4111111111111111, 378282246310005 and 6011 0009 9013 9424") == (
        f"cards {REDACTED}, {REDACTED} and {REDACTED}"
    )  # 16-digit Visa, 15-digit Amex, spaced Discover
    assert clean("ids 4111111111111112 and 12345678901") == "ids 4111111111111112 and 12345678901"
    assert clean("x-api-key: abcdef123456 and Bearer abc.def.ghi") == f"{REDACTED} and {REDACTED}"
    assert clean("AIza" + "x" * 30) == REDACTED


def test_provider_keys_are_removed_even_with_the_builtin_rules_off() -> None:
    clean = content_rules(builtin_redactions=False, redact=["(?i)secret-\\w+"]).clean
    assert clean("a.b@example.com up-key-without-a-shape-123 Secret-Sauce") == (
        f"a.b@example.com [redacted] {REDACTED}"
    )
    assert clean("my own key byok-key-123456", "byok-key-123456") == "my own key [redacted]"
    assert "sk-" not in clean("sk-" + "z" * 20)  # credential shapes too: secrets never reach the ledger


def test_luhn() -> None:
    assert luhn("4111111111111111") and luhn("79927398713") and not luhn("79927398710")


def test_disabled_content_compiles_nothing() -> None:
    policy = parse_policy(json.dumps({"providers": {"m": {"kind": "mock"}}, "ledger": {"retention_days": 7}}))
    assert policy.ledger.content.redactor is None and not policy.ledger.content.enabled
    assert prompt_sha256("openai", {"model": "m"}) is None  # no prompt field: no hash


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-test", "gemini-test"])
def test_streamed_answers_are_stored_redacted(logged: Kaixu, model: str) -> None:
    """The stream step collects the answer's text as it streams (pass-through and translated alike)."""
    stream = openai_client(logged).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": TEXT}], stream=True
    )
    request_id = stream.headers["x-request-id"]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream.parse() if chunk.choices)
    assert EMAIL in text  # the client's stream is untouched
    row = ledger_row(logged, request_id)
    assert_redacted(row)
    assert row["answer"].startswith("echo: mail [REDACTED]")
