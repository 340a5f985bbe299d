"""What governance costs kaixu's own steps, without the network: the whole chain (request head to the ledger
record) run in-process over mitmproxy test flows, for a key with budgets, limits and a policy ("on") and a key
with none ("off"), on the in-process counters. Prints microseconds per request (median of rounds) and the
difference; the end-to-end numbers are bench/governance.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.test import tflow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kaixu.addons import build_steps  # noqa: E402
from kaixu.chain import Chain  # noqa: E402
from kaixu.config import parse_policy  # noqa: E402
from kaixu.gateway import Gateway  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from governance import OFF_KEY, ON_KEY, policy_text  # noqa: E402

ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16})


CLIENT = tflow.tclient_conn()
"""One client connection for every request, as a keep-alive client's (wrk's): the first request of a connection
goes out on kaixu's pooled client (kaixu/reliability/serve.py), the later ones are forwarded by mitmproxy,
which this in-process run stands in for; `keep_alive` marks it as past its first."""


def keep_alive(gateway: Gateway) -> None:
    gateway.reliability._first_of_connection(tflow.tflow(client_conn=CLIENT))


async def one(chain: Chain, key: str) -> int:
    flow = tflow.tflow(client_conn=CLIENT)
    flow.client_conn.proxy_mode = flow.client_conn.proxy_mode  # a reverse-mode client: see kaixu/mitm.py
    flow.request = http.Request.make(
        "POST", "http://127.0.0.1:4000/v1/chat/completions", BODY,
        {"content-type": "application/json", "authorization": f"Bearer {key}"},
    )  # fmt: skip
    for hook in (chain.requestheaders, chain.request):
        pending = hook(flow)
        if pending is not None:
            await pending
    status = flow.response.status_code if flow.response is not None else 0
    if flow.response is None:
        flow.response = http.Response.make(200, json.dumps(ANSWER), {"content-type": "application/json"})
        for hook in (chain.responseheaders, chain.response):
            pending = hook(flow)
            if pending is not None:
                await pending
        status = flow.response.status_code
    await asyncio.sleep(0)  # the loop turns, as between a proxy's requests: the answer's settle task runs
    return status


def timed_steps(chain: Chain) -> dict[str, float]:
    """Wrap every step's flow hooks with a timer (the sync part: the in-process counters never suspend); returns
    the seconds spent per step name, filled as requests run."""
    spent: dict[str, float] = {}
    for hooks in chain._flow.values():
        for index, hook in enumerate(hooks):
            owner = type(getattr(hook, "__self__", hook)).__name__
            spent.setdefault(owner, 0.0)

            def timed(flow: http.HTTPFlow, hook: Any = hook, owner: str = owner) -> Any:
                started = time.perf_counter()
                try:
                    return hook(flow)
                finally:
                    spent[owner] += time.perf_counter() - started

            hooks[index] = timed
    return spent


async def steps(requests: int) -> None:
    """µs per request in each step's hooks, for the governed key (a budget, an rpm limit, the ledger on)."""
    with tempfile.TemporaryDirectory() as tmp:
        gateway = Gateway(policy=parse_policy(policy_text(1, Path(tmp), {})))
        chain = Chain(build_steps(gateway))
        for step in chain.steps:
            if type(step).__name__ in ("CounterBackend", "LedgerWriter"):
                step.running()  # type: ignore[attr-defined]
        import kaixu.mitm as mitm

        mitm.is_kaixu_client = lambda client: True  # type: ignore[assignment]
        keep_alive(gateway)
        for _ in range(200):  # warm-up
            assert await one(chain, ON_KEY) == 200
        spent = timed_steps(chain)
        started = time.perf_counter()
        for _ in range(requests):
            await one(chain, ON_KEY)
        whole = (time.perf_counter() - started) / requests * 1e6
        print(f"µs per request by step ({requests} requests of the governed key; whole loop {whole:.1f} µs):")
        for owner, seconds in sorted(spent.items(), key=lambda item: -item[1]):
            if seconds:
                print(f"  {owner:24} {seconds / requests * 1e6:7.1f}")
        for step in chain.steps:
            if type(step).__name__ in ("CounterBackend", "LedgerWriter"):
                await step.done()  # type: ignore[attr-defined]


async def main(rounds: int, requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text = policy_text(1, work, {})
        gateway = Gateway(policy=parse_policy(text))
        chain = Chain(build_steps(gateway))
        for step in chain.steps:  # what runs without mitmproxy's options: the counters and the ledger
            if type(step).__name__ in ("CounterBackend", "LedgerWriter"):
                step.running()  # type: ignore[attr-defined]
        import kaixu.mitm as mitm

        mitm.is_kaixu_client = lambda client: True  # type: ignore[assignment]  # the test flows are kaixu's
        keep_alive(gateway)
        assert await one(chain, ON_KEY) == 200 and await one(chain, OFF_KEY) == 200
        timings: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(rounds):
            for name, key in (("off", OFF_KEY), ("on", ON_KEY)):
                started = time.perf_counter()
                for _ in range(requests):
                    await one(chain, key)
                timings[name].append((time.perf_counter() - started) / requests * 1e6)
        off, on = statistics.median(timings["off"]), statistics.median(timings["on"])
        print(f"chain, µs per request (median of {rounds} rounds of {requests}): off {off:.1f}, on {on:.1f}, "
              f"governance {on - off:+.1f}")  # fmt: skip
        for step in chain.steps:
            if type(step).__name__ in ("CounterBackend", "LedgerWriter"):
                await step.done()  # type: ignore[attr-defined]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--steps", action="store_true", help="instead: µs per request in each step's hooks")
    args = parser.parse_args()
    asyncio.run(steps(args.requests) if args.steps else main(args.rounds, args.requests))
