"""The ledger through a kaixu process: what a client sends can neither stop it nor put a key in it. (The store
and the ledger on their own, with a locked, removed or missing database, are in tests/store/test_store.py.)"""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import httpx

from tests.fakes.provider import FakeProvider
from tests.harness import TEST_KEY, Kaixu, policy_for, wait_for

WRONG_KEY = "sk-not-a-key-of-this-gateway"


def chat(url: str, key: str = TEST_KEY) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
    return httpx.post(url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})


def ledger_rows(path: Path, columns: str = "request_id, key_name, model, status") -> list[tuple[object, ...]]:
    """The ledger as another process sees it (read-only; nothing yet while the file does not exist)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute(f"SELECT {columns} FROM requests ORDER BY ts").fetchall()
    except sqlite3.OperationalError:
        return []


def test_an_unencodable_model_from_an_unauthenticated_client_does_not_stop_the_ledger(
    fake: FakeProvider, workdir: Path
) -> None:
    gateway = Kaixu(workdir, policy_for(fake.base_url, store={"sqlite": "ledger.db"})).start()
    try:
        # A JSON-escaped lone surrogate: valid JSON, a str Python holds, but not UTF-8 that SQLite can store.
        bad = httpx.post(
            gateway.url + "/v1/chat/completions",
            content=b'{"model":"\\ud800","messages":[]}',
            headers={"content-type": "application/json"},
        )
        assert bad.status_code == 401
        # The body of an unauthenticated request is never parsed, but a model in a Gemini path is read from
        # the request head: a raw non-UTF-8 byte there becomes a lone surrogate in Python's str.
        with socket.create_connection((gateway.host, gateway.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1beta/models/m\xff:generateContent HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
            )
            raw_path = sock.recv(65536)
        assert raw_path.startswith(b"HTTP/1.1 400 ")
        raw_id = raw_path.partition(b"x-request-id: ")[2].partition(b"\r\n")[0].decode()
        wrong_key = chat(gateway.url, key=WRONG_KEY)
        assert wrong_key.status_code == 401
        good = chat(gateway.url)
        assert good.status_code == 200
        db = workdir / "ledger.db"
        wait_for(lambda: len(ledger_rows(db)) == 4, 10, "the four requests in the ledger")
        assert ledger_rows(db) == [
            (bad.headers["x-request-id"], None, None, 401),
            (raw_id, None, "m\\udcff", 400),
            (wrong_key.headers["x-request-id"], None, None, 401),  # not parsed before auth
            (good.headers["x-request-id"], "test", "gpt-4o-mini", 200),
        ]
        everything = repr(ledger_rows(db, "*"))
        assert TEST_KEY not in everything and WRONG_KEY not in everything  # key names only, never keys
        wait_for(lambda: gateway.health()["store"]["ok"] is True, 10, "the store to report ok")
        store = gateway.health()["store"]
        assert (store["degraded"], store["queued_records"], store["dropped_records"], store["escaped_records"]) == (
            False, 0, 0, 1
        )  # fmt: skip
        metrics = httpx.get(gateway.url + "/metrics").text
        assert "kaixu_ledger_queue_depth 0.0" in metrics and "kaixu_ledger_escaped_records_total 1.0" in metrics
        assert "kaixu_ledger_dropped_records_total 0.0" in metrics
    finally:
        gateway.stop()
