"""Measure the ledger: how fast the admin API's queries answer over 1M records, and how many records per
second the writer stores.

* Fill: a temporary SQLite ledger made by kaixu's own store (`SqliteLedgerStore.open`: the real schema and
  indexes), then 1M records of 90 days of traffic (50 keys in 10 teams, 1,000 users, 30 projects, 10 apps,
  5 clients, 7 models on 4 providers, 5 % errors, half of them streams; a share of them with stored prompt and
  answer text, as with `ledger.content.enabled`) inserted with `executemany` in batches.
* Queries: each query of the admin API and the CLI, through `kaixu.store.queries.SqliteLedgerQueries` as
  the API runs it (a worker thread, a read-only connection per query), run once to warm up and then
  `--runs` times; the median (and the slowest run) is reported. The page cache is warm: the file was just
  written (a cold first query after a restart reads the index from disk once).
* Writes: records through `kaixu.store.Ledger` and `SqliteLedgerStore`, the proxy's own path (queued, then
  written in batches of 1,000 by a worker thread), into an empty ledger and into the 1M-record one.

Run with ``.venv/bin/python bench/ledger.py`` (about a minute and a half); the table goes to stdout and to
the marked section of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from overhead import machine, update_doc

from kaixu.store import Ledger, LedgerRecord, SqliteLedgerStore
from kaixu.store.queries import COLUMNS, Filters, SqliteLedgerQueries

DOC_BEGIN = "<!-- ledger:begin -->"
DOC_END = "<!-- ledger:end -->"
DOC_PREAMBLE = """## Ledger

`bench/ledger.py` (about two minutes) fills a temporary ledger with 1M realistic records (kaixu's own schema
and indexes; 90 days, 50 keys in 10 teams, 1,000 users, 30 projects, 7 models, 5 % errors, a fifth of the
records with stored prompt and answer text) and times every query of the admin API and the CLI as the API
runs it (`kaixu/store/queries.py`: a worker thread, a read-only connection per query), then the writer's
throughput through `kaixu.store.Ledger` and `SqliteLedgerStore`, the proxy's own path. The target is an
answer in under a second over 1M records for every query. The indexes (`kaixu/store/sqlite.py`) make it hold:

* `requests_costs` (time, the eight dimensions, status, the sums) covers every cost query: a cost query never
  reads the records, however much text they hold. Grouping by a dimension without an index of its own is
  SQLite sorting the 1M index entries: about 0.55-0.6 s, the slowest queries here.
* `requests_key` and `requests_team` (dimension, time, sums) group by key and by team without that sort
  (0.2 s), and answer one key's or one team's spend over a period in milliseconds (what budgets will ask).
* `requests_ts` serves the listings newest first; a filtered listing walks `requests_costs` instead, so a
  record is read only when it matches (a value that matches nothing: 0.08 s instead of 0.5 s).

The indexes cost writes, in the writer's thread: raw `executemany` of 200k of these records into an empty
ledger stores 165k records/s with `requests_ts` alone, 104k with `requests_costs` too, 76k with `requests_key`
and 67k with all four (measured once, while building this), about 9 µs more per record: at the 750 requests/s
one kaixu process serves (above), under 1 % of a core, off the event loop. Through the writer, below. The page
cache is warm (the ledger was just written): a first query after a restart also reads its index from disk."""

DAYS = 90
KEYS = [f"key-{i:02d}" for i in range(50)]
TEAMS = [f"team-{i}" for i in range(10)]
MODELS = [
    ("gpt-4o-mini", "openai", "gpt-4o-mini-2024-07-18", 0.15, 0.60),
    ("gpt-4o", "openai", "gpt-4o-2024-08-06", 2.50, 10.00),
    ("claude-3-5-haiku-latest", "anthropic", "claude-3-5-haiku-20241022", 0.80, 4.00),
    ("claude-sonnet-4", "anthropic", "claude-sonnet-4-20250514", 3.00, 15.00),
    ("gemini-2.5-flash", "gemini", "gemini-2.5-flash", 0.30, 2.50),
    ("gemini-2.5-pro", "gemini", "gemini-2.5-pro", 1.25, 10.00),
    ("fast", "mock", "mock-fast", 0.10, 0.40),
]
FRONTS = ("openai", "openai", "anthropic", "gemini", "pulse", "gateway13")
ERRORS = (400, 401, 404, 429, 499, 500, 502, 504)
PROMPT = "Summarise the attached quarterly report for the board, in five bullet points. " * 6
ANSWER = "Revenue grew by twelve percent over the quarter, driven by the new enterprise tier. " * 8


def fake_rows(count: int, seed: int, content_share: float, start: float, step: float) -> list[tuple[Any, ...]]:
    """`count` ledger rows (tuples in the table's column order), one every `step` seconds from `start`."""
    rnd = random.Random(seed)
    rows = []
    for i in range(count):
        model, provider, upstream, in_price, out_price = rnd.choice(MODELS)
        key = rnd.choice(KEYS)
        ok = rnd.random() < 0.95
        status = 200 if ok else rnd.choice(ERRORS)
        stream = rnd.random() < 0.5
        input_tokens = rnd.randint(20, 8000) if ok else None
        output_tokens = rnd.randint(1, 2000) if ok else None
        cached = rnd.choice((0, 0, 0, 1024, 2048)) if ok and input_tokens and input_tokens > 2048 else 0
        cost = round((input_tokens or 0) * in_price + (output_tokens or 0) * out_price) if ok else None
        with_text = ok and rnd.random() < content_share
        values = {
            "request_id": f"{rnd.getrandbits(128):032x}",
            "ts": start + i * step + rnd.random() * step,
            "front": rnd.choice(FRONTS),
            "operation": "chat",
            "key_name": key,
            "team": TEAMS[KEYS.index(key) % len(TEAMS)],
            "model": model,
            "provider": provider,
            "upstream_model": upstream,
            "status": status,
            "stream": int(stream),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_input_tokens": cached if ok else None,
            "latency_ms": round(rnd.uniform(150, 9000), 3),
            "error": None if ok else f"upstream answered {status}",
            "attributes": json.dumps({"app": f"app-{i % 10}", "build": "1.4.2"}),
            "client_disconnected": int(status == 499),
            "customer": f"customer-{rnd.randint(0, 199)}",
            "user_id": f"user-{rnd.randint(0, 999)}",
            "app": f"app-{rnd.randint(0, 9)}",
            "project": f"project-{rnd.randint(0, 29)}",
            "client": f"client-{rnd.randint(0, 4)}",
            "cache_write_tokens": 0 if ok and provider == "anthropic" else None,
            "reasoning_tokens": rnd.randint(0, 500) if ok and model == "gemini-2.5-pro" else None,
            "usage_source": ("provider" if rnd.random() < 0.98 else "estimated") if ok else None,
            "cost_micros": cost,
            "unpriced": 0,
            "ttft_ms": round(rnd.uniform(80, 900), 3) if ok and stream else None,
            "prompt_sha256": hashlib.sha256(i.to_bytes(8, "little")).hexdigest(),
            "prompt": PROMPT if with_text else None,
            "answer": ANSWER if with_text else None,
        }
        rows.append(tuple(values.get(name) for name in COLUMNS))
    return rows


def fill(path: Path, count: int, content_share: float, batch: int = 20_000) -> tuple[float, float]:
    """The ledger at `path` with `count` rows; returns (seconds, the newest ts)."""
    store = SqliteLedgerStore(str(path))
    store.open()  # the real schema and indexes
    store.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    insert = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
    start = time.time() - DAYS * 86400
    step = DAYS * 86400 / count
    began = time.perf_counter()
    for offset in range(0, count, batch):
        rows = fake_rows(min(batch, count - offset), offset, content_share, start + offset * step, step)
        db.execute("BEGIN")
        db.executemany(insert, rows)
        db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return time.perf_counter() - began, start + DAYS * 86400


@dataclasses.dataclass
class Timing:
    name: str
    what: str
    median_ms: float
    max_ms: float
    rows: int


def time_query(name: str, what: str, make: Callable[[], Awaitable[Any]], runs: int) -> Timing:
    async def once() -> tuple[float, int]:
        began = time.perf_counter()
        result = await make()
        elapsed = time.perf_counter() - began
        for attribute in ("groups", "records"):
            if hasattr(result, attribute):
                return elapsed, len(getattr(result, attribute))
        return elapsed, len(result) if isinstance(result, list) else 1

    asyncio.run(once())  # warm-up
    samples = [asyncio.run(once()) for _ in range(runs)]
    times = [s[0] * 1000 for s in samples]
    return Timing(name, what, statistics.median(times), max(times), samples[-1][1])


def query_timings(path: Path, newest: float, runs: int, count: int) -> list[Timing]:
    q = SqliteLedgerQueries(str(path))
    week = Filters(since=newest - 7 * 86400)
    pulse = Filters(equals=(("team", "team-3"), ("project", "project-7"), ("model", "gpt-4o")))
    everything = Filters()
    one_key = Filters(equals=(("key", "key-07"),))
    nobody = Filters(equals=(("user", "nobody"),))

    async def second_page() -> Any:
        first = await q.requests(everything, limit=100)
        return await q.requests(everything, limit=100, cursor=first.next_cursor)

    plan: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = [
        ("GET /api/costs", f"by key, all {count:,} records", lambda: q.costs("key", everything)),
        *[
            (f"?group_by={dim}", "all records", lambda dim=dim: q.costs(dim, everything))  # type: ignore[misc]
            for dim in ("team", "user", "project", "app", "client", "model", "provider")
        ],
        ("?group_by=team&from=", "last 7 days", lambda: q.costs("team", week)),
        ("?group_by=user&teamId&projectId&model", "Pulse's filters", lambda: q.costs("user", pulse)),
        ("GET /api/costs/{key}", "one key, all time", lambda: q.key_cost("key-07", everything)),
        ("GET /api/costs/{key}?from=", "one key, last 7 days", lambda: q.key_cost("key-07", week)),
        ("GET /api/prompt-log?limit=100", "newest 100, previews", lambda: q.prompt_log(100)),
        ("GET /api/requests", "newest 100", lambda: q.requests(everything, limit=100)),
        ("GET /api/requests?cursor=", "second page", second_page),
        ("GET /api/requests?offset=10000", "offset paging", lambda: q.requests(everything, limit=100, offset=10_000)),
        ("GET /api/requests?key_name=", "a key's newest 100", lambda: q.requests(one_key, limit=100)),
        ("GET /api/requests?status=502", "a rare status", lambda: q.requests(Filters(status=502), limit=100)),
        ("GET /api/requests?user=", "a value that matches nothing", lambda: q.requests(nobody, limit=100)),
    ]  # fmt: skip
    return [time_query(name, what, make, runs) for name, what, make in plan]


def export_rate(path: Path, limit_s: float = 5.0) -> float:
    """Records per second of `kaixu ledger export` (the iteration it runs), over at most `limit_s`."""
    q = SqliteLedgerQueries(str(path))
    began = time.perf_counter()
    count = 0
    for _ in q.iter_records(Filters()):
        count += 1
        if count % 10_000 == 0 and time.perf_counter() - began > limit_s:
            break
    return count / (time.perf_counter() - began)


def record(i: int, now: float) -> LedgerRecord:
    model, provider, upstream, *_ = MODELS[i % len(MODELS)]
    return LedgerRecord(
        request_id=f"bench-{i}", ts=now + i / 1000, front="openai", operation="chat", key_name=KEYS[i % 50],
        team=TEAMS[i % 10], model=model, provider=provider, upstream_model=upstream, status=200, stream=i % 2,
        input_tokens=900, output_tokens=120, cached_input_tokens=0, latency_ms=812.5, error=None,
        attributes='{"app":"web"}', user_id=f"user-{i % 1000}", app="web", project=f"project-{i % 30}",
        client="sdk", usage_source="provider", cost_micros=207, prompt_sha256=hashlib.sha256(b"%d" % i).hexdigest(),
    )  # fmt: skip


def write_rate(path: Path, count: int) -> float:
    """Records per second through the proxy's writer: queued with `Ledger.record`, written by its flush."""

    async def run() -> float:
        ledger = Ledger(SqliteLedgerStore(str(path)), max_queue=count)
        await ledger.start()
        now = time.time()
        records = [record(i, now) for i in range(count)]
        began = time.perf_counter()
        for r in records:
            ledger.record(r)
        await ledger.flush()
        elapsed = time.perf_counter() - began
        await ledger.stop()
        assert ledger.queued == 0 and ledger.dropped == 0, ledger.status()
        return count / elapsed

    return asyncio.run(run())


def report(info: dict[str, str], args: argparse.Namespace, fill_s: float, size_mb: float,
           timings: list[Timing], writes: dict[str, float], export: float) -> str:  # fmt: skip
    worst = max(timings, key=lambda t: t.median_ms)
    lines = [
        f"Measured {info['date']} on {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"SQLite {sqlite3.sqlite_version}; {args.rows:,} records ({args.content:.0%} with prompt and answer text), "
        f"{size_mb:,.0f} MB with indexes, filled in {fill_s:.0f} s; median of {args.runs} runs after a warm-up.",
        "",
        "| query | over | median ms | slowest ms | rows |",
        "|---|---|---:|---:|---:|",
        *[f"| `{t.name}` | {t.what} | {t.median_ms:,.1f} | {t.max_ms:,.1f} | {t.rows:,} |" for t in timings],
        "",
        f"Target: every query under 1 s over {args.rows:,} records: "
        f"**{'PASS' if worst.max_ms < 1000 else 'FAIL'}** (slowest: `{worst.name}`, {worst.median_ms:,.0f} ms).",
        "",
        "| ledger writes (`Ledger` + `SqliteLedgerStore`, batches of 1,000) | records/s |",
        "|---|---:|",
        *[f"| {name} | {rate:,.0f} |" for name, rate in writes.items()],
        f"| export (`kaixu ledger export`'s iteration, pages of 1,000) | {export:,.0f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="records in the ledger")
    parser.add_argument("--content", type=float, default=0.2, help="share of records with prompt and answer text")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per query")
    parser.add_argument("--writes", type=int, default=100_000, help="records for the write throughput")
    parser.add_argument("--dir", help="where to make the ledger (default: a temporary directory)")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/performance.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="kaixu-ledger-bench-") as tmp:
        path = Path(tmp) / "ledger.db"
        print(f"filling {path} with {args.rows:,} records...", file=sys.stderr)
        fill_s, newest = fill(path, args.rows, args.content)
        size_mb = path.stat().st_size / 1e6
        print(f"filled in {fill_s:.1f} s ({size_mb:,.0f} MB); timing the queries...", file=sys.stderr)
        timings = query_timings(path, newest, args.runs, args.rows)
        export = export_rate(path)
        writes = {
            "into an empty ledger": write_rate(Path(tmp) / "empty.db", args.writes),
            f"into the {args.rows:,}-record ledger": write_rate(path, args.writes),
        }
    text = report(machine(), args, fill_s, size_mb, timings, writes, export)
    print(text)
    if not args.no_doc:
        update_doc(text, DOC_BEGIN, DOC_END, DOC_PREAMBLE)
        print("updated docs/performance.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
