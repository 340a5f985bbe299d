"""Keeps a snapshot of the store's keys (`kaixu keys create`, kaixu/store/keys.py) for the auth step, so a
request never queries the store: loaded when the proxy starts (SQLite in a worker thread, PostgreSQL on the
loop through asyncpg), then reloaded every `refresh_s` (a second) by a background task, so a key revoked with
the CLI, on any replica's store, stops working within two seconds.

Fails closed (docs/keys.md): without a pepper (`KAIXU_KEY_PEPPER`) no store key is looked up, so none is
accepted (one warning at start when the store holds keys); when the store cannot be read, the last snapshot
serves for `stale_after_s`, then keys the policy does not list get a 503 until a reload succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from kaixu.gateway import Gateway
from kaixu.log import Outage
from kaixu.store.keys import AsyncKeyStore, KeySnapshot, PepperMissing, StoredKey, pepper
from kaixu.store.ledger import describe

log = logging.getLogger("kaixu.keys")

REFRESH_S = 1.0


class StoreKeys:
    def __init__(self, gateway: Gateway, *, refresh_s: float = REFRESH_S) -> None:
        self.gateway = gateway
        self.refresh_s = refresh_s
        self._task: asyncio.Task[None] | None = None

    def running(self) -> None:
        # Sync on purpose (like LedgerWriter.running): the work runs as a task.
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kaixu-store-keys")

    async def _current(self) -> AsyncKeyStore | None:
        """The key store the policy in force names (PostgreSQL, or the SQLite file), chosen when the policy
        (re)loaded (`Gateway.stores`, closed by kaixu/addons/store_choice.py); None when the policy keeps no keys
        (`store.sqlite: :memory:`)."""
        stores = self.gateway.stores
        return None if stores is None else stores.keys

    async def _run(self) -> None:
        await self._poll()

    async def _poll(self) -> None:
        try:
            secret = pepper()
        except PepperMissing as exc:
            store = await self._current()
            count = 0 if store is None else await _count(store)
            if count and store is not None:
                log.warning("%s: the %d keys in the store %s are not accepted (only the policy's keys: are); "
                            "set it to the pepper `kaixu keys create` used", exc, count, store.path)  # fmt: skip
            return
        outage = Outage("store keys", log, level=logging.WARNING)
        version: int | None = None
        seen: AsyncKeyStore | None = None
        if await self._current() is not None:  # until the first read, store keys get a 503, not a misleading 401
            self.gateway.key_snapshot = KeySnapshot(secret, {}, float("-inf"))
        while True:
            store = await self._current()
            if store is None:
                self.gateway.key_snapshot = None
            else:
                try:
                    known = version if store is seen else None  # another store (a reload): read it whole
                    keys, version = await self._read(store, known)
                    seen = store
                except FileNotFoundError:
                    keys, version = {}, None  # no store file yet: no store keys
                except Exception as exc:
                    outage.failed(f"cannot read them from {store.path}: {describe(exc)}")
                    if self.gateway.key_snapshot is None:
                        self.gateway.key_snapshot = KeySnapshot(secret, {}, float("-inf"))
                else:
                    outage.recovered()
                    self.gateway.key_snapshot = KeySnapshot(secret, keys, time.monotonic())
            await asyncio.sleep(self.refresh_s)

    async def _read(self, store: AsyncKeyStore, seen: int | None) -> tuple[dict[str, StoredKey], int | None]:
        """The keys, read again only when `keys_version` moved since `seen` (one row a second instead of the
        whole table). The version is read first: a change made in between is read next time."""
        version = await store.version()
        current = self.gateway.key_snapshot
        if version is not None and version == seen and current is not None and current.loaded_at > float("-inf"):
            return current.keys, version
        return await store.snapshot(), version

    async def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _count(store: AsyncKeyStore) -> int:
    try:
        return len(await store.all())
    except Exception:
        return 0
