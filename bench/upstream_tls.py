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

The gateway is pinned to CPU 1, wrk and the fake to CPU 0 (bench/overhead.py's helpers). Run it with::

    flock /tmp/bench.lock nice -n 19 .venv/bin/python bench/upstream_tls.py [--baseline-tree DIR] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import ssl
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


def measure(
    config: str, url: str, pid: int | None, lua: dict[str, Path], wrk: str,
    fake: tuple[int, int, ssl.SSLContext | None], warmup_s: float, measure_s: float,
) -> list[Run]:  # fmt: skip
    fake_port, fake_pid, context = fake
    runs = []
    for mode in MODES:
        for connections in CONNECTIONS:
            check_clean(f"{config} {mode}", run_wrk(wrk, url, lua[mode], connections, warmup_s))
            cpu_before = cpu_seconds(pid) if pid else 0.0
            conns_before = accepted(fake_port, context)
            result = run_wrk(wrk, url, lua[mode], connections, measure_s, fake_pid)
            check_clean(f"{config} {mode}", result)
            handshakes = (accepted(fake_port, context) - conns_before) / result.requests
            cpu = (cpu_seconds(pid) - cpu_before) * 1000 / result.requests if pid else None
            runs.append(Run(config, mode, connections, result, cpu, handshakes))
            print(f"  {config} {mode} c={connections}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                  f"cpu {cpu or 0:.2f} ms/req, {handshakes:.3f} handshakes/req", file=sys.stderr)  # fmt: skip
    return runs


def run(baseline: Path | None, warmup_s: float, measure_s: float, only: set[str] | None, plain: bool) -> list[Run]:
    wrk = ensure_wrk()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="kaixu-bench-tls-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        fake = start_tls_fake(work, stack, plain)
        scheme = "http" if plain else "https"
        fake_port = fake[0]
        ca_path = work / "ca.pem"
        close = {"Connection": "close"}
        direct_lua = {"keepalive": write_lua(work / "d-ka.lua", SMALL_BODY, UPSTREAM_KEY),
                      "close": write_lua(work / "d-cl.lua", SMALL_BODY, UPSTREAM_KEY, close)}  # fmt: skip
        kaixu_lua = {"keepalive": write_lua(work / "k-ka.lua", SMALL_BODY, CLIENT_KEY),
                     "close": write_lua(work / "k-cl.lua", SMALL_BODY, CLIENT_KEY, close)}  # fmt: skip
        if only is None or "direct" in only:
            print("measuring direct", file=sys.stderr)
            runs += measure("direct", f"{scheme}://{HOST}:{fake_port}{PATH}", None, direct_lua, wrk, fake, warmup_s,
                            measure_s)  # fmt: skip
        configs: list[tuple[str, bool, Path | None]] = [("kaixu", False, None), ("kaixu-queue", True, None)]
        if baseline is not None:
            configs.insert(0, ("kaixu-baseline", False, baseline))
        for name, queue, tree in configs:
            if only is not None and name not in only:
                continue
            print(f"measuring {name}", file=sys.stderr)
            with contextlib.ExitStack() as config_stack:
                port, pid = start_kaixu(
                    work / name, fake_port, config_stack, policy(fake_port, ca_path, queue, scheme), tree
                )
                runs += measure(name, f"http://{HOST}:{port}{PATH}", pid, kaixu_lua, wrk, fake, warmup_s, measure_s)
    return runs


def report(runs: list[Run], warmup_s: float, measure_s: float) -> str:
    info = machine()
    direct = {(r.mode, r.connections): r for r in runs if r.config == "direct"}
    first = runs[0].config if runs and runs[0].config != "direct" else "kaixu"
    base = {(r.mode, r.connections): r for r in runs if r.config == next(
        (c for c in ("kaixu-baseline", "kaixu") if any(x.config == c for x in runs)), first)}  # fmt: skip
    lines = [
        f"{info.get('cpu', '?')}, {os.cpu_count()} CPUs, gateway pinned to CPU 1, wrk and the TLS fake to CPU 0; "
        f"{warmup_s:g} s warm-up and {measure_s:g} s measured per row; load average {os.getloadavg()[0]:.1f} "
        "at the end.",
        "",
        "| config | client | conns | req/s | vs baseline | added p50 / p99 ms | gateway CPU ms/req "
        "| upstream TLS handshakes/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        d = direct.get((r.mode, r.connections))
        added = "-" if d is None or r.config == "direct" else (
            f"{r.wrk.p50_ms - d.wrk.p50_ms:+.2f} / {r.wrk.p99_ms - d.wrk.p99_ms:+.2f}")  # fmt: skip
        b = base.get((r.mode, r.connections))
        ratio = "-" if b is None or r.config == "direct" else f"{r.wrk.rps / b.wrk.rps:.2f}x"
        cpu = "-" if r.cpu_ms_per_req is None else f"{r.cpu_ms_per_req:.2f}"
        lines.append(f"| {r.config} | {r.mode} | {r.connections} | {r.wrk.rps:,.0f} | {ratio} | {added} | {cpu} "
                     f"| {r.handshakes_per_req:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/upstream_tls.py", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-tree", type=Path, help="also measure another checkout's kaixu (before/after)")
    parser.add_argument("--plain", action="store_true", help="the fake speaks plain HTTP (no TLS): a control")
    parser.add_argument("--quick", action="store_true", help="1 s warm-up, 3 s per row (a smoke run)")
    parser.add_argument("--only", help="comma-separated configs (direct, kaixu, kaixu-queue, kaixu-baseline)")
    args = parser.parse_args(argv)
    warmup_s, measure_s = (1.0, 3.0) if args.quick else (2.0, 8.0)
    only = set(args.only.split(",")) if args.only else None
    try:
        runs = run(args.baseline_tree, warmup_s, measure_s, only, args.plain)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(report(runs, warmup_s, measure_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
