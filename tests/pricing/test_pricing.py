"""kaixu/pricing: the price list, the one pricing function, the importer and `kaixu prices`.

Costs are hand-computed here from the vendors' per-1M-token prices: a token count times a rate in
USD per 1M tokens is micro-dollars, so each fixture reads as tokens x rate.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from fractions import Fraction
from importlib import resources
from pathlib import Path

import pytest

from kaixu.formats.anthropic import usage_from_anthropic
from kaixu.formats.canonical import Usage
from kaixu.formats.gemini import usage_from_gemini
from kaixu.formats.openai import usage_from_openai
from kaixu.pricing import POLICY_OVERRIDE, RATE_FIELDS, PricingError, cost_micros, parse_models, table
from kaixu.pricing.litellm import convert

PRICES = table()


def cost(kind: str, model: str, usage: Usage) -> int | None:
    return cost_micros(PRICES.lookup(kind, model), usage)


# --- one fixture per wire format ---------------------------------------------------------


def test_openai_cached_and_reasoning_tokens_are_inside_prompt_and_completion():
    usage = usage_from_openai(
        {
            "prompt_tokens": 10_000,
            "completion_tokens": 2_000,
            "prompt_tokens_details": {"cached_tokens": 4_000},
            "completion_tokens_details": {"reasoning_tokens": 500},
        }
    )
    # 6,000 uncached x 0.15 + 4,000 cached x 0.075 + 2,000 output (reasoning included) x 0.60
    assert cost("openai", "gpt-4o-mini", usage) == 900 + 300 + 1_200


def test_openai_reasoning_model_bills_reasoning_as_output():
    usage = usage_from_openai(
        {
            "prompt_tokens": 1_000,
            "completion_tokens": 3_000,
            "prompt_tokens_details": {"cached_tokens": 400},
            "completion_tokens_details": {"reasoning_tokens": 2_500},
        }
    )
    # 600 x 15 + 400 x 7.50 + 3,000 x 60
    assert cost("openai", "o1", usage) == 9_000 + 3_000 + 180_000


def test_anthropic_cache_reads_and_writes_are_billed_once_each():
    usage = usage_from_anthropic(
        {
            "input_tokens": 1_000,
            "cache_read_input_tokens": 20_000,
            "cache_creation_input_tokens": 5_000,
            "output_tokens": 800,
        }
    )
    assert usage.input_tokens == 26_000  # canonical input includes the cache tokens
    # 1,000 x 3 + 20,000 x 0.30 + 5,000 x 3.75 (5-minute write) + 800 x 15
    assert cost("anthropic", "claude-sonnet-4-5", usage) == 3_000 + 6_000 + 18_750 + 12_000


def test_anthropic_long_context_tier_counts_cache_reads_toward_200k():
    usage = usage_from_anthropic({"input_tokens": 150_000, "cache_read_input_tokens": 60_000, "output_tokens": 1_000})
    # 210,000 input > 200k: every token at the long-context rates: 150,000 x 6 + 60,000 x 0.60 + 1,000 x 22.50
    assert cost("anthropic", "claude-sonnet-4-5", usage) == 900_000 + 36_000 + 22_500
    at_threshold = usage_from_anthropic({"input_tokens": 200_000, "output_tokens": 1_000})
    assert cost("anthropic", "claude-sonnet-4-5", at_threshold) == 600_000 + 15_000  # not above: base rates


def test_gemini_long_context_tier_with_cache_and_thoughts():
    usage = usage_from_gemini(
        {
            "promptTokenCount": 250_000,
            "cachedContentTokenCount": 50_000,
            "candidatesTokenCount": 1_000,
            "thoughtsTokenCount": 3_000,
        }
    )
    # above 200k: 200,000 x 2.50 + 50,000 x 0.25 + (1,000 + 3,000 thoughts) x 15
    assert cost("gemini", "gemini-2.5-pro", usage) == 500_000 + 12_500 + 60_000


def test_gemini_short_prompt_base_rates():
    usage = usage_from_gemini({"promptTokenCount": 1_000, "candidatesTokenCount": 100, "thoughtsTokenCount": 50})
    assert cost("gemini", "gemini-2.5-pro", usage) == 1_250 + 1_500
    assert cost("gemini", "gemini-2.5-flash", usage) == 300 + 375


def test_embeddings_are_input_only():
    assert cost("openai", "text-embedding-3-small", Usage(input_tokens=1_000)) == 20
    assert cost("openai", "text-embedding-3-small", Usage(input_tokens=1_000, output_tokens=5)) is None


# --- the newer models (docs/pricing.md): one hand-computed fixture each ----------------------


def openai_usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> Usage:
    return usage_from_openai(
        {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
    )


@pytest.mark.parametrize(
    ("model", "usage", "micros"),
    [
        # 6,000 x 1.25 + 4,000 cached x 0.125 + 2,000 output (1,500 of it reasoning) x 10
        ("gpt-5", openai_usage(10_000, 2_000, cached=4_000, reasoning=1_500), 7_500 + 500 + 20_000),
        # 2,000 x 0.25 + 1,000 cached x 0.025 + 500 x 2
        ("gpt-5-mini", openai_usage(3_000, 500, cached=1_000), 500 + 25 + 1_000),
        # 800,000 x 0.05 + 200,000 cached x 0.005 + 100,000 x 0.40
        ("gpt-5-nano", openai_usage(1_000_000, 100_000, cached=200_000), 40_000 + 1_000 + 40_000),
        # 600 x 2 + 400 cached x 0.50 + 3,000 x 8
        ("o3", openai_usage(1_000, 3_000, cached=400, reasoning=2_800), 1_200 + 200 + 24_000),
        # 500 x 1.10 + 500 cached x 0.55 + 1,000 x 4.40
        ("o3-mini", openai_usage(1_000, 1_000, cached=500), 550 + 275 + 4_400),
        # 2,000 x 1.10 + 8,000 cached x 0.275 + 1,000 x 4.40
        ("o4-mini-2025-04-16", openai_usage(10_000, 1_000, cached=8_000), 2_200 + 2_200 + 4_400),
    ],
)
def test_newer_openai_models(model: str, usage: Usage, micros: int):
    assert cost("openai", model, usage) == micros


@pytest.mark.parametrize(
    ("model", "usage", "micros"),
    [
        # 1,000 x 2 + 20,000 reads x 0.10 + 5,000 writes x 2.50 + 800 x 10
        (
            "claude-sonnet-5-5",
            {"input_tokens": 1_000, "cache_read_input_tokens": 20_000, "cache_creation_input_tokens": 5_000,
             "output_tokens": 800},
            2_000 + 2_000 + 12_500 + 8_000,
        ),
        # no long-context tier: 300,000 x 2 + 1,000 x 10
        ("claude-sonnet-5-5", {"input_tokens": 300_000, "output_tokens": 1_000}, 600_000 + 10_000),
        # 1,000 x 2 + 1,000 reads x 0.20 + 100 x 10
        ("claude-sonnet-5", {"input_tokens": 1_000, "cache_read_input_tokens": 1_000, "output_tokens": 100},
         2_000 + 200 + 1_000),
        # 10,000 x 4 + 10,000 reads x 0.20 + 2,000 writes x 5 + 2,000 x 20
        (
            "claude-opus-5-5",
            {"input_tokens": 10_000, "cache_read_input_tokens": 10_000, "cache_creation_input_tokens": 2_000,
             "output_tokens": 2_000},
            40_000 + 2_000 + 10_000 + 40_000,
        ),
        ("claude-opus-5", {"input_tokens": 1_000, "output_tokens": 1_000}, 5_000 + 25_000),
        ("claude-opus-4-8", {"input_tokens": 1_000, "output_tokens": 1_000}, 5_000 + 25_000),
        ("claude-opus-4-7", {"input_tokens": 1_000, "cache_read_input_tokens": 1_000}, 5_000 + 500),
        ("claude-opus-4-6", {"input_tokens": 1_000, "cache_creation_input_tokens": 1_000}, 5_000 + 6_250),
        # 100,000 input with the cache reads: not above 100k, base rates: 90,000 x 0.10 + 10,000 x 0.01 + 1,000 x 0.50
        ("claude-haiku-5-5", {"input_tokens": 90_000, "cache_read_input_tokens": 10_000, "output_tokens": 1_000},
         9_000 + 100 + 500),
        # 101,000 > 100k, every token at the long-prompt rates:
        # 95,000 x 0.50 + 5,000 x 0.05 + 1,000 writes x 0.625 + 1,000 x 2.50
        (
            "claude-haiku-5-5",
            {"input_tokens": 95_000, "cache_read_input_tokens": 5_000, "cache_creation_input_tokens": 1_000,
             "output_tokens": 1_000},
            47_500 + 250 + 625 + 2_500,
        ),
    ],
)  # fmt: skip
def test_newer_anthropic_models(model: str, usage: dict[str, int], micros: int):
    assert cost("anthropic", model, usage_from_anthropic(usage)) == micros


@pytest.mark.parametrize(
    ("kind", "model"),
    [
        ("openai", "o1-preview"),
        ("openai", "o1-mini"),
        ("gemini", "gemini-1.5-pro"),
        ("gemini", "gemini-1.5-flash"),
        ("gemini", "gemini-pro"),
        ("gemini", "gemini-pro-vision"),
        ("openai", "mistral-large"),
    ],
)
def test_models_whose_price_could_not_be_verified_stay_unknown(kind: str, model: str):
    """Seed models retired from the vendors' pages (docs/pricing.md lists them): unknown, never 0."""
    assert PRICES.lookup(kind, model) is None
    assert cost(kind, model, Usage(input_tokens=10, output_tokens=10)) is None


# --- integers, rounding, unknowns ---------------------------------------------------------


def test_result_is_an_int_rounded_half_up_once():
    assert cost("openai", "gpt-4o-mini", Usage(input_tokens=10)) == 2  # 1.5 -> 2
    assert cost("openai", "gpt-4o-mini", Usage(input_tokens=7)) == 1  # 1.05 -> 1
    assert cost("openai", "gpt-4o-mini", Usage(input_tokens=3)) == 0  # 0.45 -> 0
    # one rounding, of the sum: 14 x 0.15 = 2.1 -> 2
    assert cost("openai", "gpt-4o-mini", Usage(input_tokens=7) + Usage(input_tokens=7)) == 2  # 2.1
    result = cost("anthropic", "claude-3-5-haiku-latest", Usage(input_tokens=123_457, output_tokens=9_999))
    assert isinstance(result, int)
    assert result == 98_766 + 39_996  # 98,765.6 + 39,996 = 138,761.6 -> 138,762 (one rounding)


def test_unknown_price_is_none_never_zero():
    assert PRICES.lookup("openai", "no-such-model") is None
    assert cost_micros(None, Usage(input_tokens=10)) is None
    assert cost("openai", "no-such-model", Usage()) is None


def test_zero_usage_of_a_known_model_costs_zero():
    assert cost("openai", "gpt-4o-mini", Usage()) == 0


def test_a_distinct_reasoning_rate_applies_to_reasoning_tokens_only():
    prices = table({"models": {"openai/thinker": {"input": 1, "output": 2, "reasoning": 3}}})
    usage = Usage(input_tokens=10, output_tokens=100, reasoning_tokens=40)
    assert cost_micros(prices.lookup("openai", "thinker"), usage) == 10 + 60 * 2 + 40 * 3


# --- lookup -------------------------------------------------------------------------------


def test_dated_snapshot_falls_back_to_the_model():
    assert PRICES.lookup("openai", "gpt-4o-mini-2024-07-18") is PRICES.lookup("openai", "gpt-4o-mini")
    assert PRICES.lookup("anthropic", "claude-3-5-haiku-20991231") is PRICES.lookup("anthropic", "claude-3-5-haiku")
    assert PRICES.lookup("openai", "gpt-4o-mini-turbo") is None  # only a dated suffix is stripped
    assert PRICES.lookup("anthropic", "gpt-4o-mini") is None  # the provider kind is part of the key


def test_aliases_are_explicit_keys():
    base = PRICES.lookup("anthropic", "claude-3-5-haiku")
    assert base is not None
    assert PRICES.lookup("anthropic", "claude-3-5-haiku-latest") is base
    assert PRICES.lookup("anthropic", "claude-sonnet-4-20250514") is PRICES.lookup("anthropic", "claude-sonnet-4")


def test_the_shipped_policy_models_are_priced_on_the_mock():
    for model in ("gpt-4o-mini", "claude-3-5-haiku-latest", "gemini-2.5-flash", "mock-fast", "text-embedding-3-small"):
        assert PRICES.lookup("mock", model) is not None, model


SEED_MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("openai", "gpt-4"),
    ("openai", "gpt-4-turbo"),
    ("openai", "gpt-3.5-turbo"),
    ("gemini", "gemini-2.5-pro"),
    ("gemini", "gemini-2.5-flash"),
    ("anthropic", "claude-3-5-sonnet-20241022"),
    ("anthropic", "claude-3-sonnet-20240229"),
    ("anthropic", "claude-3-opus-20240229"),
    ("anthropic", "claude-3-haiku-20240307"),
    ("anthropic", "claude-3-5-sonnet"),
]


@pytest.mark.parametrize(("kind", "model"), SEED_MODELS)
def test_seed_models_are_priced(kind, model):
    assert PRICES.lookup(kind, model) is not None


# --- policy overrides ---------------------------------------------------------------------


def test_policy_override_replaces_the_entry():
    prices = table({"models": {"openai/gpt-4o-mini": {"input": 1, "output": 2}}})
    price = prices.lookup("openai", "gpt-4o-mini")
    assert price is not None
    assert price.source == POLICY_OVERRIDE
    # no cached rate in the override: cached tokens pay the input rate
    assert cost_micros(price, Usage(input_tokens=100, cached_input_tokens=50, output_tokens=10)) == 100 + 20
    assert table().lookup("openai", "gpt-4o-mini") != price  # the built-in table is untouched


@pytest.mark.parametrize(
    "entry",
    [{"input": -1}, {"output": 1}, {"input": 1, "bogus": 2}, {"input": "cheap"}, {"input": 1, "tiers": [{"input": 2}]}],
)
def test_a_bad_override_is_an_error(entry):
    with pytest.raises(PricingError):
        table({"models": {"openai/x": entry}})


# --- the data file ------------------------------------------------------------------------


def raw_entries() -> dict[str, dict]:
    text = resources.files("kaixu.pricing").joinpath("prices.json").read_text(encoding="utf-8")
    return json.loads(text, parse_float=Fraction)["models"]


def test_every_entry_has_source_as_of_and_non_negative_prices():
    entries = raw_entries()
    assert len(entries) >= 30
    for key, entry in entries.items():
        kind, _, model = key.partition("/")
        assert kind in {"openai", "anthropic", "gemini", "mock"} and model, key
        assert isinstance(entry["source"], str) and entry["source"].startswith("https://"), key
        datetime.date.fromisoformat(entry["as_of"])
        assert "input" in entry, key
        rates = [entry[f] for f in RATE_FIELDS if f in entry]
        for tier in entry.get("tiers", []):
            assert tier["above_input_tokens"] > 0
            rates += [tier[f] for f in RATE_FIELDS if f in tier]
        assert all(rate >= 0 for rate in rates), key


def test_mock_entries_copy_their_vendor_prices():
    entries = raw_entries()
    pairs = {
        "gpt-4o-mini": "openai/gpt-4o-mini",
        "claude-3-5-haiku-latest": "anthropic/claude-3-5-haiku",
        "gemini-2.5-flash": "gemini/gemini-2.5-flash",
        "text-embedding-3-small": "openai/text-embedding-3-small",
    }
    for model, vendor in pairs.items():
        mock, real = entries[f"mock/{model}"], entries[vendor]
        assert {f: mock.get(f) for f in RATE_FIELDS} == {f: real.get(f) for f in RATE_FIELDS}, model


# --- LiteLLM import -----------------------------------------------------------------------

LITELLM = {
    "sample_spec": {"max_tokens": "LEGACY", "input_cost_per_token": 0.0, "litellm_provider": "one of ..."},
    "gpt-4o-mini": {
        "input_cost_per_token": 1.5e-07,
        "output_cost_per_token": 6e-07,
        "cache_read_input_token_cost": 7.5e-08,
        "litellm_provider": "openai",
        "mode": "chat",
    },
    "claude-sonnet-4-5": {
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.5e-05,
        "cache_read_input_token_cost": 3e-07,
        "cache_creation_input_token_cost": 3.75e-06,
        "cache_creation_input_token_cost_above_1hr": 6e-06,
        "input_cost_per_token_above_200k_tokens": 6e-06,
        "output_cost_per_token_above_200k_tokens": 2.25e-05,
        "litellm_provider": "anthropic",
        "mode": "chat",
    },
    "gemini/gemini-2.5-pro": {
        "input_cost_per_token": 1.25e-06,
        "output_cost_per_token": 1e-05,
        "input_cost_per_token_above_200k_tokens": 2.5e-06,
        "output_cost_per_token_above_200k_tokens": 1.5e-05,
        "litellm_provider": "gemini",
        "mode": "chat",
    },
    "text-embedding-3-small": {
        "input_cost_per_token": 2e-08,
        "output_cost_per_token": 0.0,
        "litellm_provider": "openai",
        "mode": "embedding",
    },
    "dall-e-3": {"input_cost_per_pixel": 1e-08, "litellm_provider": "openai", "mode": "image_generation"},
    "vertex_ai/gemini-2.5-pro": {"input_cost_per_token": 1.25e-06, "litellm_provider": "vertex_ai", "mode": "chat"},
}


def test_litellm_import_converts_per_token_to_per_million():
    models = convert(LITELLM, "2026-12-01")["models"]
    assert sorted(models) == [
        "anthropic/claude-sonnet-4-5",
        "gemini/gemini-2.5-pro",
        "openai/gpt-4o-mini",
        "openai/text-embedding-3-small",
    ]
    assert models["openai/gpt-4o-mini"]["input"] == 0.15
    assert models["openai/gpt-4o-mini"]["cached_input"] == 0.075
    claude = models["anthropic/claude-sonnet-4-5"]
    assert (claude["cache_write_5m"], claude["cache_write_1h"]) == (3.75, 6)
    assert claude["tiers"] == [{"above_input_tokens": 200_000, "input": 6, "output": 22.5}]
    assert "output" not in models["openai/text-embedding-3-small"]
    assert all(m["as_of"] == "2026-12-01" and m["source"].startswith("https://") for m in models.values())
    # what it writes is kaixu's format: it loads and prices like the shipped file
    imported = parse_models(json.loads(json.dumps(models), parse_float=Fraction))
    usage = usage_from_gemini({"promptTokenCount": 250_000, "candidatesTokenCount": 1_000})
    assert cost_micros(imported["gemini/gemini-2.5-pro"], usage) == 625_000 + 15_000
    assert cost_micros(imported["gemini/gemini-2.5-pro"], usage) == cost("gemini", "gemini-2.5-pro", usage)


# --- the CLI ------------------------------------------------------------------------------


def kaixu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kaixu", *args], capture_output=True, text=True, timeout=60)


def test_cli_prices_show_names_the_source():
    done = kaixu("prices", "show", "gpt-4o-mini-2024-07-18", "--provider", "openai")
    assert done.returncode == 0, done.stderr
    assert "openai/gpt-4o-mini" in done.stdout
    assert "https://developers.openai.com/api/docs/pricing (as of " in done.stdout
    assert "cached_input: 0.075" in done.stdout


def test_cli_prices_show_every_provider_and_tiers():
    done = kaixu("prices", "show", "gemini-2.5-pro")
    assert done.returncode == 0, done.stderr
    assert "gemini/gemini-2.5-pro" in done.stdout
    assert "above 200000 input tokens:" in done.stdout


def test_cli_prices_show_policy_override(tmp_path: Path):
    overrides = tmp_path / "pricing.yaml"
    overrides.write_text("models:\n  openai/gpt-4o-mini: {input: 0.1, output: 0.4}\n")
    done = kaixu("prices", "show", "gpt-4o-mini", "--provider", "openai", "--overrides", str(overrides))
    assert done.returncode == 0, done.stderr
    assert "from policy override" in done.stdout
    assert "input: 0.1\n" in done.stdout


def test_cli_prices_show_unknown_model_fails():
    done = kaixu("prices", "show", "no-such-model")
    assert done.returncode == 1
    assert "no price for no-such-model" in done.stderr


def test_cli_prices_import(tmp_path: Path):
    source = tmp_path / "model_prices_and_context_window.json"
    source.write_text(json.dumps(LITELLM))
    out = tmp_path / "prices.json"
    done = kaixu("prices", "import", str(source), "--out", str(out), "--as-of", "2026-12-01")
    assert done.returncode == 0, done.stderr
    written = json.loads(out.read_text())
    assert written == convert(LITELLM, "2026-12-01")
    to_stdout = kaixu("prices", "import", str(source), "--as-of", "2026-12-01")
    assert json.loads(to_stdout.stdout) == written


def test_the_integer_fast_path_is_the_exact_fraction_sum() -> None:
    """`cost_micros` sums integers when every rate is whole at `SCALE`: for every built-in price and many usages
    it must give what the definition gives (exact Fractions, half up once), and fall back when a rate is not."""
    import dataclasses
    import random
    from fractions import Fraction

    from kaixu.pricing import SCALE, Price, Rates, load_builtin

    def by_definition(rates: Rates, usage: Usage) -> int | None:
        slow = dataclasses.replace(rates)
        object.__setattr__(slow, "scaled", None)  # force the Fraction path
        return cost_micros(dataclasses.replace(price, rates=slow, tiers=()), usage)

    rng = random.Random(7)
    prices = list(load_builtin().values())
    assert all(p.rates.scaled is not None for p in prices)  # every shipped price takes the fast path
    for price in prices:
        for _ in range(50):
            inputs, outputs = rng.randrange(0, 3_000_000), rng.randrange(0, 200_000)
            usage = Usage(
                inputs, outputs, rng.randrange(0, inputs + 1), rng.randrange(0, 1000), rng.randrange(0, outputs + 1)
            )
            rates = price.rates_for(usage.input_tokens)
            assert cost_micros(dataclasses.replace(price, tiers=(), rates=rates), usage) == by_definition(rates, usage)
    odd = Rates(input=Fraction(1, 3), output=Fraction(2, 7))
    assert odd.scaled is None and (Fraction(1, 3) * SCALE).denominator != 1
    assert cost_micros(Price("x/y", odd), Usage(3_000_000, 7_000_000)) == 1_000_000 + 2_000_000
