"""Virtual keys kept in the store (`kaixu keys create`), beside the policy's `keys:` (docs/keys.md).

A store key is kept as HMAC-SHA256(pepper, key): the pepper comes from the environment
(`KAIXU_KEY_PEPPER`), never from the database, so a copy of the database alone cannot be used to test guesses
against the digests. The key itself is never stored or logged. sqlite3 is blocking: the proxy calls this module
from a worker thread only (`asyncio.to_thread`, kaixu/addons/keys.py); the CLI calls it directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

from kaixu.config.policy import VirtualKey

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
    revoked REAL
);
"""
"""Created by the ledger's store on open (kaixu/store/sqlite.py) and by the CLI before its first key."""


class PepperMissing(Exception):
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

    def virtual(self) -> VirtualKey:
        """The record the policy's keys use too, so the ledger, metrics and model checks treat both alike.
        `sha256` carries the HMAC digest (prefixed `hmac:`): it is what identifies the key, never the key."""
        return VirtualKey(self.name, "hmac:" + self.hmac, self.team, self.models, self.customer)

    def state(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return "active"

    def public(self) -> dict[str, object]:
        """What `kaixu keys list/show` print: never the digest."""
        return {
            "name": self.name, "team": self.team, "customer": self.customer, "models": list(self.models),
            "created": self.created, "expires": self.expires, "revoked": self.revoked,
            "state": self.state(time.time()),
        }  # fmt: skip


_SELECT = "SELECT name, hmac, team, customer, models, created, expires, revoked FROM keys"


def _row(row: tuple[object, ...]) -> StoredKey:
    name, digest_hex, team, customer, models, created, expires, revoked = row
    return StoredKey(
        str(name), str(digest_hex), _text(team), _text(customer), tuple(json.loads(str(models or "[]"))),
        float(created), _float(expires), _float(revoked),  # type: ignore[arg-type]
    )  # fmt: skip


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


class KeyExists(Exception):
    pass


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
        db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            if create:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
            yield db
        finally:
            db.close()

    def create(self, key: StoredKey) -> None:
        with self._db(create=True) as db:
            try:
                db.execute(
                    "INSERT INTO keys (name, hmac, team, customer, models, created, expires, revoked) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key.name, key.hmac, key.team, key.customer, json.dumps(list(key.models)), key.created,
                     key.expires, key.revoked),
                )  # fmt: skip
            except sqlite3.IntegrityError:
                raise KeyExists(f"a key named {key.name!r} exists already") from None

    def all(self) -> list[StoredKey]:
        """Every key, revoked and expired ones too (the proxy tells those apart to answer 'revoked'/'expired').
        A file without the table has no keys."""
        with self._db(create=False) as db:
            try:
                return [_row(r) for r in db.execute(_SELECT + " ORDER BY created, name")]
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise

    def get(self, name: str) -> StoredKey | None:
        return next((k for k in self.all() if k.name == name), None)

    def revoke(self, name: str, now: float) -> bool:
        """Marks the key revoked (kept, so a caller still presenting it is told it was revoked). False when
        there is no such key; a key revoked already keeps its first revocation time."""
        try:
            with self._db(create=False) as db:
                cursor = db.execute("UPDATE keys SET revoked = COALESCE(revoked, ?) WHERE name = ?", (now, name))
                return cursor.rowcount > 0
        except FileNotFoundError:
            return False
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return False
            raise

    def snapshot(self) -> dict[str, StoredKey]:
        """What the proxy looks keys up in, by digest."""
        return {key.hmac: key for key in self.all()}
