"""The counters a running kaixu uses, chosen once from `store:`, the end of every request's governance, and
what a request gets when the counters cannot answer (`unavailable`).

Chosen when the proxy starts (`kaixu/addons/counters.py`), as mitmproxy's `proxyauth` picks its validator in
`configure()`: a request never asks which backend it has. `store.redis` -> `RedisCounters` (every replica
shares them); else `store.counters: shared` -> `SqliteCounters` on the policy's SQLite file (the processes of
one machine share them); else `MemoryCounters` (one process, settled spend persisted to that file).

The end of a request (`finish`) settles its reservation to the real cost, frees its parallel-request slots
and counts its tokens in the tpm windows. It runs as a task after the answer, so the client never waits for
it; the reservation keeps holding the budget until the settle replaces it, so nothing can be overspent
meanwhile. A shutdown waits for these tasks (`close`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from kaixu.config.policy import AlertsPolicy, StoreConfig
from kaixu.limits import Counters, CountersUnavailable, Window, WindowHit
from kaixu.limits.governance import Governance
from kaixu.log import Outage, safe
from kaixu.metrics import BUDGET_ALERTS, GOVERNANCE_FAIL_OPEN, GOVERNANCE_REFUSALS
from kaixu.pricing import usd
from kaixu.respond import error_response
from kaixu.trust import ssl_context

if TYPE_CHECKING:
    from mitmproxy import http

    from kaixu.call import Call

log = logging.getLogger("kaixu.limits")

MINUTE_S = 60
TTL_MARGIN_S = 60.0
"""Reservations and slots outlive the upstream timeout by this much: a live request never loses its hold,
a crashed process's holds lapse soon after its requests would have timed out."""
PROBE_S = 1.0
"""While the counters do not answer, how often they are asked whether they are back."""
PROBE_SCOPE = "probe"
"""The scope the probe reads (`spent`, a read): no budget's scope, which always names its level."""


def unavailable(flow: http.HTTPFlow, call: Call, governor: Governor | None, error: Exception | None) -> bool:
    """The counters cannot answer: True when the request is refused (fail closed: 503 with `Retry-After`),
    False when `store.redis.fail: open` lets it through uncounted (counted). Logged once per outage with what
    it cost (`Governor.unavailable`), never once per request; with no counters at all (they could not be
    opened at start: logged then), refused without a line."""
    if governor is not None and governor.fail_open:
        if not call.governance.uncounted:
            governor.unavailable(error, "uncounted_requests")
            GOVERNANCE_FAIL_OPEN.inc(())
        call.governance.uncounted = True
        return False
    if governor is not None:
        governor.unavailable(error, "refused_requests")
    GOVERNANCE_REFUSALS.inc(("counters_unavailable",))
    message = "kaixu cannot check this request's budget and rate limits right now; retry shortly"
    flow.response = error_response(call, 503, message, "api_error", "counters_unavailable", {"retry-after": "1"})
    return True


def tighter(current: WindowHit | None, hit: WindowHit) -> WindowHit:
    return hit if current is None or hit.remaining < current.remaining else current


def eagerly(governor: Governor | None, step: Coroutine[Any, Any, None]) -> Awaitable[None] | None:
    """Runs a step's coroutine at once when the counters live in this process: it then finishes without ever
    suspending (None: nothing to await, no task for mitmproxy to schedule); else it is handed on as it is.

    Only for the in-process backend: a coroutine that suspends here resumes in the task mitmproxy makes for the
    hook, so anything it entered before suspending (a Redis client's `asyncio.timeout`) would belong to the
    wrong task. The in-process counters never suspend, and a step reaches them without waiting once the
    counters are open (before that, `governor` is None and the step goes its usual way). Nor for steps that
    may await a future another eager step awaits: asyncio lets only one await a pending future outside a task."""
    if governor is None or governor.kind != "memory":
        return step
    try:
        waiting = step.send(None)
    except StopIteration:
        return None
    return _rest(step, waiting)


async def _rest(step: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Drives on a coroutine `eagerly` started and that suspended on `waiting` (a future, or None for a bare
    yield): waits for it as a task would, then resumes the step; a cancellation is thrown into the step."""
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait([waiting])
        except BaseException as exc:
            try:
                waiting = step.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waiting = step.send(None)
        except StopIteration:
            return


class Governor:
    """The counters of this process and the policy's answer to their failure."""

    def __init__(self, counters: Counters, *, kind: str, fail_open: bool = False) -> None:
        self.counters = counters
        self.kind = kind
        """memory | sqlite | redis: what /health shows."""
        self.fail_open = fail_open
        self.outage = Outage(f"counters ({kind})", log)
        """Whether they answer, and what an outage cost: the log's few lines and /health's `counters`."""
        self._probe: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._alerted: set[str] = set()

    def unavailable(self, error: Exception | None, effect: str | None) -> None:
        """A call to the counters failed (`CountersUnavailable`), costing a request `effect`: told once per
        outage, not once per request, and watched (`_watch`) until the counters answer again."""
        self.outage.failed(error or "the counters did not answer", effect)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Asks the counters once a second while they are away, so that the log and /health see them come back
        without waiting for a request: a health check that takes this replica out of a load balancer also
        takes away the requests that would have found out."""
        while self.outage.down:
            await asyncio.sleep(PROBE_S)
            try:
                await self.counters.spent(PROBE_SCOPE)
            except Exception as e:
                self.outage.failed(e)
            else:
                self.outage.recovered()

    def finish(
        self,
        governance: Governance,
        cost_micros: int | None,
        tokens: int | None,
        alerts: AlertsPolicy | None = None,
        ca_file: str | None = None,
    ) -> None:
        """The request is over: settle, free and count in the background (see the module docstring). ``ca_file``
        is the policy's `tls.ca_file`: the alert webhook trusts what the upstream client trusts."""
        if not governance.holds:
            return
        finishing = self._finish(governance, cost_micros, tokens, alerts, ca_file)
        task = asyncio.get_running_loop().create_task(finishing)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(
        self,
        governance: Governance,
        cost_micros: int | None,
        tokens: int | None,
        alerts: AlertsPolicy | None,
        ca_file: str | None,
    ) -> None:
        held = [governance.reservation] if governance.reservation else []
        held += governance.shadow_reservations
        # nothing spent (refused upstream, failed before any token) or a cost unknown: the hold is given back
        settle = [(reservation, cost_micros) for reservation in held] if cost_micros else []
        windows = [Window(scope, MINUTE_S, tpm, tokens) for scope, tpm in governance.token_scopes] if tokens else []
        try:
            await self.counters.end(settle, [] if cost_micros else held, governance.slots, windows)
            if cost_micros and alerts is not None and alerts.budget_percent is not None:
                await self._alert(governance, alerts, alerts.budget_percent, ca_file)
        except CountersUnavailable as e:  # the holds lapse at their ttl; the spend of this request is lost
            self.unavailable(e, "unsettled_requests")
        except Exception:
            log.exception("settling a request's budget and limits failed")

    async def _alert(
        self, governance: Governance, alerts: AlertsPolicy, percent: Fraction, ca_file: str | None
    ) -> None:
        """A soft alert, once per budget and period in this process, when spend passes `percent` of the cap."""
        for scope, cap, level, name, period in governance.watched:
            if scope in self._alerted:
                continue
            spent = await self.counters.spent(scope)
            if spent * 100 < cap * percent:
                continue
            self._alerted.add(scope)
            shown = float(Fraction(spent * 100, cap)) if cap else 100.0
            event = {"event": "budget_threshold", "level": level, "name": name, "period": period,
                     "cap_usd": usd(cap), "spent_usd": usd(spent), "percent": round(shown, 2),
                     "threshold_percent": float(percent)}  # fmt: skip
            log.warning("budget alert: %s %s has spent %s of %s USD this %s (%.1f%%)", level, safe(name),
                        usd(spent), usd(cap), period, shown)  # fmt: skip
            BUDGET_ALERTS.inc((level,))
            if alerts.webhook:
                await self._post(alerts.webhook, event, ca_file)

    @staticmethod
    async def _post(url: str, event: dict[str, Any], ca_file: str | None) -> None:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=5, verify=ssl_context(ca_file)) as client:
                response = await client.post(url, json=event)
            if response.status_code >= 300:
                log.warning("budget alert webhook answered %d", response.status_code)
        except httpx.HTTPError as e:
            log.warning("budget alert webhook failed: %s", type(e).__name__)

    async def close(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        await self.counters.close()


async def open_governor(store: StoreConfig, *, check: bool = True) -> Governor:
    """The backend `store:` names, opened (raises `CountersUnavailable` when it cannot be). `check=False`:
    Redis is not asked whether it answers (it is down at start: each call fails until it is back)."""
    redis = store.redis
    if redis is not None:
        from kaixu.limits.redis_counters import RedisCounters

        backend = RedisCounters(redis.url, prefix=redis.prefix, timeout_s=redis.timeout_s)
        counters: Counters = await backend.open() if check else backend
        return Governor(counters, kind="redis", fail_open=redis.fail == "open")
    path = store.sqlite
    if store.counters == "shared" and path != ":memory:":
        from kaixu.limits.sqlite_counters import SqliteCounters

        return Governor(await SqliteCounters(path).open(), kind="sqlite")
    from kaixu.limits.memory_counters import MemoryCounters

    return Governor(await MemoryCounters(path).open(), kind="memory")
