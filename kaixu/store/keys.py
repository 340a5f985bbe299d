"""Virtual keys kept in the store (`kaixu keys create`), beside the policy's `keys:` (docs/keys.md).

A store key is kept as HMAC-SHA256(pepper, key): the pepper comes from the environment
(`KAIXU_KEY_PEPPER`), never from the database, so a copy of the database alone cannot be used to test guesses
against the digests. The key itself is never stored or logged. sqlite3 is blocking: everything that is not
the CLI reaches `SqliteKeyStore` through `InThread` (worker threads), and PostgreSQL's store
(kaixu/store/postgres.py) has the same methods as coroutines: `kaixu.store.stores.key_store()` returns either as
an `AsyncKeyStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol, cast

from kaixu.config.policy import Budget, Period, RateLimits, VirtualKey
from kaixu.exceptions import KaixuError
from kaixu.store.connect import WAL, open_sqlite

PEPPER_ENV = "KAIXU_KEY_PEPPER"
MIN_PEPPER_CHARS = 16
"""A shorter pepper is refused as unset: it would be guessable."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    name TEXT PRIMARY KEY,
    hmac TEXT NOT NULL UNIQUE,
    team TEXT,
    customer TEXT,
    models TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    expires REAL,
    revoked REAL,
    previous_hmac TEXT,
    previous_until REAL,
    budget_usd_micros INTEGER,
    budget_period TEXT,
    rpm INTEGER,
    tpm INTEGER,
    max_parallel INTEGER,
    seats INTEGER
);
CREATE TABLE IF NOT EXISTS keys_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
INSERT OR IGNORE INTO keys_version (id, version) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS keys_inserted AFTER INSERT ON keys BEGIN
    UPDATE keys_version SET version = version + 1;
END;
CREATE TRIGGER IF NOT EXISTS keys_updated AFTER UPDATE ON keys BEGIN
    UPDATE keys_version SET version = version + 1;
END;
CREATE TRIGGER IF NOT EXISTS keys_deleted AFTER DELETE ON keys BEGIN
    UPDATE keys_version SET version = version + 1;
END;
"""
"""`keys_version` counts every change to `keys` (triggers, so an edit by any process or tool counts): the proxy
reads that one row every second and reads the whole table only when it moved.

Created by the ledger's store on open (kaixu/store/sqlite.py) and by the CLI before its first key."""

_ADDED_COLUMNS = {
    "previous_hmac": "TEXT", "previous_until": "REAL",  # kaixu keys rotate
    "budget_usd_micros": "INTEGER", "budget_period": "TEXT", "rpm": "INTEGER", "tpm": "INTEGER",
    "max_parallel": "INTEGER", "seats": "INTEGER",  # governance: kaixu keys create --budget-usd --rpm ... --seats
}  # fmt: skip
"""Columns added since the table first shipped: nullable, added to an older table."""

KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KEY_NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def add_missing_columns(db: sqlite3.Connection) -> None:
    """A `keys` table made by an older kaixu gains the columns added since (no table: nothing to do)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(keys)")}
    if present:
        for name, kind in _ADDED_COLUMNS.items():
            if name not in present:
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it first
                    db.execute(f"ALTER TABLE keys ADD COLUMN {name} {kind}")


def duration_s(text: str) -> int | None:
    """`30d`, `12h`, `90m`, `45s` in seconds; None when `text` is not a duration."""
    match = _DURATION.fullmatch(text.strip())
    return int(match[1]) * _UNIT_S[match[2]] if match else None


def expires_at(text: str, now: float) -> float:
    """`30d`, `12h`, `90m`, `45s` from now, or a date (valid through that day, UTC) or date-time."""
    from kaixu.store.queries import parse_time

    seconds = duration_s(text)
    if seconds is not None:
        return now + seconds
    try:
        return parse_time(text, end=True)
    except ValueError:
        raise ValueError("expected a duration (30d, 12h, 90m, 45s) or a date (2027-06-30) or date-time") from None


def new_secret() -> str:
    return "sk-kaixu-" + secrets.token_urlsafe(24)


class PepperMissing(KaixuError):
    """`KAIXU_KEY_PEPPER` is unset or too short."""


def pepper(environ: dict[str, str] | os._Environ[str] = os.environ) -> bytes:
    value = environ.get(PEPPER_ENV, "")
    if len(value) < MIN_PEPPER_CHARS:
        state = "is not set" if not value else f"is shorter than {MIN_PEPPER_CHARS} characters"
        raise PepperMissing(f"{PEPPER_ENV} {state}")
    return value.encode("utf-8", "surrogateescape")


def digest(pepper: bytes, key: str) -> str:
    """The form a store key is kept and looked up in."""
    return hmac.new(pepper, key.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One row of the `keys` table: everything but the key, which is never stored."""

    name: str
    hmac: str
    team: str | None
    customer: str | None
    models: tuple[str, ...]
    created: float
    expires: float | None
    revoked: float | None
    previous_hmac: str | None = None
    """The digest of the secret `kaixu keys rotate` replaced: it keeps working until `previous_until`."""
    previous_until: float | None = None
    budget_usd_micros: int | None = None
    """The key's spend cap in integer micro-dollars over `budget_period` (`--budget-usd`); None: no cap."""
    budget_period: Period | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    seats: int | None = None
    """Installs (`x-kaixu-install-id`) the key may be used from; None: any number."""
    superseded: bool = False
    """True on the snapshot's entry for `previous_hmac` (kaixu/addons/store_keys.py), never on a stored row."""

    def virtual(self) -> VirtualKey:
        """The record the policy's keys use too, so the ledger, metrics, model checks and the governance
        counters treat both alike. `sha256` carries the HMAC digest (prefixed `hmac:`): it is what identifies
        the key, never the key."""
        budget = None
        if self.budget_usd_micros is not None:
            budget = Budget(self.budget_usd_micros, self.budget_period or "month")
        limits = None
        if (self.rpm, self.tpm, self.max_parallel) != (None, None, None):
            limits = RateLimits(self.rpm, self.tpm, self.max_parallel)
        return VirtualKey(self.name, "hmac:" + self.hmac, self.team, self.models, self.customer, budget, limits,
                          self.seats)  # fmt: skip

    def state(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        if self.superseded and (self.previous_until is None or self.previous_until <= now):
            return "rotated"
        return "active"

    def public(self) -> dict[str, object]:
        """What `kaixu keys list/show` print: never the digest."""
        from kaixu.pricing import usd

        return {
            "name": self.name, "team": self.team, "customer": self.customer, "models": list(self.models),
            "created": self.created, "expires": self.expires, "revoked": self.revoked,
            "previous_secret_until": self.previous_until, "state": self.state(time.time()),
            "budget": None if self.budget_usd_micros is None else {
                "usd": usd(self.budget_usd_micros), "usd_micros": self.budget_usd_micros,
                "period": self.budget_period or "month",
            },
            "limits": {"rpm": self.rpm, "tpm": self.tpm, "max_parallel": self.max_parallel},
            "seats": self.seats,
        }  # fmt: skip

    def public_json(self) -> dict[str, object]:
        """`public()` with ISO 8601 times, as the CLI and the admin API (`/api/keys`) show it."""
        from kaixu.store.queries import iso

        shown = self.public()
        for field in ("created", "expires", "revoked", "previous_secret_until"):
            shown[field] = iso(shown[field])  # type: ignore[arg-type]
        return shown


COLUMNS = (
    "name, hmac, team, customer, models, created, expires, revoked, previous_hmac, previous_until, "
    "budget_usd_micros, budget_period, rpm, tpm, max_parallel, seats"
)
"""The `keys` table's columns in `StoredKey`'s order, in both stores (SQLite and kaixu/store/postgres.py)."""
_SELECT = f"SELECT {COLUMNS} FROM keys"


def key_row(row: tuple[object, ...]) -> StoredKey:
    """A `keys` row (the `COLUMNS`, from either store) as a `StoredKey`."""
    name, digest_hex, team, customer, models, created, expires, revoked, previous, until, *governance = row
    budget, period, rpm, tpm, parallel, seats = governance
    return StoredKey(
        str(name), str(digest_hex), _text(team), _text(customer), tuple(json.loads(str(models or "[]"))),
        float(created), _float(expires), _float(revoked), _text(previous), _float(until),  # type: ignore[arg-type]
        _int(budget), cast(Period | None, _text(period)), _int(rpm), _int(tpm), _int(parallel), _int(seats),
    )  # fmt: skip


def key_values(key: StoredKey) -> tuple[object, ...]:
    """What an INSERT of `COLUMNS` binds for `key`."""
    return (
        key.name, key.hmac, key.team, key.customer, json.dumps(list(key.models)), key.created, key.expires,
        key.revoked, key.previous_hmac, key.previous_until, key.budget_usd_micros, key.budget_period, key.rpm,
        key.tpm, key.max_parallel, key.seats,
    )  # fmt: skip


def snapshot_of(keys: list[StoredKey]) -> dict[str, StoredKey]:
    """What the proxy looks keys up in, by digest: a rotated key under both its digests, the previous one
    marked `superseded` (it answers 'rotated' once its grace period is over)."""
    found: dict[str, StoredKey] = {}
    for key in keys:
        found[key.hmac] = key
        if key.previous_hmac is not None:
            found[key.previous_hmac] = replace(key, superseded=True)
    return found


STALE_AFTER_S = 5.0
"""How long a snapshot serves when the store cannot be read; then keys the policy does not list get a 503."""


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    """The store's keys by HMAC digest, as last read (by kaixu/addons/store_keys.py, for the auth step). Looked
    up with a dict: the digest is a keyed hash of the secret, so the lookup's timing tells nothing about the
    secret (or about other keys)."""

    pepper: bytes
    keys: dict[str, StoredKey]
    loaded_at: float
    """`time.monotonic()` of the read."""
    stale_after_s: float = STALE_AFTER_S

    def find(self, key: str) -> StoredKey | None:
        return self.keys.get(digest(self.pepper, key))

    def named(self, name: str) -> StoredKey | None:
        """The key of that name (a background job runs as the key that made it: kaixu/jobs/runner.py)."""
        return next((key for key in self.keys.values() if key.name == name), None)

    def fresh(self, now: float) -> bool:
        return now - self.loaded_at <= self.stale_after_s


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


class KeyExists(KaixuError):
    """A key of that name exists already (a store key, or a policy key of the same name)."""

    status, type, code = 409, "invalid_request_error", "key_exists"


class KeyRevoked(KaixuError):
    """A revoked key cannot be rotated: make a new one."""


class SqliteKeyStore:
    """The `keys` table of the policy's SQLite file. One short connection per call: the CLI makes one call,
    the proxy one a second, so nothing is gained by keeping a connection (and a replaced file is followed)."""

    def __init__(self, path: str, *, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s

    @contextlib.contextmanager
    def _db(self, *, create: bool) -> Iterator[sqlite3.Connection]:
        if not create and not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path} does not exist")
        db = open_sqlite(self.path, timeout_s=self.busy_timeout_s, pragmas=WAL if create else ())
        try:
            if create:
                db.executescript(SCHEMA)
            add_missing_columns(db)
            yield db
        finally:
            db.close()

    def create(self, key: StoredKey) -> None:
        with self._db(create=True) as db:
            try:
                db.execute(f"INSERT INTO keys ({COLUMNS}) VALUES ({', '.join('?' * len(key_values(key)))})",
                           key_values(key))  # fmt: skip
            except sqlite3.IntegrityError:
                raise KeyExists(f"a key named {key.name!r} exists already") from None

    def all(self) -> list[StoredKey]:
        """Every key, revoked and expired ones too (the proxy tells those apart to answer 'revoked'/'expired').
        A file without the table has no keys."""
        with self._db(create=False) as db:
            try:
                return [key_row(r) for r in db.execute(_SELECT + " ORDER BY created, name")]
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise

    def get(self, name: str) -> StoredKey | None:
        return next((k for k in self.all() if k.name == name), None)

    def revoke(self, name: str, now: float) -> bool:
        """Marks the key revoked (kept, so a caller still presenting it is told it was revoked). False when
        there is no such key; a key revoked already keeps its first revocation time."""

        def revoke(db: sqlite3.Connection) -> bool:
            cursor = db.execute("UPDATE keys SET revoked = COALESCE(revoked, ?) WHERE name = ?", (now, name))
            return cursor.rowcount > 0

        return self._change(revoke)

    def rotate(self, name: str, new_hmac: str, now: float, grace_s: float) -> bool:
        """Gives the key a new secret (its digest `new_hmac`); the old one keeps working `grace_s` seconds
        more. A secret replaced earlier stops at once: a key has at most two working secrets. False when there
        is no such key; KeyRevoked when it was revoked."""

        def rotate(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE keys SET previous_hmac = hmac, previous_until = ?, hmac = ? "
                "WHERE name = ? AND revoked IS NULL", (now + grace_s, new_hmac, name),
            )  # fmt: skip
            if cursor.rowcount > 0:
                return True
            if db.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone() is not None:
                raise KeyRevoked(f"the key {name!r} was revoked; make a new one with `kaixu keys create`")
            return False

        return self._change(rotate)

    def _change(self, change: Callable[[sqlite3.Connection], bool]) -> bool:
        """Runs `change` on the store's file: False, changing nothing, when there is no file or no keys table
        (there is no such key then)."""
        try:
            with self._db(create=False) as db:
                return change(db)
        except FileNotFoundError:
            return False
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return False
            raise

    def version(self) -> int | None:
        """The `keys_version` counter; None when the file has no such table (made before it existed)."""
        try:
            with self._db(create=False) as db:
                row = db.execute("SELECT version FROM keys_version WHERE id = 1").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return None if row is None else int(row[0])

    def snapshot(self) -> dict[str, StoredKey]:
        return snapshot_of(self.all())


class AsyncKeyStore(Protocol):
    """A key store seen from the event loop: `SqliteKeyStore`'s methods as coroutines. `path` names where the
    keys are in messages (a file, or a PostgreSQL host and database: never a password)."""

    path: str

    async def create(self, key: StoredKey) -> None: ...
    async def all(self) -> list[StoredKey]: ...
    async def get(self, name: str) -> StoredKey | None: ...
    async def revoke(self, name: str, now: float) -> bool: ...
    async def rotate(self, name: str, new_hmac: str, now: float, grace_s: float) -> bool: ...
    async def version(self) -> int | None: ...
    async def snapshot(self) -> dict[str, StoredKey]: ...
    async def close(self) -> None: ...


class InThread:
    """`SqliteKeyStore` as an `AsyncKeyStore`: every call in a worker thread, never on the event loop."""

    def __init__(self, store: SqliteKeyStore) -> None:
        self.store = store
        self.path = store.path

    async def create(self, key: StoredKey) -> None:
        await asyncio.to_thread(self.store.create, key)

    async def all(self) -> list[StoredKey]:
        return await asyncio.to_thread(self.store.all)

    async def get(self, name: str) -> StoredKey | None:
        return await asyncio.to_thread(self.store.get, name)

    async def revoke(self, name: str, now: float) -> bool:
        return await asyncio.to_thread(self.store.revoke, name, now)

    async def rotate(self, name: str, new_hmac: str, now: float, grace_s: float) -> bool:
        return await asyncio.to_thread(self.store.rotate, name, new_hmac, now, grace_s)

    async def version(self) -> int | None:
        return await asyncio.to_thread(self.store.version)

    async def snapshot(self) -> dict[str, StoredKey]:
        return await asyncio.to_thread(self.store.snapshot)

    async def close(self) -> None:
        return None
