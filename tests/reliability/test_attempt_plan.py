"""The attempt plan's rules on their own (kaixu/reliability/plan.py, pools.py): how long a retry waits, which
failures are retried, fall back or are final, how a provider queue admits, hands over and refuses, and how the
policy's `retries:` sections combine. The same rules through a real kaixu: tests/reliability/test_reliability.py."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time

import pytest

from kaixu.config import parse_policy
from kaixu.config.policy import RetryPolicy
from kaixu.reliability.plan import backoff_s, retry_after_s, verdict
from kaixu.reliability.pools import ProviderPool, QueueFull

RETRIES = RetryPolicy(attempts=3, base_ms=100, max_ms=1000, jitter=True)


def test_full_jitter_stays_below_the_doubling_backoff_and_its_cap() -> None:
    rng = random.Random(7)
    for retry, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (5, 1.0), (9, 1.0)):
        waits = [backoff_s(RETRIES, retry, None, rng) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits), (retry, max(waits))
        assert max(waits) > ceiling * 0.8, "full jitter spreads up to the ceiling"
    fixed = RetryPolicy(attempts=3, base_ms=100, max_ms=1000, jitter=False)
    assert [backoff_s(fixed, n, None) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]


def test_retry_after_is_honoured_and_capped_at_max_ms() -> None:
    assert backoff_s(RETRIES, 1, 0.5, random.Random(1)) >= 0.5
    assert backoff_s(RETRIES, 1, 120, random.Random(1)) == 1.0, "a provider asking for 2 minutes waits max_ms"


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s("3") == 3.0 and retry_after_s("0.25") == 0.25
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (retry_after_s(when) or 0) <= 30
    assert retry_after_s(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0


@pytest.mark.parametrize(
    ("status", "body", "transport", "expected"),
    [
        (503, b"", False, "retry"),
        (429, b"", False, "retry"),
        (502, b"", True, "retry"),
        (501, b"", False, "fallback"),  # 5xx outside on_status: not retried, still not the client's fault
        (400, b'{"error":{"message":"bad field"}}', False, "final"),
        (404, b"", False, "final"),
        (400, b'{"error":{"code":"context_length_exceeded"}}', False, "fallback"),
        (400, b'{"error":{"message":"prompt is too long: 300000 tokens"}}', False, "fallback"),
        (400, b'{"error":{"message":"flagged by the content_filter"}}', False, "final"),  # not in fallback_on
    ],
)
def test_the_verdict_of_a_failure(status: int, body: bytes, transport: bool, expected: str) -> None:
    policy = RetryPolicy(attempts=3, on_status=frozenset({408, 429, 500, 502, 503, 504}))
    assert verdict(status, body, policy, frozenset({"context_window"}), transport=transport) == expected


def test_without_fallback_on_a_client_error_is_always_final() -> None:
    body = b'{"error":{"code":"context_length_exceeded"}}'
    assert verdict(400, body, RETRIES, frozenset()) == "final"


def test_a_queue_admits_up_to_its_cap_then_queues_in_order_then_refuses() -> None:
    async def scenario() -> list[str]:
        pool = ProviderPool(max_concurrent=1, max_queue=2)
        order: list[str] = []
        await pool.acquire()

        async def wait(name: str) -> None:
            await pool.acquire()
            order.append(name)

        first, second = asyncio.ensure_future(wait("first")), asyncio.ensure_future(wait("second"))
        await asyncio.sleep(0)
        assert (pool.active, len(pool.waiters), pool.total_queued) == (1, 2, 2)
        with pytest.raises(QueueFull):
            await pool.acquire()
        pool.release()
        await first
        assert order == ["first"] and pool.active == 1, "the slot went straight to the first waiter"
        pool.release()
        await second
        pool.release()
        assert (pool.active, len(pool.waiters)) == (0, 0)
        return order

    assert asyncio.run(scenario()) == ["first", "second"]


def test_a_waiter_that_leaves_the_queue_gives_up_its_place() -> None:
    async def scenario() -> None:
        pool = ProviderPool(max_concurrent=1, max_queue=1)
        await pool.acquire()
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not pool.waiters
        pool.release()
        assert pool.active == 0
        await pool.acquire()  # the cap is whole again
        assert pool.active == 1

    asyncio.run(scenario())


BASE = """\
version: 1
providers:
  mock: {kind: mock, max_concurrent: 4, queue_size: 8, supports_tools: false}
models:
  plain:
    route: [{provider: mock}]
  tuned:
    route: [{provider: mock}]
    retries: {attempts: 5, backoff: {base_ms: 10}}
    fallbacks: [plain]
    fallback_on: [context_window]
    timeouts: {ttfb_s: 2, idle_s: 1.5}
"""


def test_a_models_retries_replace_the_global_ones_field_by_field() -> None:
    policy = parse_policy(
        BASE + "retries:\n  attempts: 2\n  backoff: {base_ms: 500, max_ms: 4000}\n  on_status: [503]\n"
    )
    plain, tuned = policy.models["plain"], policy.models["tuned"]
    assert (plain.retries.attempts, plain.retries.base_ms, plain.retries.max_ms) == (2, 500, 4000)
    assert plain.retries.on_status == {503}
    assert (tuned.retries.attempts, tuned.retries.base_ms, tuned.retries.max_ms) == (5, 10, 4000)
    assert tuned.retries.on_status == {503}
    assert tuned.fallbacks == ("plain",) and tuned.fallback_on == {"context_window"}
    assert tuned.timeouts is not None and (tuned.timeouts.ttfb_s, tuned.timeouts.idle_s) == (2.0, 1.5)
    assert tuned.timeouts.total_s is None
    provider = policy.providers["mock"]
    assert (provider.max_concurrent, provider.queue_size, provider.supports_tools) == (4, 8, False)


def test_without_a_retries_section_a_model_is_tried_once_and_with_one_three_times() -> None:
    assert parse_policy(BASE).models["plain"].retries.attempts == 1
    uncapped = BASE.replace("max_concurrent: 4, queue_size: 8, ", "")
    assert not parse_policy(uncapped).models["plain"].guarded, "one try, no timeouts, no queue: mitmproxy's alone"
    assert parse_policy(BASE).models["plain"].guarded, "its provider has a queue"
    assert parse_policy(BASE + "retries: {}\n").models["plain"].retries.attempts == 3
    assert parse_policy(uncapped + "retries: {}\n").models["plain"].guarded
    assert parse_policy(uncapped).models["tuned"].guarded
