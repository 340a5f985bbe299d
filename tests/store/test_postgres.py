"""kaixu on PostgreSQL (`store.postgres`), end to end, on the real server (a schema of its own per test):
`kaixu keys create` against PostgreSQL, a request with that key through a `kaixu run` proxy to the built-in
mock provider, its ledger row read back from PostgreSQL, revocation refused within 2 s; the governance
fields of a store key; /health naming the store without the password; the admin API's keys; the CLI's ledger
reads on PostgreSQL. (The admin API's ledger reads run on both stores in tests/addons/test_admin_api.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from kaixu.store.keys import StoredKey
from kaixu.store.postgres import PostgresKeyStore, dsn_shown
from tests import pg
from tests.harness import Kaixu, key_hash, wait_for

PEPPER = "test-pepper-0123456789abcdef"
ADMIN_KEY = "sk-admin-pg"


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with pg.own_schema() as dsn:
        yield dsn


def policy(dsn: str) -> dict[str, Any]:
    return {
        "version": 1,
        "listen": [{"host": "127.0.0.1", "port": 0}],
        "store": {"postgres": {"dsn": dsn, "pool_size": 4}},
        "providers": {"mock": {"kind": "mock"}},
        "models": {"mock-model": {"route": [{"provider": "mock"}]}},
        "admin_keys": [{"name": "ops", "hash": key_hash(ADMIN_KEY)}],
    }


def cli(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAIXU_KEY_PEPPER": PEPPER}
    return subprocess.run([sys.executable, "-m", "kaixu", *args, str(work / "proxy.yaml")], cwd=work, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


INSTALL = {"x-kaixu-install-id": "install-1"}
"""The install a seat-bound key's requests name (the CLI key below has `--seats 3`)."""


def chat(gateway: Kaixu, key: str) -> httpx.Response:
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {key}", **INSTALL}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers)


def rows(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return asyncio.run(pg.fetch(dsn, sql, *args))


@pytest.fixture
def gateway(tmp_path: Path, pg_dsn: str) -> Iterator[Kaixu]:
    kaixu = Kaixu(tmp_path, policy(pg_dsn), env={"KAIXU_KEY_PEPPER": PEPPER}).start()
    try:
        yield kaixu
    finally:
        kaixu.stop()


def test_a_cli_key_on_postgres_is_served_ledgered_in_postgres_and_revoked_within_two_seconds(
    gateway: Kaixu, pg_dsn: str
) -> None:
    made = cli(gateway.workdir, "keys", "create", "--name", "web", "--team", "growth", "--budget-usd", "12.5",
               "--rpm", "60", "--seats", "3")  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert dsn_shown(pg_dsn) in made.stderr and key.startswith("sk-kaixu-")
    stored = rows(pg_dsn, "SELECT name, team, budget_usd_micros, budget_period, rpm, seats, hmac FROM keys")
    assert stored[0][:6] == ("web", "growth", 12_500_000, "month", 60, 3) and key not in repr(stored)

    wait_for(lambda: chat(gateway, key).status_code == 200, 10, "the new key to be accepted")
    bare = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "mock-model", "messages": []},
                      headers={"authorization": f"Bearer {key}"})  # fmt: skip
    assert bare.json()["error"]["code"] == "install_id_required", "its seats hold on PostgreSQL too"
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, default_headers=INSTALL)
    raw = client.chat.completions.with_raw_response.create(
        model="mock-model", messages=[{"role": "user", "content": "hello"}]
    )
    assert raw.parse().choices[0].message.content
    request_id = raw.headers["x-request-id"]
    query = "SELECT key_name, team, model, status FROM requests WHERE request_id = $1"
    wait_for(lambda: rows(pg_dsn, query, request_id), 10, "the ledger row in PostgreSQL")
    assert rows(pg_dsn, query, request_id) == [("web", "growth", "mock-model", 200)]
    everything = repr(rows(pg_dsn, "SELECT * FROM requests"))
    assert key not in everything and PEPPER not in everything

    costs = cli(gateway.workdir, "costs", "--json", "--key", "web")  # the polls before it loaded were 401s
    assert costs.returncode == 0, costs.stderr
    assert [(g["group"], g["requests"]) for g in json.loads(costs.stdout)["groups"]] == [("web", 3)]  # and the 400
    logs = cli(gateway.workdir, "logs", "--json", "-n", "1")
    assert logs.returncode == 0, logs.stderr
    assert json.loads(logs.stdout)["request_id"] == request_id
    export = cli(gateway.workdir, "ledger", "export", "--format", "jsonl")
    assert export.returncode == 0, export.stderr
    exported = [json.loads(line) for line in export.stdout.splitlines()]
    assert len(exported) == len(rows(pg_dsn, "SELECT 1 FROM requests"))
    assert [r["request_id"] for r in exported if r["key_name"] == "web"][-1] == request_id

    health = gateway.health()["store"]
    assert (health["kind"], health["location"], health["ok"]) == ("postgres", dsn_shown(pg_dsn), True)

    revoked = cli(gateway.workdir, "keys", "revoke", "web")
    assert revoked.returncode == 0, revoked.stderr
    started = time.monotonic()
    wait_for(lambda: chat(gateway, key).status_code == 401, 2, "the revoked key to be refused")
    assert time.monotonic() - started < 2
    assert chat(gateway, key).json()["error"]["code"] == "revoked_api_key"
    assert key not in gateway.log()


def test_a_postgres_outage_is_a_few_log_lines_each_way(tmp_path: Path, pg_dsn: str) -> None:
    """PostgreSQL goes away under traffic that needs each of its parts (store keys, seats, the ledger, and the job
    runner's poll): each part says so once, not once per request or poll, and once when it is back; kaixu serves
    what it can meanwhile."""
    plug = pg.Plug()
    try:
        settings = policy(plug.dsn(pg_dsn))
        settings["keys"] = [{"name": "plain", "hash": key_hash("sk-plain")}]
        gateway = Kaixu(tmp_path, settings, env={"KAIXU_KEY_PEPPER": PEPPER})  # proxy.yaml, for the CLI
        made = cli(tmp_path, "keys", "create", "--name", "seated", "--seats", "1000")
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        gateway.start()
        try:
            wait_for(lambda: chat(gateway, key).status_code == 200, 10, "the store key")
            seen = len(gateway.log().splitlines())
            plug.pull()
            body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}
            served = 0
            for install in range(40):  # a new install each: a seat claim each
                headers = {"authorization": f"Bearer {key}", "x-kaixu-install-id": f"install-{install}"}
                assert httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers).status_code == 503
                plain = httpx.post(gateway.url + "/v1/chat/completions", json=body,
                                   headers={"authorization": "Bearer sk-plain"})  # fmt: skip
                served += plain.status_code == 200
            assert served == 40, "a policy key needs no store; its ledger records wait"
            wait_for(lambda: gateway.health()["store"]["ok"] is False, 10, "the ledger to notice")
            down = gateway.log().splitlines()[seen:]
            assert len(down) <= 4, "\n".join(down)
            assert any("seat store unavailable" in line for line in down), down

            plug.push()

            def back() -> list[str]:
                return [line for line in gateway.log().splitlines()[seen:] if "available again" in line]

            wait_for(
                lambda: len(back()) == len(down),
                15,
                "every part to say it is back: " + "\n".join(gateway.log().splitlines()[seen:]),
            )
            # what the seats refused (the rest of the 40 were refused earlier, by the key snapshot gone stale)
            assert any("seat store available again" in line and "refused_requests=" in line for line in back())
            assert len(gateway.log().splitlines()[seen:]) == 2 * len(down)
            assert chat(gateway, key).status_code == 200
        finally:
            gateway.stop()
    finally:
        plug.close()


def test_the_cli_lists_shows_and_rotates_keys_kept_in_postgres(tmp_path: Path, pg_dsn: str) -> None:
    Kaixu(tmp_path, policy(pg_dsn))  # writes proxy.yaml only
    made = cli(tmp_path, "keys", "create", "--name", "capped", "--budget-usd", "0.1", "--period", "day",
               "--tpm", "1000", "--max-parallel", "2", "--models", "mock-*")  # fmt: skip
    assert made.returncode == 0, made.stderr
    shown = cli(tmp_path, "keys", "show", "capped")
    assert shown.returncode == 0, shown.stderr
    entry = json.loads(shown.stdout)
    assert entry["budget"] == {"usd": "0.100000", "usd_micros": 100_000, "period": "day"}
    assert entry["limits"] == {"rpm": None, "tpm": 1000, "max_parallel": 2} and entry["seats"] is None
    listed = cli(tmp_path, "keys", "list")
    assert "$0.100000/day" in listed.stdout and "tpm=1000,max_parallel=2" in listed.stdout
    rotated = cli(tmp_path, "keys", "rotate", "--grace", "1h", "capped")
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(cli(tmp_path, "keys", "show", "capped").stdout)["previous_secret_until"] is not None
    assert cli(tmp_path, "keys", "create", "--name", "capped").returncode == 1  # names are unique
    assert cli(tmp_path, "keys", "create", "--name", "x", "--period", "day").returncode == 1  # no budget
    costs = cli(tmp_path, "costs")  # no kaixu has run yet: no ledger table
    assert costs.returncode == 1 and "holds no ledger yet" in costs.stderr and "postgres@" not in costs.stderr


def test_every_change_to_the_keys_moves_the_postgres_version(pg_dsn: str) -> None:
    async def scenario() -> list[int | None]:
        store = PostgresKeyStore(pg_dsn, 2)
        seen = [await store.version()]
        await store.create(StoredKey("a", "h1", None, None, (), time.time(), None, None, seats=2))
        seen.append(await store.version())
        await store.rotate("a", "h2", time.time(), 60)
        seen.append(await store.version())
        await store.revoke("a", time.time())
        seen.append(await store.version())
        await pg.execute(pg_dsn, "DELETE FROM keys")  # an operator's own edit, on another connection
        seen.append(await store.version())
        await store.close()
        return seen

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_the_admin_api_manages_postgres_keys(gateway: Kaixu) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    made = httpx.post(gateway.url + "/api/keys", json={"name": "api-made", "team": "ops"}, headers=admin)
    assert made.status_code == 201, made.text
    listed = httpx.get(gateway.url + "/api/keys", headers=admin).json()["keys"]
    assert [(k["name"], k["team"], k["budget"], k["seats"]) for k in listed] == [("api-made", "ops", None, None)]
    gone = httpx.delete(gateway.url + "/api/keys/api-made", headers=admin)
    assert gone.status_code == 200 and gone.json()["state"] == "revoked"


def test_a_dsn_password_never_shows() -> None:
    shown = dsn_shown("postgresql://kaixu:s3cret-pw@db.internal:6432/ledger?sslmode=require")
    assert shown == "postgresql://db.internal:6432/ledger"
