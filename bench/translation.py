"""Measure what translating between wire formats costs kaixu, per streamed event and per request, vs pass-through.

kaixu forwards an OpenAI client's stream to an OpenAI provider as it comes (metering usage on the way), but
re-encodes every event when the client and the provider speak different formats. This benchmark puts one
kaixu in front of the fake provider (tests/fakes/provider.py) and measures the gateway's CPU time (utime +
stime from /proc/<pid>/stat) for these cases, interleaved in rounds in one run:

* ``openai → openai``     pass-through, the baseline: ``POST /v1/chat/completions`` for ``gpt-4o-mini``, as
  SDKs send it (kaixu adds ``stream_options.include_usage`` upstream and strips the usage chunk it causes)
* the same with the client asking for ``include_usage`` itself: the plain meter, for reference
* ``openai → anthropic``  translated: the same request for ``claude-test`` (an ``anthropic``-kind provider)
* ``openai → gemini``     translated: the same request for ``gemini-test`` (a ``gemini``-kind provider)
* ``anthropic → openai``  translated: ``POST /v1/messages`` for ``gpt-4o-mini``

Per streamed event: each case runs batches of long streams (200 events) and a batch of 1-event streams;
the CPU per stream of the long batch minus that of the short one, divided by the extra events, is the cost
of one event, free of the per-stream cost (parsing, routing, connection, ledger). Long streams run in two
regimes: *paced* (the fake pauses between events, so each reaches the gateway in its own read, as from a
real model) and *burst* (no pause: the gateway is saturated and reads many events at once, so the Python
work per event weighs most). kaixu forwards no client ``x-fake-*`` header, so the policy steers the fake:
per steering a provider with static headers and a model alias per case (see :class:`Steer`). Per
non-streamed request: wrk, as in ``bench/overhead.py``, whose process, pinning, /proc, wrk and doc helpers
this file imports. The gateway is pinned to CPU 1; the fake, wrk and this script's client to CPU 0.

Run with ``.venv/bin/python bench/translation.py`` (``make bench-translation``, about 2 minutes); results
go to stdout, to ``bench/results/translation-<timestamp>.json`` and to the marked section of
``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

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
REGIMES = ("paced", "burst")
REQUEST_TIMEOUT_S = 60.0  # one stream takes well under a second; a hang must not stall the run forever

# The fake answers "echo: <last user text>" split into N pieces: 812 characters make ~4 per event at N=200,
# about one token each, as real providers stream.
PROMPT = "Tell me a story about a proxy. " * 26
EXPECTED_TEXT = "echo: " + PROMPT


Role = Literal["baseline", "reference", "translated"]


@dataclass(frozen=True)
class Steer:
    """How the fake streams one request: ``events`` text events, ``delay_ms`` apart.

    kaixu sends a provider only an allowlist of the client's headers (router.FORWARDED_HEADERS), so the
    ``x-fake-*`` headers that steer the fake are a provider's static ``headers`` in the policy: one provider
    per steering, reached through a model alias per case (``<model>@<tag>``, see policy())."""

    events: int
    delay_ms: int = 0

    @property
    def tag(self) -> str:
        return f"e{self.events}" + (f"d{self.delay_ms}" if self.delay_ms else "")

    def headers(self) -> dict[str, str]:
        headers = {"x-fake-stream-events": str(self.events)}
        if self.delay_ms:
            headers["x-fake-event-delay-ms"] = str(self.delay_ms)
        return headers


PREFLIGHT = Steer(3)


@dataclass(frozen=True)
class Case:
    """One client format talking to one provider format through kaixu."""

    name: str
    front: str  # the client's wire format: "openai" or "anthropic"
    model: str  # routes to a provider of the fake in some format (see policy())
    role: Role = "translated"
    include_usage: bool = False  # the client asks for OpenAI's usage chunk itself

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.front == "openai" else "/v1/messages"

    def headers(self) -> dict[str, str]:
        """Besides the bearer key (which every SDK kaixu supports may send): Anthropic's version header."""
        return {"anthropic-version": ANTHROPIC_VERSION} if self.front == "anthropic" else {}

    def body(self, stream: bool, steer: Steer | None = None) -> dict[str, Any]:
        """The request; a ``steer`` sends it to the model alias whose provider makes the fake stream so."""
        model = self.model if steer is None else steered_model(self.model, steer)
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
        if self.front == "anthropic":
            body["max_tokens"] = 1024  # required by the Anthropic format; far above the reply's length
        if stream:
            body["stream"] = True
            if self.include_usage:
                body["stream_options"] = {"include_usage": True}
        return body


CASES = (
    Case("openai → openai (pass-through)", "openai", "gpt-4o-mini", role="baseline"),
    Case("openai → openai (pass-through, client asks for usage)", "openai", "gpt-4o-mini", "reference", True),
    Case("openai → anthropic", "openai", "claude-test"),
    Case("openai → gemini", "openai", "gemini-test"),
    Case("anthropic → openai", "anthropic", "gpt-4o-mini"),
)


# The cases' models: (provider name, kind, path after the fake's base URL, the model the provider is asked for).
MODELS = {
    "gpt-4o-mini": ("oai", "openai", "/v1", "gpt-4o-mini"),
    "claude-test": ("ant", "anthropic", "", "claude-3-5-haiku-latest"),
    "gemini-test": ("gem", "gemini", "", "gemini-2.5-flash"),
}


def steered_model(model: str, steer: Steer) -> str:
    return f"{model}@{steer.tag}"


def steers(plan: Plan) -> tuple[Steer, ...]:
    """Every way a run makes the fake stream: preflight, the short batch, the paced and burst long batches."""
    wanted = (PREFLIGHT, Steer(1), Steer(plan.long_events, plan.event_delay_ms), Steer(plan.long_events))
    return tuple(dict.fromkeys(wanted))


def policy(fake_port: int, work: Path, plan: Plan) -> str:
    """tests/harness.py's policy_for, trimmed: the fake in each wire format, one model each, one key; and per
    steering (see :class:`Steer`) a copy of each provider with the fake's headers and a model alias to it.

    An alias asks its provider for the same model as the plain route, so upstream requests and replies are
    what they were when the bench sent the steering headers itself. The fake demands one upstream key
    (overhead.start_fake), so every provider presents the same one."""
    fake = f"http://{HOST}:{fake_port}"
    providers: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for model, (name, kind, path, upstream) in MODELS.items():
        providers[name] = {"kind": kind, "base_url": fake + path, "api_key": UPSTREAM_KEY}
        models[model] = {"route": [{"provider": name} | ({"model": upstream} if upstream != model else {})]}
        for steer in steers(plan):
            steered = f"{name}-{steer.tag}"
            providers[steered] = providers[name] | {"headers": steer.headers()}
            models[steered_model(model, steer)] = {"route": [{"provider": steered, "model": upstream}]}
    doc = {
        "version": 1,
        "listen": [{"host": HOST, "port": 0}],
        "store": {"sqlite": str(work / "kaixu-bench.db")},
        "providers": providers,
        "models": models,
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

    async def post(self, case: Case, body: bytes) -> Reply:
        """One request; a hang, a dropped connection or a garbled response fails the run with a BenchError."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await self._post(case, body)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            await self.close()
            raise BenchError(f"{case.name}: request failed: {exc!r}") from exc

    async def _post(self, case: Case, body: bytes) -> Reply:
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
    try:
        text, ended = stream_text(case, reply.body)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not the JSON events the format promises
        raise BenchError(f"{case.name}: malformed stream ({exc!r}): {reply.body[-300:]!r}") from exc
    if not ended or "".join(text) != EXPECTED_TEXT or len(text) != events:
        raise BenchError(
            f"{case.name}: incomplete stream (ended: {ended}, {len(text)} of {events} text events, "
            f"text {'complete' if ''.join(text) == EXPECTED_TEXT else 'wrong'}): {reply.body[-300:]!r}"
        )


def stream_text(case: Case, body: bytes) -> tuple[list[str], bool]:
    """The text deltas of a stream in the client's format, and whether it ended with its end event."""
    text: list[str] = []
    ended = False
    for _name, data in sse_events(body):
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
    return text, ended


def check_json(case: Case, reply: Reply) -> None:
    if reply.status != 200:
        raise BenchError(f"{case.name}: request got HTTP {reply.status}: {reply.body[:500]!r}")
    try:
        obj = json.loads(reply.body)
        if case.front == "openai":
            text = obj["choices"][0]["message"]["content"]
        else:
            text = "".join(block.get("text", "") for block in obj["content"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise BenchError(f"{case.name}: malformed answer ({exc!r}): {reply.body[:300]!r}") from exc
    if text != EXPECTED_TEXT:
        raise BenchError(f"{case.name}: wrong answer: {reply.body[:300]!r}")


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    long_events: int
    long_streams: int
    short_streams: int
    concurrency: int
    event_delay_ms: int  # between events in the paced regime
    rounds: int
    warmup_s: int
    measure_s: int
    connections: int


@dataclass
class Batch:
    """``streams`` streams of ``events`` text events each, ``concurrency`` at a time, and the CPU it took."""

    events: int
    streams: int
    concurrency: int
    event_delay_ms: int
    wall_s: float
    cpu_s: float
    client_chunks: int  # HTTP chunks the client received: kaixu writes one per event

    @property
    def busy(self) -> float:
        """The gateway's share of its CPU during the batch."""
        return self.cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_ms_per_stream(self) -> float:
        return self.cpu_s * 1000 / self.streams


@dataclass
class Round:
    """One case's short batch and long batches (one per regime), and what their difference says per event."""

    short: Batch
    long: dict[str, Batch] = field(default_factory=dict)

    def cpu_us_per_event(self, regime: str) -> float:
        long = self.long[regime]
        return (long.cpu_ms_per_stream - self.short.cpu_ms_per_stream) * 1000 / (long.events - self.short.events)


@dataclass
class CaseResult:
    name: str
    role: Role
    rounds: list[Round] = field(default_factory=list)
    requests: int | None = None
    rps: float | None = None
    cpu_ms_per_request: float | None = None

    def cpu_us_per_event(self, regime: str) -> float:
        return statistics.median(r.cpu_us_per_event(regime) for r in self.rounds)

    def event_range(self, regime: str) -> tuple[float, float]:
        values = [r.cpu_us_per_event(regime) for r in self.rounds]
        return min(values), max(values)

    @property
    def cpu_ms_per_stream(self) -> float:
        return statistics.median(r.short.cpu_ms_per_stream for r in self.rounds)

    def summary(self) -> dict[str, Any]:
        return {
            "cpu_us_per_event": {regime: self.cpu_us_per_event(regime) for regime in REGIMES},
            "cpu_ms_per_stream": self.cpu_ms_per_stream,
        }


async def stream_batch(case: Case, port: int, pid: int, events: int, streams: int, plan: Plan, delay_ms: int) -> Batch:
    """``streams`` streams on ``plan.concurrency`` keep-alive connections, each one checked."""
    body = json.dumps(case.body(stream=True, steer=Steer(events, delay_ms))).encode()
    todo: Iterator[int] = iter(range(streams))
    chunks = 0

    async def worker() -> None:
        nonlocal chunks
        conn = Connection(port)
        try:
            for _ in todo:
                reply = await conn.post(case, body)
                check_stream(case, reply, events)
                chunks += reply.chunks
        finally:
            await conn.close()

    concurrency = min(plan.concurrency, streams)
    cpu, start = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    return Batch(events, streams, concurrency, delay_ms, wall, cpu, chunks)


def measure_round(case: Case, port: int, pid: int, plan: Plan) -> Round:
    """The short batch, then a long batch per regime."""
    one_round = Round(asyncio.run(stream_batch(case, port, pid, 1, plan.short_streams, plan, 0)))
    for regime, delay in zip(REGIMES, (plan.event_delay_ms, 0), strict=True):
        batch = stream_batch(case, port, pid, plan.long_events, plan.long_streams, plan, delay)
        one_round.long[regime] = asyncio.run(batch)
    return one_round


async def preflight(case: Case, port: int) -> None:
    """One plain request and one short stream before measuring: a wrong route fails here, with the body."""
    conn = Connection(port)
    try:
        check_json(case, await conn.post(case, json.dumps(case.body(stream=False)).encode()))
        reply = await conn.post(case, json.dumps(case.body(stream=True, steer=PREFLIGHT)).encode())
        check_stream(case, reply, PREFLIGHT.events)
    finally:
        await conn.close()


def measure_requests(case: Case, result: CaseResult, port: int, pid: int, wrk: str, work: Path, plan: Plan) -> None:
    """Non-streamed requests under wrk: a warm-up run, then the measured run's CPU per request."""
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
    results = [CaseResult(c.name, c.role) for c in CASES]
    with tempfile.TemporaryDirectory(prefix="kaixu-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        fake_port = start_fake(work, stack)
        port, pid = start_kaixu(work, fake_port, stack, policy(fake_port, work, plan))
        gateway: dict[str, float] = {"rss_idle_mb": rss_mb(pid)}
        for case in CASES:  # warm-up: every code path runs before anything is measured
            asyncio.run(preflight(case, port))
            asyncio.run(stream_batch(case, port, pid, plan.long_events, plan.concurrency, plan, 0))
        cpu = cpu_seconds(pid)
        time.sleep(1.0)
        gateway["idle_cpu_share"] = cpu_seconds(pid) - cpu  # background work that would blur the deltas
        for index in range(plan.rounds):
            for case, result in zip(CASES, results, strict=True):
                result.rounds.append(measure_round(case, port, pid, plan))
                last = result.rounds[-1]
                print(
                    f"  round {index + 1} {case.name}: "
                    + ", ".join(f"{r} {last.cpu_us_per_event(r):.1f} µs/event" for r in REGIMES)
                    + f", {last.short.cpu_ms_per_stream:.2f} ms/stream, busy paced {last.long['paced'].busy:.0%}",
                    file=sys.stderr,
                )
        for case, result in zip(CASES, results, strict=True):
            if case.role != "reference":  # include_usage changes nothing without streaming
                measure_requests(case, result, port, pid, wrk, work, plan)
                print(f"  {case.name}: {result.cpu_ms_per_request:.3f} ms/request", file=sys.stderr)
        gateway["rss_end_mb"] = rss_mb(pid)
    return results, gateway


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------


def ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def baseline(results: list[CaseResult]) -> CaseResult:
    return next(r for r in results if r.role == "baseline")


def passed(result: CaseResult, base: CaseResult) -> bool:
    """The target holds in both regimes."""
    return all(
        result.cpu_us_per_event(regime) <= TARGET_EVENT_RATIO * base.cpu_us_per_event(regime) for regime in REGIMES
    )


def table(results: list[CaseResult]) -> str:
    base = baseline(results)
    rows = [
        "| case | CPU µs/event, paced | ratio | CPU µs/event, burst | ratio | CPU ms per stream (fixed) "
        "| CPU ms per non-streamed request | ratio | ≤ 1.25x per event |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        cells = []
        for regime in REGIMES:
            low, high = r.event_range(regime)
            value = r.cpu_us_per_event(regime)
            cells.append(
                f"{value:.1f} ({low:.1f}-{high:.1f}) | {fmt(ratio(value, base.cpu_us_per_event(regime)), '.2f', 'x')}"
            )
        verdict = {"baseline": "baseline", "reference": "-"}.get(r.role) or ("PASS" if passed(r, base) else "FAIL")
        rows.append(
            f"| {r.name} | {' | '.join(cells)} | {r.cpu_ms_per_stream:.2f} | {fmt(r.cpu_ms_per_request, '.3f')} "
            f"| {fmt(ratio(r.cpu_ms_per_request, base.cpu_ms_per_request), '.2f', 'x')} | {verdict} |"
        )
    return "\n".join(rows) + "\n"


def overall(results: list[CaseResult]) -> bool:
    base = baseline(results)
    return all(passed(r, base) for r in results if r.role == "translated")


def verdict(results: list[CaseResult]) -> str:
    base = baseline(results)
    worst = max(
        (r.cpu_us_per_event(g) / base.cpu_us_per_event(g), r.name, g)
        for r in results
        if r.role == "translated"
        for g in REGIMES
    )
    return (
        f"Target: translation adds ≤ {TARGET_EVENT_RATIO - 1:.0%} CPU per streamed event over pass-through: "
        f"**{'PASS' if overall(results) else 'FAIL'}** (worst: {worst[1]}, {worst[2]}, {worst[0]:.2f}x)."
    )


def machine_line(info: dict[str, str], plan: Plan, results: list[CaseResult]) -> str:
    busy = {g: max(x.long[g].busy for r in results for x in r.rounds) for g in REGIMES}
    return (
        f"Measured {info['date']} on {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"mitmproxy {info['mitmproxy']}; pinned: {info['pinned']}. Per case and round: {plan.long_streams} streams "
        f"of {plan.long_events} events paced {plan.event_delay_ms} ms apart (gateway at most {busy['paced']:.0%} "
        f"busy), {plan.long_streams} in a burst ({busy['burst']:.0%} busy), {plan.short_streams} of 1 event, "
        f"{plan.concurrency} streams at a time; {plan.rounds} rounds, median (range). Non-streamed: wrk "
        f"-c{plan.connections}, {plan.warmup_s} s warm-up + {plan.measure_s} s."
    )


def report(results: list[CaseResult], plan: Plan) -> str:
    return f"{machine_line(machine(), plan, results)}\n\n{table(results)}\n{verdict(results)}\n"


DOC_PREAMBLE = """## Translation cost

`bench/translation.py` (`make bench-translation`, about 2 minutes) measures what translating between wire
formats costs against pass-through, with one kaixu (pinned to CPU 1) in front of the fake provider. The
baseline is an OpenAI client streaming from an OpenAI provider (bytes forwarded, usage metered, the usage
chunk kaixu asks for stripped); a second pass-through row has the client ask for usage itself (the plain
meter). The translated cases are an OpenAI client to an Anthropic and to a Gemini provider, and an
Anthropic client (`/v1/messages`) to an OpenAI provider. Per streamed event: each round runs, per case, 1-event
streams and 200-event streams (text deltas of ~4 characters); the gateway's extra CPU per long stream
divided by the 199 extra events is the cost of one event, and the short streams' CPU is the fixed cost of a
stream. *Paced*: the fake pauses between events, so each reaches the gateway in its own read, as from a real
model. *Burst*: no pause, the gateway is saturated and reads many events at once, so per-event Python work
weighs most. Every stream is checked: a 200, the whole reply text in one delta per event, the final
`[DONE]` / `message_stop`. Per non-streamed request: wrk on keep-alive connections, the gateway's CPU
divided by the requests. The target (≤ 1.25x pass-through per event, in both regimes) is reported, not
enforced.
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
        "passed": overall(results),
        "results": [
            {
                **asdict(r),
                **r.summary(),
                "event_ratio": {g: ratio(r.cpu_us_per_event(g), base.cpu_us_per_event(g)) for g in REGIMES},
                "request_ratio": ratio(r.cpu_ms_per_request, base.cpu_ms_per_request),
                "passed": passed(r, base) if r.role == "translated" else None,
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return path


def parse_args(argv: list[str] | None) -> tuple[Plan, bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200, help="text events per long stream")
    parser.add_argument("--streams", type=int, default=200, help="long streams per batch")
    parser.add_argument("--short-streams", type=int, default=600, help="1-event streams per batch")
    parser.add_argument("--concurrency", type=int, default=40, help="streams in flight at once")
    parser.add_argument("--event-delay-ms", type=int, default=2, help="the fake's pause between paced events")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all cases (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="wrk warm-up seconds per case")
    parser.add_argument("--duration", type=int, default=4, help="wrk measured seconds per case")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/performance.md")
    args = parser.parse_args(argv)
    if args.events < 2 or min(args.streams, args.short_streams, args.concurrency, args.rounds, args.duration) < 1:
        parser.error("--events must be at least 2; the counts and --duration at least 1")
    if args.event_delay_ms < 1:
        parser.error("--event-delay-ms must be at least 1 (the burst regime is the unpaced one)")
    if len(EXPECTED_TEXT) < args.events:
        parser.error(f"--events must be at most {len(EXPECTED_TEXT)} (the reply's length in characters)")
    plan = Plan(
        long_events=args.events,
        long_streams=args.streams,
        short_streams=args.short_streams,
        concurrency=args.concurrency,
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
