"""What a client says about itself (attribution: the `x-kaixu-*` headers, the body's `user` and
`metadata.user_id`, Pulse's `teamId`...) reaches the ledger, so it is text, never control characters: a value
holding one (ESC, CR, NUL, DEL, a C1 control...) or bytes that are not UTF-8 is refused with a 400 naming the
header or field, in the caller's shape, and no ledger row holds it (docs/compatibility.md, "What a client says
about itself").

Headers are sent on raw sockets (tests/hostile.py's client): httpx refuses to send most of these values.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import hostile
from tests.fakes.provider import FakeProvider
from tests.harness import TEST_KEY, Kaixu, ledger_row, policy_for

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
ATTRIBUTION_HEADERS = ("x-kaixu-app", "x-kaixu-build", "x-kaixu-install-id", "x-kaixu-customer", "x-kaixu-user",
                       "x-kaixu-team", "x-kaixu-project", "x-kaixu-client")  # fmt: skip
LEDGER_TEXT = ("key_name", "team", "customer", "user_id", "app", "project", "client", "model", "attributes")
"""The ledger's columns that hold what a client said (`attributes` as JSON, whose values are read too)."""

# a front door per error shape: its path and a correct body
DOORS: dict[str, tuple[str, dict[str, Any]]] = {
    "openai": ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    "anthropic": ("/v1/messages", {"model": "claude-test", "max_tokens": 16,
                                   "messages": [{"role": "user", "content": "hi"}]}),
    "pulse": ("/api/ai/request", {"model": "gpt-4o-mini", "prompt": "hi"}),
}  # fmt: skip


@pytest.fixture(scope="module")
def gateway(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    kaixu = Kaixu(tmp_path_factory.mktemp("attribution"), policy_for(fake.base_url, store={"sqlite": "ledger.db"}))
    kaixu.start()
    yield kaixu
    kaixu.stop()


def error_message(front: str, body: dict[str, Any]) -> str:
    """The message of an error body in the door's own shape (OpenAI, Anthropic, Pulse)."""
    if front == "pulse":
        assert body["success"] is False, body
        return str(body["error"])
    if front == "anthropic":
        assert body["type"] == "error", body
    return str(body["error"]["message"])


def raw_request(gateway: Kaixu, front: str, header: str, value: str) -> tuple[hostile.Answer, str]:
    """One request on a raw socket with `header: value` (its bytes as UTF-8); the answer and its request id."""
    path, body = DOORS[front]
    request_id = f"attribution-{uuid.uuid4()}"
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TEST_KEY}\r\n"
        f"x-request-id: {request_id}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n"
    ).encode() + f"{header}: {value}\r\n\r\n".encode("utf-8", "surrogatepass")
    return hostile.exchange(gateway.host, gateway.port, head + payload), request_id


def assert_no_control_characters(row: dict[str, Any]) -> None:
    for column in LEDGER_TEXT:
        value = row[column]
        texts = [value] if isinstance(value, str) else []
        if column == "attributes" and value:
            texts += [str(v) for v in json.loads(value).values()]
        for text in texts:
            assert not CONTROL.search(text), f"ledger column {column} holds a control character: {text!r}"


@pytest.mark.parametrize("front", list(DOORS))
@pytest.mark.parametrize("header", ATTRIBUTION_HEADERS)
def test_a_control_character_in_an_attribution_header_is_a_400_naming_it(
    gateway: Kaixu, fake: FakeProvider, front: str, header: str
) -> None:
    values = ("red\x1b[31mteam", "nul\x00here", "del\x7f", "bell\x07", "csi\x9b31m", "tab\there", "not-utf8\udcff")
    for value in values:
        answer, request_id = raw_request(gateway, front, header, value)
        assert answer.status == 400, (value, answer.raw[:300])
        body = json.loads(answer.body)
        message = error_message(front, body)
        assert message.startswith(f"{header}: ") and "control character" in message, message
        assert answer.header("x-request-id") == request_id
        assert_no_control_characters(ledger_row(gateway, request_id))
    assert fake.requests == []


@pytest.mark.parametrize("front", list(DOORS))
def test_a_bare_cr_in_an_attribution_header_is_refused(gateway: Kaixu, fake: FakeProvider, front: str) -> None:
    """A CR alone inside a value: refused (a 400 in the caller's shape) however HTTP parsing treats it. A bare CR
    in any header is refused as malformed HTTP before any step reads the request (kaixu/mitm.py, RFC 9112
    section 2.2), so no flow and no ledger row come of it; the ledger as a whole holds no control character."""
    answer, _ = raw_request(gateway, front, "x-kaixu-user", "carriage\rreturn")
    assert answer.status == 400, answer.raw[:300]
    error_message(front, json.loads(answer.body))
    assert hostile.ledger_findings(gateway.workdir / "ledger.db") == []
    assert fake.requests == []


def test_printable_attribution_is_recorded_as_sent(gateway: Kaixu) -> None:
    answer, request_id = raw_request(gateway, "openai", "x-kaixu-user", "Zoë O'Brien (ops) #1")
    assert answer.status == 200, answer.raw[:300]
    assert ledger_row(gateway, request_id)["user_id"] == "Zoë O'Brien (ops) #1"


@pytest.mark.parametrize(
    "front, extra, field",
    [
        ("openai", {"user": "u\x1b[2J"}, "user"),
        ("anthropic", {"metadata": {"user_id": "u\r\nX-Forged: 1"}}, "metadata.user_id"),
        ("pulse", {"teamId": "t\x00"}, "teamId"),
        ("pulse", {"metadata": {"userId": "u\x85"}}, "metadata.userId"),
        ("pulse", {"projectId": "p\u009b1m"}, "projectId"),
        ("openai", {"user": "lone\ud800surrogate"}, "user"),
    ],
)
def test_a_control_character_in_a_body_attribution_field_is_a_400_naming_it(
    gateway: Kaixu, fake: FakeProvider, front: str, extra: dict[str, Any], field: str
) -> None:
    path, body = DOORS[front]
    request_id = f"attribution-{uuid.uuid4()}"
    headers = {"authorization": f"Bearer {TEST_KEY}", "x-request-id": request_id}
    content = json.dumps({**body, **extra}).encode()  # ASCII, escapes as \uXXXX: a lone surrogate too
    answer = httpx.post(gateway.url + path, content=content, headers={**headers, "content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    message = error_message(front, answer.json())
    assert message.startswith(f"{field}: ") and "control character" in message, message
    assert_no_control_characters(ledger_row(gateway, request_id))
    assert fake.requests == []
