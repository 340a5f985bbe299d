"""What a request through kaixu's forward listener (``HTTPS_PROXY``, TLS terminated with kaixu's CA) costs, next to
the same request to a reverse listener, in one run on this machine (docs/forward-proxy.md).

One kaixu (``python -m kaixu run``, pinned to CPU 1) with both listeners routes ``gpt-4o-mini`` to the fake
provider (CPU 0, with this script). The same JSON chat completion is sent, one request at a time, over:

* ``reverse``: plain HTTP to the reverse listener (what wrk measures in bench/overhead.py);
* ``forward``: ``https://api.openai.com/v1/chat/completions`` through the forward listener (CONNECT, then TLS
  with a certificate kaixu signs), as the OpenAI SDK sends it with ``HTTPS_PROXY``;

each on one kept-alive connection, and with a new connection per request (the forward one then pays the CONNECT
and a TLS handshake each time). Reported: latency p50/p99 as the client sees it (its own TLS work included), and
kaixu's CPU per request (utime+stime of its process over the run / requests): the difference is what the forward
path adds. Results: stdout, ``bench/results/forward-<timestamp>.json`` and the marked section of
docs/performance.md.

    .venv/bin/python bench/forward.py [--requests 400] [--no-doc]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from overhead import (
    CLIENT_KEY,
    HOST,
    LOAD_CPU,
    MODEL,
    RESULTS_DIR,
    BenchError,
    can_pin,
    cpu_seconds,
    kaixu_policy,
    start_fake,
    start_kaixu,
    update_doc,
)

DOC_BEGIN = "<!-- forward:begin -->"
DOC_END = "<!-- forward:end -->"
FORWARD_HOST = "127.0.0.2"  # two port-0 listeners need two hosts
WARMUP = 20
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
HEADERS = {"authorization": f"Bearer {CLIENT_KEY}"}


def policy(fake_port: int) -> str:
    doc = json.loads(kaixu_policy(fake_port))
    doc["listen"].append({"host": FORWARD_HOST, "port": 0, "mode": "forward"})
    doc["forward"] = {"others": "deny"}
    return json.dumps(doc, indent=2)


def timed(send: Callable[[], httpx.Response], requests: int, pid: int) -> dict[str, Any]:
    for _ in range(WARMUP):
        send().raise_for_status()
    took: list[float] = []
    cpu = cpu_seconds(pid)
    for _ in range(requests):
        started = time.perf_counter()
        answer = send()
        took.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise BenchError(f"answered {answer.status_code}: {answer.text[:300]}")
    cpu = cpu_seconds(pid) - cpu
    took.sort()
    return {
        "requests": requests,
        "p50_ms": round(statistics.median(took) * 1000, 2),
        "p99_ms": round(took[int(len(took) * 0.99) - 1] * 1000, 2),
        "kaixu_cpu_ms_per_request": round(cpu / requests * 1000, 3),
    }


def run(requests: int) -> dict[str, dict[str, Any]]:
    if can_pin():
        os.sched_setaffinity(0, {LOAD_CPU})
    work = Path(tempfile.mkdtemp(prefix="kaixu-bench-forward-"))
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        fake_port = start_fake(work, stack)
        port, pid = start_kaixu(work / "kaixu", fake_port, stack, policy(fake_port))
        proxy = "http://{}:{}".format(*json.loads((work / "kaixu" / "kaixu.ports").read_text())[1])
        trust = ssl.create_default_context(cafile=str(work / "kaixu" / "kaixu-ca" / "mitmproxy-ca-cert.pem"))
        reverse_url = f"http://{HOST}:{port}/v1/chat/completions"
        forward_url = "https://api.openai.com/v1/chat/completions"

        def clients() -> dict[str, Callable[[], httpx.Client]]:
            return {
                "reverse": lambda: httpx.Client(verify=trust, timeout=30),  # (a built context: no cost per client)
                "forward": lambda: httpx.Client(proxy=proxy, verify=trust, timeout=30),
            }

        urls = {"reverse": reverse_url, "forward": forward_url}
        for name, make in clients().items():
            with make() as client:
                results[f"{name}, kept-alive connection"] = timed(
                    lambda c=client, u=urls[name]: c.post(u, json=BODY, headers=HEADERS), requests, pid
                )

            def fresh(make: Callable[[], httpx.Client] = make, url: str = urls[name]) -> httpx.Response:
                with make() as client:
                    return client.post(url, json=BODY, headers=HEADERS)

            results[f"{name}, new connection per request"] = timed(fresh, max(50, requests // 4), pid)
    return results


def report(results: dict[str, dict[str, Any]]) -> str:
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Run {date} by `bench/forward.py` ({os.cpu_count()} CPUs, kaixu pinned to one; a shared machine: "
        "compare rows of one run, not runs).",
        "",
        "| path | requests | p50 ms | p99 ms | kaixu CPU ms / request |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | {r['kaixu_cpu_ms_per_request']} |")
    lines.append("")
    for kind in ("kept-alive connection", "new connection per request"):
        reverse, forward = results[f"reverse, {kind}"], results[f"forward, {kind}"]
        lines.append(
            f"- forward adds, {kind}: {forward['p50_ms'] - reverse['p50_ms']:+.2f} ms p50, "
            f"{forward['kaixu_cpu_ms_per_request'] - reverse['kaixu_cpu_ms_per_request']:+.3f} ms of kaixu CPU "
            "per request"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=400, help="requests per kept-alive case (a quarter per new-"
                        "connection case, at least 50)")  # fmt: skip
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the section of docs/performance.md")
    args = parser.parse_args(argv)
    try:
        results = run(args.requests)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    text = report(results)
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS_DIR / f"forward-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_doc:
        update_doc(text, DOC_BEGIN, DOC_END, preamble="## Forward listener\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
