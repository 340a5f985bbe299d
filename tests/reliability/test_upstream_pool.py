"""Upstream connections: a client that opens a connection per request does not make kaixu open one to the provider
per request (kaixu/reliability/serve.py sends a client connection's first buffered request on the executor's
pooled connections), and its answers are the ones mitmproxy's own forwarding gives (a kept-alive connection's
next requests). Against a TLS fake provider, whose accepted connections are its TLS handshakes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.provider import FakeProvider, Fault
from tests.harness import TEST_KEY, Kaixu, ledger_row, policy_for
from tests.tls import make_tls_files

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 5}
AUTH = {"authorization": f"Bearer {TEST_KEY}"}
# what differs between any two answers, whichever way they went
VARYING = {"x-kaixu-request-id", "x-request-id", "date"}


@pytest.fixture(scope="module")
def tls_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeProvider, Path]]:
    ca_file, context = make_tls_files(tmp_path_factory.mktemp("tls"))
    with FakeProvider(ssl_context=context) as fake:
        yield fake, ca_file


@pytest.fixture(scope="module")
def gateway(tls_fake: tuple[FakeProvider, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    fake, ca_file = tls_fake
    work = tmp_path_factory.mktemp("pool")
    policy = policy_for(fake.base_url, tls={"ca_file": str(ca_file)}, store={"sqlite": str(work / "ledger.db")})
    kaixu = Kaixu(work, policy).start()
    yield kaixu
    kaixu.stop()


def headers(answer: httpx.Response) -> dict[str, str]:
    """An answer's headers but those that differ between any two answers (ids, times)."""
    return {k: re.sub(r";ms=[\d.]+", "", v) for k, v in answer.headers.items() if k not in VARYING}


def ledgered(row: dict[str, Any]) -> dict[str, Any]:
    """A ledger record but its id, time and latency."""
    return {k: v for k, v in row.items() if k not in ("request_id", "ts", "latency_ms")}


def one_shot(gateway: Kaixu, body: dict[str, Any] = BODY, **headers: str) -> httpx.Response:
    """A request on a connection of its own, closed after it (a client created per request)."""
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        return client.post("/v1/chat/completions", json=body, headers={**AUTH, **headers})


def test_a_connection_per_request_costs_no_upstream_handshake_per_request(
    gateway: Kaixu, tls_fake: tuple[FakeProvider, Path]
) -> None:
    fake, _ = tls_fake
    one_shot(gateway).raise_for_status()  # the pool holds its connection now
    before = fake.connections
    answers = [one_shot(gateway) for _ in range(4)] + [one_shot(gateway, connection="close") for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 8
    assert all(a.json()["choices"][0]["message"]["content"] == "echo: hi there" for a in answers)
    assert fake.connections - before == 0, "eight one-shot clients, sequentially: the pool's one connection"


def test_a_kept_alive_client_still_has_one_upstream_connection(
    gateway: Kaixu, tls_fake: tuple[FakeProvider, Path]
) -> None:
    fake, _ = tls_fake
    one_shot(gateway).raise_for_status()
    before = fake.connections
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for _ in range(6):
            client.post("/v1/chat/completions", json=BODY, headers=AUTH).raise_for_status()
    # the first on the pool's connection, the next five on the one mitmproxy opens and keeps for this client
    assert fake.connections - before == 1


def test_a_pooled_answer_is_the_one_mitmproxy_forwards(gateway: Kaixu) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        pooled = client.post("/v1/chat/completions", json=BODY, headers=AUTH)  # a connection's first: the pool
        forwarded = client.post("/v1/chat/completions", json=BODY, headers=AUTH)  # mitmproxy's, kept alive
    for answer in (pooled, forwarded):
        assert answer.status_code == 200
    assert pooled.reason_phrase == forwarded.reason_phrase
    assert headers(pooled) == headers(forwarded)
    shape = [{k: v for k, v in a.json().items() if k not in ("id", "created")} for a in (pooled, forwarded)]
    assert shape[0] == shape[1]
    rows = [ledger_row(gateway, a.headers["x-kaixu-request-id"]) for a in (pooled, forwarded)]
    for row in rows:
        assert row["status"] == 200 and row["cost_micros"] == 3 and row["usage_source"] == "provider"
    assert [ledgered(row) for row in rows[:1]] == [ledgered(row) for row in rows[1:]]


def test_a_provider_error_is_passed_on_as_mitmproxy_passes_it(
    gateway: Kaixu, tls_fake: tuple[FakeProvider, Path]
) -> None:
    fake, _ = tls_fake
    fake.add_fault(Fault(status=429, retry_after=7, times=2, path_contains="/chat/completions"))
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        pooled = client.post("/v1/chat/completions", json=BODY, headers=AUTH)
        forwarded = client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    assert pooled.status_code == forwarded.status_code == 429
    assert pooled.headers["retry-after"] == forwarded.headers["retry-after"] == "7"
    assert headers(pooled) == headers(forwarded)
    assert pooled.json()["error"] == forwarded.json()["error"]


def test_an_unreachable_provider_is_the_same_502_either_way(gateway: Kaixu) -> None:
    dead = {**BODY, "model": "dead-model"}
    pooled = one_shot(gateway, dead)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        client.post("/v1/chat/completions", json=BODY, headers=AUTH).raise_for_status()  # the pool's turn
        forwarded = client.post("/v1/chat/completions", json=dead, headers=AUTH)  # mitmproxy's
    assert pooled.status_code == forwarded.status_code == 502
    errors = [a.json()["error"] for a in (pooled, forwarded)]
    assert errors[0] == errors[1]
    assert errors[0]["code"] == "upstream_connect_error"
    assert errors[0]["message"].startswith("provider 'dead' is unreachable (")
    rows = [ledgered(ledger_row(gateway, a.headers["x-kaixu-request-id"])) for a in (pooled, forwarded)]
    assert rows[0] == rows[1]


def test_a_silent_provider_is_the_same_504_either_way(gateway: Kaixu, tls_fake: tuple[FakeProvider, Path]) -> None:
    fake, _ = tls_fake
    fake.add_fault(Fault(latency_ms=3000, path_contains="/chat/completions"))  # upstream_timeout_s is 2
    pooled = one_shot(gateway)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        client.post("/v1/chat/completions", json=BODY, headers=AUTH).raise_for_status()  # the pool's turn
        fake.add_fault(Fault(latency_ms=3000, path_contains="/chat/completions"))
        forwarded = client.post("/v1/chat/completions", json=BODY, headers=AUTH)  # mitmproxy's
    assert pooled.status_code == forwarded.status_code == 504
    errors = [a.json()["error"] for a in (pooled, forwarded)]
    assert errors[0] == errors[1]
    assert errors[0]["message"] == "provider 'oai' did not answer within 2 s"
    rows = [ledgered(ledger_row(gateway, a.headers["x-kaixu-request-id"])) for a in (pooled, forwarded)]
    # the ledger's error is each client's own words: mitmproxy's "server closed connection" (kaixu's timer closed
    # it), the pooled client's TimeoutError
    assert (rows[0].pop("error"), rows[1].pop("error")) == ("TimeoutError", "server closed connection")
    assert rows[0] == rows[1]
