"""Measure what translating between wire formats costs kaixu, per streamed event and per request, vs pass-through.

kaixu forwards an OpenAI client's stream to an OpenAI provider byte for byte (metering usage on the way),
but re-encodes every event when the client and the provider speak different formats. This benchmark puts
one kaixu in front of the fake provider (tests/fakes/provider.py) and measures the gateway's CPU time
(utime + stime from /proc) for four cases, back to back in one run:

* ``openai → openai``     pass-through: ``POST /v1/chat/completions`` model ``gpt-4o-mini``
* ``openai → anthropic``  translated: the same request for ``claude-test`` (an ``anthropic``-kind provider)
* ``openai → gemini``     translated: the same request for ``gemini-test`` (a ``gemini``-kind provider)
* ``anthropic → openai``  translated: ``POST /v1/messages`` for ``gpt-4o-mini``

Per streamed event: each case runs a batch of long streams (``x-fake-stream-events: 200``) and a batch of
1-event streams with the same count and concurrency; the difference in CPU divided by the extra events is
the cost of one event, free of the per-request cost (parsing, routing, connection, ledger). Per
non-streamed request: wrk, as in ``bench/overhead.py``, whose process, pinning, /proc and report helpers
this file imports. The gateway is pinned to CPU 1; the fake, wrk and this script's client to CPU 0.

Run with ``.venv/bin/python bench/translation.py`` (``make bench-translation``); results go to stdout, to
``bench/results/translation-<timestamp>.json`` and to the marked section of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from overhead import (
    DOC_PATH,
    HOST,
    LOAD_CPU,
    RESULTS_DIR,
    ROOT,
    UPSTREAM_KEY,
    BenchError,
    can_pin,
    check_clean,
    cpu_seconds,
    ensure_wrk,
    machine,
    rss_mb,
    run_wrk,
    start_fake,
    start_kaixu,
    update_doc,
    write_lua,
)

DOC_BEGIN = "<!-- translation:begin -->"
DOC_END = "<!-- translation:end -->"
CLIENT_KEY = "sk-kaixu-bench"
ANTHROPIC_VERSION = "2023-06-01"
TARGET_EVENT_RATIO = 1.25  # translated CPU per streamed event vs pass-through
BUSY_WARNING = 0.85  # above this share of its CPU the gateway reads several events per chunk

# The fake answers "echo: <last user text>" split into N pieces: 812 characters make ~4 per event at N=200,
# about one token each, as real providers stream.
PROMPT = "Tell me a story about a proxy. " * 26
EXPECTED_TEXT = "echo: " + PROMPT


@dataclass(frozen=True)
class Case:
    """One client format talking to one provider format through kaixu."""

    name: str
    front: str  # the client's wire format: "openai" or "anthropic"
    model: str  # routes to the provider (see policy())
    passthrough: bool = False

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.front == "openai" else "/v1/messages"

    def headers(self) -> dict[str, str]:
        """Besides the bearer key (which every SDK kaixu supports may send): Anthropic's version header."""
        return {"anthropic-version": ANTHROPIC_VERSION} if self.front == "anthropic" else {}

    def body(self, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": PROMPT}]}
        if self.front == "anthropic":
            body["max_tokens"] = 1024  # required by the Anthropic format; far above the reply's length
        if stream:
            body["stream"] = True
        return body


CASES = (
    Case("openai → openai (pass-through)", "openai", "gpt-4o-mini", passthrough=True),
    Case("openai → anthropic", "openai", "claude-test"),
    Case("openai → gemini", "openai", "gemini-test"),
    Case("anthropic → openai", "anthropic", "gpt-4o-mini"),
)


def policy(fake_port: int, work: Path) -> str:
    """tests/harness.py's policy_for, trimmed: the fake in each wire format, one model each, one key.

    The fake demands one upstream key (overhead.start_fake), so every provider presents the same one."""
    fake = f"http://{HOST}:{fake_port}"
    doc = {
        "version": 1,
        "listen": [{"host": HOST, "port": 0}],
        "store": {"sqlite": str(work / "kaixu-bench.db")},
        "providers": {
            "oai": {"kind": "openai", "base_url": fake + "/v1", "api_key": UPSTREAM_KEY},
            "ant": {"kind": "anthropic", "base_url": fake, "api_key": UPSTREAM_KEY},
            "gem": {"kind": "gemini", "base_url": fake, "api_key": UPSTREAM_KEY},
        },
        "models": {
            "gpt-4o-mini": {"route": [{"provider": "oai"}]},
            "claude-test": {"route": [{"provider": "ant", "model": "claude-3-5-haiku-latest"}]},
            "gemini-test": {"route": [{"provider": "gem", "model": "gemini-2.5-flash"}]},
        },
        "keys": [{"name": "bench", "hash": "sha256:" + hashlib.sha256(CLIENT_KEY.encode()).hexdigest()}],
    }
    return json.dumps(doc, indent=2)  # JSON is YAML


# --------------------------------------------------------------------------------------------------
# A small asyncio HTTP/1.1 client: keep-alive, chunked bodies, nothing else (cheap on the shared CPU 0)
# --------------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes
    chunks: int  # HTTP chunks received: how the gateway wrote the stream


class Connection:
    """One keep-alive connection to the gateway, reopened when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def post(self, case: Case, body: bytes, extra: dict[str, str]) -> Reply:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        reader, writer = self.reader, self.writer
        assert reader is not None
        headers = {
            "Host": f"{HOST}:{self.port}",
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Authorization": f"Bearer {CLIENT_KEY}",
            **case.headers(),
            **extra,
        }
        head = f"POST {case.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        writer.write(head.encode() + body)
        raw = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(raw[0].split(" ", 2)[1])
        fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in raw[1:])}
        parts: list[bytes] = []
        if "chunked" in fields.get("transfer-encoding", "").lower():
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers are sent
                    break
                parts.append((await reader.readexactly(size + 2))[:-2])
        elif "content-length" in fields:
            parts.append(await reader.readexactly(int(fields["content-length"])))
        else:
            parts.append(await reader.read())
            fields["connection"] = "close"
        if "close" in fields.get("connection", "").lower():
            await self.close()
        return Reply(status, b"".join(parts), len(parts))


# --------------------------------------------------------------------------------------------------
# Checking what arrived: every response a 200 carrying the whole text
# --------------------------------------------------------------------------------------------------


def sse_events(body: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of every event in a complete SSE body."""
    out: list[tuple[str | None, str]] = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        name: str | None = None
        data: list[str] = []
        for line in block.decode().split("\n"):
            key, _, value = line.partition(":")
            if key == "event":
                name = value.strip()
            elif key == "data":
                data.append(value[1:] if value.startswith(" ") else value)
        if data:
            out.append((name, "\n".join(data)))
    return out


def check_stream(case: Case, reply: Reply, events: int) -> None:
    """The stream ended properly ([DONE] / message_stop) and its deltas spell the whole reply, one per event."""
    if reply.status != 200:
        raise BenchError(f"{case.name}: stream got HTTP {reply.status}: {reply.body[:500]!r}")
    text: list[str] = []
    ended = False
    for _name, data in sse_events(reply.body):
        if case.front == "openai":
            if data == "[DONE]":
                ended = True
                continue
            for choice in json.loads(data).get("choices") or ():
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    text.append(piece)
        else:
            obj = json.loads(data)
            if obj.get("type") == "content_block_delta" and obj["delta"].get("text"):
                text.append(obj["delta"]["text"])
            ended = ended or obj.get("type") == "message_stop"
    if not ended or "".join(text) != EXPECTED_TEXT or len(text) != events:
        raise BenchError(
            f"{case.name}: incomplete stream (ended: {ended}, {len(text)} of {events} text events, "
            f"text {'complete' if ''.join(text) == EXPECTED_TEXT else 'wrong'}): {reply.body[-300:]!r}"
        )


def check_json(case: Case, reply: Reply) -> None:
    if reply.status != 200:
        raise BenchError(f"{case.name}: request got HTTP {reply.status}: {reply.body[:500]!r}")
    obj = json.loads(reply.body)
    if case.front == "openai":
        text = obj["choices"][0]["message"]["content"]
    else:
        text = "".join(block.get("text", "") for block in obj["content"])
    if text != EXPECTED_TEXT:
        raise BenchError(f"{case.name}: wrong answer: {reply.body[:300]!r}")


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """``streams`` streams of ``events`` text events each, ``concurrency`` at a time, and the CPU it took."""

    events: int
    streams: int
    concurrency: int
    wall_s: float
    cpu_s: float
    client_chunks: int

    @property
    def busy(self) -> float:
        """The gateway's share of its CPU during the batch."""
        return self.cpu_s / self.wall_s if self.wall_s else 0.0


@dataclass
class Round:
    """One long batch and one short batch of a case, and what their difference says per event."""

    long: Batch
    short: Batch

    @property
    def cpu_ms_per_stream(self) -> float:
        return self.short.cpu_s * 1000 / self.short.streams

    @property
    def cpu_us_per_event(self) -> float:
        extra = self.long.cpu_s / self.long.streams - self.short.cpu_s / self.short.streams
        return extra * 1e6 / (self.long.events - self.short.events)


@dataclass
class CaseResult:
    name: str
    passthrough: bool
    rounds: list[Round] = field(default_factory=list)
    requests: int = 0
    rps: float = 0.0
    cpu_ms_per_request: float | None = None

    @property
    def cpu_us_per_event(self) -> float:
        return statistics.median(r.cpu_us_per_event for r in self.rounds)

    @property
    def cpu_ms_per_stream(self) -> float:
        return statistics.median(r.cpu_ms_per_stream for r in self.rounds)


@dataclass
class Plan:
    long_events: int
    streams: int
    concurrency: int
    event_delay_ms: int
    rounds: int
    warmup_s: float
    measure_s: float
    connections: int


async def stream_batch(case: Case, port: int, pid: int, events: int, plan: Plan) -> Batch:
    """``plan.streams`` streams on ``plan.concurrency`` keep-alive connections, each one checked."""
    body = json.dumps(case.body(stream=True)).encode()
    extra = {"x-fake-stream-events": str(events)}
    if plan.event_delay_ms and events > 1:
        extra["x-fake-event-delay-ms"] = str(plan.event_delay_ms)
    todo = iter(range(plan.streams))
    chunks = 0

    async def worker() -> None:
        nonlocal chunks
        conn = Connection(port)
        try:
            for _ in todo:
                reply = await conn.post(case, body, extra)
                check_stream(case, reply, events)
                chunks += reply.chunks
        finally:
            await conn.close()

    cpu, start = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    wall, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    return Batch(events, plan.streams, plan.concurrency, wall, cpu, chunks)


async def preflight(case: Case, port: int) -> None:
    """One plain request and one short stream before measuring: a wrong route fails here, with the body."""
    conn = Connection(port)
    try:
        check_json(case, await conn.post(case, json.dumps(case.body(stream=False)).encode(), {}))
        reply = await conn.post(case, json.dumps(case.body(stream=True)).encode(), {"x-fake-stream-events": "3"})
        check_stream(case, reply, 3)
    finally:
        await conn.close()


def measure_requests(case: Case, result: CaseResult, port: int, pid: int, wrk: str, work: Path, plan: Plan) -> None:
    """Non-streamed requests under wrk: warm-up run, then the measured run's CPU per request."""
    lua = write_lua(work / f"case{CASES.index(case)}.lua", case.body(stream=False), CLIENT_KEY, case.headers())
    url = f"http://{HOST}:{port}{case.path}"
    check_clean(case.name, run_wrk(wrk, url, lua, plan.connections, plan.warmup_s))
    cpu = cpu_seconds(pid)
    run = run_wrk(wrk, url, lua, plan.connections, plan.measure_s)
    cpu = cpu_seconds(pid) - cpu
    check_clean(case.name, run)
    result.requests, result.rps = run.requests, run.rps
    result.cpu_ms_per_request = cpu * 1000 / run.requests


def run_all(plan: Plan) -> tuple[list[CaseResult], dict[str, float]]:
    """One fake and one kaixu for all cases; rounds interleave the cases so drift hits them alike."""
    wrk = ensure_wrk()
    results = [CaseResult(c.name, c.passthrough) for c in CASES]
    with tempfile.TemporaryDirectory(prefix="kaixu-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        fake_port = start_fake(work, stack)
        port, pid = start_kaixu(work, fake_port, stack, policy(fake_port, work))
        gateway: dict[str, float] = {"rss_idle_mb": rss_mb(pid)}
        for case in CASES:
            asyncio.run(preflight(case, port))
            asyncio.run(
                stream_batch(case, port, pid, plan.long_events, dataclasses.replace(plan, streams=plan.concurrency))
            )
        idle = cpu_seconds(pid)
        time.sleep(1.0)
        gateway["idle_cpu_share"] = cpu_seconds(pid) - idle
        for index in range(plan.rounds):
            for case, result in zip(CASES, results, strict=True):
                long = asyncio.run(stream_batch(case, port, pid, plan.long_events, plan))
                short = asyncio.run(stream_batch(case, port, pid, 1, plan))
                result.rounds.append(Round(long, short))
                print(
                    f"  round {index + 1} {case.name}: {result.rounds[-1].cpu_us_per_event:.1f} µs/event, "
                    f"{result.rounds[-1].cpu_ms_per_stream:.2f} ms/stream, gateway busy {long.busy:.0%}",
                    file=sys.stderr,
                )
        for case, result in zip(CASES, results, strict=True):
            measure_requests(case, result, port, pid, wrk, work, plan)
            print(f"  {case.name}: {result.cpu_ms_per_request:.3f} ms/request", file=sys.stderr)
        gateway["rss_end_mb"] = rss_mb(pid)
    return results, gateway


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------


def ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def baseline(results: list[CaseResult]) -> CaseResult:
    return next(r for r in results if r.passthrough)


def table(results: list[CaseResult]) -> str:
    base = baseline(results)
    rows = [
        "| case | CPU µs per streamed event | ratio vs pass-through | CPU ms per stream (fixed) "
        "| CPU ms per non-streamed request | ratio | per-event target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        event_ratio = ratio(r.cpu_us_per_event, base.cpu_us_per_event)
        request_ratio = ratio(r.cpu_ms_per_request, base.cpu_ms_per_request)
        verdict = "baseline" if r.passthrough else ("PASS" if passed(r, base) else "FAIL")
        spread = f"{min(x.cpu_us_per_event for x in r.rounds):.1f}-{max(x.cpu_us_per_event for x in r.rounds):.1f}"
        rows.append(
            f"| {r.name} | {r.cpu_us_per_event:.1f} ({spread}) | {fmt(event_ratio, '.2f')}x "
            f"| {r.cpu_ms_per_stream:.2f} | {fmt(r.cpu_ms_per_request, '.3f')} | {fmt(request_ratio, '.2f')}x "
            f"| {verdict} |"
        )
    return "\n".join(rows) + "\n"


def passed(result: CaseResult, base: CaseResult) -> bool:
    return result.cpu_us_per_event <= TARGET_EVENT_RATIO * base.cpu_us_per_event


def verdict(results: list[CaseResult]) -> str:
    base = baseline(results)
    translated = [r for r in results if not r.passthrough]
    worst = max(translated, key=lambda r: r.cpu_us_per_event)
    ok = all(passed(r, base) for r in translated)
    return (
        f"Target: translation adds ≤ {TARGET_EVENT_RATIO - 1:.0%} CPU per streamed event over pass-through "
        f"(≤ {TARGET_EVENT_RATIO}x): **{'PASS' if ok else 'FAIL'}** "
        f"(worst: {worst.name}, {worst.cpu_us_per_event / base.cpu_us_per_event:.2f}x)."
    )


def machine_line(info: dict[str, str], plan: Plan, results: list[CaseResult]) -> str:
    busy = max(x.long.busy for r in results for x in r.rounds)
    return (
        f"Measured {info['date']} on {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"mitmproxy {info['mitmproxy']}; pinned: {info['pinned']}; per case and round {plan.streams} streams of "
        f"{plan.long_events} events ({plan.event_delay_ms} ms apart) and {plan.streams} of 1 event, "
        f"{plan.concurrency} at a time, {plan.rounds} rounds (median; range in brackets); gateway busy at most "
        f"{busy:.0%}; non-streamed: wrk -c{plan.connections}, {plan.warmup_s:g} s warm-up + {plan.measure_s:g} s."
    )


def report(results: list[CaseResult], plan: Plan) -> str:
    text = f"{machine_line(machine(), plan, results)}\n\n{table(results)}\n{verdict(results)}\n"
    busy = max(x.long.busy for r in results for x in r.rounds)
    if busy > BUSY_WARNING:
        text += (
            f"\nWarning: the gateway was {busy:.0%} busy during the long streams, so it read several events per "
            "chunk and the per-event numbers understate the cost of events arriving one by one.\n"
        )
    return text


DOC_PREAMBLE = """## Translation cost

`bench/translation.py` (`make bench-translation`) measures what translating between wire formats costs,
against pass-through, with one kaixu (pinned to CPU 1) in front of the fake provider. Four cases:
an OpenAI client to an OpenAI provider (pass-through: bytes forwarded, usage metered), to an Anthropic and
to a Gemini provider, and an Anthropic client (`/v1/messages`) to an OpenAI provider. Per streamed event:
each case runs, per round, a batch of long streams (200 text events of ~4 characters, paced by the fake so
each event arrives in its own chunk, as from a real model) and a batch of 1-event streams with the same
count and concurrency; the gateway's CPU difference divided by the extra events is the cost of one event,
and the short batch's CPU per stream is the fixed cost of a stream. Every stream is checked: a 200, the
whole reply text in as many deltas as events, and the final `[DONE]` / `message_stop`. Per non-streamed
request: wrk on keep-alive connections, the gateway's CPU divided by the requests. The target (≤ 1.25x
pass-through per streamed event) is reported, not enforced.
"""


def save_json(results: list[CaseResult], gateway: dict[str, float], plan: Plan) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"translation-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    base = baseline(results)
    payload = {
        "machine": machine(),
        "plan": asdict(plan),
        "gateway": gateway,
        "target_event_ratio": TARGET_EVENT_RATIO,
        "results": [
            {
                **asdict(r),
                "cpu_us_per_event": r.cpu_us_per_event,
                "cpu_ms_per_stream": r.cpu_ms_per_stream,
                "event_ratio": ratio(r.cpu_us_per_event, base.cpu_us_per_event),
                "request_ratio": ratio(r.cpu_ms_per_request, base.cpu_ms_per_request),
                "passed": None if r.passthrough else passed(r, base),
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return path


def parse_args(argv: list[str] | None) -> tuple[Plan, bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200, help="text events per long stream")
    parser.add_argument("--streams", type=int, default=200, help="streams per batch")
    parser.add_argument("--concurrency", type=int, default=40, help="streams in flight at once")
    parser.add_argument("--event-delay-ms", type=int, default=2, help="fake's pause between events (0: burst)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all cases (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="wrk warm-up seconds per case")
    parser.add_argument("--duration", type=int, default=4, help="wrk measured seconds per case")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/performance.md")
    args = parser.parse_args(argv)
    if args.events < 2 or args.streams < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--events must be at least 2; --streams, --concurrency and --rounds at least 1")
    if len(EXPECTED_TEXT) < args.events:
        parser.error(f"--events must be at most {len(EXPECTED_TEXT)} (the reply's length in characters)")
    plan = Plan(
        long_events=args.events,
        streams=args.streams,
        concurrency=min(args.concurrency, args.streams),
        event_delay_ms=args.event_delay_ms,
        rounds=args.rounds,
        warmup_s=args.warmup,
        measure_s=args.duration,
        connections=args.connections,
    )
    return plan, not args.no_doc


def main(argv: list[str] | None = None) -> int:
    plan, write_doc = parse_args(argv)
    # A SIGTERM (e.g. from a CI timeout) must unwind through the ExitStack that stops the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if can_pin():
        os.sched_setaffinity(0, {LOAD_CPU})  # the client shares CPU 0 with the fake and wrk; kaixu has CPU 1
    try:
        results, gateway = run_all(plan)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    text = report(results, plan)
    print(text)
    print(f"raw results: {save_json(results, gateway, plan).relative_to(ROOT)}")
    if write_doc:
        update_doc(text, DOC_BEGIN, DOC_END, DOC_PREAMBLE)
        print(f"updated {DOC_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
