"""kaixu's provider keys never reach a client, a log line or the ledger, whatever the provider answers.

Real providers quote (part of) the credential they refused in their error text; the fake does it on demand
(``Fault(echo_headers=True)``: the error message lists every request header it got, the key included). Every
error status a client can meet is tried on each provider kind, through the provider's own front door (the
answer passes through), a translated one (the answer is re-encoded) and Kaixu Gateway 13's stream door (the
relay turns the error into an SSE ``error`` event). The client's answer is read as raw bytes, so the status
line and every header are searched, not only the body.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import hostile
from tests.fakes.provider import FakeProvider, Fault
from tests.harness import TEST_KEY, UPSTREAM_KEYS, Kaixu, policy_for, wait_for

STATUSES = (400, 403, 404, 429, 500, 503)
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-test", "gemini": "gemini-test"}
SAME_DOOR = {
    "openai": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "gemini": "/v1beta/models/{model}:generateContent",
}
TRANSLATED_DOOR = {"openai": "/v1/messages", "anthropic": "/v1/chat/completions", "gemini": "/v1/chat/completions"}
STREAM_DOOR = "/.netlify/functions/gateway-stream"


class Ledgered:
    def __init__(self, kaixu: Kaixu, ledger: Path) -> None:
        self.kaixu, self.ledger = kaixu, ledger
        self.host, _, port = kaixu.url.removeprefix("http://").rpartition(":")
        self.port = int(port)

    def rows(self, request_ids: list[str]) -> dict[str, tuple[object, ...]]:
        if not self.ledger.exists():
            return {}
        marks = ",".join("?" * len(request_ids))
        with sqlite3.connect(self.ledger) as db:
            found = db.execute(f"SELECT * FROM requests WHERE request_id IN ({marks})", request_ids).fetchall()
        return {str(row[0]): row for row in found}


@pytest.fixture(scope="module")
def gateway(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledgered]:
    work = tmp_path_factory.mktemp("secrets")
    ledger = work / "ledger.db"
    kaixu = Kaixu(work, policy_for(fake.base_url, store={"sqlite": str(ledger)}), args=("--access-log",)).start()
    yield Ledgered(kaixu, ledger)
    kaixu.stop()


def door_for(path: str) -> hostile.Door:
    front = hostile.fronts_for_path(path.split("?")[0])
    return hostile.Door(path, next(iter(front)), "chat", "POST")


def leaks(where: str, text: str) -> list[str]:
    return [f"{where} contains {name}'s key {key!r}" for name, key in UPSTREAM_KEYS.items() if key in text]


@pytest.mark.parametrize("provider", list(MODELS))
@pytest.mark.parametrize("door", ["same-format", "translated", "gateway-stream"])
def test_provider_errors_never_show_the_provider_key(
    gateway: Ledgered, fake: FakeProvider, provider: str, door: str
) -> None:
    model = MODELS[provider]
    path = {"same-format": SAME_DOOR, "translated": TRANSLATED_DOOR}.get(door, {}).get(provider, STREAM_DOOR)
    path = path.replace("{model}", model)
    log_start = len(gateway.kaixu.log())
    problems: list[str] = []
    request_ids: dict[str, int] = {}
    for status in STATUSES:
        request_id = f"secret-{provider}-{door}-{status}-{uuid.uuid4().hex[:8]}"
        request_ids[request_id] = status
        body = json.dumps(hostile.valid_body(door_for(path), model)).encode()
        headers = [
            ("Host", "x"), ("Authorization", f"Bearer {TEST_KEY}"), ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))), ("x-request-id", request_id), ("Connection", "close"),
        ]  # fmt: skip
        # kaixu forwards no x-fake-* header (its allowlist): the fault is queued on the fake directly
        fake.add_fault(Fault(status=status, echo_headers=True))
        answer = hostile.exchange(gateway.host, gateway.port, hostile.Probe("POST", path, headers, body).encode())
        text = answer.raw.decode("utf-8", "replace")
        if door == "gateway-stream":
            assert answer.status == 200 and "event: error" in text, f"{status}: no SSE error event: {text[:300]}"
        else:
            assert answer.status == status, f"{status}: kaixu answered {answer.status}: {text[:300]}"
        problems += [f"HTTP {status}: {leak}" for leak in leaks("the client's answer", text)]

    def settled() -> bool:
        log = gateway.kaixu.log()[log_start:]
        return all(rid in log for rid in request_ids) and len(gateway.rows(list(request_ids))) == len(request_ids)

    wait_for(settled, 10, "the access log lines and ledger rows of the requests")
    problems += leaks("the kaixu log", gateway.kaixu.log()[log_start:])
    for request_id, row in gateway.rows(list(request_ids)).items():
        problems += [f"HTTP {request_ids[request_id]}: {leak}" for leak in leaks("the ledger row", repr(row))]
    assert not problems, "\n".join(problems)
