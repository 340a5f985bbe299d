"""Keeps a snapshot of the store's keys (`kaixu keys create`, kaixu/store/keys.py) for the auth step, so a
request never queries the store: loaded in a worker thread when the proxy starts, then reloaded every
`refresh_s` (a second) by a background task, so a key revoked with the CLI stops working within two seconds.

Fails closed (docs/keys.md): without a pepper (`KAIXU_KEY_PEPPER`) no store key is looked up, so none is
accepted (one warning at start when the store holds keys); when the store cannot be read, the last snapshot
serves for `stale_after_s`, then keys the policy does not list get a 503 until a reload succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from kaixu.gateway import Gateway
from kaixu.store.keys import PepperMissing, SqliteKeyStore, StoredKey, digest, pepper
from kaixu.store.ledger import describe

log = logging.getLogger("kaixu.keys")

REFRESH_S = 1.0
STALE_AFTER_S = 5.0


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    """The store's keys by HMAC digest, as last read. Looked up with a dict: the digest is a keyed hash of
    the secret, so the lookup's timing tells nothing about the secret (or about other keys)."""

    pepper: bytes
    keys: dict[str, StoredKey]
    loaded_at: float
    """`time.monotonic()` of the read."""
    stale_after_s: float = STALE_AFTER_S

    def find(self, key: str) -> StoredKey | None:
        return self.keys.get(digest(self.pepper, key))

    def fresh(self, now: float) -> bool:
        return now - self.loaded_at <= self.stale_after_s


class StoreKeys:
    def __init__(self, gateway: Gateway, *, refresh_s: float = REFRESH_S) -> None:
        self.gateway = gateway
        self.refresh_s = refresh_s
        self._task: asyncio.Task[None] | None = None

    def running(self) -> None:
        # Sync on purpose (like LedgerWriter.running): the work runs as a task.
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kaixu-store-keys")

    def _path(self) -> str | None:
        path = str(self.gateway.require_policy().store.get("sqlite", ":memory:"))
        return None if path == ":memory:" or path.startswith("file:") else path

    async def _run(self) -> None:
        try:
            secret = pepper()
        except PepperMissing as exc:
            path = self._path()
            count = 0 if path is None else await asyncio.to_thread(_count, path)
            if count:
                log.warning("%s: the %d keys in the store %s are not accepted (only the policy's keys: are); "
                            "set it to the pepper `kaixu keys create` used", exc, count, path)  # fmt: skip
            return
        failing = False
        version: int | None = None
        seen_path: str | None = None
        if self._path() is not None:  # until the first read, store keys get a 503, not a misleading 401
            self.gateway.key_snapshot = KeySnapshot(secret, {}, float("-inf"))
        while True:
            path = self._path()
            if path is None:
                self.gateway.key_snapshot = None
            else:
                try:
                    seen = version if path == seen_path else None  # another file (a reload): read it whole
                    keys, version = await asyncio.to_thread(self._read, path, seen)
                    seen_path = path
                except FileNotFoundError:
                    keys, version = {}, None  # no store file yet: no store keys
                except Exception as exc:
                    if not failing:
                        log.warning("cannot read the store keys from %s: %s", path, describe(exc))
                    failing = True
                    if self.gateway.key_snapshot is None:
                        self.gateway.key_snapshot = KeySnapshot(secret, {}, float("-inf"))
                else:
                    if failing:
                        log.info("store keys readable again from %s", path)
                    failing = False
                    self.gateway.key_snapshot = KeySnapshot(secret, keys, time.monotonic())
            await asyncio.sleep(self.refresh_s)

    def _read(self, path: str, seen: int | None) -> tuple[dict[str, StoredKey], int | None]:
        """Worker thread: the keys, read again only when `keys_version` moved since `seen` (one row a second
        instead of the whole table). The version is read first: a change made in between is read next time."""
        store = SqliteKeyStore(path)
        version = store.version()
        current = self.gateway.key_snapshot
        if version is not None and version == seen and current is not None and current.loaded_at > float("-inf"):
            return current.keys, version
        return store.snapshot(), version

    async def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _count(path: str) -> int:
    try:
        return len(SqliteKeyStore(path).all())
    except Exception:
        return 0
