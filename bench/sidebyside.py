"""Side by side: kaixu (governance on, 1 and 2 workers, SQLite and Redis counters) against the Portkey gateway
and bare mitmdump, every scenario of issue 21, in one run on this machine, with a soak option.

Why a sibling of overhead.py: it shares overhead.py's processes, pinning, wrk runner and /proc sampling, but
measures differently: every configuration runs at once (idle but for its turn), and the configurations take
turns in every scenario of every round, the order reversed each round, so a change of the machine's load falls on
all of them alike. The report gives ratios within a round (median and the lowest-highest of ``--rounds`` rounds),
each beside the load average it was measured at: absolute numbers from a machine other sessions share mean little.

Configurations (``--only``):

* ``direct``      wrk -> fake provider
* ``mitmdump``    wrk -> bare mitmdump (reverse mode, default addons) -> fake
* ``portkey``     wrk -> the Portkey gateway (``@portkey-ai/gateway``, node, installed from the npm registry into
  a cache folder on first use, ``@hono/node-server`` pinned by npm ``overrides``) -> fake; told the upstream by
  its ``x-portkey-provider: openai`` and ``x-portkey-custom-host`` headers
* ``kaixu``       ``kaixu run``, governance on: a key with a monthly budget and an rpm limit (never reached), the
  ledger on, counters and ledger in SQLite
* ``kaixu-redis`` the same, counters in Redis (``--redis``, default 127.0.0.1:6379)
* ``kaixu-2w``    the same as ``kaixu`` with ``--workers 2`` (both CPUs, as overhead.py's kaixu-2w)

Scenarios: JSON at 1 and 32 connections, 50-event streams at 1 and 32, paced streams (50 events 10 ms apart,
the fake provider's default fault) at 32 connections, and sequential streams (unpaced and paced) for the time to
first byte. Every answer is validated by the wrk script (a 200 with ``choices``, or a stream of at least 50 SSE
events ending in ``[DONE]``): one bad answer fails the run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from overhead import (
    ALL_CPUS,
    CLIENT_KEY,
    FAKE_PIDS,
    GATEWAY_CPU,
    HOST,
    PATH,
    RESULTS_DIR,
    ROOT,
    UPSTREAM_KEY,
    WORKERS_2,
    BenchError,
    accepts,
    can_pin,
    check_clean,
    cpu_seconds,
    ensure_wrk,
    free_port,
    kaixu_policy,
    machine,
    measure_sse,
    pinned,
    preflight,
    rss_mb,
    rss_peak,
    run_wrk,
    spawn,
    start_fake,
    start_kaixu,
    start_mitmdump,
    update_doc,
    wait_until,
)
from overhead import validating_lua as overhead_lua

PORTKEY_VERSION = "1.15.2"
HONO_NODE_SERVER = "1.13.8"  # later versions fail Portkey's streams with "TypeError: immutable"
PORTKEY_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kaixu-bench" / f"portkey-{PORTKEY_VERSION}"
)
PACED_DELAY_MS = 10
BIG = 10**6
DOC_BEGIN, DOC_END = "<!-- sidebyside:begin -->", "<!-- sidebyside:end -->"
SOAK_BEGIN, SOAK_END = "<!-- soak:begin -->", "<!-- soak:end -->"
DEFAULT_CONFIGS = ("direct", "mitmdump", "portkey", "kaixu", "kaixu-redis", "kaixu-2w")
KAIXU_CONFIGS = ("kaixu", "kaixu-redis", "kaixu-2w")
BASELINES = ("portkey", "mitmdump")


@dataclass
class Gateway:
    """One running configuration: where to send, what the CPU and RSS are read from, what to present."""

    name: str
    port: int
    pid: int | None
    key: str
    extra: dict[str, str] = field(default_factory=dict)
    lua: dict[bool, Path] = field(default_factory=dict)
    """The validating wrk script for JSON (False) and streams (True)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    connections: int
    paced: bool = False


SCENARIOS = (
    Scenario("json-c1", False, 1),
    Scenario("json-c32", False, 32),
    Scenario("stream-c1", True, 1),
    Scenario("stream-c32", True, 32),
    Scenario("paced-c32", True, 32, paced=True),
)


@dataclass
class Sample:
    """One turn of one configuration in one scenario."""

    round: int
    target: str
    scenario: str
    loadavg: float
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_ms: float | None = None
    """The gateway's CPU (the whole process tree's) per request or stream."""
    rss_mb: float | None = None
    load_cpu: float | None = None
    ttfb_ms: float | None = None
    total_ms: float | None = None


# --------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------


def install_portkey(folder: Path = PORTKEY_DIR) -> Path:
    """The Portkey gateway from the npm registry, pinned, into ``folder`` (once); returns its server script."""
    script = folder / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if script.exists():
        return script
    folder.mkdir(parents=True, exist_ok=True)
    package = {
        "name": "kaixu-bench-portkey",
        "private": True,
        "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION},
        "overrides": {"@hono/node-server": HONO_NODE_SERVER},
    }
    (folder / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    print(f"installing @portkey-ai/gateway@{PORTKEY_VERSION} into {folder}", file=sys.stderr)
    cmd = ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel", "error"]
    done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not script.exists():
        raise BenchError(f"npm install of the Portkey gateway failed:\n{done.stdout}\n{done.stderr}")
    return script


def start_portkey(work: Path, fake_port: int, stack: contextlib.ExitStack) -> Gateway:
    script = install_portkey()
    port, log = free_port(), work / "portkey.log"
    cmd = ["node", str(script), f"--port={port}", "--headless"]
    proc = spawn(pinned(cmd, GATEWAY_CPU), log, stack, cwd=script.parent, env={**os.environ, "NODE_ENV": "production"})
    wait_until(lambda: accepts(port), proc, log, "portkey")
    extra = {"x-portkey-provider": "openai", "x-portkey-custom-host": f"http://{HOST}:{fake_port}/v1"}
    return Gateway("portkey", port, proc.pid, UPSTREAM_KEY, extra)


def governed_policy(fake_port: int, work: Path, store: dict[str, object]) -> str:
    """overhead.py's policy with governance on: the key has a monthly budget and an rpm limit (both too large to
    refuse), the ledger and counters in SQLite in ``work`` (plus ``store``: Redis)."""
    policy = json.loads(kaixu_policy(fake_port))
    policy["keys"][0].update(budget={"usd": BIG, "period": "month"}, limits={"rpm": BIG})
    policy["store"] = {"sqlite": str(work / "kaixu.db"), **store}
    return json.dumps(policy, indent=2)


def start_governed(name: str, redis: str | None, workers: bool) -> Callable[..., Gateway]:
    def start(work: Path, fake_port: int, stack: contextlib.ExitStack) -> Gateway:
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        store: dict[str, object] = {}
        if redis is not None:
            store["redis"] = {"url": redis, "prefix": f"kaixu-bench:{uuid.uuid4().hex[:8]}:"}
        text = governed_policy(fake_port, folder, store)
        extra_args = WORKERS_2 if workers else ("--log-level", "warning")
        port, pid = start_kaixu(
            folder, fake_port, stack, text, args=extra_args, cpus=ALL_CPUS if workers else GATEWAY_CPU
        )
        return Gateway(name, port, pid, CLIENT_KEY)

    return start


def starters(redis: str) -> dict[str, Callable[[Path, int, contextlib.ExitStack], Gateway]]:
    def mitmdump(work: Path, fake_port: int, stack: contextlib.ExitStack) -> Gateway:
        port, pid = start_mitmdump(work, fake_port, stack)
        return Gateway("mitmdump", port, pid, UPSTREAM_KEY)

    def direct(work: Path, fake_port: int, stack: contextlib.ExitStack) -> Gateway:
        return Gateway("direct", fake_port, None, UPSTREAM_KEY)

    return {
        "direct": direct,
        "mitmdump": mitmdump,
        "portkey": start_portkey,
        "kaixu": start_governed("kaixu", None, workers=False),
        "kaixu-redis": start_governed("kaixu-redis", redis, workers=False),
        "kaixu-2w": start_governed("kaixu-2w", None, workers=True),
    }


def validating_lua(path: Path, gateway: Gateway, stream: bool) -> Path:
    return overhead_lua(path, gateway.key, stream, gateway.extra)


def set_pacing(fake_port: int, delay_ms: int) -> None:
    """Every stream of the fake provider paced ``delay_ms`` between events (0: unpaced), through its control API:
    gateways forward no ``x-fake-*`` header."""
    conn = http.client.HTTPConnection(HOST, fake_port, timeout=10)
    try:
        if delay_ms:
            conn.request("PUT", "/_fake/default_fault", body=json.dumps({"event_delay_ms": delay_ms}))
        else:
            conn.request("DELETE", "/_fake/default_fault")
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"fake provider refused the pacing change: HTTP {response.status}")


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    rounds: int
    warmup_s: float
    measure_s: float
    ttfb_streams: int
    paced_streams: int


def wrk_turn(wrk: str, gw: Gateway, scenario: Scenario, plan: Plan, round_: int, fake_pid: int | None) -> Sample:
    url = f"http://{HOST}:{gw.port}{PATH}"
    lua = gw.lua[scenario.stream]
    warm = run_wrk(wrk, url, lua, scenario.connections, plan.warmup_s)
    if warm.requests or warm.non_2xx or any(warm.socket_errors.values()):  # a paced stream may outlast a warm-up
        check_clean(f"{gw.name} {scenario.name} warm-up", warm)
    before = cpu_seconds(gw.pid) if gw.pid else 0.0
    with rss_peak(gw.pid) as peak:
        run = run_wrk(wrk, url, lua, scenario.connections, plan.measure_s, fake_pid)
    check_clean(f"{gw.name} {scenario.name}", run)
    sample = Sample(round_, gw.name, scenario.name, os.getloadavg()[0], run.rps, run.p50_ms, run.p99_ms)
    if gw.pid:
        sample.cpu_ms = (cpu_seconds(gw.pid) - before) * 1000 / run.requests
        sample.rss_mb = peak[0] if peak else None
    sample.load_cpu = run.load_cpu_share
    print(
        f"  round {round_} {scenario.name} {gw.name}: {run.rps:,.1f}/s p50 {run.p50_ms:.2f} p99 {run.p99_ms:.2f} ms"
        f" cpu {sample.cpu_ms or 0:.2f} ms (load {sample.loadavg:.1f})",
        file=sys.stderr,
    )
    return sample


def ttfb_turn(gw: Gateway, name: str, requests: int, round_: int) -> Sample:
    sse = measure_sse(gw.name, gw.port, gw.key, requests, gw.extra, timeout_s=30)
    sample = Sample(round_, gw.name, name, os.getloadavg()[0], ttfb_ms=sse.ttfb_ms_median, total_ms=sse.total_ms_median)
    print(
        f"  round {round_} {name} {gw.name}: first byte {sse.ttfb_ms_median:.2f} ms, "
        f"total {sse.total_ms_median:.2f} ms",
        file=sys.stderr,
    )
    return sample


def start_all(only: list[str], redis: str, work: Path, fake_port: int, stack: contextlib.ExitStack) -> list[Gateway]:
    running = []
    for name, starter in starters(redis).items():
        if name not in only:
            continue
        gw = starter(work, fake_port, stack)
        preflight(name, gw.port, gw.key, gw.extra)
        gw.lua = {flag: validating_lua(work / f"{name}-{flag}.lua", gw, flag) for flag in (False, True)}
        running.append(gw)
    return running


def run_side_by_side(plan: Plan, only: list[str], redis: str) -> list[Sample]:
    wrk = ensure_wrk()
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="kaixu-sbs-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        fake_port = start_fake(work, stack)
        fake_pid = FAKE_PIDS.get(fake_port)
        running = start_all(only, redis, work, fake_port, stack)
        for round_ in range(plan.rounds):
            order = running if round_ % 2 == 0 else running[::-1]
            for scenario in SCENARIOS:
                set_pacing(fake_port, PACED_DELAY_MS if scenario.paced else 0)
                samples += [wrk_turn(wrk, gw, scenario, plan, round_, fake_pid) for gw in order]
            set_pacing(fake_port, 0)
            samples += [ttfb_turn(gw, "ttfb", plan.ttfb_streams, round_) for gw in order]
            set_pacing(fake_port, PACED_DELAY_MS)
            samples += [ttfb_turn(gw, "paced-ttfb", plan.paced_streams, round_) for gw in order]
            set_pacing(fake_port, 0)
    return samples


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def pick(samples: list[Sample], target: str, scenario: str, metric: str) -> dict[int, float]:
    """{round: value} of one metric."""
    out = {}
    for s in samples:
        value = getattr(s, metric)
        if s.target == target and s.scenario == scenario and value is not None:
            out[s.round] = float(value)
    return out


def spread(values: list[float], digits: int = 2, suffix: str = "") -> str:
    """Median (lowest-highest)."""
    if not values:
        return "-"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:,.{digits}f}{suffix} ({low:,.{digits}f}-{high:,.{digits}f})"


def loads_of(samples: list[Sample], target: str | None = None, scenario: str | None = None) -> str:
    values = [s.loadavg for s in samples if (target is None or s.target == target) and (scenario in (None, s.scenario))]
    return f"{min(values):.1f}-{max(values):.1f}" if values else "-"


# (label, scenario, metric, digits): the rows of the per-configuration table
ROWS = (
    ("JSON req/s, c=1", "json-c1", "rps", 0),
    ("JSON req/s, c=32", "json-c32", "rps", 0),
    ("JSON p50 / p99 ms, c=1", "json-c1", ("p50_ms", "p99_ms"), 2),
    ("JSON p99 ms, c=32", "json-c32", "p99_ms", 1),
    ("CPU ms per JSON request, c=32", "json-c32", "cpu_ms", 2),
    ("50-event streams/s, c=1", "stream-c1", "rps", 0),
    ("50-event streams/s, c=32", "stream-c32", "rps", 0),
    ("CPU ms per 50-event stream, c=32", "stream-c32", "cpu_ms", 2),
    ("paced streams (50 x 10 ms)/s, c=32", "paced-c32", "rps", 1),
    ("paced stream p99 ms, c=32", "paced-c32", "p99_ms", 0),
    ("CPU ms per paced stream, c=32", "paced-c32", "cpu_ms", 2),
    ("stream first byte ms (sequential)", "ttfb", "ttfb_ms", 2),
    ("stream total ms (sequential)", "ttfb", "total_ms", 2),
    ("paced stream first byte ms (sequential)", "paced-ttfb", "ttfb_ms", 2),
    ("paced stream total ms (sequential)", "paced-ttfb", "total_ms", 1),
    ("peak RSS MB (JSON c=32)", "json-c32", "rss_mb", 0),
    ("peak RSS MB (streams c=32)", "stream-c32", "rss_mb", 0),
)

# (label, scenario, metric, better): the ratio rows, kaixu's value over the baseline's within each round
RATIOS = (
    ("JSON req/s, c=1", "json-c1", "rps", "higher"),
    ("JSON req/s, c=32", "json-c32", "rps", "higher"),
    ("CPU per JSON request, c=32", "json-c32", "cpu_ms", "lower"),
    ("JSON p99, c=32", "json-c32", "p99_ms", "lower"),
    ("50-event streams/s, c=1", "stream-c1", "rps", "higher"),
    ("50-event streams/s, c=32", "stream-c32", "rps", "higher"),
    ("CPU per 50-event stream, c=32", "stream-c32", "cpu_ms", "lower"),
    ("CPU per paced stream, c=32", "paced-c32", "cpu_ms", "lower"),
    ("stream first byte (sequential)", "ttfb", "ttfb_ms", "lower"),
    ("paced stream first byte (sequential)", "paced-ttfb", "ttfb_ms", "lower"),
    ("peak RSS (streams c=32)", "stream-c32", "rss_mb", "lower"),
)


def per_target_table(samples: list[Sample], targets: list[str]) -> str:
    lines = [
        "| | " + " | ".join(targets) + " |",
        "|---|" + "---:|" * len(targets),
    ]
    for label, scenario, metric, digits in ROWS:
        cells = []
        for target in targets:
            if isinstance(metric, tuple):
                parts = [spread(list(pick(samples, target, scenario, m).values()), digits) for m in metric]
                cells.append(" / ".join(parts) if any(p != "-" for p in parts) else "-")
            else:
                cells.append(spread(list(pick(samples, target, scenario, metric).values()), digits))
        lines.append(f"| {label} (load {loads_of(samples, scenario=scenario)}) | " + " | ".join(cells) + " |")
    added = []
    for scenario, metric, label in (
        ("json-c1", "p50_ms", "added p50 ms, JSON c=1"),
        ("json-c1", "p99_ms", "added p99 ms, JSON c=1"),
        ("ttfb", "ttfb_ms", "added first byte ms, stream"),
        ("paced-ttfb", "ttfb_ms", "added first byte ms, paced stream"),
    ):
        base = pick(samples, "direct", scenario, metric)
        cells = []
        for target in targets:
            own = pick(samples, target, scenario, metric)
            diffs = [own[r] - base[r] for r in own if r in base]
            cells.append("-" if target == "direct" or not diffs else spread(diffs, 2))
        added.append(f"| {label} (over direct, same round) | " + " | ".join(cells) + " |")
    return "\n".join(lines + added) + "\n"


def ratio_table(samples: list[Sample], targets: list[str]) -> str:
    kaixus = [t for t in KAIXU_CONFIGS if t in targets]
    bases = [b for b in BASELINES if b in targets]
    pairs = [(k, b) for b in bases for k in kaixus]
    if "kaixu" in targets and "kaixu-2w" in targets:
        pairs.append(("kaixu-2w", "kaixu"))
    if not pairs:
        return ""
    lines = [
        "| ratio (median of rounds, lowest-highest) | better | load average | "
        + " | ".join(f"{k} / {b}" for k, b in pairs)
        + " |",
        "|---|---|---:|" + "---:|" * len(pairs),
    ]
    for label, scenario, metric, better in RATIOS:
        cells = []
        for k, b in pairs:
            own, base = pick(samples, k, scenario, metric), pick(samples, b, scenario, metric)
            ratios = [own[r] / base[r] for r in own if base.get(r)]
            cells.append(spread(ratios, 2, "x"))
        lines.append(f"| {label} | {better} | {loads_of(samples, scenario=scenario)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(samples: list[Sample], targets: list[str], plan: Plan, info: dict[str, str], node: str) -> str:
    return (
        f"Measured {info['date']} on {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, mitmproxy "
        f"{info['mitmproxy']}, Portkey gateway {PORTKEY_VERSION} (node {node}); pinned: {info['pinned']}; "
        f"{plan.rounds} rounds, each configuration's turn {plan.warmup_s:g} s warm-up + {plan.measure_s:g} s of wrk "
        f"per scenario, {plan.ttfb_streams} sequential streams and {plan.paced_streams} paced ones; load average "
        f"{loads_of(samples)} over the run (per row in brackets). Every answer validated, 0 errors.\n\n"
        f"Each cell: median over the rounds (lowest-highest round).\n\n{per_target_table(samples, targets)}\n"
        f"kaixu over the baselines, the ratio taken within each round:\n\n{ratio_table(samples, targets)}"
    )


def node_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    return "?"


def save(kind: str, payload: object, **more: object) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{kind}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps({"machine": machine(), **more, "results": payload}, indent=2) + "\n")
    return path


def from_results(path: Path, plan: Plan) -> tuple[list[Sample], list[str], Plan, dict[str, str], str]:
    """A saved side-by-side run, to report again (``--report``) without measuring again."""
    payload = json.loads(path.read_text())
    samples = [Sample(**item) for item in payload["results"]]
    saved = payload.get("plan")
    return (
        samples,
        list(dict.fromkeys(s.target for s in samples)),
        Plan(**saved) if saved else plan,
        payload["machine"],
        str(payload.get("node") or node_version()),
    )


# --------------------------------------------------------------------------------------------------
# Soak
# --------------------------------------------------------------------------------------------------


@dataclass
class Slice:
    """One stretch of a soak: JSON at 16 connections and streams at 4, at once."""

    target: str
    at_s: float
    loadavg: float
    rss_mb: float
    anon_mb: float
    """RssAnon: the heap's share of the RSS (the rest is mapped files and shared memory)."""
    json_rps: float
    json_p99_ms: float
    stream_rps: float
    stream_p99_ms: float


def soak(seconds: float, slice_s: float, only: list[str], redis: str) -> list[Slice]:
    """Each configuration of ``only`` (behind a gateway) in turn: fixed load for ``seconds``, in slices of
    ``slice_s``, RSS read after every slice."""
    wrk = ensure_wrk()
    slices: list[Slice] = []
    with tempfile.TemporaryDirectory(prefix="kaixu-soak-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        fake_port = start_fake(work, stack)
        for gw in start_all([t for t in only if t != "direct"], redis, work, fake_port, stack):
            assert gw.pid is not None
            url = f"http://{HOST}:{gw.port}{PATH}"
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                while time.monotonic() - started < seconds:
                    json_run = pool.submit(run_wrk, wrk, url, gw.lua[False], 16, slice_s)
                    stream_run = pool.submit(run_wrk, wrk, url, gw.lua[True], 4, slice_s)
                    runs = json_run.result(), stream_run.result()
                    for run in runs:
                        check_clean(f"{gw.name} soak", run)
                    item = Slice(
                        gw.name,
                        time.monotonic() - started,
                        os.getloadavg()[0],
                        rss_mb(gw.pid),
                        rss_mb(gw.pid, "RssAnon"),
                        runs[0].rps,
                        runs[0].p99_ms,
                        runs[1].rps,
                        runs[1].p99_ms,
                    )
                    slices.append(item)
                    print(
                        f"  soak {gw.name} {item.at_s:.0f} s: RSS {item.rss_mb:.1f} MB, JSON p99 {item.json_p99_ms:.1f}"
                        f" ms, stream p99 {item.stream_p99_ms:.1f} ms (load {item.loadavg:.1f})",
                        file=sys.stderr,
                    )
    return slices


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) in MB per minute."""
    if len(points) < 2:
        return 0.0
    return statistics.linear_regression([t / 60 for t, _ in points], [mb for _, mb in points]).slope


def soak_report(slices: list[Slice], seconds: float, slice_s: float) -> str:
    lines = [
        f"Measured {machine()['date']}: {seconds:g} s per configuration at fixed load (wrk JSON at 16 connections "
        f"and 50-event streams at 4, at once), in slices of {slice_s:g} s; RSS of the process tree after each "
        "slice. Slope: least squares over the slices after the first (the first holds the warm-up).",
        "",
        "| config | load average | RSS MB first / last slice | RSS slope MB/min | RssAnon MB first / last "
        "| RssAnon slope MB/min | JSON p99 ms first / median / last | stream p99 ms first / median / last "
        "| JSON req/s median |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in dict.fromkeys(s.target for s in slices):
        own = [s for s in slices if s.target == target]
        tail = own[1:] if len(own) > 2 else own
        slope = slope_per_min([(s.at_s, s.rss_mb) for s in tail])
        anon = slope_per_min([(s.at_s, s.anon_mb) for s in tail])
        loads = [s.loadavg for s in own]
        jp, sp = [s.json_p99_ms for s in own], [s.stream_p99_ms for s in own]
        lines.append(
            f"| {target} | {min(loads):.1f}-{max(loads):.1f} | {own[0].rss_mb:.1f} / {own[-1].rss_mb:.1f} "
            f"| {slope:+.2f} | {own[0].anon_mb:.1f} / {own[-1].anon_mb:.1f} | {anon:+.2f} "
            f"| {jp[0]:.1f} / {statistics.median(jp):.1f} / {jp[-1]:.1f} "
            f"| {sp[0]:.1f} / {statistics.median(sp):.1f} / {sp[-1]:.1f} "
            f"| {statistics.median(s.json_rps for s in own):,.0f} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default=",".join(DEFAULT_CONFIGS), help="comma-separated configurations")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of wrk warm-up per turn")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds of wrk per turn")
    parser.add_argument("--ttfb-streams", type=int, default=20, help="sequential streams per turn")
    parser.add_argument("--paced-streams", type=int, default=4, help="sequential paced streams per turn")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="kaixu-redis's counters")
    parser.add_argument("--soak", type=float, default=0, help="instead: a soak of SECONDS per configuration")
    parser.add_argument("--soak-slice", type=float, default=30.0, help="seconds per soak slice")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/performance.md")
    parser.add_argument("--report", type=Path, help="report a saved run (bench/results/sidebyside-*.json) again")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(DEFAULT_CONFIGS)
    if unknown:
        parser.error(f"unknown configurations: {sorted(unknown)}")
    signal_exit()
    if can_pin():
        os.sched_setaffinity(0, {0})  # the sequential streams' client shares CPU 0 with wrk and the fake
    try:
        if args.soak:
            slices = soak(args.soak, args.soak_slice, only, args.redis)
            text = soak_report(slices, args.soak, args.soak_slice)
            print(text)
            print(f"raw results: {save('soak', [asdict(s) for s in slices]).relative_to(ROOT)}")
            if not args.no_doc:
                update_doc(text, SOAK_BEGIN, SOAK_END)
            return 0
        plan = Plan(args.rounds, args.warmup, args.duration, args.ttfb_streams, args.paced_streams)
        if args.report:
            samples, only, plan, info, node = from_results(args.report, plan)
        else:
            samples = run_side_by_side(plan, only, args.redis)
            info, node = machine(), node_version()
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    text = report(samples, only, plan, info, node)
    print(text)
    if not args.report:
        raw = save("sidebyside", [asdict(s) for s in samples], plan=asdict(plan), node=node)
        print(f"raw results: {raw.relative_to(ROOT)}")
    if not args.no_doc:
        update_doc(text, DOC_BEGIN, DOC_END)
    return 0


def signal_exit() -> None:
    """A SIGTERM (e.g. a CI timeout) must unwind through the blocks that stop the children."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


if __name__ == "__main__":
    raise SystemExit(main())
