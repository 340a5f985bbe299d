"""Store keys over the admin API (`/api/keys`: list, create, revoke) and `kaixu keys rotate`, on a real kaixu
(docs/keys.md, docs/admin-api.md): keys made over HTTP are used with the official openai SDK, revoked keys
and rotated-away secrets are refused within the snapshot's two seconds (polled with a deadline)."""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from kaixu.store.keys import SqliteKeyStore
from tests.fakes.provider import FakeProvider
from tests.harness import TEST_KEY, Kaixu, key_hash, policy_for
from tests.store.test_store_keys import PEPPER, chat, cli, code, until

ADMIN_KEY = "sk-admin-keys-test"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def admin_policy(fake: FakeProvider) -> dict[str, Any]:
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"})
    policy["admin_keys"] = [{"name": "ops", "hash": key_hash(ADMIN_KEY)}]
    return policy


@pytest.fixture(scope="module")
def gateway(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    kaixu = Kaixu(tmp_path_factory.mktemp("api-keys"), admin_policy(fake), env={"KAIXU_KEY_PEPPER": PEPPER}).start()
    yield kaixu
    kaixu.stop()


def post(kaixu: Kaixu, body: object, headers: dict[str, str] = ADMIN) -> httpx.Response:
    return httpx.post(kaixu.url + "/api/keys", json=body, headers=headers)


def created(kaixu: Kaixu, name: str, **fields: Any) -> str:
    answer = post(kaixu, {"name": name, **fields})
    assert answer.status_code == 201, answer.text
    assert answer.headers["cache-control"] == "no-store"
    key = answer.json()["key"]
    assert key.startswith("sk-kaixu-")
    return str(key)


def accepted(kaixu: Kaixu, key: str) -> None:
    until(kaixu, key, lambda r: r.status_code == 200, "the key to be accepted")


def stored_digests(kaixu: Kaixu) -> list[str]:
    with sqlite3.connect(kaixu.workdir / "ledger.db") as db:
        return [v for row in db.execute("SELECT hmac, previous_hmac FROM keys") for v in row if v]


def test_a_key_created_over_the_api_works_with_the_sdk_and_is_listed_without_secrets(gateway: Kaixu) -> None:
    answer = post(gateway, {"name": "api-web", "team": "growth", "customer": "acme", "models": ["gpt-4o*"],
                            "expires": "30d"})  # fmt: skip
    assert answer.status_code == 201, answer.text
    body = answer.json()
    key = body["key"]
    assert (body["object"], body["name"], body["team"], body["customer"]) == ("key", "api-web", "growth", "acme")
    assert body["models"] == ["gpt-4o*"] and body["state"] == "active" and body["expires"] > body["created"]
    accepted(gateway, key)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    assert reply.choices[0].message.content
    assert chat(gateway, key, "claude-test").status_code == 403  # the models restriction applies

    listed = httpx.get(gateway.url + "/api/keys", headers=ADMIN)
    assert listed.status_code == 200, listed.text
    entry = next(k for k in listed.json()["keys"] if k["name"] == "api-web")
    assert entry["team"] == "growth" and entry["state"] == "active" and "key" not in entry
    for secret in (key, *stored_digests(gateway)):
        assert secret not in listed.text and secret[:16] not in listed.text
        assert secret not in gateway.log()
    # The CLI sees the same key.
    assert "api-web" in cli(gateway.workdir, "list").stdout


def test_create_refusals_name_the_field(gateway: Kaixu) -> None:
    created(gateway, "taken")
    conflict = post(gateway, {"name": "taken"})
    assert conflict.status_code == 409 and code(conflict) == "key_exists", conflict.text
    for body, field in (
        ({"team": "t"}, "name"),
        ({"name": "bad name!"}, "name"),
        ({"name": "ok", "models": "gpt-4o"}, "models"),
        ({"name": "ok", "team": 7}, "team"),
        ({"name": "ok", "expires": "2001-01-01"}, "expires"),
        ({"name": "ok", "expires": "soon"}, "expires"),
        ({"name": "ok", "seats": 0}, "seats"),  # a field since the governance fields: at least 1
    ):
        answer = post(gateway, body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["param"] == field, answer.text
        assert field in answer.json()["error"]["message"]
    for raw in (b"", b"[1]", b"{not json"):
        answer = httpx.post(
            gateway.url + "/api/keys", content=raw, headers={**ADMIN, "content-type": "application/json"}
        )
        assert answer.status_code == 400 and code(answer) in ("empty_body", "invalid_json"), answer.text
    assert "ok" not in {k["name"] for k in httpx.get(gateway.url + "/api/keys", headers=ADMIN).json()["keys"]}
    # A gzip body is decompressed (within limits.max_body_bytes) like a model request's.
    packed = gzip.compress(json.dumps({"name": "gzipped"}).encode())
    answer = httpx.post(gateway.url + "/api/keys", content=packed,
                        headers={**ADMIN, "content-type": "application/json", "content-encoding": "gzip"})  # fmt: skip
    assert answer.status_code == 201 and answer.json()["name"] == "gzipped", answer.text


def test_a_store_key_may_not_take_a_policy_keys_name(gateway: Kaixu) -> None:
    """`test` and `limited` are keys of the policy (`keys:`): a store key of the same name would make its
    requests indistinguishable in the ledger and `/api/costs/NAME`, so it is refused as an existing name is."""
    for name in ("test", "limited"):
        conflict = post(gateway, {"name": name})
        assert conflict.status_code == 409 and code(conflict) == "key_exists", conflict.text
        assert "policy" in conflict.json()["error"]["message"]
    listed = httpx.get(gateway.url + "/api/keys", headers=ADMIN).json()["keys"]
    assert not {"test", "limited"} & {k["name"] for k in listed}
    refused = cli(gateway.workdir, "create", "--name", "limited")
    assert refused.returncode != 0 and refused.stdout == "", refused.stdout
    assert "'limited'" in refused.stderr and "policy" in refused.stderr, refused.stderr
    assert not {"test", "limited"} & {k["name"] for k in json.loads(cli(gateway.workdir, "list", "--json").stdout)}


def test_delete_revokes_within_two_seconds(gateway: Kaixu) -> None:
    key = created(gateway, "api-revoked")
    accepted(gateway, key)
    deleted = httpx.delete(gateway.url + "/api/keys/api-revoked", headers=ADMIN)
    revoked_at = time.monotonic()
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["state"] == "revoked" and deleted.json()["revoked"]
    answer = until(gateway, key, lambda r: r.status_code == 401, "the revoked key to be refused", timeout=2)
    assert time.monotonic() - revoked_at < 2
    assert code(answer) == "revoked_api_key"
    missing = httpx.delete(gateway.url + "/api/keys/no-such-key", headers=ADMIN)
    assert missing.status_code == 404 and code(missing) == "unknown_key", missing.text
    assert chat(gateway, TEST_KEY).status_code == 200


def test_rotate_keeps_the_old_secret_for_the_grace_period(gateway: Kaixu) -> None:
    first = created(gateway, "rotating")
    accepted(gateway, first)
    done = cli(gateway.workdir, "rotate", "--grace", "1h", "rotating")
    assert done.returncode == 0, done.stderr
    second = done.stdout.strip()
    assert second.startswith("sk-kaixu-") and second != first
    accepted(gateway, second)
    assert chat(gateway, first).status_code == 200  # in its grace period: both work
    shown = json.loads(cli(gateway.workdir, "show", "rotating").stdout)
    assert shown["state"] == "active" and shown["previous_secret_until"]
    for secret in (first, second):
        assert secret not in json.dumps(shown) and secret not in gateway.log()

    # Rotated again with a tiny grace: the secret rotated away first stops at once (a key has at most two
    # working secrets), the second is refused as rotated once its second is over.
    done = cli(gateway.workdir, "rotate", "--grace", "1s", "rotating")
    assert done.returncode == 0, done.stderr
    third = done.stdout.strip()
    accepted(gateway, third)
    answer = until(gateway, second, lambda r: r.status_code == 401, "the rotated-away secret to be refused")
    assert code(answer) == "rotated_api_key" and "rotated" in answer.json()["error"]["message"]
    assert code(chat(gateway, first)) == "invalid_api_key"
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=third, max_retries=0)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    # Unknown and revoked keys cannot be rotated.
    assert cli(gateway.workdir, "rotate", "no-such-key").returncode == 1
    assert httpx.delete(gateway.url + "/api/keys/rotating", headers=ADMIN).status_code == 200
    refused = cli(gateway.workdir, "rotate", "rotating")
    assert refused.returncode == 1 and "revoked" in refused.stderr and refused.stdout == ""


@pytest.mark.parametrize("method, path", [("GET", "/api/keys"), ("POST", "/api/keys"),
                                          ("DELETE", "/api/keys/taken")])  # fmt: skip
def test_only_an_admin_key_may_manage_keys(gateway: Kaixu, method: str, path: str) -> None:
    body = {"name": "by-a-client"} if method == "POST" else None
    missing = httpx.request(method, gateway.url + path, json=body)
    assert missing.status_code == 401 and code(missing) == "missing_admin_key", missing.text
    client = httpx.request(method, gateway.url + path, json=body, headers={"authorization": f"Bearer {TEST_KEY}"})
    assert client.status_code == 403 and code(client) == "not_an_admin_key", client.text
    names = {k["name"] for k in httpx.get(gateway.url + "/api/keys", headers=ADMIN).json()["keys"]}
    assert "by-a-client" not in names


def test_wrong_methods_are_405_with_allow(gateway: Kaixu) -> None:
    put = httpx.put(gateway.url + "/api/keys", headers=ADMIN, json={})
    assert put.status_code == 405 and put.headers["allow"] == "GET, POST", put.text
    get_one = httpx.get(gateway.url + "/api/keys/taken", headers=ADMIN)
    assert get_one.status_code == 405 and get_one.headers["allow"] == "DELETE", get_one.text


def test_without_a_pepper_creating_is_503(fake: FakeProvider, tmp_path: Path) -> None:
    kaixu = Kaixu(tmp_path, admin_policy(fake), env={"KAIXU_KEY_PEPPER": ""}).start()
    try:
        answer = post(kaixu, {"name": "no-pepper"})
        assert answer.status_code == 503 and code(answer) == "key_pepper_missing", answer.text
        assert "KAIXU_KEY_PEPPER" in answer.json()["error"]["message"]
        listed = httpx.get(kaixu.url + "/api/keys", headers=ADMIN)
        assert listed.status_code == 200 and listed.json()["keys"] == []
    finally:
        kaixu.stop()


def test_a_keys_table_from_before_rotation_gains_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE keys (name TEXT PRIMARY KEY, hmac TEXT NOT NULL UNIQUE, team TEXT, customer TEXT, "
                   "models TEXT NOT NULL DEFAULT '[]', created REAL NOT NULL, expires REAL, revoked REAL)")  # fmt: skip
        db.execute("INSERT INTO keys (name, hmac, created) VALUES ('old', 'aa', 1.0)")
    store = SqliteKeyStore(str(path))
    assert [k.name for k in store.all()] == ["old"]
    assert store.rotate("old", "bb", time.time(), 60)
    snapshot = store.snapshot()
    assert snapshot["bb"].state(time.time()) == "active" and snapshot["aa"].superseded
    assert snapshot["aa"].state(time.time()) == "active" and snapshot["aa"].state(time.time() + 61) == "rotated"
    # ... and the governance columns: NULL for the old key (no budget, limits or seats)
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(keys)")}
    assert {"budget_usd_micros", "budget_period", "rpm", "tpm", "max_parallel", "seats"} <= columns
    old = store.get("old")
    assert old is not None and (old.virtual().budget, old.virtual().limits, old.virtual().seats) == (None, None, None)


def test_a_body_over_the_limit_is_413(gateway: Kaixu) -> None:
    big = b'{"name": "big", "team": "' + b"x" * 5_242_880 + b'"}'  # over the default limits.max_body_bytes
    answer = httpx.post(gateway.url + "/api/keys", content=big, headers={**ADMIN, "content-type": "application/json"})
    assert answer.status_code == 413 and code(answer) == "request_too_large", answer.text[:300]


def test_governance_fields_over_the_api(gateway: Kaixu) -> None:
    body = {"name": "api-capped", "budget": {"usd": 0.1, "period": "week"}, "limits": {"rpm": 60, "tpm": 1000},
            "seats": 2}  # fmt: skip
    answer = post(gateway, body)
    assert answer.status_code == 201, answer.text
    shown = answer.json()
    assert shown["budget"] == {"usd": "0.100000", "usd_micros": 100_000, "period": "week"}
    assert shown["limits"] == {"rpm": 60, "tpm": 1000, "max_parallel": None} and shown["seats"] == 2
    listed = {k["name"]: k for k in httpx.get(gateway.url + "/api/keys", headers=ADMIN).json()["keys"]}
    assert listed["api-capped"]["budget"]["usd_micros"] == 100_000
    for bad, param in (
        ({"budget": {"usd": 0.0000001}}, "budget.usd"),
        ({"budget": {"usd": 5, "period": "year"}}, "budget.period"),
        ({"limits": {"rpm": 0}}, "limits.rpm"),
        ({"limits": {"burst": 1}}, "limits"),
        ({"seats": True}, "seats"),
    ):
        refused = post(gateway, {"name": "api-bad", **bad})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
