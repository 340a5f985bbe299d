"""Counters in the process, with settled spend persisted to the SQLite file: one kaixu process, the fastest.

Why a third backend: every operation of `SqliteCounters` is a transaction in a worker thread (about 60-90 µs),
and a request makes four of them; one process needs no file lock to be atomic, because the event loop runs one
operation at a time and none of these methods awaits between its check and its write. So here an operation is
a few dictionary lookups (about 1-3 µs) and the file is written behind: settled spend is added to the same
`counter_spend` table `SqliteCounters` uses, in one transaction every `flush_s` (50 ms) from a worker thread,
and read back by `open()`. A restart keeps spend; switching `store.counters` between `memory` and `shared`
keeps it too.

What a `kill -9` can lose: the spend settled since the last flush (at most `flush_s` of settles). Reservations,
windows and slots live only in memory: after any restart the current minute's request counts and the slots
start again from zero, and reservations in flight are gone (they would have expired anyway).

Not for several processes: each would count against the cap alone. Those use `store.counters: shared`
(`SqliteCounters`) or Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Sequence

from kaixu.limits import (
    SETTLED_MEMORY_S,
    Admission,
    CountersUnavailable,
    Refusal,
    Reservation,
    Slot,
    Window,
    WindowHit,
    check_reservation,
    check_window,
    new_id,
    window_answer,
)
from kaixu.limits.sqlite_counters import SCHEMA
from kaixu.log import Outage
from kaixu.store.connect import WAL_NORMAL, open_sqlite

log = logging.getLogger("kaixu.limits")

FLUSH_S = 0.05


class MemoryCounters:
    """`kaixu.limits.Counters` in one process. `path` None keeps nothing on disk (tests, `:memory:` stores)."""

    def __init__(
        self,
        path: str | None,
        *,
        flush_s: float = FLUSH_S,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 5.0,
    ) -> None:
        self.path = None if path == ":memory:" else path
        self.flush_s = flush_s
        self.busy_timeout_s = busy_timeout_s
        """How long opening and each flush wait for another connection's write lock on the file."""
        self.clock = clock
        self._spent: dict[str, int] = {}
        self._held: dict[str, _Holds] = {}
        self._settled: dict[str, float] = {}
        """Settled reservation ids -> until when they are remembered (a repeated settle counts nothing)."""
        self._windows: dict[tuple[str, int], list[int]] = {}
        """(scope, window_s) -> [window start index, count]."""
        self._slots: dict[str, dict[str, float]] = {}
        self._pending: dict[str, int] = {}
        """Settled spend not yet written to the file."""
        self._flusher: asyncio.Task[None] | None = None
        self._writing: asyncio.Future[None] | None = None
        self._last_reap = 0.0

    async def open(self) -> MemoryCounters:
        """Reads the spend kept in the file; a file it cannot read (locked past the busy timeout, unreadable) is
        `CountersUnavailable`, which the gateway answers with a 503, never an exception out of a hook."""
        if self.path is not None:
            try:
                self._spent = await asyncio.to_thread(_load, self.path, self.busy_timeout_s)
            except sqlite3.Error as e:
                raise CountersUnavailable(f"counters {self.path}: {e}") from e
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())
        return self

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        """Writes the spend settled since the last flush (one transaction, in a worker thread)."""
        if self.path is None:
            self._pending.clear()
            return
        while self._writing is not None:  # one writer at a time, so no delta is written twice
            await asyncio.shield(self._writing)
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        self._writing = asyncio.get_running_loop().create_future()
        try:
            await asyncio.to_thread(_add_spend, self.path, batch, self.busy_timeout_s)
        except (sqlite3.Error, OSError) as e:
            for scope, micros in batch.items():  # kept for the next flush: nothing settled is dropped
                self._pending[scope] = self._pending.get(scope, 0) + micros
            raise CountersUnavailable(f"counters {self.path}: {e}") from e
        finally:
            writing, self._writing = self._writing, None
            writing.set_result(None)

    async def _flush_forever(self) -> None:
        outage = Outage("counters' spend file", log)  # a file kaixu cannot write: a line, not one per flush
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except CountersUnavailable as e:
                outage.failed(f"{e}; settled spend is kept in memory and written when it can be")
            else:
                outage.recovered()

    # Budgets

    def _live(self, scope: str, now: float) -> _Holds:
        held = self._held.get(scope)
        if held is None:
            held = self._held[scope] = _Holds()
        elif held.earliest <= now:
            held.reap(now)
        return held

    async def reserve(
        self, scopes: Sequence[str], amount_micros: int, caps: Sequence[int], ttl_s: float
    ) -> Reservation | Refusal:
        check_reservation(scopes, amount_micros, caps, ttl_s)
        now = self.clock()
        helds = [self._live(scope, now) for scope in scopes]
        for scope, cap, held in zip(scopes, caps, helds, strict=True):
            spent = self._spent.get(scope, 0)
            if spent + held.total + amount_micros > cap:
                return Refusal(scope, cap, spent, held.total, amount_micros)
        reservation = Reservation(new_id(), tuple(scopes), amount_micros, now + ttl_s)
        for held in helds:
            held.add(reservation.id, amount_micros, reservation.expires_at)
        return reservation

    async def settle(self, reservation: Reservation, actual_micros: int) -> bool:
        if actual_micros < 0:
            raise ValueError("a cost is not negative")
        return self._settle(reservation, actual_micros, self.clock())

    def _settle(self, reservation: Reservation, actual_micros: int, now: float) -> bool:
        self._reap(now)
        if reservation.id in self._settled:
            return False
        self._settled[reservation.id] = now + SETTLED_MEMORY_S
        for scope in reservation.scopes:
            held = self._held.get(scope)
            if held is not None:
                held.remove(reservation.id)
            self._spent[scope] = self._spent.get(scope, 0) + actual_micros
            self._pending[scope] = self._pending.get(scope, 0) + actual_micros
        return True

    async def release(self, reservation: Reservation) -> None:
        for scope in reservation.scopes:
            held = self._held.get(scope)
            if held is not None:
                held.remove(reservation.id)

    async def spent(self, scope: str) -> int:
        return self._spent.get(scope, 0)

    async def reserved(self, scope: str) -> int:
        return self._live(scope, self.clock()).total

    def _reap(self, now: float) -> None:
        """Forget the settled ids past their memory, from the oldest (they are kept in the order they were
        settled, which is the order they expire in): a few at a time, never a walk over minutes of ids on the
        event loop (300,000 at 1,000 requests/s). At most once a minute: forget windows and empty scopes no
        request touched since their window ended (client IPs come and go)."""
        settled = self._settled
        while settled:
            oldest = next(iter(settled))
            if settled[oldest] > now:
                break
            del settled[oldest]
        if now - self._last_reap < 60:
            return
        self._last_reap = now
        now_ms = int(now * 1000)
        for key in [k for k, (start, _) in self._windows.items() if start < now_ms // (k[1] * 1000)]:
            del self._windows[key]
        for scope in [scope for scope, held in self._held.items() if not held.entries]:
            del self._held[scope]
        for scope in [scope for scope, slots in self._slots.items() if not slots]:
            del self._slots[scope]

    # Windows

    async def hit(self, scope: str, window_s: int, limit: int, amount: int = 1, *, force: bool = False) -> WindowHit:
        check_window(window_s, limit, amount)
        now = self.clock()
        self._reap(now)
        window, answer = self._look(Window(scope, window_s, limit, amount), int(now * 1000), force)
        if answer.allowed or force:
            window[1] += amount
        return answer

    def _look(self, asked: Window, now_ms: int, force: bool = False) -> tuple[list[int], WindowHit]:
        """The window's counter (current window) and what counting `asked.amount` in it would answer."""
        start = now_ms // (asked.window_s * 1000)
        window = self._windows.get((asked.scope, asked.window_s))
        if window is None or window[0] != start:
            window = self._windows[(asked.scope, asked.window_s)] = [start, 0]
        return window, window_answer(window[1], asked.limit, asked.amount, force, now_ms, asked.window_s)

    async def admit(self, windows: Sequence[Window], slots: Sequence[tuple[str, int]], ttl_s: float) -> Admission:
        for asked in windows:
            check_window(asked.window_s, asked.limit, asked.amount)
        now = self.clock()
        self._reap(now)
        now_ms = int(now * 1000)
        looks = [self._look(asked, now_ms) for asked in windows]
        refused = next((i for i, (_, hit) in enumerate(looks) if not hit.allowed), None)
        held = [self._held_slots(scope, now) for scope, _ in slots]
        if refused is None:
            full = next((i for i, (h, (_, cap)) in enumerate(zip(held, slots, strict=True)) if len(h) >= cap), None)
            refused = None if full is None else len(windows) + full
        if refused is not None:  # nothing counted: each window as it stands
            hits = tuple(
                hit if i == refused else window_answer(window[1], asked.limit, 0, False, now_ms, asked.window_s)
                for i, ((window, hit), asked) in enumerate(zip(looks, windows, strict=True))
            )
            return Admission(hits, (), refused)
        for (window, _), asked in zip(looks, windows, strict=True):
            window[1] += asked.amount
        taken = []
        for (scope, _), entries in zip(slots, held, strict=True):
            slot = Slot(new_id(), scope, now + ttl_s)
            entries[slot.id] = slot.expires_at
            taken.append(slot)
        return Admission(tuple(hit for _, hit in looks), tuple(taken))

    async def end(
        self,
        settle: Sequence[tuple[Reservation, int]],
        release: Sequence[Reservation],
        slots: Sequence[Slot],
        windows: Sequence[Window],
    ) -> None:
        now = self.clock()
        for reservation, actual in settle:
            self._settle(reservation, max(0, actual), now)
        for reservation in release:
            await self.release(reservation)
        for slot in slots:
            await self.release_slot(slot)
        now_ms = int(now * 1000)
        for asked in windows:
            window, _ = self._look(asked, now_ms, force=True)
            window[1] += asked.amount

    # Slots

    async def acquire_slot(self, scope: str, limit: int, ttl_s: float) -> Slot | None:
        if ttl_s <= 0 or limit < 0:
            raise ValueError("a slot needs a positive ttl and a limit that is not negative")
        now = self.clock()
        slots = self._held_slots(scope, now)
        if len(slots) >= limit:
            return None
        slot = Slot(new_id(), scope, now + ttl_s)
        slots[slot.id] = slot.expires_at
        return slot

    async def release_slot(self, slot: Slot) -> None:
        slots = self._slots.get(slot.scope)
        if slots is not None:
            slots.pop(slot.id, None)

    async def held_slots(self, scope: str) -> int:
        return len(self._held_slots(scope, self.clock()))

    def _held_slots(self, scope: str, now: float) -> dict[str, float]:
        slots = self._slots.get(scope)
        if slots is None:
            slots = self._slots[scope] = {}
        else:
            for sid in [sid for sid, expires in slots.items() if expires <= now]:
                del slots[sid]
        return slots


class _Holds:
    """A scope's live reservations, with their total kept as they come and go (a reservation reads it on every
    scope), and the earliest expiry, so that expired ones are looked for only when one can have expired."""

    __slots__ = ("earliest", "entries", "total")

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, float]] = {}
        self.total = 0
        self.earliest = math.inf

    def add(self, rid: str, amount: int, expires: float) -> None:
        self.entries[rid] = (amount, expires)
        self.total += amount
        self.earliest = min(self.earliest, expires)

    def remove(self, rid: str) -> None:
        held = self.entries.pop(rid, None)
        if held is not None:
            self.total -= held[0]

    def reap(self, now: float) -> None:
        for rid in [rid for rid, (_, expires) in self.entries.items() if expires <= now]:
            self.remove(rid)
        self.earliest = min((expires for _, expires in self.entries.values()), default=math.inf)


def _connect(path: str, busy_timeout_s: float) -> sqlite3.Connection:
    db = open_sqlite(path, timeout_s=busy_timeout_s, pragmas=WAL_NORMAL)
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    return db


def _load(path: str, busy_timeout_s: float) -> dict[str, int]:
    db = _connect(path, busy_timeout_s)
    try:
        return {str(scope): int(spent) for scope, spent in db.execute("SELECT scope, spent FROM counter_spend")}
    finally:
        db.close()


def _add_spend(path: str, batch: dict[str, int], busy_timeout_s: float) -> None:
    db = _connect(path, busy_timeout_s)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO counter_spend (scope, spent) VALUES (?, ?) "
            "ON CONFLICT (scope) DO UPDATE SET spent = spent + excluded.spent",
            list(batch.items()),
        )
        db.execute("COMMIT")
    finally:
        db.close()
