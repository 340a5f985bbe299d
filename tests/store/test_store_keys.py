"""Store keys (docs/keys.md): made with `kaixu keys create` (a subprocess, as an operator runs it) against the
policy's store while kaixu runs, used with the official openai SDK and httpx, revoked and expired. The store is
the SQLite file or PostgreSQL (a schema of its own, tests/pg.py): the `gateway` fixture runs on both.

The keys are created after kaixu started: kaixu picks them up from its once-a-second snapshot, so each test
polls (with a deadline) for the first answer that is not the 401 of an unknown key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests import pg
from tests.fakes.provider import FakeProvider
from tests.harness import TEST_KEY, Kaixu, ledger_row, policy_for, wait_for

PEPPER = "test-pepper-0123456789abcdef"


def cli(work: Path, *args: str, pepper: str | None = PEPPER) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KAIXU_KEY_PEPPER"}
    if pepper is not None:
        env["KAIXU_KEY_PEPPER"] = pepper
    return subprocess.run(
        [sys.executable, "-m", "kaixu", "keys", *args, str(work / "proxy.yaml")],
        cwd=work, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def create(work: Path, name: str, *args: str) -> str:
    done = cli(work, "create", "--name", name, *args)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("sk-kaixu-") and "\n" not in key
    return key


def chat(kaixu: Kaixu, key: str, model: str = "gpt-4o-mini") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(kaixu.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})


def code(response: httpx.Response) -> str | None:
    return response.json().get("error", {}).get("code")


def until(kaixu: Kaixu, key: str, predicate: object, what: str, timeout: float = 10) -> httpx.Response:
    """The first answer for `key` that `predicate` accepts, polled with a deadline."""
    seen: list[httpx.Response] = []

    def check() -> bool:
        seen.append(chat(kaixu, key))
        return bool(predicate(seen[-1]))  # type: ignore[operator]

    wait_for(check, timeout, what)
    return seen[-1]


DSN: dict[Path, str] = {}
"""A gateway's PostgreSQL dsn, by its workdir (absent: its store is ledger.db)."""


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gateway(
    request: pytest.FixtureRequest, fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kaixu]:
    work = tmp_path_factory.mktemp("store-keys")
    with contextlib.ExitStack() as stack:
        store: dict[str, Any] = {"sqlite": "ledger.db"}
        if request.param == "postgres":
            DSN[work] = stack.enter_context(pg.own_schema())
            store = {"postgres": {"dsn": DSN[work]}}
        kaixu = Kaixu(work, policy_for(fake.base_url, store=store), env={"KAIXU_KEY_PEPPER": PEPPER}).start()
        yield kaixu
        kaixu.stop()


def stored(gateway: Kaixu, sql: str) -> list[tuple[Any, ...]]:
    """Rows of the gateway's store, read as another process would."""
    dsn = DSN.get(gateway.workdir)
    if dsn is not None:
        return asyncio.run(pg.fetch(dsn, sql))
    with sqlite3.connect(gateway.workdir / "ledger.db") as db:
        return db.execute(sql).fetchall()


def ledgered(gateway: Kaixu, request_id: str) -> dict[str, Any]:
    """The request's ledger row once written, from whichever store."""
    dsn = DSN.get(gateway.workdir)
    if dsn is None:
        return ledger_row(gateway, request_id)
    sql = f"SELECT key_name, team, customer FROM requests WHERE request_id = '{request_id}'"
    wait_for(lambda: stored(gateway, sql), 10, f"ledger record {request_id}")
    return dict(zip(("key_name", "team", "customer"), stored(gateway, sql)[0], strict=True))


def test_a_created_key_works_with_the_sdk_and_is_ledgered_by_name(gateway: Kaixu) -> None:
    key = create(gateway.workdir, "web-app", "--team", "growth", "--customer", "acme")
    until(gateway, key, lambda r: r.status_code == 200, "the new key to be accepted")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
    )
    assert raw.parse().choices[0].message.content
    row = ledgered(gateway, raw.headers["x-request-id"])
    assert (row["key_name"], row["team"], row["customer"]) == ("web-app", "growth", "acme")
    assert key not in gateway.log()


def test_the_models_restriction_applies(gateway: Kaixu) -> None:
    key = create(gateway.workdir, "mini-only", "--models", "gpt-4o-mini")
    until(gateway, key, lambda r: r.status_code == 200, "the new key to be accepted")
    refused = chat(gateway, key, "claude-test")
    assert refused.status_code == 403, refused.text
    assert "mini-only" in refused.json()["error"]["message"]


def test_a_revoked_key_is_refused_within_two_seconds(gateway: Kaixu) -> None:
    key = create(gateway.workdir, "to-revoke")
    until(gateway, key, lambda r: r.status_code == 200, "the new key to be accepted")
    done = cli(gateway.workdir, "revoke", "to-revoke")
    assert done.returncode == 0, done.stderr
    revoked_at = time.monotonic()
    answer = until(gateway, key, lambda r: r.status_code == 401, "the revoked key to be refused", timeout=2)
    assert time.monotonic() - revoked_at < 2
    assert code(answer) == "revoked_api_key"
    assert "revoked" in answer.json()["error"]["message"]
    # The openai SDK meets the same 401; the policy's keys keep working.
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert chat(gateway, TEST_KEY).status_code == 200


def test_an_expired_key_is_refused_as_expired(gateway: Kaixu) -> None:
    key = create(gateway.workdir, "short-lived", "--expires", "3s")
    first = until(gateway, key, lambda r: r.status_code != 401 or code(r) != "invalid_api_key", "the key to load")
    assert first.status_code in (200, 401), first.text
    answer = until(gateway, key, lambda r: r.status_code == 401, "the key to expire")
    assert code(answer) == "expired_api_key"
    assert "expired" in answer.json()["error"]["message"]
    # The Anthropic front door answers in its own shape.
    anthropic = httpx.post(
        gateway.url + "/v1/messages",
        json={"model": "claude-test", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": key},
    )
    assert anthropic.status_code == 401
    assert anthropic.json()["type"] == "error" and "expired" in anthropic.json()["error"]["message"]


def test_list_and_show_never_print_secrets_or_hashes(gateway: Kaixu) -> None:
    key = create(gateway.workdir, "listed", "--team", "t1", "--expires", "2099-01-01")
    ((digest,),) = stored(gateway, "SELECT hmac FROM keys WHERE name = 'listed'")
    everything = " ".join(str(v) for row in stored(gateway, "SELECT * FROM keys") for v in row)
    assert key not in everything  # only the HMAC is stored
    listed = cli(gateway.workdir, "list")
    as_json = cli(gateway.workdir, "list", "--json")
    shown = cli(gateway.workdir, "show", "listed")
    for done in (listed, as_json, shown):
        assert done.returncode == 0, done.stderr
        for secret in (key, digest, digest[:16]):
            assert secret not in done.stdout + done.stderr
    assert "listed" in listed.stdout and "t1" in listed.stdout
    entry = next(k for k in json.loads(as_json.stdout) if k["name"] == "listed")
    assert entry["expires"].startswith("2099-01-02") and entry["state"] == "active"
    assert json.loads(shown.stdout)["team"] == "t1"


def test_create_refuses_the_name_of_a_policy_key(gateway: Kaixu, tmp_path: Path) -> None:
    """`test` is a key of the policy: a store key named so would share its ledger rows and `/api/costs/test`."""
    refused = cli(gateway.workdir, "create", "--name", "test")
    assert refused.returncode == 1 and refused.stdout == "", refused.stdout
    assert "kaixu: " in refused.stderr and "'test'" in refused.stderr and "policy" in refused.stderr, refused.stderr
    assert "test" not in {k["name"] for k in json.loads(cli(gateway.workdir, "list", "--json").stdout)}
    # the same with the store named by --db: the policy's keys are still read
    env = {**os.environ, "KAIXU_KEY_PEPPER": PEPPER}
    by_file = subprocess.run(
        [sys.executable, "-m", "kaixu", "keys", "create", "--name", "limited", "--db", str(tmp_path / "keys.db"),
         str(gateway.workdir / "proxy.yaml")], env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert by_file.returncode == 1 and "'limited'" in by_file.stderr and by_file.stdout == "", by_file.stderr
    assert not (tmp_path / "keys.db").exists()


def test_without_a_pepper_no_key_is_created_and_store_keys_are_refused(
    fake: FakeProvider, tmp_path: Path, gateway: Kaixu
) -> None:
    refused = cli(gateway.workdir, "create", "--name", "no-pepper", pepper=None)
    assert refused.returncode == 1 and "KAIXU_KEY_PEPPER is not set" in refused.stderr
    assert refused.stdout == ""
    # A kaixu started without the pepper on a store that holds keys: one warning, and the keys get the 401
    # of an unknown key (nothing is looked up without the pepper).
    kaixu = Kaixu(tmp_path, policy_for(fake.base_url, store={"sqlite": "ledger.db"}), env={"KAIXU_KEY_PEPPER": ""})
    key = create(tmp_path, "stored")
    kaixu.start()
    try:
        wait_for(lambda: "KAIXU_KEY_PEPPER is not set" in kaixu.log(), 10, "the warning")
        answer = chat(kaixu, key)
        assert answer.status_code == 401 and code(answer) == "invalid_api_key"
        assert chat(kaixu, TEST_KEY).status_code == 200
        assert kaixu.log().count("KAIXU_KEY_PEPPER") == 1 and key not in kaixu.log()
    finally:
        kaixu.stop()


def test_every_change_to_the_keys_moves_the_version_the_proxy_polls(tmp_path: Path) -> None:
    """The proxy reads the whole `keys` table only when `keys_version` moved (kaixu/addons/store_keys.py): every kind
    of change must move it, including an edit made with another tool."""
    from kaixu.store.keys import SqliteKeyStore, StoredKey

    store = SqliteKeyStore(str(tmp_path / "k.db"))
    with store._db(create=True):
        pass
    seen = [store.version()]
    store.create(StoredKey("a", "h1", None, None, (), time.time(), None, None))
    seen.append(store.version())
    store.rotate("a", "h2", time.time(), 60)
    seen.append(store.version())
    store.revoke("a", time.time())
    seen.append(store.version())
    db = sqlite3.connect(tmp_path / "k.db")  # an operator's own edit
    with db:
        db.execute("DELETE FROM keys")
    db.close()
    seen.append(store.version())
    assert seen == [0, 1, 2, 3, 4]


def test_a_store_keys_governance_fields_reach_its_virtual_key() -> None:
    from kaixu.config.policy import Budget, RateLimits
    from kaixu.store.keys import StoredKey

    key = StoredKey("g", "h", None, None, (), 1.0, None, None, budget_usd_micros=12_500_000, rpm=60, seats=3)
    virtual = key.virtual()
    assert (virtual.budget, virtual.limits, virtual.seats) == (Budget(12_500_000, "month"), RateLimits(60), 3)
    weekly = StoredKey("w", "h", None, None, (), 1.0, None, None, budget_usd_micros=1, budget_period="week")
    assert weekly.virtual().budget == Budget(1, "week") and weekly.virtual().limits is None
