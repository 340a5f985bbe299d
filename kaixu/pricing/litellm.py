"""LiteLLM's community price list (``model_prices_and_context_window.json``) in kaixu's ``prices.json`` shape.

LiteLLM keys models by name (sometimes ``provider/name``) and gives USD *per token*
(``input_cost_per_token``, ``output_cost_per_token``, ``cache_read_input_token_cost``,
``cache_creation_input_token_cost``, ``..._above_200k_tokens``), with ``litellm_provider``, ``mode`` and
``max_output_tokens`` (kept: a budget reserves no more output than that per answer).
Only text and embedding models of the providers kaixu speaks to are taken.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

#: LiteLLM's provider name -> kaixu's provider kind.
PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "gemini"}
MODES = {"chat", "completion", "responses", "embedding"}
SOURCE = "https://github.com/BerriAI/litellm/blob/main/model_prices_and_context_window.json"
_FIELDS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cached_input",
    "cache_creation_input_token_cost": "cache_write_5m",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h",
    "output_cost_per_reasoning_token": "reasoning",
}
_ABOVE = re.compile(r"^(?P<field>.+)_above_(?P<k>\d+)k_tokens$")


def _per_million(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(Fraction(str(value)) * 1_000_000)


def convert(data: dict[str, Any], as_of: str) -> dict[str, Any]:
    """``{"models": {"kind/model": entry}}`` from a LiteLLM price list; unusable entries are skipped."""
    models: dict[str, Any] = {}
    for name, spec in data.items():
        if not isinstance(spec, dict) or spec.get("mode") not in MODES:
            continue
        kind = PROVIDERS.get(str(spec.get("litellm_provider")))
        if kind is None:
            continue
        model = name.split("/", 1)[1] if name.startswith(f"{spec['litellm_provider']}/") else name
        entry: dict[str, Any] = {}
        tiers: dict[int, dict[str, Any]] = {}
        for field, value in spec.items():
            rate = _per_million(value)
            if rate is None or rate < 0:
                continue
            if field in _FIELDS:
                entry[_FIELDS[field]] = rate
            elif (match := _ABOVE.match(field)) and match["field"] in _FIELDS:
                threshold = int(match["k"]) * 1000
                tiers.setdefault(threshold, {"above_input_tokens": threshold})[_FIELDS[match["field"]]] = rate
        if "input" not in entry:
            continue
        if spec.get("mode") == "embedding":
            entry.pop("output", None)
        elif isinstance(cap := spec.get("max_output_tokens"), int) and not isinstance(cap, bool) and cap > 0:
            entry["max_output_tokens"] = cap  # what a budget reserves at most per answer (docs/limits.md)
        if tiers:
            entry["tiers"] = [tiers[t] for t in sorted(tiers)]
        entry["source"] = SOURCE
        entry["as_of"] = as_of
        models[f"{kind}/{model}"] = entry
    return {"models": dict(sorted(models.items()))}
