"""The one place that counts: Prometheus metrics for every request kaixu answers or forwards.

Labels are names from the policy (front door, provider, model, status class), never keys or ids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "kaixu_requests",
    "Requests answered, by front door, operation, provider, model and HTTP status.",
    ["front", "operation", "provider", "model", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "kaixu_request_duration_seconds",
    "Time from the request reaching kaixu to the end of the response.",
    ["front", "provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
TOKENS = Counter(
    "kaixu_tokens",
    "Tokens reported by providers, by direction (input/output).",
    ["provider", "model", "direction"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "kaixu_upstream_errors",
    "Upstream failures kaixu turned into JSON errors (connect, timeout, protocol).",
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


if TYPE_CHECKING:
    from kaixu.call import Call


def count_request(call: Call, provider: str, model: str, status: int, elapsed: float) -> None:
    """Everything one settled request adds to the metrics; `provider` and `model` are policy names ("-": none)."""
    REQUESTS.labels(call.front, call.operation or "-", provider, model, str(status)).inc()
    LATENCY.labels(call.front, provider).observe(elapsed)
    usage = call.bill.usage
    if usage is not None and call.provider is not None:
        TOKENS.labels(provider, model, "input").inc(usage.input_tokens)
        TOKENS.labels(provider, model, "output").inc(usage.output_tokens)


def exposition() -> bytes:
    return generate_latest(REGISTRY)


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
