"""`kaixu costs`, `kaixu logs` and `kaixu ledger export`, run as users run them (a subprocess), on ledger files
the tests write with kaixu's own store."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaixu.store import LedgerRecord, SqliteLedgerStore
from tests.harness import wait_for

DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def record(request_id: str, ts: float, **fields: Any) -> LedgerRecord:
    values: dict[str, Any] = {
        "request_id": request_id, "ts": ts, "front": "openai", "operation": "chat", "key_name": "web",
        "team": "growth", "model": "gpt-4o-mini", "provider": "openai", "upstream_model": "gpt-4o-mini", "status": 200,
        "stream": 0, "input_tokens": 1200, "output_tokens": 300, "cached_input_tokens": 0, "latency_ms": 840.0,
        "error": None, "attributes": None, "cost_micros": 360, "usage_source": "provider",
    }  # fmt: skip
    values.update(fields)
    return LedgerRecord(**values)


RECORDS = [
    record("r1", T0 + 3600, prompt="what is 2+2?", answer="4"),
    record("r2", T0 + DAY + 60, key_name="batch", team="data", model="claude-3-5-haiku-latest", provider="anthropic",
           input_tokens=10_000, output_tokens=2_000, cost_micros=16_000),
    record("r3", T0 + 2 * DAY, key_name="batch", team="data", cost_micros=1_234_567),
    record("r4", T0 + 3 * DAY, key_name=None, team=None, model="local", status=401, input_tokens=None,
           output_tokens=None, cost_micros=None, error="invalid API key"),
]  # fmt: skip


POLICY = {"version": 1, "store": {"sqlite": "ledger.db"}, "providers": {"mock": {"kind": "mock"}},
          "models": {"m": {"route": [{"provider": "mock"}]}}}  # fmt: skip


def write(path: Path, records: list[LedgerRecord]) -> None:
    store = SqliteLedgerStore(str(path))
    store.open()
    store.write(records)
    store.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    write(path, RECORDS)
    return path


def kaixu(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kaixu", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_costs_table(db: Path) -> None:
    result = kaixu("costs", "--db", str(db))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("costs by key, from the start to now")
    header, *body = lines[1:]
    assert header.split() == ["KEY", "REQUESTS", "INPUT", "OUTPUT", "CACHED", "CACHE", "WRITE", "REASONING", "COST",
                              "USD", "UNPRICED"]  # fmt: skip
    assert [line.split()[0] for line in body] == ["batch", "web", "(none)", "total"]  # most expensive first
    assert body[0].split()[1:4] == ["2", "11,200", "2,300"] and "1.250567" in body[0]
    assert body[-1].split()[1] == "4" and "1.250927" in body[-1]
    assert len({len(line) for line in lines[1:] if "-" not in line}) == 1  # aligned: numbers end in one column
    assert header.index("COST USD") + len("COST USD") == body[0].index("1.250567") + len("1.250567")


def test_costs_by_team_with_a_time_range_as_json(db: Path) -> None:
    result = kaixu("costs", "--db", str(db), "--by", "team", "--from", "2026-01-02", "--to", "2026-01-03", "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["group_by"] == "team" and body["from"] == "2026-01-02T00:00:00.000Z"
    assert body["to"] == "2026-01-04T00:00:00.000Z"  # a date as --to includes that day
    assert [(g["group"], g["requests"], g["cost_micros"], g["cost_usd"]) for g in body["groups"]] == [
        ("data", 2, 1_250_567, "1.250567")
    ]
    filtered = json.loads(kaixu("costs", "--db", str(db), "--by", "model", "--team", "data", "--json").stdout)
    assert [g["group"] for g in filtered["groups"]] == ["gpt-4o-mini", "claude-3-5-haiku-latest"]
    unix = json.loads(kaixu("costs", "--db", str(db), "--from", str(int(T0 + 2 * DAY)), "--json").stdout)
    assert unix["total"]["requests"] == 2


def test_costs_reads_the_policys_store(db: Path, tmp_path: Path) -> None:
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(POLICY))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = kaixu("costs", str(tmp_path / "proxy.yaml"), "--json", cwd=elsewhere)  # relative to the policy
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"]["requests"] == 4
    assert json.loads(kaixu("costs", "--json", cwd=tmp_path).stdout)["total"]["requests"] == 4  # proxy.yaml


def test_clear_messages_without_a_ledger(tmp_path: Path) -> None:
    for command in (["costs"], ["logs"], ["ledger", "export", "--format", "csv"]):
        result = kaixu(*command, "--db", str(tmp_path / "missing.db"))
        assert result.returncode == 1 and result.stdout == ""
        assert f"no ledger at {tmp_path / 'missing.db'}" in result.stderr
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump({**POLICY, "store": {"sqlite": ":memory:"}}))
    memory = kaixu("costs", cwd=tmp_path)
    assert memory.returncode == 1 and "keeps no ledger (store.sqlite is :memory:)" in memory.stderr
    (tmp_path / "proxy.yaml").write_text("version: 1\nlisten: 5\n")
    broken = kaixu("costs", cwd=tmp_path)
    assert broken.returncode == 1 and "--db FILE" in broken.stderr
    bad = kaixu("costs", "--db", str(tmp_path / "x.db"), "--from", "soon")
    assert bad.returncode == 1 and "--from: expected unix seconds or an ISO 8601 date" in bad.stderr


def test_logs_shows_the_newest_records_oldest_first(db: Path) -> None:
    result = kaixu("logs", "--db", str(db), "-n", "2")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split()[:4] == ["TIME", "REQUEST", "ID", "KEY"]
    assert [line.split()[2] for line in lines] == ["r3", "r4"]
    assert lines[0].startswith("2026-01-03 00:00:00.000Z") and "1.234567" in lines[0]
    assert "401" in lines[1] and "-" in lines[1].split()
    as_json = [json.loads(line) for line in kaixu("logs", "--db", str(db), "-n", "4", "--json").stdout.splitlines()]
    assert [r["request_id"] for r in as_json] == ["r1", "r2", "r3", "r4"]
    assert as_json[0]["cost_usd"] == "0.000360" and as_json[0]["time"] == "2026-01-01T01:00:00.000Z"


@pytest.fixture
def follower(db: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    proc = subprocess.Popen([sys.executable, "-m", "kaixu", "logs", "--db", str(db), "-n", "1", "--follow",
                             "--interval", "0.1", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    yield proc, lines
    proc.terminate()
    proc.wait(10)


def test_logs_follow_prints_new_records_as_they_arrive(db: Path, follower: tuple[Any, list[str]]) -> None:
    proc, lines = follower
    wait_for(lambda: len(lines) >= 1, 20, "the newest record")
    assert json.loads(lines[0])["request_id"] == "r4"
    write(db, [record("r5", T0 + 4 * DAY), record("r6", T0 + 4 * DAY + 1)])
    wait_for(lambda: len(lines) >= 3, 20, "the records written while following")
    write(db, [record("r7", T0 + 5 * DAY)])
    wait_for(lambda: len(lines) >= 4, 20, "one more")
    assert [json.loads(line)["request_id"] for line in lines] == ["r4", "r5", "r6", "r7"]
    assert proc.poll() is None


def test_export_csv_and_jsonl(db: Path, tmp_path: Path) -> None:
    result = kaixu("ledger", "export", "--db", str(db), "--format", "csv")
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["request_id"] for r in table] == ["r1", "r2", "r3", "r4"]
    assert table[0]["prompt"] == "what is 2+2?" and table[0]["cost_micros"] == "360" and table[3]["cost_micros"] == ""
    out = tmp_path / "out.jsonl"
    ranged = kaixu("ledger", "export", "--db", str(db), "--format", "jsonl", "--from", "2026-01-02T00:00:00Z",
                   "--to", "2026-01-03", "-o", str(out))  # fmt: skip
    assert ranged.returncode == 0 and ranged.stdout == "" and "2 records" in ranged.stderr
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["request_id"] for r in exported] == ["r2", "r3"]
    assert exported[0]["cost_micros"] == 16_000 and exported[0]["ts"] == T0 + DAY + 60
    assert list(exported[0]) == list(table[0])  # the same columns in both formats


def test_export_pages_through_more_than_one_batch(tmp_path: Path) -> None:
    path = tmp_path / "big.db"
    write(path, [record(f"b{i:05d}", T0 + i) for i in range(2500)])
    result = kaixu("ledger", "export", "--db", str(path), "--format", "jsonl")
    ids = [json.loads(line)["request_id"] for line in result.stdout.splitlines()]
    assert ids == [f"b{i:05d}" for i in range(2500)]
