"""Read a live kaixu's `/metrics` the way Prometheus does: prometheus-client's own text parser, never string
matching, so a test sees exactly the samples a scraper would store."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

if TYPE_CHECKING:
    from tests.harness import Kaixu


def samples(kaixu: Kaixu, headers: dict[str, str] | None = None) -> list[Sample]:
    """Every sample of one scrape (`kaixu_requests_total`, `gen_ai_client_token_usage_sum`, ...)."""
    response = httpx.get(kaixu.url + "/metrics", headers=headers)
    response.raise_for_status()
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def total(found: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
    return sum(s.value for s in found if s.name == name and labels.items() <= s.labels.items())


def tokens_metered(kaixu: Kaixu, provider: str, model: str, token_type: str = "output") -> float:
    """Tokens of one type counted for a provider and route (the `model` label is the policy's route name)."""
    return total(
        samples(kaixu),
        "gen_ai_client_token_usage_sum",
        provider=provider,
        gen_ai_request_model=model,
        gen_ai_token_type=token_type,
    )
