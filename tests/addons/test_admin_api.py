"""The admin API (`/api/costs`, `/api/costs/{key_name}`, `/api/prompt-log`, `/api/requests`) on a real kaixu:
who may call it, and that its numbers are the ledger's, written by real requests through the mock provider
(priced, so costs are not zero) and checked against the rows themselves and the cost headers clients got."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from kaixu.pricing import usd
from kaixu.store import LedgerRecord, SqliteLedgerStore
from kaixu.store.postgres import PostgresLedgerStore
from tests import pg
from tests.fakes.provider import FakeProvider
from tests.harness import TEST_KEY, UPSTREAM_KEYS, Kaixu, key_hash, ledger_row, policy_for, wait_for

ADMIN_KEY = "sk-admin-test"
GROWTH_KEY = "sk-growth"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
DIMENSION_COLUMNS = {
    "key": "key_name", "team": "team", "user": "user_id", "project": "project", "app": "app", "client": "client",
    "model": "model", "provider": "provider", "customer": "customer",
}  # fmt: skip
SUMMED = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_micros",
)
LONG_PROMPT = "Please summarise this: " + "lorem ipsum " * 40
OLD_TS = 1_000_000_000.0  # 2001: the records written before kaixu started


def old_record(request_id: str, ts: float, **fields: Any) -> LedgerRecord:
    values: dict[str, Any] = {
        "request_id": request_id, "ts": ts, "front": "openai", "operation": "chat", "key_name": "test",
        "team": "legacy", "model": "mini", "provider": "mock", "upstream_model": "gpt-4o-mini", "status": 200,
        "stream": 0, "input_tokens": 1000, "output_tokens": 500, "cached_input_tokens": 0, "latency_ms": 12.5,
        "error": None, "attributes": None, "cost_micros": 450, "usage_source": "provider",
    }  # fmt: skip
    values.update(fields)
    return LedgerRecord(**values)


@dataclass
class Traffic:
    gateway: Kaixu
    dsn: str | None
    """The PostgreSQL ledger's dsn; None: the ledger is the gateway's SQLite file (ledger.db)."""
    started: float
    ids: list[str]
    header_costs: dict[str, int]
    """Request id -> the cost the client was told (X-Cost-USD, or the SSE comment of a stream), micro-dollars."""
    refused_id: str


def micros(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 1_000_000 + int(frac.ljust(6, "0"))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def traffic(
    request: pytest.FixtureRequest, fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Traffic]:
    """The same traffic, and so the same answers, with the ledger in SQLite and in PostgreSQL."""
    with contextlib.ExitStack() as stack:
        dsn = stack.enter_context(pg.own_schema()) if request.param == "postgres" else None
        yield from _traffic(fake, tmp_path_factory, dsn)


def _traffic(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory, dsn: str | None) -> Iterator[Traffic]:
    workdir = tmp_path_factory.mktemp("admin")
    before = [  # two records from before: content stored (previews), and long ago (time filters)
        old_record("old-1", OLD_TS, prompt=LONG_PROMPT, answer="short answer", prompt_sha256="ab" * 32),
        old_record("old-2", OLD_TS + 60, key_name="growth", team="growth", cost_micros=None, unpriced=1),
    ]
    if dsn is None:
        store = SqliteLedgerStore(str(workdir / "ledger.db"))
        store.open()
        store.write(before)
        store.close()
    else:
        asyncio.run(_seed_postgres(dsn, before))
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"} if dsn is None else {"postgres": {"dsn": dsn}})
    policy["models"].update({
        "mini": {"route": [{"provider": "mock", "model": "gpt-4o-mini"}]},
        "haiku": {"route": [{"provider": "mock", "model": "claude-3-5-haiku-latest"}]},
    })  # fmt: skip
    policy["teams"] = {"growth": {}}
    policy["keys"].append({"name": "growth", "hash": key_hash(GROWTH_KEY), "team": "growth"})
    policy["admin_keys"] = [{"name": "ops", "hash": key_hash(ADMIN_KEY)}]
    gateway = Kaixu(workdir, policy).start()
    started = time.time()
    ids: list[str] = []
    costs: dict[str, int] = {}

    def chat(key: str, model: str, headers: dict[str, str], stream: bool = False) -> None:
        body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": f"Hello {len(ids)}"}]}
        sent = {"authorization": f"Bearer {key}", **headers}
        response = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=sent)
        assert response.status_code == 200, response.text
        request_id = response.headers["x-request-id"]
        ids.append(request_id)
        if stream:
            match = re.search(r"^: kaixu-cost-usd=(\S+)$", response.text, re.M)
            assert match, response.text
            cost = match[1]
        else:
            cost = response.headers.get("x-cost-usd", "unknown")
        if cost != "unknown":
            costs[request_id] = micros(cost)

    who = {
        "x-kaixu-user": "u1",
        "x-kaixu-project": "p1",
        "x-kaixu-app": "a1",
        "x-kaixu-client": "c1",
        "x-kaixu-customer": "acme",
    }
    chat(TEST_KEY, "mini", who)
    chat(TEST_KEY, "haiku", who)
    chat(GROWTH_KEY, "mini", {"x-kaixu-user": "u2", "x-kaixu-project": "p2", "x-kaixu-app": "a2"})
    chat(GROWTH_KEY, "haiku", {"x-kaixu-user": "u2", "x-kaixu-project": "p1"}, stream=True)
    chat(TEST_KEY, "mock-model", {"x-kaixu-user": "u1"})  # the mock's own model has no price: unpriced
    pulse = httpx.post(gateway.url + "/api/ai/request", headers={"x-pulse-key": TEST_KEY},
                       json={"model": "mini", "prompt": "Hi", "teamId": "T-pulse", "projectId": "P-pulse"})  # fmt: skip
    assert pulse.status_code == 200, pulse.text
    ids.append(pulse.headers["x-request-id"])
    costs[ids[-1]] = micros(pulse.headers["x-cost-usd"])
    refused = httpx.post(gateway.url + "/v1/chat/completions", headers={"authorization": "Bearer sk-wrong"},
                         json={"model": "mini", "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert refused.status_code == 401
    ids.append(refused.headers["x-request-id"])
    traffic = Traffic(gateway, dsn, started, ids, costs, ids[-1])
    for request_id in ids:
        written(traffic, request_id)
    yield traffic
    gateway.stop()


async def _seed_postgres(dsn: str, records: list[LedgerRecord]) -> None:
    store = PostgresLedgerStore(dsn, 1)
    await store.open()
    await store.write(records)
    await store.close()


def rows(traffic: Traffic, since: float | None = None) -> list[dict[str, Any]]:
    if traffic.dsn is None:
        path = traffic.gateway.workdir / "ledger.db"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            found = [dict(r) for r in db.execute("SELECT rowid, * FROM requests ORDER BY ts DESC, rowid DESC")]
    else:
        found = asyncio.run(_pg_rows(traffic.dsn))
    return [r for r in found if since is None or r["ts"] >= since]


async def _pg_rows(dsn: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await connection.fetch("SELECT * FROM requests ORDER BY ts DESC, id DESC")]
    finally:
        await connection.close()


def written(traffic: Traffic, request_id: str) -> None:
    """Waits for the batched writer to have stored the request's record, in whichever ledger."""
    if traffic.dsn is None:
        ledger_row(traffic.gateway, request_id)
        return
    wait_for(lambda: any(r["request_id"] == request_id for r in rows(traffic)), 10, f"ledger record {request_id}")


def expected_groups(records: list[dict[str, Any]], column: str) -> dict[str | None, dict[str, Any]]:
    """What the API must say, summed here from the raw rows: a sum nobody reported stays None."""
    groups: dict[str | None, dict[str, Any]] = {}
    for r in records:
        g = groups.setdefault(r[column], {"requests": 0, "unpriced_requests": 0, **dict.fromkeys(SUMMED)})
        g["requests"] += 1
        g["unpriced_requests"] += r["unpriced"] or 0
        for name in SUMMED:
            if r[name] is not None:
                g[name] = (g[name] or 0) + r[name]
    for g in groups.values():
        g["cost_usd"] = None if g["cost_micros"] is None else usd(g["cost_micros"])
        # the same amount as a number a JavaScript client can add (`total + cost_usd` would concatenate)
        g["cost_usd_number"] = None if g["cost_micros"] is None else g["cost_micros"] / 1_000_000
    return groups


def api(traffic: Traffic, path: str, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
    return httpx.get(traffic.gateway.url + path, params=params, headers=ADMIN if headers is None else headers)


def ok(traffic: Traffic, path: str, **params: Any) -> dict[str, Any]:
    response = api(traffic, path, **params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


# -- who may call it -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/costs", "/api/costs/test", "/api/prompt-log", "/api/requests"])
def test_only_an_admin_key_may_read(traffic: Traffic, path: str) -> None:
    missing = api(traffic, path, headers={})
    assert missing.status_code == 401, missing.text
    assert missing.json()["error"]["code"] == "missing_admin_key"
    assert missing.headers["x-request-id"] == missing.json()["request_id"]
    for key in (TEST_KEY, GROWTH_KEY, "sk-unknown", UPSTREAM_KEYS["openai"]):
        refused = api(traffic, path, headers={"authorization": f"Bearer {key}"})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "not_an_admin_key"
    assert api(traffic, path).status_code == 200
    assert api(traffic, path, headers={"x-api-key": ADMIN_KEY}).status_code == 200  # any credential header


def test_an_admin_key_is_not_a_client_key_and_admin_reads_are_not_in_the_ledger(traffic: Traffic) -> None:
    chat = httpx.post(traffic.gateway.url + "/v1/chat/completions", headers=ADMIN,
                      json={"model": "mini", "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert chat.status_code == 401
    admin_read = api(traffic, "/api/costs")
    written(traffic, chat.headers["x-request-id"])  # written after the admin read was answered
    ids = {r["request_id"] for r in rows(traffic)}
    assert admin_read.headers["x-request-id"] not in ids
    traffic.ids.append(chat.headers["x-request-id"])


def test_wrong_method_and_unknown_admin_paths(traffic: Traffic) -> None:
    post = httpx.post(traffic.gateway.url + "/api/costs", headers=ADMIN, json={})
    assert post.status_code == 405 and post.headers["allow"] == "GET"
    assert api(traffic, "/api/nothing").status_code == 404  # not claimed: the chain's 404


def test_no_secret_in_any_answer(traffic: Traffic) -> None:
    secrets = [ADMIN_KEY, TEST_KEY, GROWTH_KEY, *UPSTREAM_KEYS.values(), key_hash(ADMIN_KEY)[7:]]
    for path in ("/api/costs", "/api/costs/test", "/api/prompt-log", "/api/requests"):
        text = api(traffic, path).text
        assert not [s for s in secrets if s in text], path


# -- costs -----------------------------------------------------------------------------------------------


def test_costs_by_key_are_the_ledgers_and_what_clients_were_told(traffic: Traffic) -> None:
    body = ok(traffic, "/api/costs", **{"from": str(traffic.started - 1)})
    assert body["object"] == "costs" and body["group_by"] == "key" and body["currency"] == "USD"
    recent = rows(traffic, traffic.started - 1)
    groups = {g["group"]: {k: v for k, v in g.items() if k != "group"} for g in body["groups"]}
    assert groups == expected_groups(recent, "key_name")
    told = sum(traffic.header_costs.values())
    assert told > 0 and body["total"]["cost_micros"] == told  # header money == ledger money == API money
    assert body["total"]["cost_usd"] == usd(told)
    assert body["total"]["requests"] == len(recent)
    assert body["total"]["unpriced_requests"] == 1  # mock-model
    assert groups[None]["requests"] >= 1 and groups[None]["cost_micros"] is None  # the refused request
    costs = [g["cost_micros"] for g in body["groups"]]
    known = [c for c in costs if c is not None]
    assert known == sorted(known, reverse=True) and costs[: len(known)] == known  # most expensive first


@pytest.mark.parametrize("dimension", list(DIMENSION_COLUMNS))
def test_costs_group_by_every_dimension(traffic: Traffic, dimension: str) -> None:
    body = ok(traffic, "/api/costs", group_by=dimension)
    groups = {g.pop("group"): g for g in body["groups"]}
    assert groups == expected_groups(rows(traffic), DIMENSION_COLUMNS[dimension])
    assert body["group_count"] == len(groups)


def test_costs_group_values_come_from_keys_headers_and_pulse_bodies(traffic: Traffic) -> None:
    teams = {g["group"] for g in ok(traffic, "/api/costs", group_by="team")["groups"]}
    assert {"growth", "T-pulse", "legacy"} <= teams
    users = {g["group"] for g in ok(traffic, "/api/costs", group_by="user")["groups"]}
    assert {"u1", "u2"} <= users


def test_costs_time_filters(traffic: Traffic) -> None:
    everything = ok(traffic, "/api/costs")["total"]
    before = ok(traffic, "/api/costs", to="2001-09-09T01:47:00Z")["total"]  # just after old-1, before old-2
    assert before["requests"] == 1 and before["cost_micros"] == 450
    old = ok(traffic, "/api/costs", **{"from": "2001-09-09", "to": "2001-09-09"})  # that whole day
    assert old["total"]["requests"] == 2 and old["from"] == "2001-09-09T00:00:00.000Z"
    assert old["to"] == "2001-09-10T00:00:00.000Z"  # a date as `to` includes that day
    recent = ok(traffic, "/api/costs", **{"from": f"{traffic.started - 1:.3f}"})["total"]
    assert recent["requests"] + old["total"]["requests"] <= everything["requests"]
    assert recent["requests"] == len(rows(traffic, traffic.started - 1))
    future = ok(traffic, "/api/costs", **{"from": str(int(time.time()) + 3600)})
    assert future["groups"] == [] and future["total"]["requests"] == 0 and future["total"]["cost_micros"] is None


def test_costs_pulse_filters(traffic: Traffic) -> None:
    body = ok(traffic, "/api/costs", group_by="model", teamId="T-pulse", projectId="P-pulse")
    assert body["filters"] == {"team": "T-pulse", "project": "P-pulse"}
    assert [(g["group"], g["requests"]) for g in body["groups"]] == [("mini", 1)]
    pulse_id = traffic.ids[5]
    assert body["total"]["cost_micros"] == traffic.header_costs[pulse_id] > 0
    by_model = ok(traffic, "/api/costs", group_by="user", model="haiku")
    expected = expected_groups([r for r in rows(traffic) if r["model"] == "haiku"], "user_id")
    assert {g.pop("group"): g for g in by_model["groups"]} == expected
    none = ok(traffic, "/api/costs", teamId="growth", projectId="P-pulse")
    assert none["groups"] == []


def test_cost_of_one_key(traffic: Traffic) -> None:
    body = ok(traffic, "/api/costs/growth")
    assert body["object"] == "key_cost" and body["key_name"] == "growth"
    expected = expected_groups(rows(traffic), "key_name")["growth"]
    assert {k: body[k] for k in expected} == expected
    recent = ok(traffic, "/api/costs/growth", **{"from": str(traffic.started - 1)})
    assert recent["requests"] == expected["requests"] - 1  # without old-2
    assert recent["cost_micros"] == sum(traffic.header_costs[i] for i in traffic.ids[2:4]) > 0
    assert ok(traffic, "/api/costs/limited")["requests"] == 0  # a key of the policy that made no request
    unknown = api(traffic, "/api/costs/no-such-key")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_key"


# -- prompt log and requests ---------------------------------------------------------------------------------


def test_prompt_log_newest_first_with_previews_only_when_stored(traffic: Traffic) -> None:
    body = ok(traffic, "/api/prompt-log", limit=3)
    assert body["object"] == "prompt_log" and body["limit"] == 3
    newest = rows(traffic)[:3]
    assert [e["request_id"] for e in body["entries"]] == [r["request_id"] for r in newest]
    first = body["entries"][0]
    assert set(first) >= {"time", "ts", "key_name", "model", "status", "input_tokens", "output_tokens",
                          "cost_micros", "cost_usd", "prompt_preview", "answer_preview"}  # fmt: skip
    everything = ok(traffic, "/api/prompt-log", limit=1000)["entries"]
    old = next(e for e in everything if e["request_id"] == "old-1")
    assert old["prompt_preview"] == LONG_PROMPT[:200] + "…" and old["answer_preview"] == "short answer"
    assert old["prompt_sha256"] == "ab" * 32 and old["cost_usd"] == "0.000450"
    assert all(e["prompt_preview"] is None for e in everything if not e["request_id"].startswith("old-"))
    assert everything[-1]["request_id"] == "old-1"


def test_requests_shape(traffic: Traffic) -> None:
    body = ok(traffic, "/api/requests", limit=1000)
    assert body["object"] == "requests" and body["order"] == "desc" and body["next_cursor"] is None
    records = body["records"]
    assert [r["request_id"] for r in records] == [r["request_id"] for r in rows(traffic)]
    first = next(r for r in records if r["request_id"] == traffic.ids[0])
    assert first["key_name"] == "test" and first["user_id"] == "u1" and first["app"] == "a1"
    assert first["cost_micros"] == traffic.header_costs[traffic.ids[0]] and first["cost_usd"] == usd(
        first["cost_micros"]
    )  # fmt: skip
    assert first["attributes"]["user"] == "u1" and "prompt" not in first and "answer" not in first
    assert first["time"].endswith("Z")


def test_requests_cursor_paging_covers_every_record_once(traffic: Traffic) -> None:
    for order in ("desc", "asc"):
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 2, "order": order} | ({"cursor": cursor} if cursor else {})
            page = ok(traffic, "/api/requests", **params)
            assert len(page["records"]) <= 2
            seen += [r["request_id"] for r in page["records"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        expected = [r["request_id"] for r in rows(traffic)]
        assert seen == (expected if order == "desc" else expected[::-1])


def test_requests_offset_paging(traffic: Traffic) -> None:
    expected = [r["request_id"] for r in rows(traffic)]
    page = ok(traffic, "/api/requests", limit=3, offset=2)
    assert [r["request_id"] for r in page["records"]] == expected[2:5] and page["offset"] == 2


def test_requests_filters(traffic: Traffic) -> None:
    refused = ok(traffic, "/api/requests", status=401)["records"]
    assert traffic.refused_id in {r["request_id"] for r in refused} and {r["status"] for r in refused} == {401}
    growth = ok(traffic, "/api/requests", key_name="growth")["records"]
    assert [r["request_id"] for r in growth] == [r["request_id"] for r in rows(traffic) if r["key_name"] == "growth"]
    streamed = ok(traffic, "/api/requests", teamId="growth", model="haiku", **{"from": str(traffic.started)})
    assert [r["request_id"] for r in streamed["records"]] == [traffic.ids[3]] and streamed["records"][0]["stream"]
    assert ok(traffic, "/api/requests", user="nobody")["records"] == []


@pytest.mark.parametrize(
    ("path", "params", "name"),
    [
        ("/api/costs", {"group_by": "colour"}, "group_by"),
        ("/api/costs", {"group_by": "key_name; DROP TABLE requests"}, "group_by"),
        ("/api/costs", {"from": "yesterday"}, "from"),
        ("/api/costs", {"to": "2026-13-01"}, "to"),
        ("/api/costs", {"from": "2026-02-01", "to": "2026-01-01"}, "to"),
        ("/api/costs", {"limit": "0"}, "limit"),
        ("/api/costs", {"teamId": "a", "team": "b"}, "teamId"),
        ("/api/costs", {"colour": "red"}, "colour"),
        ("/api/costs/test", {"group_by": "team"}, "group_by"),
        ("/api/prompt-log", {"limit": "1001"}, "limit"),
        ("/api/prompt-log", {"limit": "ten"}, "limit"),
        ("/api/prompt-log", {"limit": "-1"}, "limit"),
        ("/api/requests", {"cursor": "not-a-cursor"}, "cursor"),
        ("/api/requests", {"cursor": "MTIzOjQ", "offset": "1"}, "offset"),
        ("/api/requests", {"order": "sideways"}, "order"),
        ("/api/requests", {"status": "abc"}, "status"),
        ("/api/requests", {"offset": "99999999999"}, "offset"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(traffic: Traffic, path: str, params: dict[str, str],
                                                     name: str) -> None:  # fmt: skip
    response = api(traffic, path, **params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter" and error["param"] == name and error["message"].startswith(name)


def test_a_parameter_given_twice_is_400(traffic: Traffic) -> None:
    response = httpx.get(traffic.gateway.url + "/api/requests?limit=1&limit=2", headers=ADMIN)
    assert response.status_code == 400 and response.json()["error"]["param"] == "limit"


def test_a_store_in_memory_is_503(fake: FakeProvider, workdir: Path) -> None:
    policy = policy_for(fake.base_url, admin_keys=[{"name": "ops", "hash": key_hash(ADMIN_KEY)}])
    gateway = Kaixu(workdir, policy).start()
    try:
        response = httpx.get(gateway.url + "/api/costs", headers=ADMIN)
        assert response.status_code == 503 and response.json()["error"]["code"] == "ledger_unavailable"
        assert ":memory:" in response.json()["error"]["message"]
    finally:
        gateway.stop()


def test_without_admin_keys_the_api_is_off(traffic: Traffic, fake: FakeProvider, workdir: Path) -> None:
    gateway = Kaixu(workdir, policy_for(fake.base_url, store={"sqlite": "l.db"})).start()
    try:
        response = httpx.get(gateway.url + "/api/costs", headers={"authorization": f"Bearer {TEST_KEY}"})
        assert response.status_code == 403 and "no admin_keys" in response.json()["error"]["message"]
        assert httpx.get(gateway.url + "/api/costs").status_code == 401
    finally:
        gateway.stop()
