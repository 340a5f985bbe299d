"""The read side of the ledger: costs by dimension, the cost of one key, the prompt log, the request listing
and the export. The admin API (`kaixu/addons/admin.py`) and the CLI (`kaixu costs`, `kaixu logs`,
`kaixu ledger export`) both read through here, so they always show the same numbers.

`LedgerQueries` is the interface a backend keeps; `SqliteLedgerQueries` is the SQLite one,
`PostgresLedgerQueries` (kaixu/store/postgres.py) the PostgreSQL one. The SQL (`*_sql` builders, their rows
shaped by the `*_of` functions) is the same for both (row values, `substr`, `SUM`, `COALESCE`; `?` placeholders
are numbered for PostgreSQL, and the row's position is SQLite's `rowid` or PostgreSQL's `id`): every value a
caller gives is a bound parameter, and the only names that enter SQL text come from fixed tables here
(`DIMENSIONS`, the ledger's own columns).

sqlite3 blocks, so every SQLite query runs in a worker thread (`asyncio.to_thread`) on a read-only connection
of its own (`mode=ro`: a reader can never write, and WAL lets it read while the ledger writes). At most
`MAX_CONCURRENT` queries run at once, so a burst of admin queries cannot take every thread of the default
executor, which the ledger writer uses too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import json
import math
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol

from kaixu.exceptions import KaixuError
from kaixu.pricing import usd
from kaixu.store.connect import open_sqlite
from kaixu.store.ledger import LedgerRecord, describe

#: `group_by` and filter names -> ledger columns: the only column names a caller can choose.
DIMENSIONS: dict[str, str] = {
    "key": "key_name",
    "team": "team",
    "user": "user_id",
    "project": "project",
    "app": "app",
    "client": "client",
    "model": "model",
    "provider": "provider",
    "customer": "customer",
}
TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens")
COLUMNS = tuple(f.name for f in fields(LedgerRecord))
"""Every ledger column, in the table's order (what the export writes)."""
CONTENT_COLUMNS = ("prompt", "answer")
"""Stored only when content logging is on; listed only when asked for (export, `content=True`)."""
PREVIEW_CHARS = 200
MAX_LIMIT = 1000
MAX_CONCURRENT = 2

Order = Literal["asc", "desc"]


class LedgerUnavailable(KaixuError):
    """The ledger cannot be read: no such file (yet), no requests table, a store that keeps none (`:memory:`),
    or a database error (unreadable, corrupt). The message says which, for an operator."""


class BadCursor(KaixuError, ValueError):
    """A paging cursor this backend did not make."""


@dataclass(frozen=True, slots=True)
class Filters:
    """Which ledger records a query covers. `since` is inclusive, `until` exclusive (unix seconds)."""

    since: float | None = None
    until: float | None = None
    equals: tuple[tuple[str, str], ...] = ()
    """(dimension, value) pairs, dimensions from `DIMENSIONS`; all must match."""
    status: int | None = None
    request_id: str | None = None
    """One record by its id (`/api/requests/{id}`): no index holds it, so a caller narrows the time too."""


@dataclass(slots=True)
class CostRow:
    """Sums over a set of records. A sum is None when no record of the set had that number: a cost nobody
    knows is not shown as 0 (`cost_micros` is the sum of the known costs; `unpriced_requests` counts the
    records that used tokens of a model without a price)."""

    group: str | None
    requests: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_micros: int | None = None
    unpriced_requests: int = 0

    def add(self, other: CostRow) -> None:
        self.requests += other.requests
        self.unpriced_requests += other.unpriced_requests
        for name in (*TOKEN_COLUMNS, "cost_micros"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None:
                setattr(self, name, theirs if mine is None else mine + theirs)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            **{name: getattr(self, name) for name in TOKEN_COLUMNS},
            "cost_micros": self.cost_micros,
            "cost_usd": None if self.cost_micros is None else usd(self.cost_micros),
            "cost_usd_number": usd_number(self.cost_micros),
            "unpriced_requests": self.unpriced_requests,
        }


@dataclass(slots=True)
class Page:
    records: list[dict[str, Any]]
    """Ledger columns by name."""
    cursors: list[str] = field(default_factory=list)
    """Each record's position, as a cursor: passed back, the listing goes on after that record in the order
    asked for (`kaixu logs --follow` asks for the records after the newest it printed, oldest first)."""
    more: bool = False

    @property
    def next_cursor(self) -> str | None:
        """Where the next page starts; None when this page is the last."""
        return self.cursors[-1] if self.more and self.cursors else None


@dataclass(slots=True)
class Costs:
    groups: list[CostRow]
    """Most expensive first (then most requests), at most the query's limit."""
    total: CostRow = field(default_factory=lambda: CostRow(None))
    """Over every group, also those past the limit."""
    group_count: int = 0


class LedgerQueries(Protocol):
    """What the admin API and the CLI read. Every method is a coroutine that never blocks the event loop."""

    async def costs(self, group_by: str, filters: Filters, *, limit: int = MAX_LIMIT) -> Costs: ...
    async def key_cost(self, key_name: str, filters: Filters) -> CostRow: ...
    async def prompt_log(self, limit: int) -> list[dict[str, Any]]: ...
    async def requests(
        self,
        filters: Filters,
        *,
        limit: int,
        cursor: str | None = None,
        offset: int = 0,
        order: Order = "desc",
        content: bool = False,
    ) -> Page: ...
    async def close(self) -> None: ...


# -- parameters shared by the API and the CLI ------------------------------------------------------------

_UNIX = re.compile(r"^\d{1,12}(\.\d{1,9})?$")


def parse_time(text: str, *, end: bool = False) -> float:
    """A time bound as unix seconds: unix seconds (`1767225600`), an ISO 8601 date (`2026-01-01`: midnight
    UTC; as an end bound, the midnight after it, so `to=2026-01-31` includes that day) or date and time
    (`2026-01-01T09:30`, `...Z`, `...+02:00`; without an offset, UTC). ValueError says what is accepted."""
    text = text.strip()
    if _UNIX.match(text):
        return float(text)
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            return (moment + dt.timedelta(days=1) if end else moment).timestamp()
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            "expected unix seconds or an ISO 8601 date or date-time (2026-01-31, 2026-01-31T09:30Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with milliseconds (`2026-01-31T09:30:00.000Z`)."""
    if ts is None or not math.isfinite(ts):
        return None
    try:
        moment = dt.datetime.fromtimestamp(ts, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- JSON: what the admin API answers and `kaixu costs --json` / `kaixu logs --json` print -----------------


def scope_json(filters: Filters) -> dict[str, Any]:
    """The time range and filters an answer covers."""
    shown: dict[str, Any] = {DIMENSIONS[d] if d == "key" else d: v for d, v in filters.equals}
    if filters.status is not None:
        shown["status"] = filters.status
    return {"from": iso(filters.since), "to": iso(filters.until), "filters": shown}


def costs_json(group_by: str, filters: Filters, costs: Costs) -> dict[str, Any]:
    return {
        "object": "costs",
        "group_by": group_by,
        **scope_json(filters),
        "currency": "USD",
        "groups": [{"group": row.group, **row.to_json()} for row in costs.groups],
        "group_count": costs.group_count,
        "total": costs.total.to_json(),
    }


def _cost_usd(micros: Any) -> str | None:
    return usd(micros) if isinstance(micros, int) else None


def money_json(name: str, micros: int | None) -> dict[str, Any]:
    """An amount three ways, as the admin API gives money: `{name}_micros` (exact integer), `{name}_usd` (exact
    decimal string) and `{name}_usd_number` (a number a JavaScript client can add); all null when unknown."""
    return {f"{name}_micros": micros, f"{name}_usd": _cost_usd(micros), f"{name}_usd_number": usd_number(micros)}


def usd_number(micros: Any) -> float | None:
    """An amount as a JSON number of USD, beside the exact `cost_usd` string: what a JavaScript client can add
    (`total + cost_usd` would concatenate strings). A float: exact to the micro-dollar below 2**53 micro-dollars,
    but sums of floats may drift; `cost_micros` is the exact integer."""
    return micros / 1_000_000 if isinstance(micros, int) and not isinstance(micros, bool) else None


def record_json(record: dict[str, Any]) -> dict[str, Any]:
    """A ledger record as the API shows it: the ledger's columns (`attributes` as the object its JSON holds),
    plus `time` (ISO 8601) and `cost_usd`."""
    micros = record.get("cost_micros")
    shown = {
        "time": iso(record.get("ts")),
        **record,
        "cost_usd": _cost_usd(micros),
        "cost_usd_number": usd_number(micros),
    }
    attributes = record.get("attributes")
    if isinstance(attributes, str):
        with contextlib.suppress(ValueError):
            shown["attributes"] = json.loads(attributes)
    return shown


PROMPT_LOG_FIELDS = (
    "request_id", "ts", "key_name", "team", "model", "provider", "upstream_model", "status", "stream",
    "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens",
    "usage_source", "cost_micros", "latency_ms", "ttft_ms", "prompt_sha256", "prompt_preview", "answer_preview",
)  # fmt: skip


def prompt_entry_json(entry: dict[str, Any]) -> dict[str, Any]:
    shown = {name: entry.get(name) for name in PROMPT_LOG_FIELDS}
    micros = entry.get("cost_micros")
    return {"time": iso(entry.get("ts")), **shown, "cost_usd": _cost_usd(micros), "cost_usd_number": usd_number(micros)}


# -- SQL, backend-neutral ------------------------------------------------------------------------------


def where(filters: Filters, present: set[str]) -> tuple[str, list[Any]]:
    """The WHERE clause of `filters` and its parameters. A filter on a column an old ledger lacks matches
    nothing (that column is NULL in every record)."""
    terms: list[str] = []
    params: list[Any] = []
    if filters.since is not None:
        terms.append("ts >= ?")
        params.append(filters.since)
    if filters.until is not None:
        terms.append("ts < ?")
        params.append(filters.until)
    for dimension, value in filters.equals:
        column = DIMENSIONS[dimension]  # KeyError for anything else: never a caller's text in SQL
        terms.append(f"{column} = ?" if column in present else "1 = 0")
        params.extend([value] if column in present else [])
    if filters.status is not None:
        terms.append("status = ?")
        params.append(filters.status)
    if filters.request_id is not None:
        terms.append("request_id = ?")
        params.append(filters.request_id)
    return (" WHERE " + " AND ".join(terms)) if terms else "", params


def _col(name: str, present: set[str]) -> str:
    return name if name in present else "NULL"


def _own(name: str, present: set[str]) -> str:
    """A row's tokens or cost as a report adds them: an agent's own model call (`parent_request_id`) adds 0, since
    the request that ran the agent carries its cost and tokens already (docs/claude-cli.md)."""
    column = _col(name, present)
    if "parent_request_id" not in present or column == "NULL":
        return column
    return f"CASE WHEN parent_request_id IS NULL THEN {column} ELSE 0 END"


def sums_sql(present: set[str]) -> str:
    """The aggregate columns of a `CostRow`, in its field order after `group`."""
    parts = ["COUNT(*)"]
    parts += [f"SUM({_own(name, present)})" for name in (*TOKEN_COLUMNS, "cost_micros")]
    parts.append(f"COALESCE(SUM({_col('unpriced', present)}), 0)")
    return ", ".join(parts)


def _cost_row(group: str | None, values: Sequence[Any]) -> CostRow:
    requests, *sums, unpriced = values
    row = CostRow(group, int(requests), unpriced_requests=int(unpriced))
    for name, value in zip((*TOKEN_COLUMNS, "cost_micros"), sums, strict=True):
        setattr(row, name, None if value is None else int(value))
    return row


def _ranked(row: CostRow) -> tuple[int, int, int, str]:
    known = row.cost_micros is not None
    return (0 if known else 1, -(row.cost_micros or 0), -row.requests, row.group or "")


def encode_cursor(ts: float, position: int) -> str:
    return base64.urlsafe_b64encode(f"{ts!r}:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        ts_text, _, position_text = raw.partition(":")
        ts, position = float(ts_text), int(position_text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("not a cursor of this ledger: pass next_cursor from the previous page unchanged") from None
    if not math.isfinite(ts):
        raise BadCursor("not a cursor of this ledger: pass next_cursor from the previous page unchanged")
    return ts, position


Statement = tuple[str, list[Any]]
"""SQL with `?` placeholders, and its parameters."""


def costs_sql(column: str, filters: Filters, present: set[str]) -> Statement:
    clause, params = where(filters, present)
    group = _col(column, present)
    return f"SELECT {group}, {sums_sql(present)} FROM requests{clause} GROUP BY {group}", params


def costs_of(rows: Sequence[Sequence[Any]], limit: int) -> Costs:
    """The rows of `costs_sql` as `Costs`: ranked, cut to `limit`, with the total over every group."""
    groups = [_cost_row(None if r[0] is None else str(r[0]), r[1:]) for r in rows]
    total = CostRow(None)
    for row in groups:
        total.add(row)
    groups.sort(key=_ranked)
    return Costs(groups[:limit], total, len(groups))


def total_sql(filters: Filters, present: set[str]) -> Statement:
    clause, params = where(filters, present)
    return f"SELECT {sums_sql(present)} FROM requests{clause}", params


def total_of(group: str | None, row: Sequence[Any]) -> CostRow:
    return _cost_row(group, row)


def prompt_log_sql(present: set[str], limit: int, position: str) -> Statement:
    columns = [c for c in COLUMNS if c not in CONTENT_COLUMNS]
    texts = [f"substr({_col(c, present)}, 1, {PREVIEW_CHARS + 1})" for c in CONTENT_COLUMNS]
    select = ", ".join([*(_col(c, present) for c in columns), *texts])
    return f"SELECT {select} FROM requests ORDER BY ts DESC, {position} DESC LIMIT ?", [limit]


def prompt_log_of(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    columns = [c for c in COLUMNS if c not in CONTENT_COLUMNS]
    entries = []
    for row in rows:
        entry = dict(zip(columns, row, strict=False))
        entry["prompt_preview"], entry["answer_preview"] = preview(row[-2]), preview(row[-1])
        entries.append(entry)
    return entries


def requests_sql(
    filters: Filters,
    present: set[str],
    limit: int,
    after: tuple[float, int] | None,
    offset: int,
    order: Order,
    content: bool,
    *,
    position: str,
    hint: str = "",
) -> tuple[str, list[Any], list[str]]:
    """A page of the listing: SQL, parameters, and the ledger columns it selects (then the position)."""
    clause, params = where(filters, present)
    if after is not None:
        relation = "<" if order == "desc" else ">"
        clause += (" AND " if clause else " WHERE ") + f"(ts, {position}) {relation} (?, ?)"
        params += list(after)
    columns = [c for c in COLUMNS if content or c not in CONTENT_COLUMNS]
    direction = "DESC" if order == "desc" else "ASC"
    select = ", ".join([*(_col(c, present) for c in columns), position])
    sql = (
        f"SELECT {select} FROM requests{hint}{clause} ORDER BY ts {direction}, {position} {direction} LIMIT ? OFFSET ?"
    )
    return sql, [*params, limit + 1, offset], columns


def page_of(rows: Sequence[Sequence[Any]], columns: list[str], limit: int) -> Page:
    """The rows of `requests_sql` (one more than `limit` asked, to know whether there is more) as a `Page`."""
    at = columns.index("ts")
    shown = rows[:limit]
    return Page(
        [dict(zip(columns, row, strict=False)) for row in shown],
        [encode_cursor(row[at], row[-1]) for row in shown],
        more=len(rows) > limit,
    )


def preview(text: str | None) -> str | None:
    """The first `PREVIEW_CHARS` characters of a stored prompt or answer (`…` when there is more)."""
    if text is None or len(text) <= PREVIEW_CHARS:
        return text
    return text[:PREVIEW_CHARS] + "…"


# -- SQLite ------------------------------------------------------------------------------------------------


class SqliteLedgerQueries:
    """The ledger of `store.sqlite`, read through read-only connections in worker threads.

    Each query opens its own connection (about 0.1 ms) and closes it: nothing is shared between threads, a
    ledger file the writer recreated is seen at once, and there is nothing to close at shutdown."""

    POSITION = "rowid"
    """The row's position: the tie-breaker of paging (a PostgreSQL backend uses its serial id)."""
    _FILTER_INDEX = "index:requests_costs"
    """In `present` when the ledger has that index (kaixu/store/sqlite.py makes it when the writer opens)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._gate: asyncio.Semaphore | None = None

    # -- the interface ----------------------------------------------------------------------------------

    async def costs(self, group_by: str, filters: Filters, *, limit: int = MAX_LIMIT) -> Costs:
        column = DIMENSIONS[group_by]
        return await self._run(self._costs, column, filters, limit)

    async def key_cost(self, key_name: str, filters: Filters) -> CostRow:
        scoped = Filters(filters.since, filters.until, (*filters.equals, ("key", key_name)), filters.status)
        return await self._run(self._total, scoped, key_name)

    async def prompt_log(self, limit: int) -> list[dict[str, Any]]:
        return await self._run(self._prompt_log, limit)

    async def requests(
        self,
        filters: Filters,
        *,
        limit: int,
        cursor: str | None = None,
        offset: int = 0,
        order: Order = "desc",
        content: bool = False,
    ) -> Page:
        after = decode_cursor(cursor) if cursor is not None else None
        return await self._run(self._requests, filters, limit, after, offset, order, content)

    async def close(self) -> None:
        """Nothing to let go: each query opens and closes its own connection."""

    # -- blocking helpers (worker thread; also what the CLI's export iterates) ------------------------

    def iter_records(
        self, filters: Filters, *, content: bool = True, batch: int = MAX_LIMIT
    ) -> Iterator[dict[str, Any]]:
        """Every record of `filters`, oldest first, page by page (bounded memory): the export. Blocking."""
        after: tuple[float, int] | None = None
        while True:
            page: Page = self._query(self._requests, filters, batch, after, 0, "asc", content)
            yield from page.records
            if not page.more:
                return
            after = decode_cursor(page.cursors[-1])

    def _costs(self, db: sqlite3.Connection, present: set[str], column: str, filters: Filters, limit: int) -> Costs:
        return costs_of(db.execute(*costs_sql(column, filters, present)).fetchall(), limit)

    def _total(self, db: sqlite3.Connection, present: set[str], filters: Filters, group: str | None) -> CostRow:
        return total_of(group, db.execute(*total_sql(filters, present)).fetchone())

    def _prompt_log(self, db: sqlite3.Connection, present: set[str], limit: int) -> list[dict[str, Any]]:
        return prompt_log_of(db.execute(*prompt_log_sql(present, limit, self.POSITION)).fetchall())

    def _requests(
        self,
        db: sqlite3.Connection,
        present: set[str],
        filters: Filters,
        limit: int,
        after: tuple[float, int] | None,
        offset: int,
        order: Order,
        content: bool,
    ) -> Page:
        # SQLite's planner walks requests_ts and reads every record to test a filter; requests_costs holds the
        # filtered columns too, in the same time order, so a record is read only when it matches (a value
        # that matches nothing: 0.1 s instead of 0.5 s over 1M records, more with stored text).
        hint = (
            " INDEXED BY requests_costs" if self._FILTER_INDEX in present and (filters.equals or filters.status) else ""
        )
        sql, params, columns = requests_sql(
            filters, present, limit, after, offset, order, content, position=self.POSITION, hint=hint
        )
        return page_of(db.execute(sql, params).fetchall(), columns, limit)

    # -- connections ---------------------------------------------------------------------------------------

    async def _run(self, query: Any, *args: Any) -> Any:
        if self._gate is None:
            self._gate = asyncio.Semaphore(MAX_CONCURRENT)
        async with self._gate:
            return await asyncio.to_thread(self._query, query, *args)

    def _query(self, query: Any, *args: Any) -> Any:
        try:
            with self._connect() as (db, present):
                return query(db, present, *args)
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"the ledger {self.path} could not be read: {describe(exc)}") from exc

    @contextlib.contextmanager
    def _connect(self) -> Iterator[tuple[sqlite3.Connection, set[str]]]:
        if self.path == ":memory:":
            raise LedgerUnavailable("the store is :memory: (store.sqlite in the policy): no ledger is kept")
        if not os.path.exists(self.path):
            raise LedgerUnavailable(f"no ledger at {self.path} (kaixu run creates it when it starts)")
        try:
            db = open_sqlite(self.path, timeout_s=5.0, isolation_level="DEFERRED", read_only=True)
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"cannot open the ledger {self.path}: {describe(exc)}") from exc
        try:
            present = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
            if not present:
                raise LedgerUnavailable(f"{self.path} holds no ledger yet (no requests table)")
            present |= {f"index:{row[1]}" for row in db.execute("PRAGMA index_list(requests)")}
            yield db, present
        finally:
            db.close()
