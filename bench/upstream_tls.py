"""Upstream connections: what a client that does not keep its connection alive costs kaixu against a TLS provider.

mitmproxy opens its upstream connections per client connection: a client that opens a new connection per
request (or sends ``Connection: close``) makes it open a new TCP + TLS connection to the provider for every
request. kaixu's own HTTP client (kaixu/reliability/upstream.py) pools its connections per provider. This
benchmark puts the fake provider (tests/fakes/provider.py) behind TLS (a throwaway CA, tests/tls.py, trusted
through the policy's ``tls.ca_file``) and measures, for a small JSON completion:

* ``direct``        wrk -> the TLS fake (the baseline for added latency);
* ``kaixu``         wrk -> ``python -m kaixu run`` -> the TLS fake, as a plain request goes;
* ``kaixu-queue``   the same with the provider's ``max_concurrent`` set (a queue kaixu keeps), so every request
  is fetched by the executor's pooled client instead of mitmproxy (the path the pool would take);
* ``kaixu-baseline`` with ``--baseline-tree DIR``: another checkout's kaixu, as ``kaixu`` (before and after a
  change, in one run).

each with the client keeping its connection alive (``keepalive``) and with ``Connection: close`` on every
request (``close``: a new client connection per request), at 1 and 16 connections. Reported: requests/s, p50
and p99 latency added over direct, the gateway's CPU per request, and the upstream TLS handshakes per request
(the fake counts the connections it accepted: ``GET /_fake/connections``).

All configurations run at once; for each client kind and connection count they take turns (``--rounds``, the order
reversed every round), so ratios compare runs made minutes apart on a shared machine. The gateway is pinned to
CPU 1, wrk and the fake to CPU 0 (bench/overhead.py's helpers). ``--plain``: the fake speaks plain HTTP (what
a new TCP connection alone costs). Run it with::

    flock /tmp/bench.lock nice -n 19 .venv/bin/python bench/upstream_tls.py [--baseline-tree DIR] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import ssl
import statistics
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/ (the TLS files) is not an installed package
sys.path.insert(0, str(ROOT / "bench"))

from overhead import (  # noqa: E402
    CLIENT_KEY,
    HOST,
    LOAD_CPU,
    MODEL,
    PATH,
    SMALL_BODY,
    UPSTREAM_KEY,
    BenchError,
    WrkResult,
    check_clean,
    cpu_seconds,
    ensure_wrk,
    machine,
    pinned,
    run_wrk,
    spawn,
    start_kaixu,
    wait_until,
    write_lua,
)

from tests.tls import make_tls_files  # noqa: E402

CONNECTIONS = (1, 16)
MODES = ("keepalive", "close")


@dataclass
class Run:
    config: str
    mode: str
    connections: int
    round: int
    wrk: WrkResult
    cpu_ms_per_req: float | None
    handshakes_per_req: float


def start_tls_fake(work: Path, stack: contextlib.ExitStack, plain: bool) -> tuple[int, int, ssl.SSLContext | None]:
    """The fake provider serving HTTPS (``plain``: HTTP) on CPU 0. Returns (port, pid, a client context trusting
    its CA, None for plain HTTP)."""
    ca_path, _server = make_tls_files(work)
    port_file, log = work / "fake.port", work / "fake.log"
    cmd = [sys.executable, "-m", "tests.fakes.provider", "--host", HOST, "--port", "0", "--port-file", str(port_file)]
    cmd += ["--require-key", UPSTREAM_KEY, "--no-record"]
    if not plain:
        cmd += ["--certfile", str(work / "server.pem"), "--keyfile", str(work / "server.key")]
    proc = spawn(pinned(cmd, LOAD_CPU), log, stack)
    wait_until(port_file.exists, proc, log, "TLS fake provider")
    context = None if plain else ssl.create_default_context(cafile=str(ca_path))
    return int(port_file.read_text().strip()), proc.pid, context


def accepted(port: int, context: ssl.SSLContext | None) -> int:
    """Connections the fake has accepted so far, not counting the one this question opens."""
    scheme = "http" if context is None else "https"
    with urllib.request.urlopen(f"{scheme}://{HOST}:{port}/_fake/connections", context=context, timeout=10) as answer:
        return int(json.loads(answer.read())["accepted"]) - 1


def policy(fake_port: int, ca_path: Path, queue: bool, scheme: str) -> str:
    digest = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
    provider: dict[str, object] = {
        "kind": "openai",
        "base_url": f"{scheme}://{HOST}:{fake_port}/v1",
        "api_key": UPSTREAM_KEY,
    }
    if queue:
        provider["max_concurrent"] = 1000
    return json.dumps(
        {
            "version": 1,
            "listen": [{"host": HOST, "port": 0}],
            "store": {"sqlite": "kaixu-bench.db"},
            "tls": {"ca_file": str(ca_path)},
            "providers": {"fake": provider},
            "models": {MODEL: {"route": [{"provider": "fake"}]}},
            "keys": [{"name": "bench", "hash": f"sha256:{digest}"}],
        },
        indent=2,
    )


@dataclass
class Target:
    """One configuration, running for the whole run (idle but for its turns)."""

    name: str
    url: str
    pid: int | None
    lua: dict[str, Path]


def measure_one(target: Target, mode: str, connections: int, turn: int, bench: Bench) -> Run:
    """One measured wrk run of ``target`` (after its warm-up), with the gateway's CPU and the fake's handshakes."""
    fake_port, fake_pid, context = bench.fake
    url, pid, lua = target.url, target.pid, target.lua[mode]
    check_clean(f"{target.name} {mode}", run_wrk(bench.wrk, url, lua, connections, bench.warmup_s))
    cpu_before = cpu_seconds(pid) if pid else 0.0
    conns_before = accepted(fake_port, context)
    result = run_wrk(bench.wrk, url, lua, connections, bench.measure_s, fake_pid)
    check_clean(f"{target.name} {mode}", result)
    handshakes = (accepted(fake_port, context) - conns_before) / result.requests
    cpu = (cpu_seconds(pid) - cpu_before) * 1000 / result.requests if pid else None
    print(f"  round {turn} {target.name} {mode} c={connections}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} "
          f"ms, cpu {cpu or 0:.2f} ms/req, {handshakes:.3f} handshakes/req", file=sys.stderr)  # fmt: skip
    return Run(target.name, mode, connections, turn, result, cpu, handshakes)


@dataclass
class Bench:
    wrk: str
    fake: tuple[int, int, ssl.SSLContext | None]
    warmup_s: float
    measure_s: float
    rounds: int


def run(bench_args: argparse.Namespace) -> list[Run]:
    """Every configuration runs at once; for each client kind and connection count they take turns, the order
    reversed every round, so a change of this shared machine's load falls on all of them alike."""
    plain, baseline, only = bench_args.plain, bench_args.baseline_tree, bench_args.only
    warmup_s, measure_s = (1.0, 3.0) if bench_args.quick else (2.0, 6.0)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="kaixu-bench-tls-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        bench = Bench(ensure_wrk(), start_tls_fake(work, stack, plain), warmup_s, measure_s, bench_args.rounds)
        scheme = "http" if plain else "https"
        fake_port = bench.fake[0]
        close = {"Connection": "close"}
        direct_lua = {"keepalive": write_lua(work / "d-ka.lua", SMALL_BODY, UPSTREAM_KEY),
                      "close": write_lua(work / "d-cl.lua", SMALL_BODY, UPSTREAM_KEY, close)}  # fmt: skip
        kaixu_lua = {"keepalive": write_lua(work / "k-ka.lua", SMALL_BODY, CLIENT_KEY),
                     "close": write_lua(work / "k-cl.lua", SMALL_BODY, CLIENT_KEY, close)}  # fmt: skip
        targets = [Target("direct", f"{scheme}://{HOST}:{fake_port}{PATH}", None, direct_lua)]
        configs: list[tuple[str, bool, Path | None]] = [("kaixu", False, None), ("kaixu-queue", True, None)]
        if baseline is not None:
            configs.insert(0, ("kaixu-baseline", False, baseline))
        for name, queue, tree in configs:
            text = policy(fake_port, work / "ca.pem", queue, scheme)
            port, pid = start_kaixu(work / name, fake_port, stack, text, tree)
            targets.append(Target(name, f"http://{HOST}:{port}{PATH}", pid, kaixu_lua))
        targets = [t for t in targets if only is None or t.name in only]
        for mode in MODES:
            for connections in CONNECTIONS:
                for turn in range(bench.rounds):
                    for target in targets if turn % 2 == 0 else targets[::-1]:
                        runs.append(measure_one(target, mode, connections, turn, bench))
    return runs


def report(runs: list[Run], bench_args: argparse.Namespace) -> str:
    """Medians over the rounds; each configuration's requests/s as a ratio to the baseline's in the same round
    (median, and the lowest and highest round)."""
    info = machine()
    names = list(dict.fromkeys(r.config for r in runs))
    base_name = next((n for n in ("kaixu-baseline", "kaixu") if n in names), names[-1])
    cell = {(r.config, r.mode, r.connections, r.round): r for r in runs}
    rounds = max(r.round for r in runs) + 1
    warmup_s, measure_s = (1.0, 3.0) if bench_args.quick else (2.0, 6.0)
    kind = "plain HTTP" if bench_args.plain else "TLS"
    lines = [
        f"{info.get('cpu', '?')}, {os.cpu_count()} CPUs, Python {info.get('python')}, mitmproxy "
        f"{info.get('mitmproxy')}; the gateway pinned to CPU 1, wrk and the {kind} fake to CPU 0; {rounds} rounds "
        f"of {warmup_s:g} s warm-up and {measure_s:g} s measured per row, the "
        f"configurations taking turns; load average {os.getloadavg()[0]:.1f} at the end (a shared machine: compare "
        "within a run). Medians over the rounds.",
        "",
        f"| config | client | conns | req/s | vs {base_name} (lowest-highest round) | added p50 / p99 ms "
        "| gateway CPU ms/req | upstream connections/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        for connections in CONNECTIONS:
            for name in names:
                own = [
                    cell[(name, mode, connections, i)] for i in range(rounds) if (name, mode, connections, i) in cell
                ]
                if not own:
                    continue
                rps = statistics.median(r.wrk.rps for r in own)
                ratio = "-"
                if name != "direct" and (base_name, mode, connections, 0) in cell:
                    ratios = sorted(r.wrk.rps / cell[(base_name, mode, connections, r.round)].wrk.rps for r in own)
                    ratio = f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"
                added = "-"
                if name != "direct" and ("direct", mode, connections, 0) in cell:
                    p50 = statistics.median(r.wrk.p50_ms - cell[("direct", mode, connections, r.round)].wrk.p50_ms
                                            for r in own)  # fmt: skip
                    p99 = statistics.median(r.wrk.p99_ms - cell[("direct", mode, connections, r.round)].wrk.p99_ms
                                            for r in own)  # fmt: skip
                    added = f"{p50:+.2f} / {p99:+.2f}"
                cpus = [r.cpu_ms_per_req for r in own if r.cpu_ms_per_req is not None]
                cpu = f"{statistics.median(cpus):.2f}" if cpus else "-"
                handshakes = statistics.median(r.handshakes_per_req for r in own)
                lines.append(f"| {name} | {mode} | {connections} | {rps:,.0f} | {ratio} | {added} | {cpu} "
                             f"| {handshakes:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/upstream_tls.py", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-tree", type=Path, help="also measure another checkout's kaixu (before/after)")
    parser.add_argument("--plain", action="store_true", help="the fake speaks plain HTTP (no TLS): a control")
    parser.add_argument("--quick", action="store_true", help="1 s warm-up, 3 s per row (a smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of every configuration per row")
    parser.add_argument("--only", help="comma-separated configs (direct, kaixu, kaixu-queue, kaixu-baseline)")
    args = parser.parse_args(argv)
    args.only = set(args.only.split(",")) if args.only else None
    try:
        runs = run(args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(report(runs, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
