"""Process-wide runtime state shared by kaixu's addons: the current policy snapshot and its history.

The addons are constructed with one `Gateway`; `kaixu run` and the `mitmdump -s` plugin build it the
same way (`kaixu.addons.build_addons`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kaixu import __version__, metrics
from kaixu.config import Policy
from kaixu.console import Sessions
from kaixu.reliability.health import Deployments
from kaixu.reliability.serve import Reliability
from kaixu.store import Ledger

if TYPE_CHECKING:
    import asyncio

    from kaixu.agents.endpoint import Agents
    from kaixu.call import Call
    from kaixu.jobs.runner import JobRunner
    from kaixu.limits.governor import Governor
    from kaixu.store.keys import KeySnapshot
    from kaixu.store.stores import Stores
    from kaixu.workers import Worker

POOL_MAX_CONCURRENT = 10
"""What `/health` and `/queue/status` report as `maxConcurrent` (the Intelligent AI Gateway's default pool
size) when no provider has a cap (`providers.X.max_concurrent`): only the reference `utilization` is measured
against."""


@dataclass(slots=True)
class PoolCounters:
    """The Intelligent AI Gateway's process-pool numbers (seed 002) for the requests kaixu forwards to a
    provider: started by the dispatch step, finished by the settle step (once per request, whichever hook ends
    it). The provider queues (kaixu/reliability/pools.py) count what waits."""

    active: int = 0
    processed: int = 0
    failed: int = 0
    """Ended in a 5xx (the provider's, or kaixu's 502/504 for an unreachable or silent one), or cut after
    the answer had started; a provider's 4xx is processed, not failed."""

    def started(self, call: Call) -> None:
        call.forwarded = True
        self.active += 1
        metrics.request_started()

    def finished(self, call: Call, status: int, error: str | None) -> None:
        if not call.forwarded:
            return
        call.forwarded = False
        self.active -= 1
        metrics.request_finished()
        self.processed += 1
        if status >= 500 or (error is not None and status < 400):
            self.failed += 1


@dataclass(slots=True)
class Gateway:
    policy: Policy | None = None
    generation: int = 0
    """Incremented on every successful (re)load: /health shows it so operators can see a reload land."""
    policy_path: str = ""
    started_at: float = field(default_factory=time.time)
    version: str = __version__
    mock_url: str | None = None
    """Base URL of the in-process mock provider once it listens."""
    loopback_url: str | None = None
    last_reload_error: str | None = None
    loaded_at: float | None = None
    """When the policy in force was swapped in (the first load or the last reload)."""
    inflight: set[str] = field(default_factory=set)
    """Ids of flows between request headers and the end of their response: what a graceful stop waits for."""
    ledger: Ledger | None = None
    stores: Stores | None = None
    """The stores the policy in force names (kaixu/addons/store_choice.py), built at each (re)load."""
    installed: list[Callable[[Policy], None]] = field(default_factory=list)
    """Called with each policy `install` swaps in (the first load and every reload, whatever triggered it)."""
    key_snapshot: KeySnapshot | None = None
    """The store's keys as last read (kaixu/addons/store_keys.py); None: store keys are not looked up."""
    pool: PoolCounters = field(default_factory=PoolCounters)
    deployments: Deployments = field(default_factory=Deployments)
    """Each deployment's in-flight count, latency and circuit breaker (kaixu/reliability/health.py)."""
    governor: Governor | None = None
    """The counters of budgets and rate limits, once open (kaixu/addons/counters.py)."""
    governor_opening: asyncio.Task[Governor | None] | None = None
    counters_error: str | None = None
    """Why the counters could not be opened at start (a SQLite file kaixu cannot use; Redis is waited for):
    requests with a budget or a limit are refused until a restart."""
    worker: Worker | None = None
    """This process's place among the workers of `kaixu run --workers N` (None: the only process)."""
    reliability: Reliability = field(init=False)
    """How every forwarded request's attempts run: retries, fallbacks, timeouts, provider queues, the stream
    relay (kaixu/reliability/serve.py, the one entry)."""
    sessions: Sessions = field(default_factory=Sessions)
    """The web console's sign-ins (kaixu/console.py): made by the ui step, read by the admin step too."""
    agents: Agents | None = None
    """The agent providers' runs (kaixu/agents/endpoint.py), once the loopback server is built."""
    own_listeners: list[asyncio.Server] = field(default_factory=list)
    """A worker's listeners (`kaixu run --workers N`: kaixu's own SO_REUSEPORT sockets, not mitmproxy's)."""
    private_url: Callable[[], Awaitable[str | None]] | None = None
    """A listener of this process only, served by the chain (kaixu/addons/loopback.py): where kaixu's own requests
    come back to the process that made their credential (an agent's model calls, a background job's request)."""
    jobs: JobRunner | None = None
    """The background job runner (kaixu/jobs/runner.py): what a door's jobs are submitted to."""
    internal_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    """Signs the credentials kaixu's own background requests carry (`credentials.internal_credential`): made at
    start, never stored or shown, so such a credential is worth nothing outside this process (its requests come
    back to it through `private_url`)."""

    def __post_init__(self) -> None:
        metrics.DEPLOYMENTS.source = self.deployments.public  # the process's gateway is the one scraped
        self.reliability = Reliability(self.deployments, lambda: self.mock_url)

    def install(self, policy: Policy) -> None:
        """Atomic swap: flows already running keep the snapshot they captured."""
        self.policy = policy
        self.reliability.executor.pools.configure(policy)
        self.generation += 1
        self.loaded_at = time.time()
        self.last_reload_error = None
        for listener in self.installed:
            listener(policy)

    async def governor_ready(self) -> Governor | None:
        """The counters, waiting for them to open when the proxy has just started (None: they could not be)."""
        if self.governor is None and self.governor_opening is not None:
            await self.governor_opening
        return self.governor

    def require_policy(self) -> Policy:
        if self.policy is None:
            raise RuntimeError("no policy is loaded")
        return self.policy

    def counters_status(self) -> dict[str, object]:
        """/health's `counters`: the backend of budgets and rate limits (`memory`, `sqlite`, `redis`; null until
        it is open), what happens to governed requests when it does not answer (`fail`), whether it answers
        (`ok`: null while it opens), and the current outage (`Outage.status`)."""
        governor = self.governor
        if governor is not None:
            return {
                "kind": governor.kind,
                "fail": "open" if governor.fail_open else "closed",
                **governor.outage.status(),
            }
        failed = self.counters_error is not None
        away = round(time.time() - self.started_at, 3) if failed else None
        return {"kind": None, "fail": "closed", "ok": False if failed else None, "unavailable_for_s": away,
                "last_error": self.counters_error, "meanwhile": {}}  # fmt: skip

    def store_status(self) -> dict[str, object]:
        """/health's `store`: where keys and the ledger are (a PostgreSQL host and database, never the dsn's
        user or password; or the SQLite file) and how the ledger's writes go."""
        policy = self.require_policy()
        postgres = policy.store.postgres
        status: dict[str, object] = {"kind": "postgres" if postgres else "sqlite"}
        if self.ledger is not None:
            status.update(self.ledger.status())
        else:
            status.update(ok=None, degraded=False)  # the store is opened as the proxy starts
        if postgres:
            from kaixu.store.postgres import dsn_shown

            status["location"] = dsn_shown(postgres.dsn)
        else:
            status["path"] = policy.store.sqlite
        return status
