"""Counters in one SQLite file, which the kaixu processes of one machine can share.

Operations run in `BEGIN IMMEDIATE` transactions: one takes the file's write lock before it reads, so two
processes (or two threads) can never both read the same `spent + reserved` and both admit. sqlite3 blocks, so
they run in a worker thread (`asyncio.to_thread`), never on the event loop, in batches: the operations asked for
while a batch runs make the next one, one transaction, each in a savepoint (`_run`). A lock serialises this
object's batches on its one connection. WAL with `synchronous=NORMAL`: a committed transaction survives a
`kill -9` of the process (it is in the WAL file); only a power cut can lose the last ones.

The write lock is waited for here, not in SQLite's busy handler (`_begin`): that handler sleeps 1, 2, 5, 10 ms
between tries, while another process holds the lock for well under a millisecond (one batch), so with
`--workers N` a batch waited about twice as long as the lock was held.

Rows past their time (expired reservations and slots, settled ids past their memory, windows gone by) are swept
at most once a second (`SWEEP_EVERY_S`), in the first batch after, and the reads skip them until then: each
statement an operation runs is a return trip to the event loop's thread for the GIL, so an operation runs as few
as it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

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
from kaixu.store.connect import WAL_NORMAL, open_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS counter_spend (scope TEXT PRIMARY KEY, spent INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counter_reservation (
    scope TEXT NOT NULL, id TEXT NOT NULL, amount INTEGER NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (scope, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counter_settled (id TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS counter_settled_until ON counter_settled (until);
CREATE TABLE IF NOT EXISTS counter_window (
    scope TEXT NOT NULL, window_s INTEGER NOT NULL, start INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (scope, window_s, start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counter_slot (
    scope TEXT NOT NULL, id TEXT NOT NULL, expires REAL NOT NULL, PRIMARY KEY (scope, id)) WITHOUT ROWID;
"""


T = TypeVar("T")

SWEEP_EVERY_S = 1.0
"""How often (seconds of `clock`) a batch first deletes the rows past their time (`_sweep`)."""


class SqliteCounters:
    """`kaixu.limits.Counters` on a SQLite file. `clock` (Unix seconds) is injectable for tests; processes
    sharing a file share the machine's clock."""

    def __init__(self, path: str, *, busy_timeout_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        """How long an operation waits for another process's write lock before `CountersUnavailable`."""
        self.clock = clock
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._queued: list[tuple[Callable[[sqlite3.Connection, float], Any], asyncio.Future[Any]]] = []
        self._batches: asyncio.Task[None] | None = None
        self._swept = float("-inf")
        """`clock` time of the last `_sweep` (only the batch thread, under `_lock`, reads and writes it)."""

    async def open(self) -> SqliteCounters:
        await asyncio.to_thread(self._open)
        return self

    def _open(self) -> None:
        with self._lock:
            deadline = time.monotonic() + self.busy_timeout_s
            while True:
                db = None
                try:
                    db = open_sqlite(
                        self.path, timeout_s=self.busy_timeout_s, pragmas=WAL_NORMAL, check_same_thread=False
                    )
                    with _transaction(db, deadline):
                        for statement in SCHEMA.split(";"):
                            if statement.strip():
                                db.execute(statement)
                    db.execute("PRAGMA busy_timeout = 0")  # `_begin` waits for the lock, SQLite does not
                    break
                except sqlite3.Error as e:
                    if db is not None:
                        db.close()
                    # Two processes opening a new file at once: the switch to WAL does not wait for the other's
                    # lock (SQLite's busy handler is not called for it), so the loser tries again.
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise CountersUnavailable(f"counters {self.path}: {e}") from e
                    time.sleep(0.005)
            self._db = db

    async def close(self) -> None:
        if self._batches is not None:  # what was asked before closing is answered
            await asyncio.wait([self._batches])
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()

    async def _run(self, operation: Callable[[sqlite3.Connection, float], T]) -> T:
        """Queue the operation for the next batch and wait for its answer. One batch at a time runs in a worker
        thread, as one transaction; the operations that arrive meanwhile make the next one. A busy gateway
        thus pays one thread hop and one write lock per batch, not per operation: with `--workers N` the
        processes take turns at the file's lock, and a lock waited for costs SQLite's busy handler a sleep."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()
        self._queued.append((operation, answer))
        if self._batches is None or self._batches.done():  # (done: it ended before its first await)
            self._batches = loop.create_task(self._run_batches())
        return await answer

    async def _run_batches(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    outcomes = await asyncio.to_thread(self._locked, [operation for operation, _ in batch])
                except BaseException as exc:  # CountersUnavailable for all of them (or this task cancelled)
                    failure = exc if isinstance(exc, Exception) else CountersUnavailable("counters are closing")
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(failure)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, answer), (ok, value) in zip(batch, outcomes, strict=True):
                    if answer.done():  # its caller gave up waiting; what it did stands, as before batching
                        continue
                    if ok:
                        answer.set_result(value)
                    else:
                        answer.set_exception(value)
        finally:  # cancelled (the loop is closing): what is still queued is not run
            self._batches = None
            queued, self._queued = self._queued, []
            for _, answer in queued:
                if not answer.done():
                    answer.set_exception(CountersUnavailable("counters are closing"))

    def _locked(self, operations: Sequence[Callable[[sqlite3.Connection, float], object]]) -> list[tuple[bool, Any]]:
        """One transaction, each operation in a savepoint of its own: one that raises is undone and gets its
        exception, the others stand. A SQLite error (locked past the busy timeout, file gone, disk full) fails
        the whole batch with `CountersUnavailable`."""
        with self._lock:
            if self._db is None:
                raise CountersUnavailable("counters are not open")
            db = self._db
            outcomes: list[tuple[bool, Any]] = []
            try:
                with _transaction(db, time.monotonic() + self.busy_timeout_s):
                    now = self.clock()
                    if now - self._swept >= SWEEP_EVERY_S:
                        _sweep(db, now)
                        self._swept = now
                    if len(operations) == 1:  # alone in its transaction: the rollback undoes it, no savepoint
                        return [(True, operations[0](db, self.clock()))]
                    for operation in operations:
                        db.execute("SAVEPOINT op")
                        try:
                            value = operation(db, self.clock())
                        except sqlite3.Error:
                            raise
                        except Exception as exc:
                            db.execute("ROLLBACK TO op")
                            db.execute("RELEASE op")
                            outcomes.append((False, exc))
                            continue
                        db.execute("RELEASE op")
                        outcomes.append((True, value))
            except sqlite3.Error as e:
                raise CountersUnavailable(f"counters {self.path}: {e}") from e
            return outcomes

    # Budgets

    async def reserve(
        self, scopes: Sequence[str], amount_micros: int, caps: Sequence[int], ttl_s: float
    ) -> Reservation | Refusal:
        check_reservation(scopes, amount_micros, caps, ttl_s)
        scopes = tuple(scopes)
        reservation_id = new_id()

        def reserve(db: sqlite3.Connection, now: float) -> Reservation | Refusal:
            for scope, cap in zip(scopes, caps, strict=True):
                spent, reserved = db.execute(_SPENT_AND_RESERVED, (scope, scope, now)).fetchone()
                if spent + reserved + amount_micros > cap:
                    return Refusal(scope, cap, spent, reserved, amount_micros)
            expires = now + ttl_s
            db.executemany(
                "INSERT INTO counter_reservation (scope, id, amount, expires) VALUES (?, ?, ?, ?)",
                [(scope, reservation_id, amount_micros, expires) for scope in scopes],
            )
            return Reservation(reservation_id, scopes, amount_micros, expires)

        return await self._run(reserve)

    async def settle(self, reservation: Reservation, actual_micros: int) -> bool:
        if actual_micros < 0:
            raise ValueError("a cost is not negative")

        def settle(db: sqlite3.Connection, now: float) -> bool:
            return _settle(db, reservation, actual_micros, now)

        return await self._run(settle)

    async def release(self, reservation: Reservation) -> None:
        def release(db: sqlite3.Connection, now: float) -> None:
            db.executemany(
                "DELETE FROM counter_reservation WHERE scope = ? AND id = ?",
                [(scope, reservation.id) for scope in reservation.scopes],
            )

        await self._run(release)

    async def spent(self, scope: str) -> int:
        return await self._run(lambda db, now: _spent(db, scope))

    async def reserved(self, scope: str) -> int:
        return await self._run(lambda db, now: _reserved(db, scope, now))

    # Windows

    async def hit(self, scope: str, window_s: int, limit: int, amount: int = 1, *, force: bool = False) -> WindowHit:
        check_window(window_s, limit, amount)

        def hit(db: sqlite3.Connection, now: float) -> WindowHit:
            asked, now_ms = Window(scope, window_s, limit, amount), int(now * 1000)
            answer = _look(db, asked, now_ms, force)
            if answer.allowed or force:
                _count(db, asked, now_ms)
            return answer

        return await self._run(hit)

    async def admit(self, windows: Sequence[Window], slots: Sequence[tuple[str, int]], ttl_s: float) -> Admission:
        for asked in windows:
            check_window(asked.window_s, asked.limit, asked.amount)
        ids = [new_id() for _ in slots]

        def admit(db: sqlite3.Connection, now: float) -> Admission:
            now_ms = int(now * 1000)
            hits = [_look(db, asked, now_ms) for asked in windows]
            refused = next((i for i, hit in enumerate(hits) if not hit.allowed), None)
            if refused is None:
                full = next((i for i, (scope, cap) in enumerate(slots) if _held(db, scope, now) >= cap), None)
                refused = None if full is None else len(windows) + full
            if refused is not None:
                shown = tuple(
                    hit if i == refused else _look(db, Window(a.scope, a.window_s, a.limit, 0), now_ms)
                    for i, (hit, a) in enumerate(zip(hits, windows, strict=True))
                )
                return Admission(shown, (), refused)
            for asked in windows:
                _count(db, asked, now_ms)
            taken = tuple(Slot(sid, scope, now + ttl_s) for sid, (scope, _) in zip(ids, slots, strict=True))
            db.executemany("INSERT INTO counter_slot (scope, id, expires) VALUES (?, ?, ?)",
                           [(slot.scope, slot.id, slot.expires_at) for slot in taken])  # fmt: skip
            return Admission(tuple(hits), taken)

        return await self._run(admit)

    async def end(
        self,
        settle: Sequence[tuple[Reservation, int]],
        release: Sequence[Reservation],
        slots: Sequence[Slot],
        windows: Sequence[Window],
    ) -> None:
        def end(db: sqlite3.Connection, now: float) -> None:
            for reservation, actual in settle:
                _settle(db, reservation, max(0, actual), now)
            if release:
                db.executemany(
                    "DELETE FROM counter_reservation WHERE scope = ? AND id = ?",
                    [(scope, r.id) for r in release for scope in r.scopes],
                )
            if slots:
                db.executemany("DELETE FROM counter_slot WHERE scope = ? AND id = ?", [(s.scope, s.id) for s in slots])
            for asked in windows:
                _count(db, asked, int(now * 1000))

        await self._run(end)

    # Slots

    async def acquire_slot(self, scope: str, limit: int, ttl_s: float) -> Slot | None:
        if ttl_s <= 0 or limit < 0:
            raise ValueError("a slot needs a positive ttl and a limit that is not negative")
        slot_id = new_id()

        def acquire(db: sqlite3.Connection, now: float) -> Slot | None:
            if _held(db, scope, now) >= limit:
                return None
            db.execute("INSERT INTO counter_slot (scope, id, expires) VALUES (?, ?, ?)", (scope, slot_id, now + ttl_s))
            return Slot(slot_id, scope, now + ttl_s)

        return await self._run(acquire)

    async def release_slot(self, slot: Slot) -> None:
        await self._run(
            lambda db, now: db.execute("DELETE FROM counter_slot WHERE scope = ? AND id = ?", (slot.scope, slot.id))
        )

    async def held_slots(self, scope: str) -> int:
        return await self._run(lambda db, now: _held(db, scope, now))


_SPENT_AND_RESERVED = (
    "SELECT COALESCE((SELECT spent FROM counter_spend WHERE scope = ?), 0), "
    "COALESCE((SELECT SUM(amount) FROM counter_reservation WHERE scope = ? AND expires > ?), 0)"
)


def _sweep(db: sqlite3.Connection, now: float) -> None:
    """Deletes what is past its time; until then every read skips it (`expires > now`, the current window only,
    a settled id a little longer than `SETTLED_MEMORY_S`)."""
    db.execute("DELETE FROM counter_reservation WHERE expires <= ?", (now,))
    db.execute("DELETE FROM counter_slot WHERE expires <= ?", (now,))
    db.execute("DELETE FROM counter_settled WHERE until <= ?", (now,))
    db.execute("DELETE FROM counter_window WHERE (start + 1) * window_s * 1000 <= ?", (int(now * 1000),))


def _settle(db: sqlite3.Connection, reservation: Reservation, actual_micros: int, now: float) -> bool:
    remembered = db.execute(
        "INSERT INTO counter_settled (id, until) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
        (reservation.id, now + SETTLED_MEMORY_S),
    )
    if remembered.rowcount == 0:  # settled before: counted once
        return False
    db.executemany(
        "DELETE FROM counter_reservation WHERE scope = ? AND id = ?",
        [(scope, reservation.id) for scope in reservation.scopes],
    )
    db.executemany(
        "INSERT INTO counter_spend (scope, spent) VALUES (?, ?) "
        "ON CONFLICT (scope) DO UPDATE SET spent = spent + excluded.spent",
        [(scope, actual_micros) for scope in reservation.scopes],
    )
    return True


def _look(db: sqlite3.Connection, asked: Window, now_ms: int, force: bool = False) -> WindowHit:
    """What counting `asked.amount` in the current window would answer (older windows are `_sweep`'s)."""
    start = now_ms // (asked.window_s * 1000)
    key = (asked.scope, asked.window_s, start)
    row = db.execute("SELECT count FROM counter_window WHERE scope = ? AND window_s = ? AND start = ?", key).fetchone()
    return window_answer(row[0] if row else 0, asked.limit, asked.amount, force, now_ms, asked.window_s)


def _count(db: sqlite3.Connection, asked: Window, now_ms: int) -> None:
    if asked.amount:
        db.execute(
            "INSERT INTO counter_window (scope, window_s, start, count) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (scope, window_s, start) DO UPDATE SET count = count + excluded.count",
            (asked.scope, asked.window_s, now_ms // (asked.window_s * 1000), asked.amount),
        )


def _spent(db: sqlite3.Connection, scope: str) -> int:
    row = db.execute("SELECT spent FROM counter_spend WHERE scope = ?", (scope,)).fetchone()
    return row[0] if row else 0


def _reserved(db: sqlite3.Connection, scope: str, now: float) -> int:
    """What is in flight: an expired reservation holds nothing (`_sweep` deletes it)."""
    sql = "SELECT COALESCE(SUM(amount), 0) FROM counter_reservation WHERE scope = ? AND expires > ?"
    return db.execute(sql, (scope, now)).fetchone()[0]


def _held(db: sqlite3.Connection, scope: str, now: float) -> int:
    return db.execute("SELECT COUNT(*) FROM counter_slot WHERE scope = ? AND expires > ?", (scope, now)).fetchone()[0]


BUSY_FIRST_WAIT_S = 0.00005
BUSY_LONGEST_WAIT_S = 0.002
"""How `_begin` waits for another connection's write lock: 50 µs, doubling, at most 2 ms between tries."""


def _begin(db: sqlite3.Connection, deadline: float) -> None:
    """`BEGIN IMMEDIATE`, tried again while another connection holds the write lock, until `deadline`
    (`time.monotonic`); then SQLite's "database is locked" goes up. Once it holds the write lock a transaction
    meets no other lock in WAL mode (the read snapshot is taken with it, and a checkpoint after the commit
    does not wait), so this is the only wait."""
    pause = BUSY_FIRST_WAIT_S
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, BUSY_LONGEST_WAIT_S)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, deadline: float) -> Iterator[None]:
    """`BEGIN IMMEDIATE`: the write lock before the first read, so a check and its write are one step."""
    _begin(db, deadline)
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
