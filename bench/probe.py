"""Throw hostile traffic at a kaixu it starts, and report how it held up: the probe behind the hardening work.

Not a unit test (tests/test_fuzz.py and tests/test_secrets.py are): this measures what the rules in those
tests cannot, over more requests and longer times. One `python -m kaixu run` on a temporary policy with a
sqlite ledger, in front of the fake provider (tests/fakes/provider.py), started the way bench/overhead.py
starts things (its process, pinning, /proc and doc helpers are imported from there):

a. malformed requests: the generator of tests/hostile.py (seeded, so every run sends the same), judged by
   the same rules; counts of statuses, of answers that are not JSON, that hung or never came, and of rules
   broken (client faults answered 5xx, wrong error shapes, what leaked to the provider). Then: is the
   process up, and does the ledger still record?
b. slowloris: clients sending a request head one byte at a time; how long until kaixu closes each.
c. idle connections: connections that never send a byte; how many kaixu still holds after N seconds.
d. gzip bomb: 1 MB of gzip that inflates to 1 GB of zeros, POSTed without and with a key; kaixu's peak
   RSS (VmHWM, and VmRSS sampled) and the status it answered.
e. kill -9 mid-burst: good requests at concurrency 32, kaixu killed after about half were answered; the
   200s the clients got against the ledger rows that survived.

Every loop is bounded in count and time, and all traffic goes to 127.0.0.1. ``--quick`` is a smoke run
(small counts, short waits). Results go to stdout, to ``bench/results/probe-<timestamp>.json`` and (unless
``--no-doc``) to the marked section of ``docs/operations.md``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import http.client
import json
import os
import select
import signal
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from overhead import (
    HOST,
    LOAD_CPU,
    RESULTS_DIR,
    ROOT,
    BenchError,
    can_pin,
    machine,
    rss_peak,
    start_fake,
    start_kaixu,
    update_doc,
)

sys.path.insert(0, str(ROOT))  # tests/ is not an installed package; bench/overhead.py runs it with -m from ROOT
from tests import hostile
from tests.harness import TEST_KEY, policy_for

DOC_PATH = ROOT / "docs" / "operations.md"
DOC_BEGIN = "<!-- probe:begin -->"
DOC_END = "<!-- probe:end -->"
GIB = 1 << 30


@dataclass
class Plan:
    malformed: int = 2000
    concurrency: int = 8
    malformed_budget_s: float = 300.0
    slow_clients: int = 20
    slow_s: float = 30.0
    slow_byte_interval_s: float = 0.5
    idle_connections: int = 500
    idle_s: float = 30.0
    bomb_inflated: int = GIB
    burst: int = 2000
    burst_concurrency: int = 32
    kill_after: int = 1000
    seed: int = 20260101

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            malformed=200, malformed_budget_s=60, slow_clients=5, slow_s=5, idle_connections=50, idle_s=5,
            bomb_inflated=64 << 20, burst=200, kill_after=100,
        )  # fmt: skip


@dataclass
class Results:
    quick: bool
    plan: dict[str, Any]
    malformed: dict[str, Any] = field(default_factory=dict)
    slowloris: dict[str, Any] = field(default_factory=dict)
    idle: dict[str, Any] = field(default_factory=dict)
    bomb: dict[str, Any] = field(default_factory=dict)
    kill: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# The gateway under test
# --------------------------------------------------------------------------------------------------


class Target:
    """One kaixu (and its ledger file) in its own directory, in front of the shared fake."""

    def __init__(self, work: Path, fake_port: int, stack: contextlib.ExitStack) -> None:
        self.ledger = work / "ledger.db"
        policy = policy_for(
            f"http://{HOST}:{fake_port}",
            store={"sqlite": str(self.ledger)},
            # room for the 1 MB bomb; the body timeout shortened from 60 s and the head timeout from 10 s so that
            # a body announced and never sent, or a connection that sends no request line (bare CRLFs, an HTTP/2
            # preface alone), is closed within a malformed request's 10 s answer window, not at its edge (every
            # other limit: defaults)
            limits={
                "upstream_timeout_s": 5,
                "max_body_bytes": 2_000_000,
                "client_body_timeout_s": 5,
                "client_header_timeout_s": 8,
            },
        )
        policy["models"].update(hostile.GLOB_ROUTE)
        self.port, self.pid = start_kaixu(work, fake_port, stack, json.dumps(policy, indent=2))
        self.log = work / "kaixu.log"

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        status = Path(f"/proc/{self.pid}/status")
        return status.exists() and "zombie" not in status.read_text()

    def healthy(self) -> bool:
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
            conn.request("GET", "/health")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        return False

    def memory_kb(self, field_name: str) -> int | None:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
        return None

    def open_fds(self) -> int | None:
        with contextlib.suppress(OSError):
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        return None

    def ledger_ids(self, ids: set[str] | None = None) -> set[str]:
        if not self.ledger.exists():
            return set()
        with contextlib.closing(sqlite3.connect(self.ledger, timeout=10)) as db:
            rows = db.execute("SELECT request_id FROM requests").fetchall()
        found = {str(r[0]) for r in rows}
        return found if ids is None else found & ids

    def records_new_requests(self, timeout_s: float = 10.0) -> bool:
        """One good request; True once its ledger row is in the sqlite file (polled, bounded)."""
        request_id = f"probe-check-{uuid.uuid4()}"
        status, _ = good_request(HOST, self.port, request_id)
        deadline = time.monotonic() + timeout_s
        while status == 200 and time.monotonic() < deadline:
            if self.ledger_ids({request_id}):
                return True
            time.sleep(0.1)
        return False


def good_request(
    host: str, port: int, request_id: str, conn: http.client.HTTPConnection | None = None
) -> tuple[int, str]:
    """One correct chat request; (status, request id), status 0 when the connection failed."""
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count me"}]})
    headers = {"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json", "x-request-id": request_id}
    own = conn is None
    conn = conn or http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, request_id
    except (OSError, http.client.HTTPException):
        conn.close()
        return 0, request_id
    finally:
        if own:
            conn.close()


# --------------------------------------------------------------------------------------------------
# a. malformed requests
# --------------------------------------------------------------------------------------------------


def run_malformed(target: Target, fake_port: int, plan: Plan) -> dict[str, Any]:
    chooser = hostile.RandomChooser(plan.seed)
    focuses = ("body", "headers", "target", "wire", "limits", "any")
    probes = [*hostile.raw_probes(), *hostile.text_probes()]
    probes += [hostile.probe(chooser, focuses[i % len(focuses)]) for i in range(plan.malformed)]
    deadline = time.monotonic() + plan.malformed_budget_s
    statuses: collections.Counter[str] = collections.Counter()
    findings: list[hostile.Finding] = []
    unsent = 0
    lock = threading.Lock()

    def one(probe: hostile.Probe) -> None:
        nonlocal unsent
        if time.monotonic() > deadline:
            with lock:
                unsent += 1
            return
        answer = hostile.send(HOST, target.port, probe)
        found = hostile.judge(probe, answer)
        with lock:
            statuses[str(answer.status) if isinstance(answer, hostile.Answer) else f"no answer ({answer.kind})"] += 1
            findings.extend(found)

    started = time.monotonic()
    with ThreadPoolExecutor(plan.concurrency) as pool:
        list(pool.map(one, probes))
    elapsed = time.monotonic() - started
    for forwarded in fake_requests(fake_port):
        findings += hostile.judge_forwarded(forwarded["path"], forwarded["headers"], "one of the malformed requests")
    target.records_new_requests()  # the ledger is written in batches: one more record, and every earlier one is in
    findings += hostile.ledger_findings(target.ledger)  # what a client said about itself, stored escaped or refused
    rules = collections.Counter(f.rule for f in findings)
    non_json = rules["not application/json"] + rules["body is not JSON"]
    return {
        "sent": len(probes) - unsent,
        "unsent_budget": unsent,
        "seconds": round(elapsed, 1),
        "statuses": dict(sorted(statuses.items())),
        "non_json": non_json,
        "hung": statuses["no answer (hang)"],
        "closed_without_answer": statuses["no answer (closed)"],
        "rules_broken": dict(rules.most_common()),
        "examples": hostile.summarize(findings, examples=2),
        "alive_after": target.alive(),
        "health_after": target.healthy(),
        "ledger_records_after": target.records_new_requests(),
    }


def fake_requests(fake_port: int) -> list[dict[str, Any]]:
    """What the fake received (its /_fake/requests control endpoint), then forget it."""
    conn = http.client.HTTPConnection(HOST, fake_port, timeout=30)
    try:
        conn.request("GET", "/_fake/requests")
        recorded = json.loads(conn.getresponse().read())
        conn.request("DELETE", "/_fake/requests")
        conn.getresponse().read()
    finally:
        conn.close()
    return list(recorded)


# --------------------------------------------------------------------------------------------------
# b. slowloris, c. idle connections
# --------------------------------------------------------------------------------------------------

_SLOW_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def slow_client(port: int, plan: Plan) -> dict[str, Any]:
    """Send a never-ending request head one byte at a time until kaixu hangs up (or ``plan.slow_s`` pass)."""
    started = time.monotonic()
    sent = 0
    with socket.create_connection((HOST, port), timeout=10) as sock:
        while time.monotonic() - started < plan.slow_s:
            byte = _SLOW_HEAD[sent : sent + 1] or b"a"
            try:
                sock.sendall(byte)
            except OSError:
                return {"closed_after_s": round(time.monotonic() - started, 1), "bytes": sent, "answer": None}
            sent += 1
            readable, _, _ = select.select([sock], [], [], plan.slow_byte_interval_s)
            if readable:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                status = data.split(b" ", 2)[1].decode(errors="replace") if data.startswith(b"HTTP/") else None
                return {"closed_after_s": round(time.monotonic() - started, 1), "bytes": sent, "answer": status}
    return {"closed_after_s": None, "bytes": sent, "answer": None}


def run_slowloris(target: Target, plan: Plan) -> dict[str, Any]:
    with ThreadPoolExecutor(plan.slow_clients) as pool:
        clients = list(pool.map(lambda _: slow_client(target.port, plan), range(plan.slow_clients)))
    closed = [c["closed_after_s"] for c in clients if c["closed_after_s"] is not None]
    return {
        "clients": plan.slow_clients,
        "seconds": plan.slow_s,
        "byte_interval_s": plan.slow_byte_interval_s,
        "closed_by_kaixu": len(closed),
        "still_open_at_end": plan.slow_clients - len(closed),
        "closed_after_s_median": statistics.median(closed) if closed else None,
        "closed_after_s_max": max(closed) if closed else None,
        "answers": dict(collections.Counter(str(c["answer"]) for c in clients if c["closed_after_s"] is not None)),
        "per_client": clients,
        "health_after": target.healthy(),
    }


def run_idle(target: Target, plan: Plan) -> dict[str, Any]:
    """Open connections that never send a byte; count those kaixu still holds at a few checkpoints."""
    fds_before = target.open_fds()
    socks: list[socket.socket] = []
    refused = 0
    checkpoints = sorted({s for s in (1.0, 5.0, 10.0, plan.idle_s) if s <= plan.idle_s})
    counts: dict[str, int] = {}
    try:
        for _ in range(plan.idle_connections):
            try:
                socks.append(socket.create_connection((HOST, target.port), timeout=5))
            except OSError:
                refused += 1
        opened = time.monotonic()
        health_during = None
        for checkpoint in checkpoints:
            time.sleep(max(0.0, opened + checkpoint - time.monotonic()))
            counts[f"{checkpoint:g}s"] = sum(1 for s in socks if still_open(s))
            if health_during is None:
                started = time.monotonic()
                health_during = (target.healthy(), round((time.monotonic() - started) * 1000, 1))
        fds_during = target.open_fds()
    finally:
        for sock in socks:
            sock.close()
    return {
        "connections": plan.idle_connections,
        "refused": refused,
        "open_at": counts,
        "health_during": {"ok": health_during[0], "ms": health_during[1]} if health_during else None,
        "kaixu_fds_before": fds_before,
        "kaixu_fds_during": fds_during,
    }


def still_open(sock: socket.socket) -> bool:
    """Whether the peer has not closed: nothing to read yet (an idle server sends nothing)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return True
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# d. gzip bomb
# --------------------------------------------------------------------------------------------------


def gzip_bomb(inflated: int) -> bytes:
    """gzip of ``inflated`` zero bytes, built in 1 MB steps (never holding the inflated form)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    chunk = bytes(1 << 20)
    parts = [packer.compress(chunk) for _ in range(inflated // len(chunk))]
    parts.append(packer.flush())
    return b"".join(parts)


def run_bomb(target: Target, plan: Plan) -> dict[str, Any]:
    bomb = gzip_bomb(plan.bomb_inflated)
    results: dict[str, Any] = {"gzip_bytes": len(bomb), "inflated_bytes": plan.bomb_inflated, "posts": []}
    for label, auth in (("unauthenticated", []), ("authenticated", [("Authorization", f"Bearer {TEST_KEY}")])):
        headers = [("Host", HOST), *auth, ("Content-Type", "application/json"), ("Content-Encoding", "gzip")]
        headers += [("Content-Length", str(len(bomb))), ("Connection", "close")]
        probe = hostile.Probe("POST", "/v1/chat/completions", headers, bomb, [f"bomb:{label}"], malformed=True)
        hwm_before = target.memory_kb("VmHWM")
        started = time.monotonic()
        with rss_peak(target.pid) as peak:
            try:
                answer: hostile.Answer | hostile.NoAnswer = hostile.exchange(
                    HOST, target.port, probe.encode(), timeout=120
                )
            except hostile.NoAnswer as exc:
                answer = exc
            except OSError as exc:
                answer = hostile.NoAnswer("refused", repr(exc))
        results["posts"].append(
            {
                "auth": label,
                "status": answer.status if isinstance(answer, hostile.Answer) else f"no answer ({answer.kind})",
                "seconds": round(time.monotonic() - started, 2),
                "vmhwm_mb_before": _mb(hwm_before),
                "vmhwm_mb_after": _mb(target.memory_kb("VmHWM")),
                "vmrss_mb_peak_sampled": round(peak[0], 1) if peak else None,
                "body": answer.body[:200].decode("utf-8", "replace") if isinstance(answer, hostile.Answer) else "",
                "alive_after": target.alive(),
            }
        )
        if not target.alive():
            break
    return results


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


# --------------------------------------------------------------------------------------------------
# e. kill -9 mid-burst
# --------------------------------------------------------------------------------------------------


def run_kill(target: Target, plan: Plan) -> dict[str, Any]:
    """Good requests at ``burst_concurrency``; SIGKILL once ``kill_after`` were answered 200."""
    ok: list[str] = []
    failed = 0
    lock = threading.Lock()
    killed = threading.Event()
    killed_at: list[int] = []
    counter = iter(range(plan.burst))
    deadline = time.monotonic() + 120

    def worker() -> None:
        nonlocal failed
        conn = http.client.HTTPConnection(HOST, target.port, timeout=10)
        try:
            while time.monotonic() < deadline:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                status, request_id = good_request(HOST, target.port, f"burst-{index}-{uuid.uuid4().hex[:8]}", conn)
                with lock:
                    if status == 200:
                        ok.append(request_id)
                    else:
                        failed += 1
                    if len(ok) >= plan.kill_after and not killed.is_set():
                        killed.set()
                        killed_at.append(len(ok))
                        os.kill(target.pid, signal.SIGKILL)
                if status == 0:
                    conn = http.client.HTTPConnection(HOST, target.port, timeout=10)
        finally:
            conn.close()

    with ThreadPoolExecutor(plan.burst_concurrency) as pool:
        for _ in range(plan.burst_concurrency):
            pool.submit(worker)
    answered = set(ok)
    recorded = target.ledger_ids(answered)
    return {
        "requests": plan.burst,
        "concurrency": plan.burst_concurrency,
        "killed_after_200s": killed_at[0] if killed_at else None,
        "client_200s": len(answered),
        "client_failures": failed,
        "ledger_rows_for_200s": len(recorded),
        "records_lost": len(answered - recorded),
        "ledger_rows_total": len(target.ledger_ids()),
    }


# --------------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------------


def run_all(plan: Plan, quick: bool) -> Results:
    results = Results(quick=quick, plan=asdict(plan))
    with tempfile.TemporaryDirectory(prefix="kaixu-probe-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        fake_port = start_fake(work, stack, require_key=None, record=True)
        with contextlib.ExitStack() as gateway_stack:
            target = Target(work / "probe", fake_port, gateway_stack)
            print(f"a. {plan.malformed} malformed requests", file=sys.stderr)
            results.malformed = run_malformed(target, fake_port, plan)
            print(f"b. slowloris: {plan.slow_clients} clients for up to {plan.slow_s:g} s", file=sys.stderr)
            results.slowloris = run_slowloris(target, plan)
            print(f"c. {plan.idle_connections} idle connections for {plan.idle_s:g} s", file=sys.stderr)
            results.idle = run_idle(target, plan)
            print(f"d. gzip bomb inflating to {plan.bomb_inflated >> 20} MB", file=sys.stderr)
            results.bomb = run_bomb(target, plan)
        with contextlib.ExitStack() as gateway_stack:
            fake_requests(fake_port)  # forget the probes'; the burst's are not judged
            target = Target(work / "kill", fake_port, gateway_stack)
            print(f"e. kill -9 after {plan.kill_after} of {plan.burst} requests", file=sys.stderr)
            results.kill = run_kill(target, plan)
    return results


def table(results: Results) -> str:
    m, s, i, b, k = results.malformed, results.slowloris, results.idle, results.bomb, results.kill
    statuses = ", ".join(f"{code}: {n}" for code, n in m["statuses"].items())
    rules = "; ".join(f"{rule}: {n}" for rule, n in m["rules_broken"].items()) or "none"
    bombs = "; ".join(
        f"{p['auth']}: {p['status']} in {p['seconds']:g} s, VmHWM {p['vmhwm_mb_before']} → {p['vmhwm_mb_after']} MB"
        for p in b["posts"]
    )
    closed = s["closed_by_kaixu"]
    slow = (
        f"{closed} of {s['clients']} closed by kaixu (median {s['closed_after_s_median']} s, max "
        f"{s['closed_after_s_max']} s); {s['still_open_at_end']} still open after {s['seconds']:g} s"
    )
    idle = ", ".join(f"{n} open at {t}" for t, n in i["open_at"].items())
    rows = [
        ("a. malformed requests", f"{m['sent']} sent in {m['seconds']:g} s ({m['unsent_budget']} over budget)"),
        ("a. statuses", statuses),
        ("a. non-JSON / hung / closed without answer", f"{m['non_json']} / {m['hung']} / {m['closed_without_answer']}"),
        ("a. rules broken", rules),
        (
            "a. after: process up / /health 200 / ledger records",
            " / ".join(
                "yes" if m[key] else "**no**" for key in ("alive_after", "health_after", "ledger_records_after")
            ),
        ),
        (f"b. slowloris, 1 byte per {s['byte_interval_s']:g} s", slow),
        (f"c. {i['connections']} idle connections", f"{idle} (refused: {i['refused']})"),
        (f"d. gzip bomb {b['gzip_bytes'] >> 10} KB → {b['inflated_bytes'] >> 20} MB", bombs),
        (
            f"e. kill -9 at c={k['concurrency']}",
            f"after {k['killed_after_200s']} 200s: clients got {k['client_200s']} 200s, ledger has "
            f"{k['ledger_rows_for_200s']} of them: **{k['records_lost']} lost**",
        ),
    ]
    head = "| probe | result |\n|---|---|\n"
    return head + "\n".join(f"| {name} | {value.replace('|', '/')} |" for name, value in rows) + "\n"


def report(results: Results) -> str:
    info = machine()
    kind = "smoke run (`--quick`: small counts, not for comparison)" if results.quick else "full run"
    return (
        f"Measured {info['date']} on {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"mitmproxy {info['mitmproxy']}; {kind}; seed {results.plan['seed']}.\n\n{table(results)}"
    )


def save_json(results: Results) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"probe-{stamp}.json"
    path.write_text(json.dumps({"machine": machine(), **asdict(results)}, indent=2, default=str) + "\n")
    return path


DOC_PREAMBLE = """## Hostile traffic

`bench/probe.py` throws malformed requests (the generator of `tests/hostile.py`), slowloris clients, idle
connections, a gzip bomb and a `kill -9` in the middle of a burst at a kaixu it starts, and reports how it
held up. Rerun with `.venv/bin/python bench/probe.py` (a few minutes; `--quick` for a smoke run); raw
numbers go to `bench/results/probe-<timestamp>.json` and the section below is rewritten."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts, short waits")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/operations.md")
    parser.add_argument("--seed", type=int, help="seed of the malformed requests (default: fixed)")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    if args.seed is not None:
        plan.seed = args.seed
    # A SIGTERM (e.g. from a CI timeout) must unwind through the ExitStacks that stop the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if can_pin():
        os.sched_setaffinity(0, {LOAD_CPU})
    try:
        results = run_all(plan, args.quick)
    except BenchError as exc:
        print(f"probe failed: {exc}", file=sys.stderr)
        return 1
    text = report(results)
    print(text)
    print(results.malformed["examples"], file=sys.stderr)
    print(f"raw results: {save_json(results).relative_to(ROOT)}")
    if not args.no_doc:
        update_doc(text, DOC_BEGIN, DOC_END, DOC_PREAMBLE, DOC_PATH)
        print(f"updated {DOC_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
