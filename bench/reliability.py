"""Reliability under faults (issue 12): retries, deployments and the circuit breaker, measured in one run.

Two fake providers (tests/fakes/provider.py, one speaking OpenAI, one Anthropic) serve `gpt-4o-mini` as two
deployments of one model (`route: [{provider: a}, {provider: b}]`), behind one `python -m kaixu run`:

1. **Soak**: 32 asyncio + httpx clients, every front door kaixu has (OpenAI, Anthropic and Gemini, buffered
   and streamed, Gateway 13, kAIxu Gate, Pulse), without faults (the baseline latency of this run) in blocks
   interleaved with blocks where about 20 % of the provider attempts fail, rotating through 503, 429 with
   Retry-After, 500, a connection closed without an answer, a stream that ends before its first event, and a
   stream cut after its third event. In half of the fault blocks only one deployment fails at a time (twice
   the rate, switching every few seconds): every request has a healthy deployment, so the client must see no
   failure. In the other half both fail at once, independently: a request whose attempts all fail is expected now
   and then (about 0.2^attempts of them), and is counted. A stream cut after its first byte reached the
   client cannot be retried by design (it ends with an error event) and is counted on its own line.
   Then the gateway is stopped and its SQLite ledger checked: exactly one row per request the clients saw,
   matched by `x-request-id`, with the status and the attempts of the answer.
2. **Breaker**: another gateway with `routing.breaker` set, the same load, and one fake killed (SIGKILL)
   midway: how long until no more attempts go to it (from `x-kaixu-attempts` and client timestamps), how
   many went to it before, and what the half-open probes did after the cooldown.
3. **No-fault cost**: two gateways on the same tree, one with retries and a fallback model configured (the
   first attempt of a buffered request is still mitmproxy's, a stream goes through the loopback relay) and one
   without (mitmproxy forwards everything), measured with wrk as bench/governance.py does: alternate rounds,
   the gateways pinned to CPU 1 and the load to CPU 0, medians of the rounds; plus sequential streams.

Results go to stdout and to the marked section of ``docs/performance.md`` (``--no-doc`` skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from overhead import (
    GATEWAY_CPU,
    HOST,
    LOAD_CPU,
    PATH,
    SMALL_BODY,
    SSE_EVENTS,
    UPSTREAM_KEY,
    BenchError,
    can_pin,
    check_clean,
    cpu_seconds,
    ensure_wrk,
    machine,
    measure_sse,
    pinned,
    preflight,
    run_wrk,
    spawn,
    start_kaixu,
    update_doc,
    wait_until,
    write_lua,
)

DOC_BEGIN = "<!-- reliability:begin -->"
DOC_END = "<!-- reliability:end -->"
DOC_PREAMBLE = """## Reliability (issue 12): retries, deployments and the breaker under faults

`bench/reliability.py` puts two fake providers behind one model as two deployments, injects provider
failures while 32 clients use every front door, and checks what the clients saw and what the ledger
recorded; it then kills one provider under load to time the circuit breaker, and measures with wrk what
configuring retries and a fallback costs when nothing fails. Rerun with `.venv/bin/python
bench/reliability.py` (about six minutes; `--soak-s` sets the fault phase, `--no-doc` leaves this page
alone). The section below is rewritten by each run."""

MODEL = "gpt-4o-mini"
KEY = "sk-bench-reliability"
CLIENTS = 32
RETRIES = {
    "attempts": 3,
    "backoff": {"base_ms": 10, "max_ms": 250, "jitter": True},
    "on_status": [408, 429, 500, 502, 503, 504],
}
SOAK_BREAKER = {"failures": 1_000_000, "window_s": 1, "cooldown_s": 1}  # effectively off: see the report
BREAKER = {"failures": 5, "window_s": 10, "cooldown_s": 5}
FAULT_SLOT_S = 2.0  # each fault kind lasts this long before the next one
SWITCH_S = 5.0  # in the one-failing-at-a-time half, the failing deployment changes this often

# (label, the fake's fault without its probability): what is retryable before the first byte, and one that is not.
FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("503", {"status": 503}),
    ("429 Retry-After 0.05 s", {"status": 429, "retry_after": 0.05}),
    ("500", {"status": 500}),
    ("connection closed, no answer", {"close_without_response": True}),
    ("stream ends before its first event", {"disconnect_after_events": 0}),
    ("stream cut after 3 events", {"disconnect_after_events": 3}),
]
MID_STREAM = "stream cut after 3 events"


# --------------------------------------------------------------------------------------------------
# Front doors: what each client sends, and how it tells a complete answer from a failed one
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Door:
    name: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    stream: bool
    done: Callable[[bytes], bool]
    """Whether a 200 body is a complete answer (a stream's last event arrived, no error event in it)."""


BEARER = {"authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "Tell me a story about a proxy. " * 4}]
GW13 = {**BEARER, "x-kaixu-app": "bench", "x-kaixu-build": "b1", "x-kaixu-install-id": "bench-install"}


def _json_has(key: str) -> Callable[[bytes], bool]:
    def check(body: bytes) -> bool:
        try:
            data = json.loads(body)
        except ValueError:
            return False
        return isinstance(data, dict) and key in data

    return check


def _sse_ends(marker: bytes) -> Callable[[bytes], bool]:
    def check(body: bytes) -> bool:
        return marker in body and b"event: error" not in body and b'"error"' not in body

    return check


DOORS: tuple[Door, ...] = (
    Door(
        "openai",
        "/v1/chat/completions",
        BEARER,
        {"model": MODEL, "messages": MESSAGES, "max_tokens": 64},
        False,
        _json_has("choices"),
    ),
    Door(
        "openai stream",
        "/v1/chat/completions",
        BEARER,
        {"model": MODEL, "messages": MESSAGES, "max_tokens": 64, "stream": True},
        True,
        _sse_ends(b"[DONE]"),
    ),
    Door(
        "anthropic",
        "/v1/messages",
        {"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        {"model": MODEL, "max_tokens": 64, "messages": MESSAGES},
        False,
        _json_has("content"),
    ),
    Door(
        "anthropic stream",
        "/v1/messages",
        {"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        {"model": MODEL, "max_tokens": 64, "messages": MESSAGES, "stream": True},
        True,
        _sse_ends(b"event: message_stop"),
    ),
    Door(
        "gemini",
        f"/v1beta/models/{MODEL}:generateContent",
        {"x-goog-api-key": KEY},
        {"contents": [{"role": "user", "parts": [{"text": MESSAGES[0]["content"]}]}]},
        False,
        _json_has("candidates"),
    ),
    Door(
        "gemini stream",
        f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
        {"x-goog-api-key": KEY},
        {"contents": [{"role": "user", "parts": [{"text": MESSAGES[0]["content"]}]}]},
        True,
        _sse_ends(b'"finishReason"'),
    ),
    Door(
        "gateway13 chat",
        "/.netlify/functions/gateway-chat",
        GW13,
        {"model": MODEL, "messages": MESSAGES},
        False,
        _json_has("output_text"),
    ),
    Door(
        "gateway13 stream",
        "/.netlify/functions/gateway-stream",
        GW13,
        {"model": MODEL, "messages": MESSAGES},
        True,
        _sse_ends(b"event: done"),
    ),
    Door(
        "kaixu gate generate",
        "/v1/generate",
        BEARER,
        {"model": MODEL, "input": {"type": "text", "content": MESSAGES[0]["content"]}},
        False,
        _json_has("text"),
    ),
    Door(
        "kaixu gate stream",
        "/v1/stream",
        BEARER,
        {"model": MODEL, "input": {"type": "text", "content": MESSAGES[0]["content"]}},
        True,
        _sse_ends(b"[DONE]"),
    ),
    Door(
        "pulse",
        "/api/ai/request",
        {"x-pulse-key": KEY},
        {"model": MODEL, "prompt": MESSAGES[0]["content"]},
        False,
        _json_has("content"),
    ),
)


# --------------------------------------------------------------------------------------------------
# Processes and policies
# --------------------------------------------------------------------------------------------------


def start_fake_proc(work: Path, stack: contextlib.ExitStack) -> tuple[int, subprocess.Popen[bytes]]:
    """overhead.start_fake, keeping the process (the breaker phase kills one): (port, process)."""
    work.mkdir(parents=True, exist_ok=True)
    port_file, log = work / "fake.port", work / "fake.log"
    cmd = [sys.executable, "-m", "tests.fakes.provider", "--host", HOST, "--port", "0", "--port-file", str(port_file)]
    cmd += ["--stream-events", str(SSE_EVENTS), "--require-key", UPSTREAM_KEY, "--no-record"]
    proc = spawn(pinned(cmd, LOAD_CPU), log, stack)
    wait_until(port_file.exists, proc, log, "fake provider")
    return int(port_file.read_text().strip()), proc


def policy_text(
    work: Path,
    ports: dict[str, int],
    *,
    retries: bool,
    breaker: dict[str, Any] | None,
    two_deployments: bool,
    fallback: bool = False,
) -> str:
    """`a` speaks OpenAI, `b` Anthropic. ``two_deployments``: `gpt-4o-mini` is served by both; otherwise by
    `a`, with ``fallback`` a second model `backup` on `b` as its fallback."""
    digest = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
    model: dict[str, Any] = {
        "route": [{"provider": "a"}, {"provider": "b"}] if two_deployments else [{"provider": "a"}]
    }
    models: dict[str, Any] = {MODEL: model}
    if fallback:
        model["fallbacks"] = ["backup"]
        models["backup"] = {"route": [{"provider": "b", "model": MODEL}]}
    policy: dict[str, Any] = {
        "version": 1,
        "listen": [{"host": HOST, "port": 0}],
        "store": {"sqlite": str(work / "kaixu.db")},
        "limits": {"upstream_timeout_s": 10},
        "providers": {
            "a": {"kind": "openai", "base_url": f"http://{HOST}:{ports['a']}/v1", "api_key": UPSTREAM_KEY},
            "b": {"kind": "anthropic", "base_url": f"http://{HOST}:{ports['b']}", "api_key": UPSTREAM_KEY},
        },
        "models": models,
        "keys": [{"name": "bench", "hash": digest}],
    }
    if retries:
        policy["retries"] = RETRIES
    if breaker is not None:
        policy["routing"] = {"strategy": "weighted", "breaker": breaker}
    return json.dumps(policy, indent=2)


# --------------------------------------------------------------------------------------------------
# The load generator
# --------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One client request as the client saw it."""

    phase: str
    door: str
    stream: bool
    started: float  # time.monotonic() when it was sent
    ms: float
    status: int | None  # None: no HTTP answer at all (transport error)
    complete: bool
    request_id: str | None
    attempts: list[tuple[str, int, float]] = field(default_factory=list)  # (deployment, status, ms)
    error: str | None = None
    fault: str | None = None  # the fault kind active on the fakes when it was sent
    phase_end: str = ""  # the phase when its answer ended (a request across two phases counts in neither)
    fault_end: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.complete


def parse_attempts(header: str | None) -> list[tuple[str, int, float]]:
    """`"a/gpt-4o-mini";status=503;ms=2.1, "b/gpt-4o-mini";status=200;ms=3.0` -> [(a/gpt-4o-mini, 503, 2.1), ...]."""
    out: list[tuple[str, int, float]] = []
    for item in (header or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, *params = item.split(";")
        values = dict(p.split("=", 1) for p in params if "=" in p)
        out.append((name.strip('"'), int(values.get("status", 0)), float(values.get("ms", 0))))
    return out


class Load:
    """CLIENTS workers looping over the front doors until told to stop; `phase` and `fault` label each sample."""

    def __init__(self, port: int) -> None:
        self.base = f"http://{HOST}:{port}"
        self.phase = "warm-up"
        self.fault: str | None = None
        self.samples: list[Sample] = []
        self.stop = asyncio.Event()

    async def one(self, client: httpx.AsyncClient, door: Door) -> Sample:
        started, t0 = time.monotonic(), time.perf_counter()
        phase, fault = self.phase, self.fault
        status: int | None = None
        body = b""
        headers: httpx.Headers | None = None
        error = None
        try:
            async with client.stream("POST", self.base + door.path, json=door.body, headers=door.headers) as r:
                status, headers = r.status_code, r.headers
                body = await r.aread()
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        ms = (time.perf_counter() - t0) * 1000
        complete = status == 200 and door.done(body)
        if status is not None and not complete and error is None:
            error = body[-300:].decode("utf-8", "replace")
        return Sample(
            phase,
            door.name,
            door.stream,
            started,
            ms,
            status,
            complete,
            headers.get("x-request-id") if headers else None,
            parse_attempts(headers.get("x-kaixu-attempts")) if headers else [],
            error,
            fault,
            self.phase,
            self.fault,
        )

    async def check(self, client: httpx.AsyncClient) -> None:
        """Every door once, before the load: a wrong path, key or shape fails here with the answer shown."""
        for door in DOORS:
            sample = await self.one(client, door)
            self.samples.append(sample)
            if not sample.ok:
                raise BenchError(f"preflight of {door.name}: {show(sample)}")

    async def worker(self, client: httpx.AsyncClient, index: int) -> None:
        turn = index
        while not self.stop.is_set():
            door = DOORS[turn % len(DOORS)]
            turn += 1
            self.samples.append(await self.one(client, door))


async def set_fault(client: httpx.AsyncClient, port: int, fault: dict[str, Any] | None) -> None:
    url = f"http://{HOST}:{port}/_fake/default_fault"
    response = await (client.delete(url) if fault is None else client.put(url, json=fault))
    if response.status_code != 200:
        raise BenchError(f"fake {port}: {url} answered {response.status_code}: {response.text}")


NO_FAULTS, ONE_AT_A_TIME, BOTH = "no faults", "faults, one deployment at a time", "faults, both"


def blocks(baseline_s: float, soak_s: float) -> list[tuple[str, float]]:
    """The soak's phases, interleaved so that the machine's drift hits the baseline and the faults alike:
    (no faults, one at a time, no faults, both) repeated, about 20 s of faults per repetition."""
    cycles = max(1, round(soak_s / 20))
    fault_s, quiet_s = soak_s / (2 * cycles), baseline_s / (2 * cycles)
    return [(NO_FAULTS, quiet_s), (ONE_AT_A_TIME, fault_s), (NO_FAULTS, quiet_s), (BOTH, fault_s)] * cycles


async def soak(
    port: int, pid: int, fakes: dict[str, int], baseline_s: float, soak_s: float
) -> tuple[list[Sample], dict[str, float]]:
    """Warm-up, then the interleaved phases of `blocks`. Also returns the gateway's CPU seconds per phase."""
    load = Load(port)
    cpu: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=CLIENTS + 8, max_keepalive_connections=CLIENTS + 8)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client, httpx.AsyncClient(timeout=5) as control:
        await load.check(client)
        workers = [asyncio.create_task(load.worker(client, i)) for i in range(CLIENTS)]
        await asyncio.sleep(2)
        slot = 0
        for phase, duration in blocks(baseline_s, soak_s):
            mark = cpu_seconds(pid)
            load.phase = phase
            end = time.monotonic() + duration
            while time.monotonic() < end:
                label, fault = FAULTS[slot % len(FAULTS)]
                if phase == NO_FAULTS:
                    label = None
                if phase == ONE_AT_A_TIME:
                    label = f"{label} on {'ab'[int((time.monotonic() // SWITCH_S) % 2)]}"
                for name in fakes:
                    if phase == BOTH:
                        chosen: dict[str, Any] | None = {**fault, "probability": 0.2}
                    elif phase == ONE_AT_A_TIME:  # the failing one switches every SWITCH_S; the other is healthy
                        failing = "ab"[int((time.monotonic() // SWITCH_S) % 2)]
                        chosen = {**fault, "probability": 0.4} if name == failing else None
                    else:
                        chosen = None
                    await set_fault(control, fakes[name], chosen)
                load.fault = label
                await asyncio.sleep(min(FAULT_SLOT_S, max(0.0, end - time.monotonic())))
                slot += phase != NO_FAULTS
            cpu[phase] += cpu_seconds(pid) - mark
        for name in fakes:
            await set_fault(control, fakes[name], None)
        load.phase, load.fault = "cool-down", None
        await asyncio.sleep(1)
        load.stop.set()
        await asyncio.gather(*workers)
    return load.samples, dict(cpu)


async def breaker_run(
    port: int, victim: subprocess.Popen[bytes], before_s: float, after_s: float
) -> tuple[list[Sample], float]:
    """The same load; ``victim`` (fake b) is killed after ``before_s``. Returns the samples and the kill time."""
    load = Load(port)
    limits = httpx.Limits(max_connections=CLIENTS + 8, max_keepalive_connections=CLIENTS + 8)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await load.check(client)
        workers = [asyncio.create_task(load.worker(client, i)) for i in range(CLIENTS)]
        load.phase = "both healthy"
        await asyncio.sleep(before_s)
        killed = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        load.phase = "b killed"
        await asyncio.sleep(after_s)
        load.stop.set()
        await asyncio.gather(*workers)
    return load.samples, killed


# --------------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


Row = tuple[str, int, str | None, int, str | None]


def read_ledger(db: Path) -> list[Row]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return list(conn.execute("SELECT request_id, status, attempts, degraded, error FROM requests"))


def ledger_check(samples: list[Sample], rows: list[Row]) -> dict[str, Any]:
    """One row per request the clients saw, with its status and its attempts."""
    counts = Counter(r[0] for r in rows)
    by_id = {r[0]: r for r in rows}
    seen = [s for s in samples if s.request_id]
    seen_ids = Counter(s.request_id for s in seen)
    missing = [s for s in seen if counts[s.request_id or ""] == 0]
    duplicated = {rid: n for rid, n in counts.items() if n > 1}
    unknown = [rid for rid in counts if rid not in seen_ids]
    status_diff, attempts_diff, silent = [], [], []
    cross: set[str] = set()
    no_header: Counter[str] = Counter()
    for s in seen:
        row = by_id.get(s.request_id or "")
        if row is None:
            continue
        if row[1] != s.status and s.complete:
            status_diff.append((s.request_id, s.door, s.status, row[1]))
        if s.status == 200 and not s.complete and row[1] == 200 and not row[4]:
            silent.append((s.request_id, s.door, row[1], row[2]))
            tried_on = [a["provider"] for a in json.loads(row[2] or "[]")]
            if s.door == "gateway13 stream" and len(set(tried_on)) > 1:
                cross.add(s.request_id or "")
        if not s.attempts:
            no_header[s.door] += 1
            continue
        tried = json.loads(row[2]) if row[2] else []
        if not tried and len(s.attempts) == 1:
            continue  # forwarded once by mitmproxy: the ledger keeps attempts only when there were several
        if len(tried) != len(s.attempts) or [a["status"] for a in tried] != [a[1] for a in s.attempts]:
            attempts_diff.append((s.request_id, s.door, s.attempts, tried))
    return {
        "client_requests": len(samples),
        "with_id": len(seen),
        "client_ids_repeated": sum(n - 1 for n in seen_ids.values() if n > 1),
        "rows": len(rows),
        "missing": missing,
        "duplicated": duplicated,
        "unknown": unknown,
        "status_diff": status_diff,
        "attempts_diff": attempts_diff,
        "no_header": no_header,
        "silent": silent,
        "cross": cross,
    }


def phase_stats(all_samples: list[Sample], phase: str, cpu_s: float) -> dict[str, Any]:
    started = [s for s in all_samples if s.phase == phase]
    samples = [s for s in started if s.phase_end == phase]
    mid = [
        s
        for s in samples
        if not s.ok
        and s.stream
        and s.status == 200
        and any((f or "").startswith(MID_STREAM) for f in (s.fault, s.fault_end))
    ]
    failed = [s for s in samples if not s.ok and s not in mid]
    ms = [s.ms for s in samples if s.ok]
    first_failed = sum(1 for s in samples if s.attempts and s.attempts[0][1] != 200)
    return {
        "requests": len(samples),
        "ok": sum(s.ok for s in samples),
        "failed": failed,
        "mid_stream": mid,
        "p50": pct(ms, 50),
        "p99": pct(ms, 99),
        "p50_buffered": pct([s.ms for s in samples if s.ok and not s.stream], 50),
        "p50_stream": pct([s.ms for s in samples if s.ok and s.stream], 50),
        "retries_per_request": sum(max(0, len(s.attempts) - 1) for s in samples) / max(1, len(samples)),
        "first_attempt_failed": first_failed / max(1, len(samples)),
        "max_attempts": max((len(s.attempts) for s in samples), default=0),
        "across": len(started) - len(samples),
        "cpu_ms": cpu_s * 1000 / max(1, len(started)),
    }


def breaker_stats(samples: list[Sample], killed: float) -> dict[str, Any]:
    """When attempts stopped going to the killed deployment: each attempt's send time is estimated as the
    request's send time plus the attempts before it (the backoff between them, at most max_ms, is not in the
    header, so the estimate is early by at most that)."""
    to_b: list[tuple[float, int]] = []
    for s in samples:
        at = s.started
        for deployment, status, ms in s.attempts:
            if deployment.startswith("b/") and at >= killed:
                to_b.append((at - killed, status))
            at += ms / 1000
    to_b.sort()
    burst = []  # the attempts that still went to `b` right after the kill (from within its first second)
    for when, status in to_b:
        if (burst and when - burst[-1][0] > 1.0) or (not burst and when > 1.0):
            break
        burst.append((when, status))
    after = [s for s in samples if s.started >= killed]
    return {
        "attempts_to_b_after_kill": len(to_b),
        "burst": len(burst),
        "reaction_s": burst[-1][0] if burst else 0.0,
        "probes": [(round(w, 2), st) for w, st in to_b[len(burst) :]],
        "requests_after_kill": len(after),
        "failed_after_kill": [s for s in after if not s.ok],
        "requests_before": sum(1 for s in samples if s.started < killed),
        "served_by_b_before": sum(
            1 for s in samples if s.started < killed and s.attempts and s.attempts[-1][0].startswith("b/")
        ),
    }


# --------------------------------------------------------------------------------------------------
# The no-fault cost (wrk)
# --------------------------------------------------------------------------------------------------


@dataclass
class Cost:
    p50: dict[str, list[float]]
    rps: dict[str, list[float]]
    sse_first: dict[str, list[float]]
    sse_total: dict[str, list[float]]
    cpu_ms: dict[str, list[float]]


def cost(
    wrk: str, gateways: dict[str, tuple[int, int]], lua: Path, rounds: int, duration: float, sse_requests: int
) -> Cost:
    """``gateways``: name -> (port, pid)."""
    names = list(gateways)
    ports = {n: port for n, (port, _pid) in gateways.items()}
    pids = {n: pid for n, (_port, pid) in gateways.items()}
    result = Cost(*({n: [] for n in names} for _ in range(5)))
    for name in names:
        preflight(name, ports[name], KEY)
        check_clean(name, run_wrk(wrk, f"http://{HOST}:{ports[name]}{PATH}", lua, CLIENTS, 2.0))
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else list(reversed(names)):
            url = f"http://{HOST}:{ports[name]}{PATH}"
            low = run_wrk(wrk, url, lua, 1, duration)
            before = cpu_seconds(pids[name])
            high = run_wrk(wrk, url, lua, CLIENTS, duration)
            result.cpu_ms[name].append((cpu_seconds(pids[name]) - before) * 1000 / max(1, high.requests))
            check_clean(name, low)
            check_clean(name, high)
            sse = measure_sse(name, ports[name], KEY, sse_requests)
            result.p50[name].append(low.p50_ms)
            result.rps[name].append(high.rps)
            result.sse_first[name].append(sse.ttfb_ms_median)
            result.sse_total[name].append(sse.total_ms_median)
            print(
                f"  round {round_ + 1} {name}: p50 {low.p50_ms:.3f} ms, {high.rps:,.0f} req/s, "
                f"SSE first {sse.ttfb_ms_median:.2f} / total {sse.total_ms_median:.2f} ms",
                file=sys.stderr,
            )
    return result


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def show(s: Sample) -> str:
    error = (s.error or "")[:160]
    return f"{s.door} status={s.status} id={s.request_id} fault={s.fault!r} attempts={s.attempts} error={error!r}"


def report(
    args: argparse.Namespace,
    soak_samples: list[Sample],
    soak_cpu: dict[str, float],
    ledger: dict[str, Any],
    brk: dict[str, Any],
    cst: Cost,
) -> str:
    info = machine()
    phases = [NO_FAULTS, ONE_AT_A_TIME, BOTH]
    stats = {p: phase_stats(soak_samples, p, soak_cpu[p]) for p in phases}
    plan = blocks(args.baseline_s, args.soak_s)
    seconds = {p: sum(d for q, d in plan if q == p) for p in phases}
    across = sum(st["across"] for st in stats.values())
    base = stats["no faults"]
    lines = [
        f"Measured {info['date']} on {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"mitmproxy {info['mitmproxy']}; pinned: {info['pinned']} (gateway on CPU {GATEWAY_CPU}; the fakes, "
        f"the clients and wrk on CPU {LOAD_CPU}); 1-minute load average {args.load_start:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end (above 2 on 2 CPUs, other processes shared them: absolute numbers "
        "are noisy, compare the rows of one table).",
        "",
        f"**Soak**: {CLIENTS} clients (asyncio + httpx, closed loop) cycling through {len(DOORS)} front doors "
        f"({', '.join(d.name for d in DOORS)}); `gpt-4o-mini` on two deployments, `a` (kind openai) and `b` (kind "
        f"anthropic: every request to it is translated); retries `attempts: {RETRIES['attempts']}`, backoff "
        f"`base_ms: {RETRIES['backoff']['base_ms']}, max_ms: {RETRIES['backoff']['max_ms']}`, jitter; "  # type: ignore[index]
        f"`routing.breaker: {json.dumps(SOAK_BREAKER)}` (effectively off: a 20 % fault rate trips any realistic "
        f"breaker on both deployments at once, and kaixu then tries them anyway; the breaker has its own test "
        f"below). Faults rotate every {FAULT_SLOT_S:g} s through: {'; '.join(label for label, _ in FAULTS)}. "
        f"Phases interleaved in blocks ({' / '.join(f'{p} {d:g} s' for p, d in plan[:4])}, "
        f"{len(plan) // 4} times), so that the machine's drift hits the baseline and the faults alike: "
        f"{args.baseline_s:g} s without faults in all, {args.soak_s / 2:g} s with one deployment failing 40 % of "
        f"its attempts at a time (switching every {SWITCH_S:g} s, the other healthy), {args.soak_s / 2:g} s "
        f"with both failing 20 % independently. {across} requests that spanned a change of phase are left out "
        "of the rows below (not of the ledger check).",
        "",
        "| phase | requests | req/s | client-visible failures | success | streams cut after their first byte "
        "| first attempt failed | retries / request | max attempts | p50 ms (vs no faults) | p99 ms (vs no faults) "
        "| p50 buffered / stream ms | gateway CPU ms / request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        st = stats[p]
        failed = len(st["failed"])
        success = 100 * st["ok"] / max(1, st["requests"])
        rate = st["requests"] / seconds[p]
        vs50 = f" ({st['p50'] / base['p50']:.2f}x)" if p != "no faults" else ""
        vs99 = f" ({st['p99'] / base['p99']:.2f}x)" if p != "no faults" else ""
        lines.append(
            f"| {p} | {st['requests']:,} | {rate:,.0f} | {failed} | {success:.3f} % | {len(st['mid_stream'])} "
            f"| {100 * st['first_attempt_failed']:.1f} % | {st['retries_per_request']:.3f} | {st['max_attempts']} "
            f"| {st['p50']:.1f}{vs50} | {st['p99']:.1f}{vs99} | {st['p50_buffered']:.1f} / {st['p50_stream']:.1f} "
            f"| {st['cpu_ms']:.2f} |"
        )
    both = stats["faults, both"]
    expected = both["requests"] * both["first_attempt_failed"] * 0.2 ** (RETRIES["attempts"] - 1)  # type: ignore[operator]
    lines += [
        "",
        "Client-visible failures exclude the streams cut after their first byte (the `stream cut after 3 events` "
        "fault): kaixu cannot retry those by design (the client already has part of the answer), they end with "
        "the door's error event and are counted in their own column. With both deployments failing at once, a "
        f"request fails when all {RETRIES['attempts']} attempts do: about {expected:.0f} of them expected at this "
        "fault rate.",
    ]
    failures = [s for p in phases[1:] for s in stats[p]["failed"]]
    cross = [s for s in failures if s.request_id in ledger["cross"]]
    if cross:
        lines += [
            "",
            f"**A kaixu bug shows here**: {len(cross)} of the {len(failures)} client-visible failures under faults "
            "are Gateway 13 streams (`gateway-stream`) whose retry landed on the other deployment, of the other wire "
            "format (`a` openai, `b` anthropic): the retry succeeds (the ledger shows the failed attempt, then a "
            "200), but the client's stream carries no delta and ends with `event: error` \"upstream stream ended "
            'before the answer was complete", and the ledger records the request as a 200 without error. The '
            "other stream doors (OpenAI, Anthropic, Gemini, kAIxu Gate) are retried across formats correctly, and "
            "a Gateway 13 stream retried onto a deployment of the same format is too. Gateway 13 streams also "
            "carry no `x-kaixu-attempts` header (their answer starts, with pings, before any attempt is made).",
        ]
    failures = [s for p in phases[1:2] for s in stats[p]["failed"] if s not in cross]
    switched = [s for s in failures if (s.fault or "")[-4:] != (s.fault_end or "")[-4:]]
    failures = [s for s in failures if s not in switched]
    if switched:
        lines += [
            "",
            f"{len(switched)} more failed with one deployment failing at a time because the failing deployment "
            f"changed while they ran (each had both fail in its lifetime; not a kaixu fault), e.g. {show(switched[0])}",
        ]
    lines += [
        "",
        f"**With one deployment healthy at a time, client-visible failures other than those: {len(failures)}.**",
    ]
    if failures:
        lines += ["", f"Unexpected client-visible failures ({len(failures)}), first ones:", ""]
        lines += [f"- {show(s)}" for s in failures[:8]]
    kinds = Counter((s.door, s.status) for s in both["failed"])
    if kinds:
        lines += [
            "",
            "Failures with both deployments failing, by door and status: "
            + ", ".join(f"{d} {st}: {n}" for (d, st), n in sorted(kinds.items(), key=str))
            + ".",
        ]
    ok_ledger = not (ledger["missing"] or ledger["duplicated"] or ledger["unknown"] or ledger["client_ids_repeated"])
    ok_content = not (ledger["attempts_diff"] or ledger["status_diff"] or ledger["silent"])
    lines += [
        "",
        f"**Ledger** (SQLite, read after the gateway stopped): {ledger['client_requests']:,} client requests "
        f"(warm-up and cool-down included), {ledger['with_id']:,} answered with an `x-request-id`, "
        f"{ledger['rows']:,} ledger rows; missing {len(ledger['missing'])}, duplicated {len(ledger['duplicated'])}, "
        f"rows no client saw {len(ledger['unknown'])}, ids answered twice {ledger['client_ids_repeated']}, "
        f"status differs from a complete answer's {len(ledger['status_diff'])}, attempts differ from "
        f"`x-kaixu-attempts` {len(ledger['attempts_diff'])} (answers without the header, not compared: "
        f"{dict(ledger['no_header']) or 'none'}), streams that ended with an error event recorded as a 200 "
        f"without error {len(ledger['silent'])}: "
        + ("**exactly one record per client request**" if ok_ledger else "**not one record per request**")
        + (", and each agrees with its answer." if ok_content else "; some records disagree with their answer:"),
    ]
    for label, items in (
        ("missing", ledger["missing"]),
        ("attempts differ", ledger["attempts_diff"]),
        ("status differs", ledger["status_diff"]),
        ("error not recorded", ledger["silent"]),
    ):
        for item in items[:4]:
            lines.append(f"- {label}: {show(item) if isinstance(item, Sample) else item}")
    fa = brk["failed_after_kill"]
    lines += [
        "",
        f"**Breaker**: a new gateway with `routing.breaker: {json.dumps(BREAKER)}` and the same retries and load; "
        f"fake `b` killed (SIGKILL) after {args.breaker_before_s:g} s, then {args.breaker_after_s:g} s more. Before "
        f"the kill `b` served {brk['served_by_b_before']:,} of {brk['requests_before']:,} requests. After it, "
        f"{brk['attempts_to_b_after_kill']} attempts still went to `b`: "
        + (
            f"{brk['burst']} in the first burst, the last of them **{brk['reaction_s'] * 1000:.0f} ms after the "
            "kill** (then the breaker was open), and "
            if brk["burst"]
            else "**none sent after the kill** (the requests in flight to it when it died opened its breaker at "
            "once), but "
        )
        + f"{len(brk['probes'])} later (the half-open probes after each {BREAKER['cooldown_s']} s cooldown, at s "
        f"after the kill / status: {brk['probes'][:8]}). {brk['requests_after_kill']:,} requests after the kill, "
        f"{len(fa)} client-visible failures"
        + (
            f", of which {gw13} Gateway 13 streams whose retry from `b` to `a` changed wire format (the bug above)"
            if (gw13 := sum(1 for s in fa if s.door == "gateway13 stream" and s.status == 200))
            else ""
        )
        + (f"; first: {show(fa[0])}." if fa else "."),
        "",
    ]
    med = {k: {n: statistics.median(v) for n, v in d.items()} for k, d in vars(cst).items()}
    w, wo = "with retries", "without"
    lines += [
        f"**No-fault cost** (wrk, `POST {PATH}`, medians of {args.rounds} alternating rounds of {args.duration:g} s; "
        f"streams: {args.sse_requests} sequential `stream: true` requests of {SSE_EVENTS} events per round, "
        f'`measure_sse`): "with retries" has `retries` as above and `fallbacks: [backup]` (a model on `b`), '
        "so mitmproxy still makes the first attempt of each buffered request (kaixu's executor only takes over "
        'when it fails) and each stream goes through the loopback relay; "without" has neither, and mitmproxy '
        "forwards every request.",
        "",
        f"| | p50 ms, c=1 | requests/s, c={CLIENTS} | SSE first byte ms | SSE total ms "
        f"| gateway CPU ms / request, c={CLIENTS} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in (wo, w):
        lines.append(
            f"| {name} | {med['p50'][name]:.3f} | {med['rps'][name]:,.0f} | {med['sse_first'][name]:.2f} "
            f"| {med['sse_total'][name]:.2f} | {med['cpu_ms'][name]:.2f} |"
        )
    lines += [
        f"| ratio with / without | {med['p50'][w] / med['p50'][wo]:.3f} | {med['rps'][w] / med['rps'][wo]:.3f} "
        f"| {med['sse_first'][w] / med['sse_first'][wo]:.3f} | {med['sse_total'][w] / med['sse_total'][wo]:.3f} "
        f"| {med['cpu_ms'][w] / med['cpu_ms'][wo]:.3f} |",
        "",
        "Each round (p50 ms / req/s): "
        + "; ".join(
            f"{n} " + ", ".join(f"{a:.3f}/{b:,.0f}" for a, b in zip(cst.p50[n], cst.rps[n], strict=True))
            for n in (wo, w)
        ),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--soak-s", type=float, default=60.0, help="seconds with faults (two halves)")
    parser.add_argument("--baseline-s", type=float, default=30.0, help="seconds of the same load without faults")
    parser.add_argument("--breaker-before-s", type=float, default=4.0)
    parser.add_argument("--breaker-after-s", type=float, default=14.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--sse-requests", type=int, default=30)
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--dump", type=Path, help="write every client sample here (JSON lines)")
    parser.add_argument("--only-soak", action="store_true", help="the soak alone (for debugging)")
    args = parser.parse_args()
    args.load_start = os.getloadavg()[0]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if can_pin():
        os.sched_setaffinity(0, {LOAD_CPU})
    random.seed()
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="kaixu-reliability-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        fake_a, _proc_a = start_fake_proc(work / "fake-a", stack)
        fake_b, proc_b = start_fake_proc(work / "fake-b", stack)
        fakes = {"a": fake_a, "b": fake_b}

        print("soak", file=sys.stderr)
        with contextlib.ExitStack() as gateway:
            text = policy_text(work / "soak", fakes, retries=True, breaker=SOAK_BREAKER, two_deployments=True)
            port, pid = start_kaixu(work / "soak", fake_a, gateway, text)
            soak_samples, soak_cpu = asyncio.run(soak(port, pid, fakes, args.baseline_s, args.soak_s))
        rows = read_ledger(work / "soak" / "kaixu.db")  # the gateway stopped: its ledger is flushed
        ledger = ledger_check(soak_samples, rows)
        if args.dump:
            with args.dump.open("w") as out:
                out.writelines(json.dumps(vars(s)) + "\n" for s in soak_samples)
        if args.only_soak:
            print(json.dumps({k: v if isinstance(v, int) else len(v) for k, v in ledger.items()}))
            return 0

        print("no-fault cost", file=sys.stderr)
        lua = write_lua(work / "bench.lua", SMALL_BODY, KEY)
        with contextlib.ExitStack() as gateways:
            started: dict[str, tuple[int, int]] = {}
            for name, retries in (("without", False), ("with retries", True)):
                where = work / name.replace(" ", "-")
                text = policy_text(where, fakes, retries=retries, breaker=None, two_deployments=False, fallback=retries)
                started[name] = start_kaixu(where, fake_a, gateways, text)
            cst = cost(wrk, started, lua, args.rounds, args.duration, args.sse_requests)

        print("breaker", file=sys.stderr)
        with contextlib.ExitStack() as gateway:
            text = policy_text(work / "breaker", fakes, retries=True, breaker=BREAKER, two_deployments=True)
            port, _pid = start_kaixu(work / "breaker", fake_a, gateway, text)
            samples, killed = asyncio.run(breaker_run(port, proc_b, args.breaker_before_s, args.breaker_after_s))
        brk = breaker_stats(samples, killed)
    text = report(args, soak_samples, soak_cpu, ledger, brk, cst)
    print(text)
    if not args.no_doc:
        update_doc(text, DOC_BEGIN, DOC_END, DOC_PREAMBLE)
        print("updated docs/performance.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
