"""What governance costs a request: auth + policy + rate limits + budget on, against the same kaixu with a key
that has none of them ("off"), in one run on this machine, for the in-process counters (the default SQLite
store) and for Redis (127.0.0.1:6379, or --redis).

"On" is a key with a monthly budget (large enough never to refuse), rpm, tpm and max_parallel limits (never
reached), in a team with its own budget and limits, matched by a `policies[]` rule with allowed models, a
tokens-per-request cap and a day cap: every request reserves on four budgets, counts two rpm and two tpm windows
and holds two parallel slots, then settles them. "Off" is the same tree and policy file with a key that has no
budget, limit or team: the governance steps take their cheap exit.

Three gateways run at once, pinned to CPU 1, the fake provider and wrk to CPU 0; the load alternates between
them round by round so drift hits all alike; the report is the median of the rounds: p50 latency at a low
concurrency (the added latency a user feels) and requests/s at a high one. Results go to stdout and the marked
section of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from overhead import (
    HOST,
    PATH,
    ROOT,
    SMALL_BODY,
    UPSTREAM_KEY,
    BenchError,
    check_clean,
    ensure_wrk,
    preflight,
    run_wrk,
    start_fake,
    start_kaixu,
    write_lua,
)

DOC_PATH = ROOT / "docs" / "performance.md"
DOC_BEGIN = "<!-- governance:begin -->"
DOC_END = "<!-- governance:end -->"
TARGETS_MS = {"memory": 0.1, "redis": 1.0}  # issue 11: added p50 with governance on
ON_KEY, OFF_KEY = "sk-bench-governed", "sk-bench-plain"
BIG = 10**6


def policy_text(fake_port: int, work: Path, store: dict[str, Any]) -> str:
    def digest(key: str) -> str:
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()

    limits = {"rpm": BIG, "tpm": BIG * 100, "max_parallel": 10_000}
    return json.dumps(
        {
            "version": 1,
            "listen": [{"host": HOST, "port": 0}],
            "store": {"sqlite": str(work / "kaixu.db"), **store},
            "providers": {
                "fake": {"kind": "openai", "base_url": f"http://{HOST}:{fake_port}/v1", "api_key": UPSTREAM_KEY}
            },
            "models": {"gpt-4o-mini": {"route": [{"provider": "fake"}]}},
            "orgs": {"acme": {"budget": {"usd": BIG, "period": "month"}}},
            "teams": {"growth": {"org": "acme", "budget": {"usd": BIG, "period": "month"}, "limits": limits}},
            "keys": [
                {
                    "name": "governed",
                    "hash": digest(ON_KEY),
                    "team": "growth",
                    "budget": {"usd": BIG, "period": "month"},
                    "limits": limits,
                },
                {"name": "plain", "hash": digest(OFF_KEY)},
            ],
            "policies": [
                {
                    "name": "bench",
                    "match": {"team": "growth"},
                    "allow_models": ["gpt-4o*"],
                    "max_tokens_per_request": 100_000,
                    "max_cost_per_day": {"usd": BIG},
                },
            ],
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--latency-connections", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    wrk = ensure_wrk()
    prefix = f"kaixu-bench:{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory(prefix="kaixu-governance-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        fake_port = start_fake(work, stack)
        on_lua = write_lua(work / "on.lua", SMALL_BODY, ON_KEY)
        off_lua = write_lua(work / "off.lua", SMALL_BODY, OFF_KEY)
        runs = {  # name: (store, lua)
            "off": ({}, off_lua),
            "memory": ({}, on_lua),
            "redis": ({"redis": {"url": args.redis, "prefix": prefix}}, on_lua),
        }
        ports: dict[str, int] = {}
        for name, (store, lua) in runs.items():
            port, _pid = start_kaixu(work / name, fake_port, stack, policy_text(fake_port, work / name, store))
            key = OFF_KEY if name == "off" else ON_KEY
            preflight(name, port, key)
            check_clean(name, run_wrk(wrk, f"http://{HOST}:{port}{PATH}", lua, args.connections, 2.0))
            ports[name] = port
        p50: dict[str, list[float]] = {name: [] for name in runs}
        rps: dict[str, list[float]] = {name: [] for name in runs}
        order = list(runs)
        for round_ in range(args.rounds):
            for name in order if round_ % 2 == 0 else list(reversed(order)):
                url, lua = f"http://{HOST}:{ports[name]}{PATH}", runs[name][1]
                low = run_wrk(wrk, url, lua, args.latency_connections, args.duration)
                high = run_wrk(wrk, url, lua, args.connections, args.duration)
                check_clean(name, low)
                check_clean(name, high)
                p50[name].append(low.p50_ms)
                rps[name].append(high.rps)
                print(f"  round {round_ + 1} {name}: p50 {low.p50_ms:.3f} ms, {high.rps:,.0f} req/s", file=sys.stderr)
    med_p50 = {name: statistics.median(values) for name, values in p50.items()}
    med_rps = {name: statistics.median(values) for name, values in rps.items()}
    lines = [
        f"| | p50 ms, c={args.latency_connections} | added p50 vs off | target | requests/s, c={args.connections} "
        "| vs off |",
        "|---|---|---|---|---|---|",
        f"| off (no budget, limit or team) | {med_p50['off']:.3f} | | | {med_rps['off']:,.0f} | 1.000 |",
    ]
    for name, label in (("memory", "on, in-process counters (SQLite store)"), ("redis", "on, Redis counters")):
        added = med_p50[name] - med_p50["off"]
        verdict = "PASS" if added <= TARGETS_MS[name] else "FAIL"
        lines.append(
            f"| {label} | {med_p50[name]:.3f} | {added:+.3f} ms | ≤ {TARGETS_MS[name]:g} ms: {verdict} "
            f"| {med_rps[name]:,.0f} | {med_rps[name] / med_rps['off']:.3f} |"
        )
    lines += [
        "",
        f"Medians of {args.rounds} alternating rounds of {args.duration:g} s. Each round's p50 (ms): "
        + "; ".join(f"{name} {', '.join(f'{v:.3f}' for v in values)}" for name, values in p50.items()),
    ]
    report = "\n".join(lines)
    print(report)
    if not args.no_doc:
        text = DOC_PATH.read_text()
        if DOC_BEGIN not in text:
            raise BenchError(f"{DOC_PATH}: no {DOC_BEGIN} marker")
        head, rest = text.split(DOC_BEGIN, 1)
        DOC_PATH.write_text(head + DOC_BEGIN + "\n" + report + "\n" + DOC_END + rest.split(DOC_END, 1)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
