"""What a call cost: the price list (``prices.json``) and the one function that prices a usage record.

Money is integer micro-dollars (1 USD = 1_000_000). Prices are USD per 1M tokens, so a token count times a
rate *is* micro-dollars: the sum is computed exactly with ``Fraction`` and rounded half up once, at the end.
``cost_micros`` answers ``None`` when it cannot price a usage: an unknown price is never 0.

The policy's ``pricing:`` section is read by ``table()`` when the policy loads; the router looks up the price
of what it serves, the settle step prices the usage (``kaixu/addons/settle.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from importlib import resources
from typing import Any

from kaixu.exceptions import KaixuError
from kaixu.formats.canonical import Usage

__all__ = [
    "POLICY_OVERRIDE",
    "Price",
    "PriceTable",
    "PricingError",
    "Rates",
    "convert_micros",
    "cost_micros",
    "load_builtin",
    "table",
    "usd",
]

#: ``Price.source`` of an entry that came from the policy, not from ``prices.json``.
POLICY_OVERRIDE = "policy override"

#: Rates are kept as integers at this scale for the fast path of ``cost_micros`` (``Rates.scaled``).
SCALE = 10**12

#: The per-1M-token rate fields an entry (or one of its tiers) may carry.
RATE_FIELDS = ("input", "output", "cached_input", "cache_write_5m", "cache_write_1h", "reasoning")
_ENTRY_FIELDS = {*RATE_FIELDS, "tiers", "aliases", "source", "as_of", "note", "max_output_tokens"}
#: A dated snapshot suffix: OpenAI's ``-2024-07-18``, Anthropic's ``-20241022``.
DATED_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


class PricingError(KaixuError, ValueError):
    """A price entry that cannot be used: a missing or negative rate, an unknown field."""


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per 1M tokens for each kind of token. ``None``: the vendor has no separate rate for it.

    ``cached_input`` and ``cache_write_5m`` default to ``input`` when absent (no discount or surcharge is
    known), ``reasoning`` to ``output``. ``output`` absent (an embeddings model) makes any output unpriceable.
    ``cache_write_1h`` is kept for display: canonical usage does not split cache writes by TTL, so writes are
    priced at the 5-minute rate, Anthropic's default.
    """

    input: Fraction
    output: Fraction | None = None
    cached_input: Fraction | None = None
    cache_write_5m: Fraction | None = None
    cache_write_1h: Fraction | None = None
    reasoning: Fraction | None = None
    scaled: tuple[int, int, int, int, int] | None = field(default=None, init=False, repr=False, compare=False)
    """The effective rates (uncached input, cache read, cache write, output, reasoning) times ``SCALE``, when
    every one is a whole number at that scale (any price with at most 12 decimals per 1M tokens): then
    ``cost_micros`` sums integers, the same exact result as with Fractions at a tenth of the time."""

    def __post_init__(self) -> None:
        out = self.output or Fraction(0)
        effective = (
            self.input,
            _or(self.cached_input, self.input),
            _or(self.cache_write_5m, self.input),
            out,
            _or(self.reasoning, out),
        )
        if all((rate * SCALE).denominator == 1 for rate in effective):
            object.__setattr__(self, "scaled", tuple(int(rate * SCALE) for rate in effective))


@dataclass(frozen=True, slots=True)
class Tier:
    """Rates that replace the base ones when a request's input (cached and cache-written tokens included)
    is above ``above_input_tokens``: Gemini 2.5 Pro and Claude Sonnet's long-context prices."""

    above_input_tokens: int
    rates: Rates


@dataclass(frozen=True, slots=True)
class Price:
    """One model's price: its base rates, long-context tiers (ascending), and where the numbers came from."""

    key: str
    rates: Rates
    tiers: tuple[Tier, ...] = ()
    source: str = ""
    as_of: str = ""
    note: str = ""
    max_output_tokens: int | None = None
    """The most output tokens (reasoning included) the model gives one answer, whatever a request asks: what
    a budget reserves for a request that asks for more, or for no maximum (None: not known)."""

    def rates_for(self, input_tokens: int) -> Rates:
        """The rates that apply to a request with this many input tokens (the highest tier it is above)."""
        chosen = self.rates
        for tier in self.tiers:
            if input_tokens > tier.above_input_tokens:
                chosen = tier.rates
        return chosen


def cost_micros(price: Price | None, usage: Usage) -> int | None:
    """What ``usage`` cost at ``price``, in integer micro-dollars; ``None`` if that cannot be known.

    Canonical usage counts cache reads and cache writes *inside* ``input_tokens`` and reasoning tokens
    inside ``output_tokens`` (``kaixu/formats``: Anthropic's separate counts are added in, OpenAI's and
    Gemini's are already included), so each token is billed once: uncached input, cache reads, cache
    writes; visible output, reasoning.
    """
    if price is None:
        return None
    rates = price.rates_for(usage.input_tokens)
    cached = min(max(usage.cached_input_tokens, 0), max(usage.input_tokens, 0))
    written = min(max(usage.cache_creation_input_tokens, 0), max(usage.input_tokens, 0) - cached)
    uncached = max(usage.input_tokens, 0) - cached - written
    output = max(usage.output_tokens, 0)
    reasoning = min(max(usage.reasoning_tokens, 0), output)
    if output and rates.output is None:
        return None
    scaled = rates.scaled
    if scaled is not None:  # the same sum in integers (see `Rates.scaled`); half up: floor(x + 1/2)
        total_scaled = (
            uncached * scaled[0]
            + cached * scaled[1]
            + written * scaled[2]
            + (output - reasoning) * scaled[3]
            + reasoning * scaled[4]
        )
        return (total_scaled + SCALE // 2) // SCALE
    out_rate = rates.output or Fraction(0)
    total = (
        uncached * rates.input
        + cached * _or(rates.cached_input, rates.input)
        + written * _or(rates.cache_write_5m, rates.input)
        + (output - reasoning) * out_rate
        + reasoning * _or(rates.reasoning, out_rate)
    )
    return int(total + Fraction(1, 2)) if total >= 0 else None  # half up: floor(x + 1/2), x >= 0


def usd(micros: int) -> str:
    """Micro-dollars as a decimal USD string, exact: 1234 -> ``0.001234`` (headers, SSE comments, CLI)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"


def cents(micros: int) -> float:
    """Micro-dollars as US cents, for the seed answers that count in cents (Gateway 13's `cost_cents`, its
    month caps and spends): 1234 -> 0.1234. A display value only: money is kept and summed in micro-dollars."""
    return micros / 10_000


def convert_micros(micros: int, rate: Fraction) -> int:
    """Micro-dollars in another currency at ``rate`` units per USD (``pricing.eur_per_usd``), rounded half up."""
    return int(micros * rate + Fraction(1, 2))


def _or(rate: Fraction | None, default: Fraction) -> Fraction:
    return default if rate is None else rate


class PriceTable:
    """Prices by ``provider_kind/model``. ``lookup`` tries the exact key (aliases included), then the model
    without a dated snapshot suffix (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``)."""

    def __init__(self, prices: dict[str, Price]) -> None:
        self._prices = dict(prices)

    def lookup(self, provider_kind: str, model: str) -> Price | None:
        found = self._prices.get(f"{provider_kind}/{model}")
        if found is None and DATED_SUFFIX.search(model):
            found = self._prices.get(f"{provider_kind}/{DATED_SUFFIX.sub('', model)}")
        return found

    def find(self, model: str) -> list[tuple[str, Price]]:
        """Every ``(provider_kind, price)`` that prices ``model``, for ``kaixu prices show`` without a kind."""
        kinds = sorted({key.split("/", 1)[0] for key in self._prices})
        return [(kind, price) for kind in kinds if (price := self.lookup(kind, model)) is not None]

    def keys(self) -> list[str]:
        return sorted(self._prices)

    def __len__(self) -> int:
        return len(self._prices)


# --- reading the data ------------------------------------------------------------------


def _rate(value: Any, where: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float | Fraction | str):
        raise PricingError(f"{where}: expected a number of USD per 1M tokens, got {value!r}")
    try:
        rate = Fraction(str(value)) if isinstance(value, float) else Fraction(value)
    except ValueError:
        raise PricingError(f"{where}: expected a number of USD per 1M tokens, got {value!r}") from None
    if rate < 0:
        raise PricingError(f"{where}: a price cannot be negative ({value})")
    return rate


def _rates(raw: dict[str, Any], where: str, base: Rates | None = None) -> Rates:
    given: dict[str, Any] = {name: _rate(raw[name], f"{where}.{name}") for name in RATE_FIELDS if name in raw}
    if base is not None:
        return replace(base, **given)
    if "input" not in given:
        raise PricingError(f"{where}: an input price is required")
    return Rates(**given)


def parse_entry(key: str, raw: Any, *, source: str | None = None) -> Price:
    """One entry of ``prices.json`` or of a policy's ``pricing.models``; ``source`` overrides the entry's."""
    if "/" not in key:
        raise PricingError(f"{key}: keys are provider_kind/model, e.g. openai/gpt-4o-mini")
    if not isinstance(raw, dict):
        raise PricingError(f"{key}: expected a mapping of prices")
    unknown = sorted(set(raw) - _ENTRY_FIELDS)
    if unknown:
        raise PricingError(f"{key}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_ENTRY_FIELDS))}")
    base = _rates(raw, key)
    tiers: list[Tier] = []
    for i, tier in enumerate(raw.get("tiers") or []):
        where = f"{key}.tiers[{i}]"
        if not isinstance(tier, dict) or not isinstance(tier.get("above_input_tokens"), int):
            raise PricingError(f"{where}: a tier needs an integer above_input_tokens")
        extra = sorted(set(tier) - {*RATE_FIELDS, "above_input_tokens"})
        if extra:
            raise PricingError(f"{where}: unknown field(s) {', '.join(extra)}")
        tiers.append(Tier(tier["above_input_tokens"], _rates(tier, where, base)))
    tiers.sort(key=lambda t: t.above_input_tokens)
    cap = raw.get("max_output_tokens")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise PricingError(f"{key}.max_output_tokens: expected a positive whole number of tokens, got {cap!r}")
    return Price(
        key=key,
        rates=base,
        tiers=tuple(tiers),
        source=source if source is not None else str(raw.get("source", "")),
        as_of=str(raw.get("as_of", "")) if source is None else "",
        note=str(raw.get("note", "")),
        max_output_tokens=cap,
    )


def parse_models(models: Any, *, source: str | None = None) -> dict[str, Price]:
    """``{"provider/model": entry}`` to prices by key, each alias (``aliases:``) a key of its own."""
    if not isinstance(models, dict):
        raise PricingError("models: expected a mapping of provider/model to prices")
    out: dict[str, Price] = {}
    for key, raw in models.items():
        price = parse_entry(key, raw, source=source)
        out[key] = price
        kind = key.split("/", 1)[0]
        for alias in raw.get("aliases") or []:
            out[f"{kind}/{alias}"] = price
    return out


def load_builtin() -> dict[str, Price]:
    """The prices shipped in ``kaixu/pricing/prices.json`` (numbers read as exact decimals)."""
    text = resources.files(__package__).joinpath("prices.json").read_text(encoding="utf-8")
    return parse_models(json.loads(text, parse_float=Fraction)["models"])


def table(overrides: dict[str, Any] | None = None) -> PriceTable:
    """The built-in prices plus a policy's ``pricing:`` section (``{models: {"provider/model": {...}}}``).

    An override replaces the whole built-in entry (its tiers and cache rates included): a negotiated price
    is the operator's complete statement, not a patch on the list price.
    """
    prices = load_builtin()
    models = (overrides or {}).get("models") or {}
    prices.update(parse_models(models, source=POLICY_OVERRIDE))
    return PriceTable(prices)


def rate_fields(rates: Rates) -> dict[str, Fraction]:
    """The rates that are set, by field name (for display and export)."""
    return {name: v for name in RATE_FIELDS if (v := getattr(rates, name)) is not None}
