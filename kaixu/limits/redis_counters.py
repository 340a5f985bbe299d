"""Counters in Redis, shared by every replica: each operation is one Lua script, so one round trip, and atomic
(Redis runs a script to its end before any other command). Time comes from the Redis server (`TIME`), so
replicas with drifting clocks still agree on expiry and windows.

Versioning: `LAYOUT` is part of every key name and of every script's text (so of its SHA). A change of a
script that keeps the data layout gets a new SHA and runs beside the old one on the same keys, each atomic;
a change of the layout bumps `LAYOUT`, so an old replica and a new one never read each other's data with the
wrong script (during such an upgrade the two generations count apart: docs/limits.md).

Key layout (`P` is the prefix, default `kaixu:c1:`), one Redis instance (not Cluster: a reservation's keys
span scopes, which Cluster would put on different slots):
  P spend:SCOPE          integer, settled micro-dollars (no expiry: the scope names its own period)
  P held:SCOPE           integer, micro-dollars held by the live reservations in P res:SCOPE
  P res:SCOPE            sorted set, member "AMOUNT:ID", score = expiry (ms): reaped by every script that reads it
  P done:ID              a settled reservation, remembered 5 minutes so a repeated settle counts nothing
  P win:WINDOW_S:SCOPE   hash {start, count}, the current fixed window, expiring after two windows
  P slot:SCOPE           sorted set, member slot id, score = expiry (ms)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

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
)

LAYOUT = 1
"""The key layout's version, in key names and script text: bump it when the data a script reads changes."""
SETTLED_MEMORY_MS = int(SETTLED_MEMORY_S * 1000)

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    OSError,
)

_PRELUDE = f"""-- kaixu counters, layout v{LAYOUT}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function int(n) return string.format('%d', n) end
local function reap(held, res, now)
  local gone = redis.call('ZRANGEBYSCORE', res, '-inf', now)
  if #gone > 0 then
    local total = 0
    for _, m in ipairs(gone) do total = total + tonumber(string.match(m, '^(%d+):')) end
    redis.call('ZREMRANGEBYSCORE', res, '-inf', now)
    redis.call('DECRBY', held, int(total))
  end
end
local function unhold(held, res, member, amount)
  if redis.call('ZREM', res, member) == 1 then redis.call('DECRBY', held, amount) end
end
local function window_count(key, window, now)
  local start = math.floor(now / window)
  local current = redis.call('HMGET', key, 'start', 'count')
  if tonumber(current[1]) == start then return tonumber(current[2]), start end
  return 0, start
end
local function window_set(key, window, start, count)
  redis.call('HSET', key, 'start', int(start), 'count', int(count))
  redis.call('PEXPIRE', key, int(2 * window))
end
"""

# KEYS: spend_i, held_i, res_i for each scope i. ARGV: amount, ttl_ms, id, cap_1..cap_n.
_RESERVE = (
    _PRELUDE
    + """
local n = #KEYS / 3
local amount = tonumber(ARGV[1])
local now = now_ms()
for i = 1, n do
  local held, res = KEYS[3 * i - 1], KEYS[3 * i]
  reap(held, res, now)
  local spent = tonumber(redis.call('GET', KEYS[3 * i - 2]) or '0')
  local reserved = tonumber(redis.call('GET', held) or '0')
  if spent + reserved + amount > tonumber(ARGV[3 + i]) then return {0, i, spent, reserved} end
end
local expires = now + tonumber(ARGV[2])
local member = ARGV[1] .. ':' .. ARGV[3]
for i = 1, n do
  redis.call('INCRBY', KEYS[3 * i - 1], ARGV[1])
  redis.call('ZADD', KEYS[3 * i], int(expires), member)
end
return {1, expires}
"""
)

# KEYS: spend_i, held_i, res_i for each scope i, then done. ARGV: amount, id, actual, memory_ms.
_SETTLE = (
    _PRELUDE
    + """
if not redis.call('SET', KEYS[#KEYS], '1', 'NX', 'PX', ARGV[4]) then return 0 end
local n = (#KEYS - 1) / 3
local member = ARGV[1] .. ':' .. ARGV[2]
local now = now_ms()
for i = 1, n do
  local held, res = KEYS[3 * i - 1], KEYS[3 * i]
  reap(held, res, now)
  unhold(held, res, member, ARGV[1])
  redis.call('INCRBY', KEYS[3 * i - 2], ARGV[3])
end
return 1
"""
)

# KEYS: held_i, res_i for each scope i. ARGV: amount, id.
_RELEASE = (
    _PRELUDE
    + """
local member = ARGV[1] .. ':' .. ARGV[2]
for i = 1, #KEYS / 2 do unhold(KEYS[2 * i - 1], KEYS[2 * i], member, ARGV[1]) end
return 1
"""
)

# KEYS: held, res.
_RESERVED = (
    _PRELUDE
    + """
reap(KEYS[1], KEYS[2], now_ms())
return tonumber(redis.call('GET', KEYS[1]) or '0')
"""
)

# KEYS: window hash. ARGV: window_s, limit, amount, force (0|1).
_HIT = (
    _PRELUDE
    + """
local now = now_ms()
local window = tonumber(ARGV[1]) * 1000
local limit, amount, force = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local count, start = window_count(KEYS[1], window, now)
local allowed
if amount == 0 then allowed = count < limit else allowed = count + amount <= limit end
if (allowed or force) and amount > 0 then
  count = count + amount
  window_set(KEYS[1], window, start, count)
end
local remaining = limit - count
if remaining < 0 then remaining = 0 end
return {allowed and 1 or 0, remaining, window - now % window}
"""
)

# KEYS: slot set. ARGV: limit, ttl_ms, id.
_ACQUIRE = (
    _PRELUDE
    + """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return {0} end
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], int(now + ttl), ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], int(ttl)) end
return {1, now + ttl}
"""
)

# KEYS: slot set.
_HELD = (
    _PRELUDE
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms())
return redis.call('ZCARD', KEYS[1])
"""
)


# KEYS: the windows' hashes, then the slots' sets. ARGV: n_windows, (window_s, limit, amount) per window, ttl_ms,
# each slot's limit, each slot's id. All or nothing: nothing is counted and no slot taken unless all admit.
_ADMIT = (
    _PRELUDE
    + """
local now = now_ms()
local nw = tonumber(ARGV[1])
local ns = #KEYS - nw
local base = 3 * nw + 2
local ttl = tonumber(ARGV[base])
local counts, starts, allowed = {}, {}, {}
local refused = 0
for i = 1, nw do
  local window = tonumber(ARGV[3 * i - 1]) * 1000
  local limit, amount = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local count, start = window_count(KEYS[i], window, now)
  if amount == 0 then allowed[i] = count < limit else allowed[i] = count + amount <= limit end
  if not allowed[i] and refused == 0 then refused = i end
  counts[i], starts[i] = count, start
end
if refused == 0 then
  for j = 1, ns do
    local key = KEYS[nw + j]
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= tonumber(ARGV[base + j]) then refused = nw + j break end
  end
end
if refused == 0 then
  for i = 1, nw do
    local window, amount = tonumber(ARGV[3 * i - 1]) * 1000, tonumber(ARGV[3 * i + 1])
    if amount > 0 then
      counts[i] = counts[i] + amount
      window_set(KEYS[i], window, starts[i], counts[i])
    end
  end
  for j = 1, ns do
    local key = KEYS[nw + j]
    redis.call('ZADD', key, int(now + ttl), ARGV[base + ns + j])
    if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, int(ttl)) end
  end
end
local out = {refused, now + ttl}
for i = 1, nw do
  local window, limit = tonumber(ARGV[3 * i - 1]) * 1000, tonumber(ARGV[3 * i])
  local ok = allowed[i]
  if refused ~= 0 and refused ~= i then ok = counts[i] < limit end
  local remaining = limit - counts[i]
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = remaining
  out[#out + 1] = window - now % window
end
return out
"""
)

# One request's end. KEYS, in order: per settled reservation its done key then spend, held, res per scope; per
# released reservation held, res per scope; the slots' sets; the windows' hashes. ARGV, in the same order:
# n_settle, (n_scopes, amount, id, actual) each; n_release, (n_scopes, amount, id) each; n_slots, slot ids;
# n_windows, (window_s, amount) each; memory_ms.
_END = (
    _PRELUDE
    + """
local now = now_ms()
local k, a = 1, 1
local function arg() local v = ARGV[a]; a = a + 1; return v end
local function key() local v = KEYS[k]; k = k + 1; return v end
local memory = ARGV[#ARGV]
for _ = 1, tonumber(arg()) do
  local n, amount, id, actual = tonumber(arg()), arg(), arg(), arg()
  local fresh = redis.call('SET', key(), '1', 'NX', 'PX', memory)
  local member = amount .. ':' .. id
  for _ = 1, n do
    local spend, held, res = key(), key(), key()
    if fresh then
      reap(held, res, now)
      unhold(held, res, member, amount)
      redis.call('INCRBY', spend, actual)
    end
  end
end
for _ = 1, tonumber(arg()) do
  local n, amount, id = tonumber(arg()), arg(), arg()
  local member = amount .. ':' .. id
  for _ = 1, n do unhold(key(), key(), member, amount) end
end
for _ = 1, tonumber(arg()) do redis.call('ZREM', key(), arg()) end
for _ = 1, tonumber(arg()) do
  local window, amount = tonumber(arg()) * 1000, tonumber(arg())
  local hash = key()
  local count, start = window_count(hash, window, now)
  if amount > 0 then window_set(hash, window, start, count + amount) end
end
return 1
"""
)


class RedisCounters:
    """`kaixu.limits.Counters` on one Redis server. Timeouts are short and there are no retries: an
    unreachable Redis is `CountersUnavailable` within `timeout_s`, and the policy decides (fail closed or
    open) instead of a request hanging on reconnects."""

    def __init__(self, url: str, *, prefix: str = "kaixu:", timeout_s: float = 0.5, connections: int = 32) -> None:
        self.prefix = f"{prefix}c{LAYOUT}:"
        # A blocking pool: a burst of requests waits (up to `timeout_s`) for one of `connections` connections
        # instead of opening one each (redis-py's default pool refuses past its maximum).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=connections,
            timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis: Any = aioredis.Redis(connection_pool=pool)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._release = self._redis.register_script(_RELEASE)
        self._reserved = self._redis.register_script(_RESERVED)
        self._hit = self._redis.register_script(_HIT)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._held = self._redis.register_script(_HELD)
        self._admit = self._redis.register_script(_ADMIT)
        self._end = self._redis.register_script(_END)

    async def open(self) -> RedisCounters:
        """Checks the server answers, so a wrong URL is found at start rather than on the first request."""
        await self._call(self._redis.ping)
        return self

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)

    async def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await function(*args, **kwargs)
        except _UNAVAILABLE as e:
            raise CountersUnavailable(f"redis: {type(e).__name__}: {e}") from e

    def _budget_keys(self, scope: str) -> list[str]:
        return [f"{self.prefix}spend:{scope}", f"{self.prefix}held:{scope}", f"{self.prefix}res:{scope}"]

    # Budgets

    async def reserve(
        self, scopes: Sequence[str], amount_micros: int, caps: Sequence[int], ttl_s: float
    ) -> Reservation | Refusal:
        check_reservation(scopes, amount_micros, caps, ttl_s)
        scopes = tuple(scopes)
        reservation_id = new_id()
        keys = [key for scope in scopes for key in self._budget_keys(scope)]
        args = [amount_micros, max(1, round(ttl_s * 1000)), reservation_id, *caps]
        answer = await self._call(self._reserve, keys=keys, args=args)
        if answer[0] == 1:
            return Reservation(reservation_id, scopes, amount_micros, answer[1] / 1000)
        index = answer[1] - 1
        return Refusal(scopes[index], caps[index], answer[2], answer[3], amount_micros)

    async def settle(self, reservation: Reservation, actual_micros: int) -> bool:
        if actual_micros < 0:
            raise ValueError("a cost is not negative")
        keys = [key for scope in reservation.scopes for key in self._budget_keys(scope)]
        keys.append(f"{self.prefix}done:{reservation.id}")
        args = [reservation.amount_micros, reservation.id, actual_micros, SETTLED_MEMORY_MS]
        return bool(await self._call(self._settle, keys=keys, args=args))

    async def release(self, reservation: Reservation) -> None:
        keys = [key for scope in reservation.scopes for key in self._budget_keys(scope)[1:]]
        await self._call(self._release, keys=keys, args=[reservation.amount_micros, reservation.id])

    async def spent(self, scope: str) -> int:
        return int(await self._call(self._redis.get, f"{self.prefix}spend:{scope}") or 0)

    async def reserved(self, scope: str) -> int:
        return int(await self._call(self._reserved, keys=self._budget_keys(scope)[1:]))

    # Windows

    async def hit(self, scope: str, window_s: int, limit: int, amount: int = 1, *, force: bool = False) -> WindowHit:
        check_window(window_s, limit, amount)
        key = f"{self.prefix}win:{window_s}:{scope}"
        allowed, remaining, reset_ms = await self._call(
            self._hit, keys=[key], args=[window_s, limit, amount, int(force)]
        )
        return WindowHit(allowed == 1, limit, remaining, reset_ms)

    # Slots

    async def acquire_slot(self, scope: str, limit: int, ttl_s: float) -> Slot | None:
        if ttl_s <= 0 or limit < 0:
            raise ValueError("a slot needs a positive ttl and a limit that is not negative")
        slot_id = new_id()
        key = f"{self.prefix}slot:{scope}"
        answer = await self._call(self._acquire, keys=[key], args=[limit, max(1, round(ttl_s * 1000)), slot_id])
        return Slot(slot_id, scope, answer[1] / 1000) if answer[0] == 1 else None

    async def release_slot(self, slot: Slot) -> None:
        await self._call(self._redis.zrem, f"{self.prefix}slot:{slot.scope}", slot.id)

    async def held_slots(self, scope: str) -> int:
        return int(await self._call(self._held, keys=[f"{self.prefix}slot:{scope}"]))

    # One round trip per request each way

    async def admit(self, windows: Sequence[Window], slots: Sequence[tuple[str, int]], ttl_s: float) -> Admission:
        for asked in windows:
            check_window(asked.window_s, asked.limit, asked.amount)
        ids = [new_id() for _ in slots]
        keys = [f"{self.prefix}win:{w.window_s}:{w.scope}" for w in windows]
        keys += [f"{self.prefix}slot:{scope}" for scope, _ in slots]
        args: list[Any] = [len(windows)]
        for w in windows:
            args += [w.window_s, w.limit, w.amount]
        args += [max(1, round(ttl_s * 1000)), *(limit for _, limit in slots), *ids]
        answer = await self._call(self._admit, keys=keys, args=args)
        refused, expires = int(answer[0]), answer[1] / 1000
        hits = tuple(
            WindowHit(answer[2 + 3 * i] == 1, w.limit, int(answer[3 + 3 * i]), int(answer[4 + 3 * i]))
            for i, w in enumerate(windows)
        )
        if refused:
            return Admission(hits, (), refused - 1)
        return Admission(hits, tuple(Slot(sid, scope, expires) for sid, (scope, _) in zip(ids, slots, strict=True)))

    async def end(
        self,
        settle: Sequence[tuple[Reservation, int]],
        release: Sequence[Reservation],
        slots: Sequence[Slot],
        windows: Sequence[Window],
    ) -> None:
        keys: list[str] = []
        args: list[Any] = [len(settle)]
        for reservation, actual in settle:
            keys.append(f"{self.prefix}done:{reservation.id}")
            keys += [key for scope in reservation.scopes for key in self._budget_keys(scope)]
            args += [len(reservation.scopes), reservation.amount_micros, reservation.id, max(0, actual)]
        args.append(len(release))
        for reservation in release:
            keys += [key for scope in reservation.scopes for key in self._budget_keys(scope)[1:]]
            args += [len(reservation.scopes), reservation.amount_micros, reservation.id]
        args.append(len(slots))
        keys += [f"{self.prefix}slot:{slot.scope}" for slot in slots]
        args += [slot.id for slot in slots]
        args.append(len(windows))
        for w in windows:
            keys.append(f"{self.prefix}win:{w.window_s}:{w.scope}")
            args += [w.window_s, w.amount]
        args.append(SETTLED_MEMORY_MS)
        await self._call(self._end, keys=keys, args=args)
