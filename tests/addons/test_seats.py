"""Seats (kaixu/addons/seat_limits.py, docs/keys.md#seats) through a real kaixu: a key or a customer with `seats: N`
needs `x-kaixu-install-id`, admits N installs, refuses the next one and revoked ones (`kaixu seats revoke`,
seen within 2 seconds), in the shape of each front door (openai and anthropic SDKs, Gateway 13's gateway-chat).
The fake provider records what it was sent: a refusal must leave it with no request."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import Alone
from tests.fakes.provider import FakeProvider
from tests.harness import Kaixu, key_hash, policy_for, wait_for

SEATED, PLAIN = "sk-seated", "sk-plain-seats"
HI = [{"role": "user", "content": "hi"}]
GW13 = "/.netlify/functions/gateway-chat"


@pytest.fixture(scope="module")
def gateway(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    work = tmp_path_factory.mktemp("seats")
    policy = policy_for(fake.base_url, store={"sqlite": str(work / "store.sqlite")},
                        customers={"acme": {"seats": 2}, "default": {"seats": 1}, "unbound": {}})  # fmt: skip
    policy["keys"] += [
        {"name": "seated", "hash": key_hash(SEATED), "seats": 3},
        {"name": "plain", "hash": key_hash(PLAIN)},
    ]
    kaixu = Kaixu(work, policy).start()
    yield kaixu
    kaixu.stop()


def oai(gateway: Kaixu, key: str, install: str | None = None) -> openai.OpenAI:
    headers = {} if install is None else {"x-kaixu-install-id": install}
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, default_headers=headers)


def chat(gateway: Kaixu, key: str, install: str | None = None, **body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    if install is not None:
        headers["x-kaixu-install-id"] = install
    return httpx.post(gateway.url + "/v1/chat/completions", headers=headers,
                      json={"model": "gpt-4o-mini", "messages": HI, **body})  # fmt: skip


def seats_cli(gateway: Kaixu, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kaixu", "seats", *args, str(gateway.policy_path)],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip


def test_a_key_with_seats_needs_an_install_id(gateway: Kaixu, fake: FakeProvider) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oai(gateway, SEATED).chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    assert refused.value.status_code == 400
    body: Any = refused.value.body
    assert body["code"] == "install_id_required"
    assert body["message"].startswith("this key requires an x-kaixu-install-id header")
    malformed = chat(gateway, SEATED, "bad id;drop")
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "invalid_install_id"
    assert chat(gateway, SEATED, "x" * 129).status_code == 400
    assert fake.requests == []
    assert chat(gateway, PLAIN).status_code == 200  # no seats: no install id needed


def test_three_installs_then_the_fourth_is_refused_and_the_admitted_ones_still_work(
    gateway: Kaixu, fake: FakeProvider
) -> None:
    for n in range(3):
        answer = oai(gateway, SEATED, f"laptop-{n}").chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "echo: hi"
    fake.clear()
    with pytest.raises(openai.PermissionDeniedError) as refused:
        oai(gateway, SEATED, "laptop-3").chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    body: Any = refused.value.body
    assert body["code"] == "seat_limit_reached" and body["type"] == "permission_error"
    assert "3 installs" in body["message"] and "laptop" not in body["message"]  # N, never the other installs
    assert chat(gateway, SEATED, "laptop-3").status_code == 403  # refused again (from the cache)
    assert fake.requests == []
    for n in (0, 2, 1):
        assert chat(gateway, SEATED, f"laptop-{n}").status_code == 200


def test_a_revoked_install_is_refused_within_two_seconds_and_frees_its_seat(gateway: Kaixu) -> None:
    for n in range(3):
        assert chat(gateway, SEATED, f"laptop-{n}").status_code == 200  # (the seats of the previous test)
    listed = seats_cli(gateway, "list", "--key", "seated")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[1] for line in listed.stdout.splitlines()[1:]] == ["laptop-0", "laptop-1", "laptop-2"]
    revoked = seats_cli(gateway, "revoke", "--key", "seated", "laptop-1")
    assert revoked.returncode == 0, revoked.stderr
    start = time.monotonic()
    wait_for(lambda: chat(gateway, SEATED, "laptop-1").status_code == 403, 2, "the revocation to be seen")
    assert time.monotonic() - start < 2
    refused = chat(gateway, SEATED, "laptop-1").json()["error"]
    assert refused["code"] == "install_revoked" and refused["type"] == "permission_error"
    assert chat(gateway, SEATED, "laptop-0").status_code == 200
    assert chat(gateway, SEATED, "laptop-3").status_code == 200  # the freed seat
    assert chat(gateway, SEATED, "laptop-4").json()["error"]["code"] == "seat_limit_reached"
    states = seats_cli(gateway, "list", "--key", "seated", "--json")
    assert '"state": "revoked"' in states.stdout and states.stdout.count('"state": "active"') == 3


def test_customer_seats_follow_the_body_user_and_the_default(gateway: Kaixu, fake: FakeProvider) -> None:
    assert chat(gateway, PLAIN, "phone-a", user="acme").status_code == 200
    assert chat(gateway, PLAIN, "phone-b", user="acme").status_code == 200
    full = chat(gateway, PLAIN, "phone-c", user="acme")
    assert full.status_code == 403 and full.json()["error"]["code"] == "seat_limit_reached"
    assert "this customer" in full.json()["error"]["message"] and "2 installs" in full.json()["error"]["message"]
    missing = chat(gateway, PLAIN, user="acme")
    assert missing.status_code == 400 and missing.json()["error"]["message"].startswith("this customer requires")
    # a customer not named: customers.default.seats (1), each customer its own
    assert chat(gateway, PLAIN, "phone-a", user="bob").status_code == 200
    assert chat(gateway, PLAIN, "phone-b", user="bob").status_code == 403
    assert chat(gateway, PLAIN, "phone-b", user="carol").status_code == 200
    # the x-kaixu-customer header names the customer too; a named customer without seats is unbound
    header = {"authorization": f"Bearer {PLAIN}", "x-kaixu-customer": "acme", "x-kaixu-install-id": "phone-z"}
    response = httpx.post(gateway.url + "/v1/chat/completions", headers=header,
                          json={"model": "gpt-4o-mini", "messages": HI})  # fmt: skip
    assert response.status_code == 403
    assert chat(gateway, PLAIN, user="unbound").status_code == 200
    listed = seats_cli(gateway, "list", "--customer", "acme")
    assert [line.split()[1] for line in listed.stdout.splitlines()[1:]] == ["phone-a", "phone-b"]


def test_the_refusals_in_the_anthropic_and_gateway13_shapes(gateway: Kaixu, fake: FakeProvider) -> None:
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=SEATED, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as missing:
        claude.messages.create(model="claude-test", max_tokens=20, messages=HI)  # type: ignore[arg-type]
    body: Any = missing.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("this key requires an x-kaixu-install-id header")
    with pytest.raises(anthropic.PermissionDeniedError) as full:
        claude.messages.create(model="claude-test", max_tokens=20, messages=HI,  # type: ignore[arg-type]
                               extra_headers={"x-kaixu-install-id": "tablet-9"})  # fmt: skip
    assert full.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    assert "seats: 3" in full.value.body["error"]["message"]  # type: ignore[index]
    gw13 = {"provider": "openai", "model": "gpt-4o-mini", "messages": HI, "max_tokens": 20}
    headers = {"authorization": f"Bearer {SEATED}", "x-kaixu-app": "demo"}
    response = httpx.post(gateway.url + GW13, json=gw13, headers=headers)
    assert response.status_code == 400
    assert response.json() == {"error": response.json()["error"], "code": "install_id_required",
                               "request_id": response.headers["x-kaixu-request-id"]}  # fmt: skip
    response = httpx.post(gateway.url + GW13, json=gw13, headers={**headers, "x-kaixu-install-id": "laptop-1"})
    assert response.status_code == 403 and response.json()["code"] == "install_revoked"
    response = httpx.post(gateway.url + GW13, json=gw13, headers={**headers, "x-kaixu-install-id": "laptop-0"})
    assert response.status_code == 200 and response.json()["telemetry"] == {"install_id": "laptop-0"}
    assert len(fake.requests) == 1


def test_an_unreadable_store_fails_closed(fake: FakeProvider, tmp_path: Path, alone: Alone) -> None:
    policy = policy_for(fake.base_url, store={"sqlite": str(tmp_path / "store.sqlite")})
    policy["keys"].append({"name": "seated", "hash": key_hash(SEATED), "seats": 3})
    kaixu = Kaixu(tmp_path, policy).start()
    try:
        with alone():  # a known install is served from seats read less than 5 s ago (kaixu polls every second)
            assert chat(kaixu, SEATED, "known").status_code == 200
            for name in ("store.sqlite", "store.sqlite-wal", "store.sqlite-shm"):
                if (tmp_path / name).exists():
                    (tmp_path / name).write_bytes(b"this is not a database " * 100)
            assert chat(kaixu, SEATED, "known").status_code == 200  # a known install costs no store query
        refused = chat(kaixu, SEATED, "new-install")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "seat_store_unavailable"
        # a known install keeps working only while the store's version can be read: then 503 too
        wait_for(lambda: chat(kaixu, SEATED, "known").status_code == 503, 10, "cached seats to go stale")
    finally:
        kaixu.stop()
    assert "seat store unavailable: cannot" in kaixu.log()


async def test_two_replicas_on_one_store_share_the_seats_and_the_revocations(
    fake: FakeProvider, tmp_path: Path
) -> None:
    import asyncio

    policy = policy_for(fake.base_url, store={"sqlite": str(tmp_path / "store.sqlite")})
    policy["keys"].append({"name": "seated", "hash": key_hash(SEATED), "seats": 3})
    replicas = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        replicas.append(Kaixu(tmp_path / name, policy).start())
    try:
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {SEATED}"}) as client:

            async def call(n: int) -> int:
                response = await client.post(
                    replicas[n % 2].url + "/v1/chat/completions",
                    json={"model": "gpt-4o-mini", "messages": HI},
                    headers={"x-kaixu-install-id": f"device-{n}"},
                )
                return response.status_code

            statuses = await asyncio.gather(*(call(n) for n in range(12)))
            assert sorted(statuses) == [200] * 3 + [403] * 9
            admitted = [n for n, status in enumerate(statuses) if status == 200]
            # each admitted install works on the other replica too, and is the one revoked there
            for n in admitted:
                other = replicas[(n + 1) % 2]
                response = await client.post(other.url + "/v1/chat/completions",
                                             json={"model": "gpt-4o-mini", "messages": HI},
                                             headers={"x-kaixu-install-id": f"device-{n}"})  # fmt: skip
                assert response.status_code == 200
        revoked = seats_cli(replicas[0], "revoke", "--key", "seated", f"device-{admitted[0]}")
        assert revoked.returncode == 0, revoked.stderr
        device = f"device-{admitted[0]}"
        wait_for(lambda: all(chat(r, SEATED, device).status_code == 403 for r in replicas), 2,
                 "the revocation on every replica")  # fmt: skip
    finally:
        for replica in replicas:
            replica.stop()
