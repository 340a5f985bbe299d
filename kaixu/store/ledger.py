"""The request ledger: one record per request, queued on the hot path (a deque append) and written in
batches by a background task, so no request ever waits for the disk. Flushed on a timer and at shutdown.

Nothing a client sends can stop it: a batch the store rejects is written record by record, a record the
store cannot encode is stored with its bad fields escaped (`escaped`), and a record refused even then is
counted and dropped instead of blocking the queue. A store that is unavailable (database locked, file gone,
connection lost) keeps the records queued; the next flush reopens it and writes them. That logic lives here,
once, for every backend: a backend only has to keep the `LedgerStore` contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, get_args, get_type_hints

from kaixu.exceptions import KaixuError
from kaixu.log import Outage
from kaixu.metrics import LEDGER_DROPPED_RECORDS, LEDGER_ESCAPED_RECORDS, LEDGER_QUEUE_DEPTH, LEDGER_WRITE_FAILURES

log = logging.getLogger("kaixu.ledger")

FLUSH_SECONDS = 0.1
MAX_BATCH = 1000
MAX_QUEUE = 100_000
_MAX_ERROR_CHARS = 200


@dataclass(slots=True)
class LedgerRecord:
    request_id: str
    ts: float
    front: str
    operation: str
    key_name: str | None
    team: str | None
    model: str | None
    provider: str | None
    upstream_model: str | None
    status: int
    stream: int
    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int | None
    latency_ms: float
    error: str | None
    attributes: str | None
    """JSON of what the client said about itself: app, build, install id, team/project ids (seed APIs)."""
    client_disconnected: int = 0
    """1 when the client went away before its answer was complete (status 499)."""
    dropped: str | None = None
    """The client fields a translated request left out, comma-separated (the `x-kaixu-dropped` header)."""
    customer: str | None = None
    """Who the request is for, beyond the key: the customer the caller names (attribution, docs/observability.md)."""
    user_id: str | None = None
    app: str | None = None
    project: str | None = None
    client: str | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_source: str | None = None
    """`provider` (the provider's own counts) or `estimated` (a stream that ended without them)."""
    cost_micros: int | None = None
    """What the request cost in integer micro-dollars (kaixu/pricing); NULL when unknown, never 0 for unknown."""
    unpriced: int = 0
    """1 when tokens were used but the served model has no price (`cost_micros` is then NULL)."""
    ttft_ms: float | None = None
    """Time to the first streamed byte of the answer (streams only)."""
    prompt_sha256: str | None = None
    """SHA-256 of the prompt (the audit trail), kept whether or not content logging is on."""
    prompt: str | None = None
    """Prompt text, redacted, only when `ledger.content.enabled`."""
    answer: str | None = None
    """Answer text, redacted, only when `ledger.content.enabled`."""
    attempts: str | None = None
    """JSON list of the attempts the executor made (provider, model, status, ms, error), retries and fallbacks
    included; NULL for a request forwarded once without one (kaixu/reliability)."""
    degraded: int = 0
    """1 when a fallback model served the request (the Intelligent AI Gateway's `degraded`)."""
    verdicts: str | None = None
    """JSON list of what the governing steps decided ({step, name, outcome, detail}: the `policies:` rules that
    applied, the rate limits and budgets it counted against, shadow verdicts included); NULL when none applied."""
    parent_request_id: str | None = None
    """An agent's own model call (docs/claude-cli.md): the request id of the request whose agent made it. That
    request's `cost_micros` includes this one's."""


class StoreUnavailable(KaixuError):
    """The store, not the records, is the problem (database locked, file removed, connection lost): the
    records are kept and written by a later flush, after the ledger reopened the store."""


class LedgerStore(Protocol):
    """A ledger backend. `write` is all or nothing: when it raises, nothing of the batch was stored and the
    store is ready for the next call (its transaction rolled back). It raises `StoreUnavailable` when the
    store cannot take writes at the moment; any other exception means it refused these records.
    `open` may be called again after `close` (the ledger reopens a store that became unavailable).
    `prune` deletes the records older than `before_ts` (retention) and returns how many; it deletes in short
    batches, so writes go on while it runs (they are blocking calls too: run from a worker thread)."""

    def open(self) -> None: ...
    def write(self, records: list[LedgerRecord]) -> None: ...
    def prune(self, before_ts: float) -> int: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...


class AsyncLedgerStore(Protocol):
    """The `LedgerStore` contract for a backend with an async driver (kaixu/store/postgres.py): the same
    methods as coroutines, awaited on the event loop directly (no worker thread)."""

    async def open(self) -> None: ...
    async def write(self, records: list[LedgerRecord]) -> None: ...
    async def prune(self, before_ts: float) -> int: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


class _InThread:
    """A blocking `LedgerStore` seen as an `AsyncLedgerStore`: each call runs in a worker thread, so the
    ledger has one code path for both kinds of backend."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store

    async def open(self) -> None:
        await asyncio.to_thread(self.store.open)

    async def write(self, records: list[LedgerRecord]) -> None:
        await asyncio.to_thread(self.store.write, records)

    async def prune(self, before_ts: float) -> int:
        return await asyncio.to_thread(self.store.prune, before_ts)

    async def ping(self) -> bool:
        return await asyncio.to_thread(self.store.ping)

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)


def as_async(store: LedgerStore | AsyncLedgerStore) -> AsyncLedgerStore:
    """The store itself when its methods are coroutines, else the store run in worker threads."""
    if inspect.iscoroutinefunction(store.write):
        return store  # type: ignore[return-value]
    return _InThread(store)  # type: ignore[arg-type]


def escape_text(text: str) -> str:
    """Text every store can hold: lone surrogates (a JSON `\\ud800` escape decodes to one, and so does a
    header byte that is not UTF-8) become `\\udXXX`, NUL (PostgreSQL refuses it) becomes `\\x00`.
    The same object when nothing needed escaping."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00") if "\x00" in text else text


def escaped(record: LedgerRecord) -> LedgerRecord:
    """The record with every field made storable: text escaped (`escape_text`), values of the wrong type
    coerced to the field's type (text from anything; numbers that do not fit become NULL).
    The same object when nothing needed changing."""
    changes: dict[str, object] = {}
    for name, kind in FIELD_KINDS.items():
        value = getattr(record, name)
        fixed = _storable(value, kind)
        if fixed is not value:
            changes[name] = fixed
    return dataclasses.replace(record, **changes) if changes else record  # type: ignore[arg-type]


def describe(exc: BaseException) -> str:
    """An error as /health and the logs show it: class and message, escaped and short."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = escape_text(text)
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def _field_kind(hint: object) -> type:
    for kind in (str, int, float):
        if hint is kind or kind in get_args(hint):
            return kind
    raise TypeError(f"LedgerRecord field of unsupported type {hint!r}")


FIELD_KINDS = {name: _field_kind(hint) for name, hint in get_type_hints(LedgerRecord).items()}
_INT64 = range(-(2**63), 2**63)


def _storable(value: object, kind: type) -> object:
    if value is None:
        return None
    if kind is str:
        if not isinstance(value, str):
            try:
                value = str(value)
            except Exception:
                value = f"<{type(value).__name__}>"
        return escape_text(value)
    if kind is int:
        if isinstance(value, float):
            value = int(value) if math.isfinite(value) else None
        return value if isinstance(value, int) and value in _INT64 else None
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return None
    return None


@dataclass(slots=True)
class _Outcome:
    """What one flush step did, collected while the batch is written and applied once it is settled."""

    settled: int = 0
    """Records of the batch that are done with: stored, or refused for good. The rest stay queued."""
    escaped: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    failures: int = 0
    error: str | None = None
    unavailable: bool = False

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.error = describe(exc)
        self.unavailable = isinstance(exc, StoreUnavailable)


class Ledger:
    def __init__(self, store: LedgerStore | AsyncLedgerStore, *, max_queue: int = MAX_QUEUE, where: str = "") -> None:
        self.store = store
        self._store = as_async(store)
        self.max_queue = max_queue
        self.ok: bool | None = None
        """Whether the last write (or open) succeeded; None before the store was opened."""
        self.write_failures = 0
        self.dropped = 0
        self.escaped = 0
        self.last_error: str | None = None
        self._queue: deque[LedgerRecord] = deque()
        self._writing = 0
        self._reopen = False
        self._overflowing = False
        self._outage = Outage(f"ledger store {where}" if where else "ledger store", log)
        """Its unavailability in the log: a few lines per outage, however many records wait."""
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Opens the store. A store that cannot be opened is not fatal: records queue up and every flush
        tries to open it again (`ok` and `last_error` say why it is down)."""
        LEDGER_QUEUE_DEPTH.set_function(lambda: self.queued)
        try:
            await self._store.open()
            self.ok = True
        except Exception as exc:
            self.write_failures += 1
            LEDGER_WRITE_FAILURES.inc()
            self._unavailable(describe(exc))
        self._task = asyncio.get_running_loop().create_task(self._flush_forever(), name="kaixu-ledger")

    @property
    def queued(self) -> int:
        """Records not written yet, including the batch being written."""
        return len(self._queue) + self._writing

    @property
    def degraded(self) -> bool:
        """The store is failing now, or records were lost since start."""
        return self.ok is False or self.dropped > 0

    def status(self) -> dict[str, object]:
        """The `store` section of /health (without the backend's kind and location)."""
        return {
            "ok": self.ok,
            "degraded": self.degraded,
            "queued_records": self.queued,
            "write_failures": self.write_failures,
            "dropped_records": self.dropped,
            "escaped_records": self.escaped,
            "last_error": self.last_error,
        }

    def record(self, record: LedgerRecord) -> None:
        """Called on the hot path: never blocks. A store that is down for long drops the oldest records."""
        self._queue.append(record)
        self._trim()

    async def flush(self) -> None:
        async with self._flushing:
            if self._reopen and not await self._reopen_store():
                return
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                self._writing = len(batch)
                try:
                    outcome = await self._write(batch)
                except BaseException:
                    self._requeue(batch)
                    raise
                finally:
                    self._writing = 0
                self._apply(outcome)
                if outcome.settled < len(batch):
                    self._requeue(batch[outcome.settled :])
                    return

    async def prune(self, before_ts: float) -> int:
        """Deletes the records older than `before_ts` (retention, scheduled by addons/ledger_writer.py), in a worker
        thread for a blocking store. Raises what the store raised; a later call tries again."""
        return await self._store.prune(before_ts)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()  # waits for a flush the timer had started
        if self.queued:
            log.error("ledger stopped with %d records not written: %s", self.queued, self.last_error)
        if self.dropped:
            log.warning("ledger dropped %d records since start", self.dropped)
        try:
            await self._store.close()
        except Exception as exc:
            log.warning("ledger store did not close cleanly: %s", describe(exc))

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                # shielded: a stop() arriving mid-write lets the write finish (its records are then settled)
                await asyncio.shield(self.flush())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ledger flush failed; retrying on the next tick")

    async def _reopen_store(self) -> bool:
        try:
            await self._store.close()
            await self._store.open()
        except Exception as exc:
            self.write_failures += 1
            LEDGER_WRITE_FAILURES.inc()
            self._unavailable(describe(exc))
            return False
        self._reopen = False
        if not self._queue:
            self._available()
        return True

    async def _write(self, batch: list[LedgerRecord]) -> _Outcome:
        """Writes the batch in one go or, when the store refuses it, record by record."""
        outcome = _Outcome()
        try:
            await self._store.write(batch)
        except Exception as exc:
            outcome.failed(exc)
            if outcome.unavailable:
                return outcome
        else:
            outcome.settled = len(batch)
            return outcome
        for record in batch:
            if not await self._write_alone(record, outcome):
                return outcome
            outcome.settled += 1
        return outcome

    async def _write_alone(self, record: LedgerRecord, outcome: _Outcome) -> bool:
        """Stores one record, escaped if it must be, or gives up on it. False: the store became unavailable."""
        attempts = [record]
        fixed = escaped(record)
        if fixed is not record:
            attempts.append(fixed)
        for attempt in attempts:
            try:
                await self._store.write([attempt])
            except Exception as exc:
                outcome.failed(exc)
                if outcome.unavailable:
                    return False
                continue
            if attempt is not record:
                outcome.escaped.append(escape_text(str(record.request_id)))
            return True
        outcome.rejected.append(escape_text(str(record.request_id)))
        return True

    def _apply(self, outcome: _Outcome) -> None:
        self.write_failures += outcome.failures
        LEDGER_WRITE_FAILURES.inc(outcome.failures)
        for request_id in outcome.escaped:
            log.warning("ledger record %s stored with fields escaped: the store could not encode them", request_id)
        self.escaped += len(outcome.escaped)
        LEDGER_ESCAPED_RECORDS.inc(len(outcome.escaped))
        for request_id in outcome.rejected:
            log.error("ledger record %s refused by the store even escaped; dropped: %s", request_id, outcome.error)
        self.dropped += len(outcome.rejected)
        LEDGER_DROPPED_RECORDS.inc(len(outcome.rejected))
        if outcome.unavailable:
            self._unavailable(outcome.error or "")
            return
        if outcome.error is not None:
            self.last_error = outcome.error
        self._available()

    def _unavailable(self, error: str) -> None:
        self._outage.failed(f"{error}; requests are served, their records kept in memory and retried", "failed_writes")
        self.ok = False
        self.last_error = error
        self._reopen = True

    def _available(self) -> None:
        self._outage.recovered()
        self.ok = True
        self._overflowing = False

    def _requeue(self, records: list[LedgerRecord]) -> None:
        """Records not written go back to the front, in order; a full queue then loses its oldest."""
        self._queue.extendleft(reversed(records))
        self._trim()

    def _trim(self) -> None:
        excess = len(self._queue) - self.max_queue
        if excess <= 0:
            return
        for _ in range(excess):
            self._queue.popleft()
        if not self._overflowing:
            log.error(
                "ledger queue full (%d records): dropping the oldest until the store takes writes", self.max_queue
            )
            self._overflowing = True
        self.dropped += excess
        LEDGER_DROPPED_RECORDS.inc(excess)
