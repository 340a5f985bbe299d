"""The one place that counts: Prometheus metrics for every request kaixu answers or forwards.

Names follow the OpenTelemetry GenAI semantic conventions where they have one, in the form OpenTelemetry's
Prometheus exporter gives them (dots become underscores, the unit becomes a suffix): `gen_ai_client_token_usage`,
`gen_ai_server_request_duration_seconds`, `gen_ai_server_time_to_first_token_seconds`, with the conventions'
attributes as labels (`gen_ai_operation_name`, `gen_ai_provider_name`, `gen_ai_request_model`, `gen_ai_token_type`,
`error_type` for `error.type`). What the conventions do not name (requests, cost, in-flight, the ledger) is `kaixu_*`.
docs/observability.md lists every metric.

Cardinality is bounded by the policy: front doors, operations and statuses are kaixu's own finite sets; providers,
routes (a glob route is its glob, never the name a client sent), teams and key names are names in the policy file.
The one value a client controls is its customer, a label only when `metrics.labels.customer` opts in: then it is
escaped, cut and limited to `MAX_CUSTOMERS` distinct values. No key, request id or client string is ever a label.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from kaixu.log import safe

if TYPE_CHECKING:
    from kaixu.call import Call

# The `_created` series (one per counter and histogram child) double what Prometheus stores; nothing reads them.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)

NONE = "-"
"""The label value for "there is none" (no provider yet, no team): visible in a legend, unlike an empty value."""
MAX_CUSTOMERS = 1000
"""Distinct customers kept as label values per process (`metrics.labels.customer`); later ones are `_other`."""
MAX_LABEL_CHARS = 64


class LoopCounter(Collector):
    """A counter that only the event loop updates: one dict addition per `inc`. prometheus_client's own children
    take a lock and go through two method calls per update, which made the per-request metrics cost about as
    much as the rest of the accounting (docs/performance.md); the exposition is the same."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], *, registry: CollectorRegistry):
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.values: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in self.values.items():
            family.add_metric(labels, value)
        yield family


class LoopGauge(Collector):
    """A gauge without labels that only the event loop moves (see `LoopCounter`)."""

    def __init__(self, name: str, documentation: str, *, registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.value = name, documentation, 0
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, value=self.value)


class LoopHistogram(Collector):
    """A histogram that only the event loop updates (see `LoopCounter`): per label set, the sum and one count per
    bucket (not cumulative: `observe` adds to one slot); exposed with prometheus_client's cumulative buckets."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self.values: dict[tuple[str, ...], list[float]] = {}
        """labels -> [sum, count in bucket 0, ..., count above the last bound]"""
        registry.register(self)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        state = self.values.get(labels)
        if state is None:
            state = self.values[labels] = [0.0] * (len(self.bounds) + 2)
        state[0] += value
        state[bisect_left(self.bounds, value) + 1] += 1  # the first bucket whose bound is >= value (`le`)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, state in self.values.items():
            cumulative, buckets = 0.0, []
            for le, count in zip(self._le, state[1:], strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(labels, buckets, sum_value=state[0])
        yield family


# OpenTelemetry's advisory bucket boundaries (gen_ai.client.token.usage, gen_ai.server.request.duration,
# gen_ai.server.time_to_first_token); the duration buckets go on past 81.92 s for long reasoning answers.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = tuple(0.01 * 2**i for i in range(16))  # 0.01, 0.02, 0.04 ... 81.92, 163.84, 327.68
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

# gen_ai.provider.name's well-known values, by provider kind; `provider` keeps the policy's own name.
OTEL_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini", "mock": "kaixu.mock"}
# gen_ai.operation.name: kaixu's operations are the conventions' names, but for Gemini's batch embeddings.
OTEL_OPERATION = {"batch_embeddings": "embeddings"}

_GEN_AI = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "provider"]

REQUESTS = LoopCounter(
    "kaixu_requests",
    "Requests answered, by front door, operation, provider, route, HTTP status and the key's team "
    "(key and customer: opt-in labels, empty unless the policy turns them on).",
    ["front", "operation", "provider", "model", "status", "status_class", "team", "key", "customer"],
    registry=REGISTRY,
)
COST = LoopCounter(
    "kaixu_cost_usd_micros",
    "What requests cost, in integer micro-dollars (divide by 1e6 for USD), by provider, route and the key's team.",
    ["provider", "model", "team", "key", "customer"],
    registry=REGISTRY,
)
POLICY_SHADOW_REFUSALS = LoopCounter(
    "kaixu_policy_shadow_refusals",
    "Requests a policy in shadow mode (enforce: false) would have refused or clamped, by policy name "
    "(from the policy file: a bounded label).",
    ["policy"],
    registry=REGISTRY,
)
GOVERNANCE_REFUSALS = LoopCounter(
    "kaixu_governance_refusals",
    "Requests refused by budgets and rate limits, by reason: budget, budget_in_flight, rpm, tpm, parallel, "
    "unpriced_in_flight, counters_unavailable.",
    ["reason"],
    registry=REGISTRY,
)
BUDGET_ALERTS = LoopCounter(
    "kaixu_budget_alerts",
    "Soft budget alerts (alerts.budget_percent passed), by budget level: key, customer, team, org, policy.",
    ["level"],
    registry=REGISTRY,
)
GOVERNANCE_FAIL_OPEN = LoopCounter(
    "kaixu_governance_fail_open",
    "Requests let through uncounted because the counters could not answer and store.redis.fail is open.",
    [],
    registry=REGISTRY,
)
ATTEMPTS = LoopCounter(
    "kaixu_upstream_attempts",
    "Attempts sent to providers by the attempt executor (retries and fallbacks included), by provider and outcome: "
    "ok, retried, fallback, final (the failure the client got).",
    ["provider", "outcome"],
    registry=REGISTRY,
)
FALLBACKS = LoopCounter(
    "kaixu_fallbacks",
    "Requests served by a fallback model (degraded), by the policy's name of the model asked for.",
    ["model"],
    registry=REGISTRY,
)
UNPRICED = Counter(
    "kaixu_unpriced_requests",
    "Requests that used tokens on a model without a price: their cost is unknown, and not in kaixu_cost_usd_micros.",
    ["provider", "model"],
    registry=REGISTRY,
)


class DeploymentStates(Collector):
    """`kaixu_deployment_state{provider, model}` (0 closed, 1 half-open, 2 open) and the deployments' requests in
    flight, read when scraped from the gateway's deployments (kaixu/reliability/health.py). Labels are the
    policy's provider names and route model names: bounded by the policy file."""

    STATES: ClassVar[dict[str, int]] = {"closed": 0, "half_open": 1, "open": 2}

    def __init__(self, registry: CollectorRegistry) -> None:
        self.source: Callable[[], list[dict[str, object]]] | None = None
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        about = "Circuit breaker of each deployment: 0 closed, 1 half-open (one probe), 2 open (left out)."
        state = GaugeMetricFamily("kaixu_deployment_state", about, labels=["provider", "model"])
        busy = GaugeMetricFamily("kaixu_deployment_in_flight", "Requests in flight per deployment.",
                                 labels=["provider", "model"])  # fmt: skip
        for deployment in self.source() if self.source is not None else []:
            labels = [str(deployment["provider"]), str(deployment["model"] or NONE)]
            state.add_metric(labels, self.STATES[str(deployment["state"])])
            busy.add_metric(labels, float(deployment["in_flight"]))  # type: ignore[arg-type]
        yield state
        yield busy


DEPLOYMENTS = DeploymentStates(REGISTRY)
IN_FLIGHT = LoopGauge(
    "kaixu_requests_in_flight", "Requests forwarded to a provider and not settled yet.", registry=REGISTRY
)
TOKEN_USAGE = LoopHistogram(
    "gen_ai_client_token_usage",
    "Tokens per request as the provider reported them (or as estimated), by type: input (cache reads and writes "
    "included), output (reasoning included), cache_read, cache_write, reasoning. OTel gen_ai.client.token.usage.",
    [*_GEN_AI, "gen_ai_token_type"],
    buckets=TOKEN_BUCKETS,
    registry=REGISTRY,
)
REQUEST_DURATION = LoopHistogram(
    "gen_ai_server_request_duration_seconds",
    "Time from the request reaching kaixu to the end of its answer, streams included. "
    "OTel gen_ai.server.request.duration.",
    [*_GEN_AI, "front", "error_type"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = LoopHistogram(
    "gen_ai_server_time_to_first_token_seconds",
    "Streams: time from the request reaching kaixu to the first byte of the answer. "
    "OTel gen_ai.server.time_to_first_token.",
    [*_GEN_AI, "front"],
    buckets=TTFT_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "kaixu_upstream_errors",
    "Upstream failures: answered with a JSON 502/504 (connect, protocol, timeout), or a stream the provider broke "
    "after the answer had started (interrupted).",
    ["provider", "kind"],
    registry=REGISTRY,
)
POLICY_GENERATION = Gauge(
    "kaixu_policy_generation",
    "Generation of the policy in force (increments on each reload).",
    registry=REGISTRY,
)
POLICY_RELOAD_FAILURES = Counter(
    "kaixu_policy_reload_failures", "Policy edits rejected by validation.", registry=REGISTRY
)
LEDGER_QUEUE_DEPTH = Gauge(
    "kaixu_ledger_queue_depth",
    "Ledger records waiting to be written to the store (grows while the store is unavailable).",
    registry=REGISTRY,
)
LEDGER_WRITE_FAILURES = Counter(
    "kaixu_ledger_write_failures",
    "Ledger writes that failed: the store was unavailable, or refused a batch that was then written record by record.",
    registry=REGISTRY,
)
LEDGER_DROPPED_RECORDS = Counter(
    "kaixu_ledger_dropped_records",
    "Ledger records lost: the queue was full, or the store refused the record even with its fields escaped.",
    registry=REGISTRY,
)
LEDGER_ESCAPED_RECORDS = Counter(
    "kaixu_ledger_escaped_records",
    "Ledger records stored with text fields escaped because the store could not encode them as sent.",
    registry=REGISTRY,
)


TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")
_STATUS_CLASS = {n: f"{n}xx" for n in range(1, 6)}

_customers: set[str] = set()


def _customer_label(customer: str | None) -> str:
    """A client's customer as a label value: one printable line, cut, and one of at most `MAX_CUSTOMERS` values
    (a client inventing a new customer per request cannot grow the series without end)."""
    if not customer:
        return NONE
    value = safe(customer, MAX_LABEL_CHARS)
    if value not in _customers:
        if len(_customers) >= MAX_CUSTOMERS:
            return "_other"
        _customers.add(value)
    return value


def count_request(
    call: Call, provider: str, model: str, status: int, elapsed: float, error: str | None, customer: str | None
) -> None:
    """Everything one settled request adds to the metrics. `provider` and `model` are policy names (`-`: none);
    `customer` is the one the request is attributed to, a label only when the policy opts in. The team label is
    the key's team from the policy, never a team the client names."""
    metrics = call.policy.metrics
    team = (call.caller.key.team if call.caller.key else None) or NONE
    key = (call.caller.key.name if call.caller.key else NONE) if metrics.label_key else ""
    who = _customer_label(customer) if metrics.label_customer else ""
    operation = call.operation or NONE
    REQUESTS.inc(
        (
            call.front,
            operation,
            provider,
            model,
            str(status),
            _STATUS_CLASS.get(status // 100) or f"{status // 100}xx",
            team,
            key,
            who,
        )
    )
    interrupted = bool(error) and status < 400  # the answer had started: the provider broke the stream
    served = call.served
    if interrupted and served is not None:
        UPSTREAM_ERRORS.labels(provider, "interrupted").inc()
    vendor = OTEL_PROVIDER.get(served.provider.kind, served.provider.kind) if served is not None else NONE
    gen_ai = (OTEL_OPERATION.get(operation, operation), vendor, model, provider)
    error_type = str(status) if status >= 400 else "interrupted" if interrupted else ""
    REQUEST_DURATION.observe((*gen_ai, call.front, error_type), elapsed)
    bill = call.bill
    if bill.first_token_at is not None:
        TIME_TO_FIRST_TOKEN.observe((*gen_ai, call.front), bill.first_token_at - call.started)
    usage = bill.usage
    if usage is None or served is None:
        return
    counts = (
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.cache_creation_input_tokens,
        usage.reasoning_tokens,
    )
    for token_type, tokens in zip(TOKEN_TYPES, counts, strict=True):
        TOKEN_USAGE.observe((*gen_ai, token_type), tokens)
    if bill.cost_micros is not None:
        COST.inc((provider, model, team, key, who), bill.cost_micros)
    elif bill.unpriced:
        UNPRICED.labels(provider, model).inc()


def request_started() -> None:
    """A request was forwarded to a provider (`Gateway.pool`)."""
    IN_FLIGHT.value += 1


def request_finished() -> None:
    """A forwarded request settled, whichever hook ended it (`Gateway.pool`)."""
    IN_FLIGHT.value -= 1


class SharedMetrics:
    """The metrics of `kaixu run --workers N`: one scrape of any worker sums every worker.

    Each worker writes its own series, at most `FLUSH_S` old, to prometheus_client's multiprocess files in the
    run's folder (`counter_PID.db`, `histogram_PID.db`, `gauge_livesum_PID.db`, `gauge_livemax_PID.db`), and a
    scrape merges every file with prometheus_client's `MultiProcessCollector`. The updates themselves stay
    dict additions on the event loop (`LoopCounter`): only the flush, once a second and before each scrape,
    writes, and only the values that changed, in place. Counters and histograms of a worker that exited stay
    in the sums (a restart loses nothing but its last second); its gauges leave them (the supervisor's
    `mark_process_dead`). A gauge that is a state (policy generation, circuit breaker) is the workers'
    maximum, the others their sum."""

    MAX_GAUGES = frozenset({"kaixu_policy_generation", "kaixu_deployment_state"})
    FLUSH_S = 1.0
    KINDS = ("counter", "histogram", "gauge_livesum", "gauge_livemax")

    def __init__(self, folder: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.folder = folder
        self.merged = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(self.merged, path=folder)
        self._files: dict[str, _SeriesFile] = {}
        self._keys: dict[tuple[str, str, tuple[tuple[str, str], ...]], str] = {}

    def flush(self) -> None:
        """Write this process's series: the values that changed in place; a file whose series are not all
        still there (a deployment a reload removed) is written anew, so a series that is gone leaves no trace."""
        series: dict[str, dict[str, float]] = {kind: {} for kind in self.KINDS}
        for family in REGISTRY.collect():
            if family.type == "gauge":
                kind = "gauge_livemax" if family.name in self.MAX_GAUGES else "gauge_livesum"
            elif family.type in ("counter", "histogram"):
                kind = family.type
            else:
                continue
            values = series[kind]
            below: dict[tuple[tuple[str, str], ...], float] = {}
            for sample in family.samples:
                labels = tuple(sample.labels.items())
                value = sample.value
                if family.type == "histogram":
                    if sample.name.endswith("_count"):
                        continue  # the collector counts the buckets
                    if "le" in sample.labels:  # multiprocess files keep each bucket's own count, not cumulative
                        rest = tuple(item for item in labels if item[0] != "le")
                        value, below[rest] = value - below.get(rest, 0.0), value
                values[self._key(family.name, family.documentation, sample.name, labels)] = value
        pid = os.getpid()
        for kind, values in series.items():
            current = self._files.get(kind)
            if current is None or not current.values.keys() <= values.keys():
                if current is not None:
                    current.close()
                current = self._files[kind] = _SeriesFile(os.path.join(self.folder, f"{kind}_{pid}.db"), values)
            else:
                current.update(values)

    def _key(self, metric: str, about: str, name: str, labels: tuple[tuple[str, str], ...]) -> str:
        """prometheus_client's key of a series in its files (a JSON text), made once per series."""
        found = self._keys.get((metric, name, labels))
        if found is None:
            from prometheus_client.mmap_dict import mmap_key

            found = mmap_key(metric, name, [k for k, _ in labels], [v for _, v in labels], about)
            self._keys[(metric, name, labels)] = found
        return found

    def exposition(self) -> bytes:
        self.flush()
        return generate_latest(self.merged)

    def close(self) -> None:
        for current in self._files.values():
            current.close()
        self._files.clear()

    async def flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH_S)
            try:
                self.flush()
            except OSError as exc:  # the run's folder went away: the next scrape says so
                logging.getLogger("kaixu.metrics").warning("metrics not shared with the other workers: %s", exc)


class _SeriesFile:
    """One of a worker's multiprocess files, open for writing, with the values it holds."""

    def __init__(self, path: str, values: dict[str, float]) -> None:
        from prometheus_client.mmap_dict import MmapedDict

        tmp = path + ".tmp"  # not `*.db`: a scrape never reads a file half written
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        self.file = MmapedDict(tmp)
        self.values: dict[str, float] = {}
        self.update(values)
        os.replace(tmp, path)  # the open file follows its new name

    def update(self, values: dict[str, float]) -> None:
        held = self.values
        for key, value in values.items():
            if held.get(key) != value:
                self.file.write_value(key, value, 0.0)
                held[key] = value

    def close(self) -> None:
        self.file.close()


_shared: SharedMetrics | None = None


def share(folder: str) -> SharedMetrics:
    """Make `/metrics` the sum of every worker of this run (`kaixu run --workers N`)."""
    global _shared
    _shared = SharedMetrics(folder)
    return _shared


def exposition() -> bytes:
    return generate_latest(REGISTRY) if _shared is None else _shared.exposition()
