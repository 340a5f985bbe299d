"""The counter interface (kaixu/limits): one suite, run over both backends, against a real SQLite file and a
real Redis server (127.0.0.1:6379, or KAIXU_TEST_REDIS; under CI=true a missing Redis fails, elsewhere it
skips with the reason). Each Redis test uses its own key prefix and deletes its keys afterwards."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from kaixu.limits import SETTLED_MEMORY_S, Counters, CountersUnavailable, Refusal, Reservation, Slot, Window
from kaixu.limits import redis_counters as redis_backend
from kaixu.limits.memory_counters import MemoryCounters
from kaixu.limits.redis_counters import RedisCounters
from kaixu.limits.sqlite_counters import SqliteCounters
from tests.harness import ROOT, unavailable, wait_for
from tests.prometheus import free_port

REDIS_URL = os.environ.get("KAIXU_TEST_REDIS", "redis://127.0.0.1:6379/0")
HOUR = 3600


def need_redis() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.exceptions.RedisError as e:
        unavailable(f"no Redis at {REDIS_URL}: {e}")


class OwnRedis:
    """A redis-server a test starts and kills, on a port free when asked: should another process take that port
    before the server binds it (workers run in parallel), the server exits and another port is tried. It is
    ready when it answers with its own process id, not some other server's."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("no redis-server binary")
        for _ in range(5):
            self.port = free_port()
            self.url = f"redis://127.0.0.1:{self.port}/0"
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--save", "", "--appendonly", "no", "--dir", str(folder)],
                stdout=subprocess.DEVNULL,
            )
            wait_for(self.answers_or_exited, 10, "redis-server to start")
            if self.process.poll() is None:
                return
        raise RuntimeError("redis-server found no free port in 5 tries")

    def answers_or_exited(self) -> bool:
        if self.process.poll() is not None:
            return True
        try:
            info = redis.Redis.from_url(self.url, socket_connect_timeout=0.2).info("server")
        except redis.exceptions.RedisError:
            return False
        return bool(info["process_id"] == self.process.pid)

    def start(self) -> None:
        """Starts it again on its port (a Redis that comes back), after `kill`."""
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
        )
        wait_for(self.answers_or_exited, 10, "redis-server to start again")
        assert self.process.poll() is None, f"redis-server could not take its port {self.port} again"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


async def delete_prefix(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def counters(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Counters]:
    if request.param == "memory":
        memory = await MemoryCounters(str(tmp_path / "counters.db")).open()
        yield memory
        await memory.close()
        return
    if request.param == "sqlite":
        sqlite = await SqliteCounters(str(tmp_path / "counters.db")).open()
        yield sqlite
        await sqlite.close()
        return
    need_redis()
    prefix = f"kaixu-test:{uuid.uuid4().hex}:"
    # The arithmetic is what these tests check, some with 200 calls at once: a loaded machine (other workers,
    # other runs on the shared server) must not turn one into a timeout. The default 0.5 s has its own test
    # (test_redis_unavailable_is_counters_unavailable_quickly).
    backend = await RedisCounters(REDIS_URL, prefix=prefix, timeout_s=5).open()
    try:
        yield backend
    finally:
        await backend.close()
        await delete_prefix(prefix)


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Polls `condition` until it holds: waiting for an expiry without sleeping a guessed time."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.01)


def test_every_backend_is_counters(tmp_path: Path) -> None:
    assert isinstance(MemoryCounters(str(tmp_path / "c.db")), Counters)
    assert isinstance(SqliteCounters(str(tmp_path / "c.db")), Counters)
    assert isinstance(RedisCounters(REDIS_URL), Counters)


# Budgets


async def test_reserve_up_to_the_cap_then_refuse(counters: Counters) -> None:
    first = await counters.reserve(["key:a:month:2026-12"], 600, [1000], 60)
    assert isinstance(first, Reservation) and first.amount_micros == 600
    assert first.expires_at > time.time() + 50
    assert await counters.reserved("key:a:month:2026-12") == 600
    exact = await counters.reserve(["key:a:month:2026-12"], 400, [1000], 60)
    assert isinstance(exact, Reservation), "spent + reserved + amount == cap is admitted"
    refused = await counters.reserve(["key:a:month:2026-12"], 1, [1000], 60)
    assert refused == Refusal("key:a:month:2026-12", 1000, 0, 1000, 1)
    assert await counters.spent("key:a:month:2026-12") == 0


async def test_all_scopes_or_none(counters: Counters) -> None:
    scopes = ["org:acme:month:2026-12", "team:growth:month:2026-12", "key:web:month:2026-12"]
    held = await counters.reserve(scopes, 300, [10_000, 10_000, 500], 60)
    assert isinstance(held, Reservation) and held.scopes == tuple(scopes)
    refused = await counters.reserve(scopes, 300, [10_000, 10_000, 500], 60)
    assert isinstance(refused, Refusal)
    assert (refused.scope, refused.cap_micros, refused.reserved_micros) == ("key:web:month:2026-12", 500, 300)
    for scope in scopes:
        assert await counters.reserved(scope) == 300, "a refused reservation holds nothing on any scope"
    assert isinstance(await counters.reserve(scopes[:2], 300, [10_000, 10_000], 60), Reservation)
    assert await counters.reserved(scopes[0]) == 600


async def test_settle_counts_the_real_cost_once(counters: Counters) -> None:
    scopes = ["team:t:day:2026-12-01", "key:k:day:2026-12-01"]
    held = await counters.reserve(scopes, 5000, [10_000, 10_000], 60)
    assert isinstance(held, Reservation)
    assert await counters.settle(held, 1234) is True
    assert await counters.settle(held, 1234) is False, "a second settle is a no-op"
    for scope in scopes:
        assert await counters.spent(scope) == 1234
        assert await counters.reserved(scope) == 0
    await counters.release(held)  # after a settle: nothing to give back
    assert await counters.spent(scopes[0]) == 1234
    refused = await counters.reserve(scopes, 8767, [10_000, 10_000], 60)
    assert isinstance(refused, Refusal) and refused.spent_micros == 1234


async def test_release_gives_the_budget_back(counters: Counters) -> None:
    held = await counters.reserve(["key:r:total"], 900, [1000], 60)
    assert isinstance(held, Reservation)
    assert isinstance(await counters.reserve(["key:r:total"], 900, [1000], 60), Refusal)
    await counters.release(held)
    await counters.release(held)
    assert await counters.reserved("key:r:total") == 0 and await counters.spent("key:r:total") == 0
    assert isinstance(await counters.reserve(["key:r:total"], 900, [1000], 60), Reservation)


async def test_a_cost_above_its_reservation_overspends_by_the_difference_only(counters: Counters) -> None:
    held = await counters.reserve(["key:o:total"], 900, [1000], 60)
    assert isinstance(held, Reservation)
    await counters.settle(held, 1300)
    assert await counters.spent("key:o:total") == 1300
    assert isinstance(await counters.reserve(["key:o:total"], 0, [1000], 60), Refusal)


async def test_200_concurrent_reservations_never_pass_the_cap(counters: Counters) -> None:
    scopes, caps, amount = ["team:c:month:2026-12", "key:c:month:2026-12"], [10**9, 20_500], 1000
    answers = await asyncio.gather(*(counters.reserve(scopes, amount, caps, 60) for _ in range(200)))
    held = [answer for answer in answers if isinstance(answer, Reservation)]
    assert len(held) == 20
    assert await counters.reserved("key:c:month:2026-12") == 20_000
    assert await counters.reserved("team:c:month:2026-12") == 20_000

    async def spend(reservation: Reservation) -> None:
        await counters.settle(reservation, 700)

    await asyncio.gather(*(spend(reservation) for reservation in held))
    assert await counters.spent("key:c:month:2026-12") == 14_000
    assert await counters.reserved("key:c:month:2026-12") == 0


async def test_200_concurrent_requests_reserving_and_settling_stay_under_the_cap(counters: Counters) -> None:
    cap, amount, peak = 20_500, 1000, 0

    async def request(i: int) -> bool:
        nonlocal peak
        answer = await counters.reserve(["key:s:month:2026-12"], amount, [cap], 60)
        if isinstance(answer, Refusal):
            assert answer.spent_micros + answer.reserved_micros + amount > cap
            return False
        held = await counters.spent("key:s:month:2026-12") + await counters.reserved("key:s:month:2026-12")
        peak = max(peak, held)
        await counters.settle(answer, amount - i % 3)  # the real cost is at most the reservation
        return True

    admitted = sum(await asyncio.gather(*(request(i) for i in range(200))))
    spent = await counters.spent("key:s:month:2026-12")
    assert admitted >= 20 and spent <= cap and peak <= cap, (admitted, spent, peak)


async def test_an_expired_reservation_stops_holding_budget_but_still_settles(counters: Counters) -> None:
    lapsed = await counters.reserve(["key:e:total"], 1000, [1000], 0.05)
    assert isinstance(lapsed, Reservation)

    async def admitted() -> bool:
        answer = await counters.reserve(["key:e:total"], 1000, [1000], 60)
        if isinstance(answer, Reservation):
            await counters.release(answer)
            return True
        return False

    await eventually(admitted, 5, "the lapsed reservation frees its budget")
    assert await counters.reserved("key:e:total") == 0
    assert await counters.settle(lapsed, 400) is True, "the money was spent: it is counted"
    assert await counters.spent("key:e:total") == 400
    assert await counters.reserved("key:e:total") == 0


async def test_bad_arguments_are_errors_not_refusals(counters: Counters) -> None:
    with pytest.raises(ValueError):
        await counters.reserve(["a", "b"], 1, [10], 60)
    with pytest.raises(ValueError):
        await counters.reserve(["a", "a"], 1, [10, 10], 60)
    with pytest.raises(ValueError):
        await counters.reserve([], 1, [], 60)
    with pytest.raises(ValueError):
        await counters.reserve(["a"], -1, [10], 60)


# Windows


async def test_window_counts_requests_exactly(counters: Counters) -> None:
    answers = [await counters.hit("key:w:rpm", HOUR, 5) for _ in range(7)]
    assert [a.allowed for a in answers] == [True] * 5 + [False] * 2
    assert [a.remaining for a in answers] == [4, 3, 2, 1, 0, 0, 0]
    assert all(0 < a.reset_ms <= HOUR * 1000 and a.limit == 5 for a in answers)
    assert (await counters.hit("key:w:rpm", 60, 5)).remaining == 4, "another window length counts apart"
    assert (await counters.hit("key:other:rpm", HOUR, 5)).remaining == 4


async def test_concurrent_hits_admit_exactly_the_limit(counters: Counters) -> None:
    answers = await asyncio.gather(*(counters.hit("key:cw:rpm", HOUR, 60) for _ in range(150)))
    assert sum(a.allowed for a in answers) == 60
    assert (await counters.hit("key:cw:rpm", HOUR, 60, 0)).allowed is False


async def test_window_counts_tokens(counters: Counters) -> None:
    first = await counters.hit("key:t:tpm", HOUR, 100, 60)
    assert (first.allowed, first.remaining) == (True, 40)
    too_many = await counters.hit("key:t:tpm", HOUR, 100, 50)
    assert (too_many.allowed, too_many.remaining) == (False, 40), "a refused hit is not counted"
    peek = await counters.hit("key:t:tpm", HOUR, 100, 0)
    assert (peek.allowed, peek.remaining) == (True, 40), "amount 0 counts nothing"
    spent_upstream = await counters.hit("key:t:tpm", HOUR, 100, 70, force=True)
    assert (spent_upstream.allowed, spent_upstream.remaining) == (False, 0)
    assert (await counters.hit("key:t:tpm", HOUR, 100, 0)).allowed is False


async def test_a_window_starts_again_after_its_reset(counters: Counters) -> None:
    assert (await counters.hit("key:reset:rps", 1, 1)).allowed
    refused = await counters.hit("key:reset:rps", 1, 1)
    if refused.allowed:  # the first hit was the last of its window
        refused = await counters.hit("key:reset:rps", 1, 1)
    assert not refused.allowed and 0 < refused.reset_ms <= 1000

    async def allowed() -> bool:
        return (await counters.hit("key:reset:rps", 1, 1)).allowed

    await eventually(allowed, 3, "a new window")


# Slots


async def test_slots_are_held_and_released(counters: Counters) -> None:
    first = await counters.acquire_slot("key:p:parallel", 2, 60)
    second = await counters.acquire_slot("key:p:parallel", 2, 60)
    assert isinstance(first, Slot) and isinstance(second, Slot) and first.id != second.id
    assert await counters.acquire_slot("key:p:parallel", 2, 60) is None
    assert await counters.held_slots("key:p:parallel") == 2
    await counters.release_slot(first)
    await counters.release_slot(first)
    assert await counters.held_slots("key:p:parallel") == 1
    assert isinstance(await counters.acquire_slot("key:p:parallel", 2, 60), Slot)


async def test_concurrent_slots_hold_the_cap(counters: Counters) -> None:
    slots = await asyncio.gather(*(counters.acquire_slot("key:cp:parallel", 8, 60) for _ in range(50)))
    assert sum(slot is not None for slot in slots) == 8
    assert await counters.held_slots("key:cp:parallel") == 8


async def test_an_expired_slot_is_freed(counters: Counters) -> None:
    assert isinstance(await counters.acquire_slot("key:x:parallel", 1, 0.05), Slot)

    async def free() -> bool:
        return await counters.held_slots("key:x:parallel") == 0

    await eventually(free, 5, "the lapsed slot is freed")
    assert isinstance(await counters.acquire_slot("key:x:parallel", 1, 60), Slot)


# One operation per request each way: admit and end


async def test_admit_counts_every_window_and_takes_every_slot_or_nothing(counters: Counters) -> None:
    windows = [Window("key:a:rpm", HOUR, 3), Window("team:t:rpm", HOUR, 2), Window("key:a:tpm", HOUR, 100, 0)]
    first = await counters.admit(windows, [("key:a:parallel", 5)], 60)
    assert first.refused is None and len(first.slots) == 1
    assert [h.remaining for h in first.hits] == [2, 1, 100]
    second = await counters.admit(windows, [("key:a:parallel", 5)], 60)
    assert second.refused is None and [h.remaining for h in second.hits] == [1, 0, 100]
    third = await counters.admit(windows, [("key:a:parallel", 5)], 60)
    assert third.refused == 1 and third.slots == (), "the team's window is full"
    assert not third.hits[1].allowed and third.hits[1].remaining == 0
    assert third.hits[0].remaining == 1, "nothing was counted in the key's window"
    assert await counters.held_slots("key:a:parallel") == 2
    assert (await counters.hit("key:a:rpm", HOUR, 3, 0)).remaining == 1


async def test_admit_refuses_on_a_full_slot_with_its_index(counters: Counters) -> None:
    windows = [Window("key:s:rpm", HOUR, 10)]
    assert (await counters.admit(windows, [("key:s:parallel", 1)], 60)).refused is None
    refused = await counters.admit(windows, [("team:s:parallel", 3), ("key:s:parallel", 1)], 60)
    assert refused.refused == 2 and refused.slots == ()
    assert refused.hits[0].remaining == 9, "not counted"
    assert await counters.held_slots("team:s:parallel") == 0


async def test_concurrent_admits_hold_the_limit_exactly(counters: Counters) -> None:
    answers = await asyncio.gather(
        *(counters.admit([Window("key:c:rpm", HOUR, 20)], [("key:c:parallel", 1000)], 60) for _ in range(60))
    )
    assert sum(a.refused is None for a in answers) == 20
    assert await counters.held_slots("key:c:parallel") == 20


async def test_end_settles_releases_frees_and_counts_tokens_in_one_operation(counters: Counters) -> None:
    kept = await counters.reserve(["key:e:total", "team:e:total"], 500, [10_000, 10_000], 60)
    dropped = await counters.reserve(["key:e:total"], 300, [10_000], 60)
    assert isinstance(kept, Reservation) and isinstance(dropped, Reservation)
    admitted = await counters.admit([Window("key:e:tpm", HOUR, 50, 0)], [("key:e:parallel", 2)], 60)
    await counters.end([(kept, 120)], [dropped], admitted.slots, [Window("key:e:tpm", HOUR, 50, 70)])
    assert await counters.spent("key:e:total") == 120 and await counters.spent("team:e:total") == 120
    assert await counters.reserved("key:e:total") == 0 and await counters.reserved("team:e:total") == 0
    assert await counters.held_slots("key:e:parallel") == 0
    tokens = await counters.hit("key:e:tpm", HOUR, 50, 0)
    assert not tokens.allowed and tokens.remaining == 0, "tokens spent are counted past the limit"
    await counters.end([(kept, 120)], [], [], [])
    assert await counters.spent("key:e:total") == 120, "a second settle counts nothing"


# SQLite: a restart, and processes sharing one file


async def test_settled_ids_are_remembered_minutes_not_a_day() -> None:
    """A settled reservation's id is kept so that a repeated settle (a call retried after the server applied it)
    counts nothing; such a repeat comes within seconds. Kept a day, the ids of every request of that day stayed
    in memory (the side-by-side soak: RSS up 4 MB a minute at 500 requests/s, never levelling off)."""
    now = [1_000_000.0]
    counters = await MemoryCounters(":memory:", clock=lambda: now[0]).open()
    try:
        for _ in range(100):
            held = await counters.reserve(["key:k"], 10, [10**9], 60)
            assert isinstance(held, Reservation)
            assert await counters.settle(held, 5) and not await counters.settle(held, 5)  # once, within the memory
        now[0] += 3600  # an hour on: every id is forgotten at the next settle
        last = await counters.reserve(["key:k"], 10, [10**9], 60)
        assert isinstance(last, Reservation) and await counters.settle(last, 5)
        assert len(counters._settled) == 1, "settled ids of an hour ago are still held"
        assert await counters.spent("key:k") == 505
    finally:
        await counters.close()


async def test_sqlite_keeps_settled_spend_across_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "counters.db")
    counters = await SqliteCounters(path).open()
    held = await counters.reserve(["key:p:total"], 500, [1000], 60)
    assert isinstance(held, Reservation)
    await counters.settle(held, 321)
    await counters.hit("key:p:rpm", HOUR, 10)
    await counters.close()
    again = await SqliteCounters(path).open()
    assert await again.spent("key:p:total") == 321
    assert await again.settle(held, 321) is False, "a restart does not forget a settle"
    assert (await again.hit("key:p:rpm", HOUR, 10)).remaining == 8
    await again.close()


async def test_memory_keeps_settled_spend_across_a_restart_and_shares_the_file_with_sqlite(tmp_path: Path) -> None:
    path = str(tmp_path / "counters.db")
    counters = await MemoryCounters(path).open()
    held = await counters.reserve(["key:p:total"], 500, [1000], 60)
    assert isinstance(held, Reservation)
    await counters.settle(held, 321)
    await counters.close()  # flushes
    again = await MemoryCounters(path).open()
    assert await again.spent("key:p:total") == 321
    await again.close()
    shared = await SqliteCounters(path).open()  # `store.counters: shared` reads the same spend
    assert await shared.spent("key:p:total") == 321
    await shared.close()


def test_memory_kill_9_loses_at_most_the_spend_settled_since_the_last_flush(tmp_path: Path) -> None:
    path = tmp_path / "counters.db"
    script = (
        "import asyncio\n"
        "from kaixu.limits.memory_counters import MemoryCounters\n"
        "async def main():\n"
        f"    c = await MemoryCounters({str(path)!r}, flush_s=3600).open()\n"
        "    for _ in range(50):\n"
        "        r = await c.reserve(['key:k9:total'], 10, [10**6], 600)\n"
        "        await c.settle(r, 7)\n"
        "    await c.flush()\n"
        "    for _ in range(5):\n"
        "        r = await c.reserve(['key:k9:total'], 10, [10**6], 600)\n"
        "        await c.settle(r, 7)\n"
        "    print('done', flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "done"
    finally:
        process.kill()
        process.wait(10)

    async def check() -> None:
        counters = await MemoryCounters(str(path)).open()
        assert await counters.spent("key:k9:total") == 350, "flushed spend survives; the 5 settles after it do not"
        await counters.close()

    asyncio.run(check())


def test_sqlite_kill_9_loses_no_settled_spend(tmp_path: Path) -> None:
    path = tmp_path / "counters.db"
    script = (
        "import asyncio, sys\n"
        "from kaixu.limits.sqlite_counters import SqliteCounters\n"
        "async def main():\n"
        f"    c = await SqliteCounters({str(path)!r}).open()\n"
        "    for _ in range(50):\n"
        "        r = await c.reserve(['key:k9:total'], 10, [10**6], 600)\n"
        "        await c.settle(r, 7)\n"
        "    await c.reserve(['key:k9:total'], 10, [10**6], 600)\n"
        "    print('done', flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "done"
    finally:
        process.kill()  # SIGKILL: no close, no checkpoint
        process.wait(10)

    async def check() -> None:
        counters = await SqliteCounters(str(path)).open()
        assert await counters.spent("key:k9:total") == 350
        assert await counters.reserved("key:k9:total") == 10, "the open reservation holds until it expires"
        await counters.close()

    asyncio.run(check())


def test_two_processes_on_one_sqlite_file_cannot_overspend(tmp_path: Path) -> None:
    path, cap, amount = str(tmp_path / "counters.db"), 20_500, 1000
    command = [sys.executable, "-m", "tests.counters_race", path, str(cap), str(amount), "200"]
    racers = [
        subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"
        for racer in racers:  # both bursts start together
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        admitted = []
        for racer in racers:
            assert racer.stdout is not None
            word, count = racer.stdout.readline().split()
            assert word == "admitted"
            admitted.append(int(count))
        assert sum(admitted) == 20, f"reservations held at once across both processes: {admitted}"
        for racer in racers:
            assert racer.stdin is not None and racer.stdout is not None
            racer.stdin.write("settle\n")
            racer.stdin.flush()
            assert racer.stdout.readline().strip() == "settled"
    finally:
        for racer in racers:
            racer.kill()
            racer.wait(10)

    async def check() -> None:
        counters = await SqliteCounters(path).open()
        assert await counters.spent("key:race:total") == 20 * amount <= cap
        await counters.close()

    asyncio.run(check())


# Redis: scripts versioned, and an unavailable server is a typed error, fast


def test_every_script_and_key_carries_the_layout_version() -> None:
    scripts = [value for name, value in vars(redis_backend).items() if name.isupper() and name.startswith("_")]
    scripts = [script for script in scripts if isinstance(script, str) and "redis.call" in script]
    assert len(scripts) >= 7
    assert all(f"layout v{redis_backend.LAYOUT}" in script for script in scripts)
    assert RedisCounters(REDIS_URL, prefix="p:").prefix == f"p:c{redis_backend.LAYOUT}:"


async def test_redis_unavailable_is_counters_unavailable_quickly(tmp_path: Path) -> None:
    server = OwnRedis(tmp_path)
    url = server.url
    try:
        counters = await RedisCounters(url).open()
        assert isinstance(await counters.reserve(["key:u:total"], 1, [10], 60), Reservation)
    finally:
        server.kill()
    for operation in (
        lambda: counters.reserve(["key:u:total"], 1, [10], 60),
        lambda: counters.hit("key:u:rpm", 60, 10),
        lambda: counters.acquire_slot("key:u:parallel", 1, 60),
        lambda: counters.spent("key:u:total"),
    ):
        started = time.monotonic()
        with pytest.raises(CountersUnavailable):
            await operation()
        assert time.monotonic() - started < 2
    await counters.close()
    started = time.monotonic()
    with pytest.raises(CountersUnavailable):
        await RedisCounters(url).open()
    assert time.monotonic() - started < 2


async def test_sqlite_batches_concurrent_operations_and_one_that_fails_undoes_only_itself(tmp_path: Path) -> None:
    # Operations asked for while a batch runs share the next transaction (kaixu/limits/sqlite_counters.py `_run`):
    # one that raises is rolled back to its savepoint and gets its exception; the others stand.
    counters = await SqliteCounters(str(tmp_path / "counters.db")).open()
    statements: list[str] = []
    assert counters._db is not None
    counters._db.set_trace_callback(statements.append)  # what SQLite itself runs

    def spend(scope: str, fail: bool) -> Callable[[sqlite3.Connection, float], int]:
        def operation(db: sqlite3.Connection, now: float) -> int:
            db.execute("INSERT INTO counter_spend (scope, spent) VALUES (?, 1)", (scope,))
            if fail:
                raise LookupError(scope)
            return 1

        return operation

    try:
        results = await asyncio.gather(
            *(counters._run(spend(f"s{i}", fail=i == 3)) for i in range(8)), return_exceptions=True
        )
        assert [type(r).__name__ for r in results] == ["int"] * 3 + ["LookupError"] + ["int"] * 4
        # one batch, or (where tasks start eagerly, as under kaixu run) the first operation's and then the seven
        # asked for while it ran; not one transaction each
        assert statements.count("BEGIN IMMEDIATE") in (1, 2), statements
        assert [await counters.spent(f"s{i}") for i in range(8)] == [1, 1, 1, 0, 1, 1, 1, 1]
    finally:
        await counters.close()


async def test_sqlite_forgets_settled_ids_without_reading_every_one(tmp_path: Path) -> None:
    # every settle forgets the ids past their memory (`_settle`): with minutes of ids kept (hundreds of thousands
    # under load) a scan of the table per settle cost --workers more than the request itself
    counters = await SqliteCounters(str(tmp_path / "counters.db")).open()
    try:
        assert counters._db is not None
        plan = counters._db.execute("EXPLAIN QUERY PLAN DELETE FROM counter_settled WHERE until <= 1").fetchall()
        assert any("INDEX counter_settled_until" in str(row) for row in plan), plan
    finally:
        await counters.close()


async def test_sqlite_waits_for_another_process_lock_in_short_tries_then_gives_up_at_its_timeout(
    tmp_path: Path,
) -> None:
    # Another connection holds the file's write lock, as another `--workers` process does for one batch. The
    # counters try `BEGIN IMMEDIATE` again after short pauses (`_begin`), not inside SQLite's busy handler, which
    # sleeps 1, 2, 5, 10 ms between tries: the holder lets go once it has seen the counters try three times.
    path = str(tmp_path / "counters.db")
    counters = await SqliteCounters(path, busy_timeout_s=3).open()
    holder = sqlite3.connect(path, isolation_level=None)
    tries = 0
    three_tries = threading.Event()

    def trace(statement: str) -> None:
        nonlocal tries
        if statement == "BEGIN IMMEDIATE":
            tries += 1
            if tries == 3:
                three_tries.set()

    try:
        assert counters._db is not None
        counters._db.set_trace_callback(trace)
        holder.execute("BEGIN IMMEDIATE")
        asked = asyncio.create_task(counters.spent("team"))
        assert await asyncio.to_thread(three_tries.wait, 6), f"{tries} tries while the lock was held"
        holder.execute("COMMIT")
        assert await asked == 0

        counters.busy_timeout_s = 0.2  # a lock held past the timeout: the operation fails, closed
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(CountersUnavailable, match="locked"):
            await counters.spent("team")
        holder.execute("COMMIT")
        assert await counters.spent("team") == 0
    finally:
        holder.close()
        await counters.close()


async def test_sqlite_sweeps_rows_past_their_time_once_a_second_and_reads_skip_them_before(tmp_path: Path) -> None:
    # An operation runs as few statements as it can (each is a trip back for the GIL): rows past their time are
    # not deleted by every read but swept by the first batch a second after the last sweep; until then the reads
    # skip them.
    now = [1_000_000.6]
    counters = await SqliteCounters(str(tmp_path / "counters.db"), clock=lambda: now[0]).open()
    try:
        db = counters._db
        assert db is not None
        held = await counters.reserve(["team:t"], 100, [150], 0.3)  # the first batch sweeps (nothing to sweep)
        settled = await counters.reserve(["team:t"], 10, [150], 60)
        assert isinstance(held, Reservation) and isinstance(settled, Reservation)
        assert await counters.settle(settled, 10)
        assert await counters.acquire_slot("team:t:parallel", 1, 0.3) is not None
        assert (await counters.hit("team:t:rps", 1, 1)).allowed
        assert await counters.reserved("team:t") == 100 and await counters.held_slots("team:t:parallel") == 1

        now[0] += 0.5  # the reservation, the slot and the window are past their time; no sweep is due yet
        assert db.execute("SELECT COUNT(*) FROM counter_reservation").fetchone()[0] == 1
        assert await counters.reserved("team:t") == 0
        assert await counters.held_slots("team:t:parallel") == 0
        assert (await counters.hit("team:t:rps", 1, 1)).allowed, "the window gone by counts no more"
        assert isinstance(await counters.reserve(["team:t"], 141, [150], 1), Refusal), "spent 10 + 141 > 150"
        assert db.execute("SELECT COUNT(*) FROM counter_reservation").fetchone()[0] == 1, "swept before its time"

        now[0] += SETTLED_MEMORY_S  # a sweep is due: only what is current stays
        assert await counters.spent("team:t") == 10
        rows = {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("counter_reservation", "counter_slot", "counter_settled", "counter_window")}  # fmt: skip
        assert rows == dict.fromkeys(rows, 0), rows
    finally:
        await counters.close()


async def test_memory_counters_that_cannot_read_their_file_are_unavailable_not_a_crash(tmp_path: Path) -> None:
    # Seen under load: the counters opened while another connection held the file's write lock past the busy
    # timeout. `sqlite3.OperationalError` escaped `open`, the opening task kept it, and every governed request
    # then failed with a 500 (an exception in a hook) instead of the 503 that `CountersUnavailable` gives.
    path = str(tmp_path / "kaixu.db")
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("CREATE TABLE held (x)")
        with pytest.raises(CountersUnavailable, match="locked"):
            await MemoryCounters(path, busy_timeout_s=0.2).open()
    finally:
        holder.close()


async def test_memory_forgets_each_settled_id_when_its_memory_ends_not_a_minute_later() -> None:
    # the ids are forgotten from the oldest at every settle: a once-a-minute walk over all of them (minutes of
    # ids under load) held the event loop, and kept each id up to a minute too long
    start = 1_000_000.0
    now = [start]
    counters = await MemoryCounters(":memory:", clock=lambda: now[0]).open()
    try:
        for _ in range(3):  # remembered until start + 300, + 301, + 302
            held = await counters.reserve(["key:k"], 10, [10**9], 60)
            assert isinstance(held, Reservation) and await counters.settle(held, 1)
            now[0] += 1
        now[0] = start + SETTLED_MEMORY_S + 0.5
        await counters.hit("key:k:rpm", 60, 1000)  # the first id's memory has ended
        assert len(counters._settled) == 2
        now[0] += 1  # and now the second's, a second later
        last = await counters.reserve(["key:k"], 10, [10**9], 60)
        assert isinstance(last, Reservation) and await counters.settle(last, 1)
        assert len(counters._settled) == 2, "the third id and the last one"
    finally:
        await counters.close()
