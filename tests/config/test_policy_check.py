"""`kaixu check` and the policy loader: every problem at once, honest warnings, the YAML traps, JSON words.

The loader is exercised through `kaixu.config.parse_policy` (what `kaixu run`, hot reload and `kaixu check` all
call) and through `kaixu check` as a subprocess, which is what an operator reads.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from kaixu.config import PolicyError, Problem, parse_policy
from kaixu.config.policy import NOT_ENFORCED, Budget, Customer, Org, RateLimits, Team, VirtualKey, usd_micros
from tests.fakes.provider import FakeProvider
from tests.harness import TEST_KEY, Kaixu, key_hash, ledger_row, policy_for, wait_for

HASH = "sha256:" + "a" * 64
OTHER_HASH = "sha256:" + "b" * 64

BASE = """\
providers:
  mock: {kind: mock}
models:
  fast:
    route: [{provider: mock}]
"""


def problems_of(text: str) -> list[Problem]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    return info.value.problems


def lines_of(text: str) -> list[str]:
    return [str(problem) for problem in problems_of(text)]


def check(workdir: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = workdir / "proxy.yaml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "kaixu", "check", str(path)], capture_output=True, text=True, timeout=60
    )


# --- every problem, in one run ---------------------------------------------------------------------------


SCHEMA_AND_REFERENCE = """\
providers:
  mock: {kind: mock}
models:
  fast:
    route: [{provider: nowhere}]
keys:
  - {name: k, hash: "md5:abc"}
"""


def test_a_schema_error_and_a_cross_reference_error_are_both_listed() -> None:
    assert lines_of(SCHEMA_AND_REFERENCE) == [
        "line 5: models.fast.route[0].provider: unknown provider 'nowhere'",
        "line 7: keys[0].hash: 'md5:abc' does not match '^sha256:[0-9a-fA-F]{64}$'",
    ]


def test_kaixu_check_prints_both(workdir: Path) -> None:
    result = check(workdir, SCHEMA_AND_REFERENCE)
    assert result.returncode == 1
    assert "2 problems" in result.stderr
    assert "line 5: models.fast.route[0].provider: unknown provider 'nowhere'" in result.stderr
    assert "line 7: keys[0].hash" in result.stderr


def test_problems_in_different_sections_are_all_listed_in_file_order() -> None:
    text = (
        "providers:\n  mock: {kind: mock, colour: red}\n"
        "models:\n  fast: {route: [{provider: mock}], fallbacks: [nothing]}\n"
        "keys:\n  - {name: k, hash: " + HASH + ", team: ghosts}\n"
        "default_model: slow\n"
    )
    assert lines_of(text) == [
        "line 2: providers.mock.colour: unknown field",
        "line 4: models.fast.fallbacks[0]: unknown model 'nothing'",
        "line 6: keys[0].team: unknown team 'ghosts'",
        "line 7: default_model: unknown model 'slow'",
    ]


def test_a_provider_the_schema_rejects_is_not_also_called_unknown() -> None:
    text = "providers:\n  openai: {kind: openia}\nmodels:\n  m: {route: [{provider: openai}]}\n"
    assert lines_of(text) == [
        'line 2: providers.openai.kind: must be one of "openai", "anthropic", "gemini", "mock", "claude-cli", '
        'got "openia"'
    ]


def test_wrongly_typed_sections_do_not_stop_the_other_checks() -> None:
    text = "providers: [mock]\nmodels:\n  m: {route: [{provider: mock}]}\nkeys: {name: k}\nteams: 5\n"
    assert lines_of(text) == [
        "line 1: providers: must be an object, got array",
        "line 3: models.m.route[0].provider: unknown provider 'mock'",
        "line 4: keys: must be an array, got object",
        "line 5: teams: must be an object, got number",
    ]


# --- fields accepted but not enforced yet -----------------------------------------------------------------


UNENFORCED = """\
providers:
  mock: {kind: mock}
models:
  fast:
    route: [{provider: mock}]
  smart:
    route: [{provider: mock}]
    fallbacks: [fast]
retries:
  attempts: 3
  on_status: [429, 503]
teams:
  growth:
    budget: {usd: 500, period: month}
    limits: {rpm: 600}
    models: [fast]
keys:
  - {name: web, hash: "HASH", team: growth, limits: {rpm: 60}}
policies:
  - name: no-o1
    match: {team: growth}
    deny_models: ["o1*"]
""".replace("HASH", HASH)


def test_every_field_of_this_version_is_enforced_so_none_is_warned_about() -> None:
    policy = parse_policy(UNENFORCED)
    assert (
        list(policy.warnings) == []
    )  # retries and fallbacks: tests/reliability/test_reliability.py; the rest: governance
    assert NOT_ENFORCED == "accepted but not enforced yet by this version"
    smart = policy.models["smart"]
    assert (smart.fallbacks, smart.retries.attempts, smart.retries.on_status) == (("fast",), 3, {429, 503})


def test_kaixu_check_prints_warnings_with_their_line(workdir: Path) -> None:
    result = check(workdir, UNENFORCED.replace("providers:\n", "providers:\n  idle: {kind: mock}\n", 1))
    assert result.returncode == 0, result.stderr
    assert "warning: line" in result.stdout and "providers.idle: no model routes to this provider" in result.stdout
    assert NOT_ENFORCED not in result.stdout and "keys[0].limits" not in result.stdout


def test_kaixu_run_logs_the_warnings(fake: FakeProvider, workdir: Path) -> None:
    policy = policy_for(fake.base_url)
    policy["providers"]["idle"] = {"kind": "mock"}
    gateway = Kaixu(workdir, policy).start()
    try:
        wait_for(lambda: "providers.idle: no model routes to this provider" in gateway.log(), 10, "the warning")
        assert "WARNING kaixu.config: policy: line" in gateway.log()
    finally:
        gateway.stop()


def test_a_policy_without_those_fields_has_no_such_warning() -> None:
    assert not [w for w in parse_policy(BASE).warnings if NOT_ENFORCED in w]


# --- policies: a real item schema --------------------------------------------------------------------------


def test_a_complete_policies_entry_is_accepted() -> None:
    text = BASE + (
        "teams: {growth: {}}\n"
        "keys:\n  - {name: web, hash: " + HASH + ", team: growth}\n"
        "policies:\n"
        "  - name: caps\n"
        "    match: {team: growth, key: web, app: shop, project: checkout}\n"
        "    allow_models: [fast, 'gpt-4o*']\n"
        "    deny_models: ['o1*']\n"
        "    max_tokens_per_request: 4000\n"
        "    on_max_tokens: clamp\n"
        "    max_cost_per_day: {usd: 20}\n"
        "    enforce: false\n"
    )
    assert parse_policy(text).warnings == ()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("{match: {team: growth}}", "policies[0]: 'name' is required"),
        ("{name: p, colour: red}", "policies[0].colour: unknown field"),
        ("{name: p, match: {org: acme}}", "policies[0].match.org: unknown field"),
        ("{name: p, allow_models: fast}", "policies[0].allow_models: must be an array, got string"),
        ("{name: p, deny_models: [5]}", "policies[0].deny_models[0]: must be a string, got number"),
        ("{name: p, max_tokens_per_request: 0}", "policies[0].max_tokens_per_request: 0 is less than the minimum of 1"),
        ("{name: p, on_max_tokens: truncate}", 'policies[0].on_max_tokens: must be one of "reject", "clamp"'),
        ("{name: p, max_cost_per_day: {gbp: 5}}", "policies[0].max_cost_per_day.gbp: unknown field"),
        ("{name: p, max_cost_per_day: {usd: -1}}", "policies[0].max_cost_per_day.usd: -1 is less than the minimum"),
        ("{name: p, max_cost_per_day: {usd: 1, eur: 1}}", "policies[0].max_cost_per_day: must have at most 1 field"),
        ("{name: p, enforce: maybe}", "policies[0].enforce: must be a boolean, got string"),
        ("{name: p, match: {team: ghosts}}", "policies[0].match.team: unknown team 'ghosts'"),
        ("{name: p, match: {key: nobody}}", "policies[0].match.key: unknown key name 'nobody'"),
    ],
)
def test_policies_entries_are_validated(entry: str, expected: str) -> None:
    text = BASE + "teams: {growth: {}}\npolicies:\n  - " + entry + "\n"
    assert any(expected in line for line in lines_of(text)), lines_of(text)


def test_team_budget_fields_are_checked() -> None:
    text = BASE + "teams:\n  growth: {budget: {usd: 5, period: month, monthly_eur: 5}}\n"
    assert lines_of(text) == ["line 7: teams.growth.budget.monthly_eur: unknown field"]


# --- the YAML boolean-key trap ------------------------------------------------------------------------------


def test_retries_on_is_refused_as_the_yaml_boolean_trap() -> None:
    text = BASE + "retries:\n  attempts: 2\n  on: [429]\n"
    lines = lines_of(text)
    assert lines[0] == (
        "line 8: retries.on: YAML reads the unquoted key on as the boolean true, not as the text 'on': "
        'quote it ("on": ...) if you mean the name'
    )
    # quoted, it is the text "on": no longer a field of retries (the status list is on_status)
    assert lines_of(BASE + 'retries:\n  "on": [429]\n') == ["line 7: retries.on: unknown field"]


@pytest.mark.parametrize("key", ["yes", "No", "off", "TRUE", "false"])
def test_a_boolean_key_anywhere_is_refused(key: str) -> None:
    text = BASE + f"  {key}:\n    route: [{{provider: mock}}]\n"
    assert lines_of(text) == [
        f"line 6: models.{key}: YAML reads the unquoted key {key} as the boolean "
        f"{str(key.lower() in ('yes', 'on', 'true')).lower()}, not as the text {key!r}: "
        f'quote it ("{key}": ...) if you mean the name'
    ]


def test_a_quoted_boolean_word_is_an_ordinary_name() -> None:
    policy = parse_policy(BASE + '  "on":\n    route: [{provider: mock}]\n')
    assert policy.resolve_model("on") is not None


def test_retries_on_status_is_the_status_list() -> None:
    policy = parse_policy(BASE + "retries: {attempts: 2, on_status: [429, 503]}\n")
    assert policy.raw["retries"]["on_status"] == [429, 503]
    assert "on_status" in lines_of(BASE + "retries: {on_status: [200]}\n")[0]


def test_translation_unsupported_is_drop_unless_the_policy_says_reject() -> None:
    assert parse_policy(BASE).translation.unsupported == "drop"
    assert parse_policy(BASE + "translation: {unsupported: reject}\n").translation.unsupported == "reject"
    [problem] = lines_of(BASE + "translation: {unsupported: ignore}\n")
    assert problem == 'line 6: translation.unsupported: must be one of "drop", "reject", got "ignore"'


# --- messages in JSON's words, never Python's ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE + "teams:\n  growth:\n", "line 7: teams.growth: must be an object, got nothing (null)"),
        (BASE + "limits: {max_body_bytes: big}\n", "line 6: limits.max_body_bytes: must be an integer, got string"),
        (BASE + "auth: {byok: 1}\n", "line 6: auth.byok: must be a boolean, got number"),
        (BASE + "version: 2\n", "line 6: version: must be 1, got 2"),
        (BASE + "keys:\n  - {name: k, hash: " + HASH + ", models: {a: 1}}\n", "must be an array, got object"),
    ],
)
def test_type_problems_use_json_type_names(text: str, expected: str) -> None:
    lines = lines_of(text)
    assert any(expected in line for line in lines), lines
    for python_word in ("None", "NoneType", "dict", "'list'", "True", "False"):
        assert all(python_word not in line for line in lines), lines


# --- governance: the policy's shape (issue 11), parsed and validated, not enforced yet ----------------------


GOVERNANCE = """\
providers:
  mock: {kind: mock}
models:
  fast:
    route: [{provider: mock}]
keys:
  - {name: web-app, hash: "HASH", team: growth, customer: acme,
     budget: {usd: 50, period: month}, limits: {rpm: 60, tpm: 100000, max_parallel: 8},
     models: ["gpt-4o*"], seats: 3, expires: 2027-06-30}
teams:  {growth: {org: acme, budget: {usd: 500, period: month}, limits: {rpm: 600}, models: ["gpt-4o*"]}}
orgs:   {acme: {budget: {usd: 2000.5, period: total, timezone: Europe/Paris}}}
customers: {default: {budget: {usd: 0.1, period: day}}, big-co: {limits: {tpm: 5000}}}
clients:   {limits: {rpm: 60}}
""".replace("HASH", HASH)


def test_the_issues_shape_becomes_typed_records() -> None:
    policy = parse_policy(GOVERNANCE)
    assert policy.keys["a" * 64] == VirtualKey(
        "web-app",
        "a" * 64,
        "growth",
        ("gpt-4o*",),
        customer="acme",
        budget=Budget(50_000_000, "month"),
        limits=RateLimits(rpm=60, tpm=100_000, max_parallel=8),
        seats=3,
        expires=datetime.date(2027, 6, 30),
    )
    assert policy.teams == {
        "growth": Team("growth", "acme", Budget(500_000_000, "month", "UTC"), RateLimits(rpm=600), ("gpt-4o*",))
    }
    assert policy.orgs == {"acme": Org("acme", Budget(2_000_500_000, "total", "Europe/Paris"))}
    assert policy.customers == {
        "default": Customer("default", Budget(100_000, "day")),
        "big-co": Customer("big-co", None, RateLimits(tpm=5000)),
    }
    assert policy.clients == RateLimits(rpm=60)


def test_the_governance_fields_are_enforced_so_not_warned_about() -> None:
    assert list(parse_policy(GOVERNANCE).warnings) == []


def test_kaixu_check_accepts_the_shape_without_warnings(workdir: Path) -> None:
    result = check(workdir, GOVERNANCE)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stdout


def test_a_policy_key_without_the_new_fields_is_what_it_was() -> None:
    policy = parse_policy(BASE + "keys:\n  - {name: k, hash: " + HASH + "}\n")
    assert policy.keys["a" * 64] == VirtualKey("k", "a" * 64)
    assert (policy.teams, policy.orgs, policy.customers, policy.clients) == ({}, {}, {}, None)


@pytest.mark.parametrize(
    ("usd", "micros"),
    [("0", 0), ("50", 50_000_000), ("0.1", 100_000), ("19.99", 19_990_000), ("0.000001", 1), ("1.0e+3", 1_000_000_000)],
)
def test_usd_amounts_are_exact_micro_dollars(usd: str, micros: int) -> None:
    assert usd_micros(float(usd)) == micros
    policy = parse_policy(BASE + f"orgs: {{acme: {{budget: {{usd: {usd}, period: day}}}}}}\n")
    assert policy.orgs["acme"].budget == Budget(micros, "day")


def test_a_fraction_of_a_micro_dollar_is_refused() -> None:
    with pytest.raises(ValueError):
        usd_micros(0.0000005)
    assert lines_of(BASE + "orgs: {acme: {budget: {usd: 1.0000005, period: day}}}\n") == [
        "line 6: orgs.acme.budget.usd: 1.0000005 USD is not a whole number of micro-dollars (at most 6 decimals)"
    ]


KEY = "keys:\n  - {name: k, hash: " + HASH + ", "


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (KEY + "budget: {usd: 5}}\n", "line 7: keys[0].budget: 'period' is required"),
        (KEY + "budget: {period: day}}\n", "line 7: keys[0].budget: 'usd' is required"),
        (KEY + "budget: {usd: 5, period: year}}\n", 'line 7: keys[0].budget.period: must be one of "day", "week", '),
        (KEY + "budget: {usd: -1, period: day}}\n", "line 7: keys[0].budget.usd: -1 is less than the minimum of 0"),
        (KEY + "budget: {usd: five, period: day}}\n", "line 7: keys[0].budget.usd: must be a number, got string"),
        (KEY + "budget: {usd: 5, period: day, eur: 1}}\n", "line 7: keys[0].budget.eur: unknown field"),
        (KEY + "limits: {rpm: 0}}\n", "line 7: keys[0].limits.rpm: 0 is less than the minimum of 1"),
        (KEY + "limits: {tpm: 1.5}}\n", "line 7: keys[0].limits.tpm: must be an integer, got number"),
        (KEY + "limits: {max_parallel: 0}}\n", "line 7: keys[0].limits.max_parallel: 0 is less than the minimum"),
        (KEY + "seats: 0}\n", "line 7: keys[0].seats: 0 is less than the minimum of 1"),
        (KEY + "seats: 2.5}\n", "line 7: keys[0].seats: must be an integer, got number"),
        (KEY + "expires: 30d}\n", "line 7: keys[0].expires: '30d' does not match"),
        (KEY + "expires: 2027-02-30}\n", "line 7: keys[0].expires: '2027-02-30' is not a date"),
        (KEY + "expires: 2027-06-30T12:00:00}\n", "line 7: keys[0].expires: '2027-06-30T12:00:00' does not match"),
        (KEY + "customer: default}\n", "line 7: keys[0].customer: 'default' means every customer not named"),
        (KEY + "customer: ''}\n", "line 7: keys[0].customer: '' should be non-empty"),
        ("teams: {growth: {org: nowhere}}\n", "line 6: teams.growth.org: unknown org 'nowhere'"),
        (
            "teams: {growth: {budget: {usd: 1, period: week, timezone: Mars/Base}}}\n",
            "line 6: teams.growth.budget.timezone: unknown time zone 'Mars/Base'",
        ),
        ("orgs: {acme: {limits: {rpm: 5}}}\n", "line 6: orgs.acme.limits: unknown field"),
        ("orgs: {acme: {budget: 5}}\n", "line 6: orgs.acme.budget: must be an object, got number"),
        ("customers: {default: {seats: 0}}\n", "line 6: customers.default.seats: 0 is less than the minimum of 1"),
        ("customers: {'': {budget: {usd: 1, period: day}}}\n", "line 6: customers: '' should be non-empty"),
        ("clients: {budget: {usd: 1, period: day}}\n", "line 6: clients.budget: unknown field"),
        ("clients: {limits: {rpm: -5}}\n", "line 6: clients.limits.rpm: -5 is less than the minimum of 1"),
    ],
)
def test_each_wrong_governance_value_is_a_problem_with_its_line(text: str, expected: str) -> None:
    lines = lines_of(BASE + text)
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_monthly_usd_is_refused_with_its_new_spelling(workdir: Path) -> None:
    text = BASE + "teams:\n  growth:\n    budget: {monthly_usd: 500}\n"
    assert lines_of(text) == [
        "line 8: teams.growth.budget.monthly_usd: renamed: write budget: {usd: 500, period: month}"
    ]
    result = check(workdir, text)
    assert result.returncode == 1
    assert "line 8: teams.growth.budget.monthly_usd: renamed: write budget: {usd: 500, period: month}" in result.stderr


def test_concurrency_is_refused_with_its_new_name() -> None:
    text = BASE + "teams:\n  growth: {limits: {rpm: 5, concurrency: 4}}\n" + KEY + "limits: {concurrency: 2}}\n"
    assert lines_of(text) == [
        "line 7: teams.growth.limits.concurrency: renamed: write max_parallel: 4",
        "line 9: keys[0].limits.concurrency: renamed: write max_parallel: 2",
    ]


def test_an_unquoted_date_elsewhere_is_its_text() -> None:
    text = BASE.replace("route: [{provider: mock}]", "route: [{provider: mock, model: 2025-01-01}]")
    assert parse_policy(text).resolve_model("fast").targets[0].model == "2025-01-01"  # type: ignore[union-attr]


def test_a_policy_keys_customer_is_the_ledgers_customer(fake: FakeProvider, workdir: Path) -> None:
    """Why `keys[].customer` is not warned about: it is read, as a store key's is (kaixu/request_facts.py)."""
    keys = [{"name": "acme-app", "hash": key_hash(TEST_KEY), "customer": "acme"}]
    policy = policy_for(fake.base_url, store={"sqlite": str(workdir / "ledger.db")}, keys=keys)
    gateway = Kaixu(workdir, policy).start()
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        row = ledger_row(gateway, raw.headers["x-kaixu-request-id"])
        assert (row["key_name"], row["customer"]) == ("acme-app", "acme")
    finally:
        gateway.stop()


def test_the_console_without_admin_keys_is_warned_about() -> None:
    console = UNENFORCED + "\nui: {enabled: true}\n"
    warned = "ui.enabled: the console is on but admin_keys is empty: nobody can sign in"
    assert [w.split(": ", 1)[1] for w in parse_policy(console).warnings] == [warned]
    admins = console + 'admin_keys: [{name: ops, hash: "sha256:' + "9" * 64 + '"}]\n'
    assert not [w for w in parse_policy(admins).warnings if "console" in w]


FORWARD_KEY = 'keys: [{name: app, hash: "sha256:' + "0" * 64 + '"}]\n'


def test_forward_listeners_and_their_section() -> None:
    text = BASE + FORWARD_KEY + "listen: [{port: 4000}, {host: 127.0.0.2, port: 8080, mode: forward}]\n"
    text += "forward: {intercept_hosts: [LLM.Example.test], others: deny, credentials: replace, "
    text += "clients: [{address: 10.1.0.0/16, key: app}]}\n"
    policy = parse_policy(text)
    assert (policy.listen, policy.forward_listen) == ((("127.0.0.1", 4000),), (("127.0.0.2", 8080),))
    assert policy.forward.intercept_hosts == {"llm.example.test"} and policy.forward.others == "deny"
    assert policy.forward.client_key("10.1.2.3").name == "app"  # type: ignore[union-attr]
    assert policy.forward.client_key("::ffff:10.1.2.3").name == "app"  # type: ignore[union-attr]
    assert policy.forward.client_key("10.2.0.1") is None
    assert policy.warnings == ()
    only_forward = parse_policy(BASE + "listen: [{port: 8080, mode: forward}]\n")
    assert only_forward.listen == () and only_forward.forward_listen == (("127.0.0.1", 8080),)  # no reverse added


def test_forward_problems_and_warnings() -> None:
    found = lines_of(BASE + FORWARD_KEY + "forward: {clients: [{address: not-an-ip, key: nobody}]}\n")
    assert any("forward.clients[0].key: unknown key name 'nobody'" in line for line in found)
    assert any("forward.clients[0].address: not an address" in line for line in found)
    assert any("forward.intercept_hosts" in line for line in lines_of(BASE + "forward: {intercept_hosts: ['a b']}\n"))
    warned = parse_policy(BASE + FORWARD_KEY + "forward: {clients: [{address: 10.0.0.1, key: app}]}\n").warnings
    assert any("no listener has mode: forward" in w for w in warned)
    assert any("forward.clients: read only under forward.credentials: replace" in w for w in warned)


def test_claude_cli_fields_go_with_their_kind() -> None:
    text = (
        "providers:\n"
        "  agent: {kind: claude-cli, base_url: 'http://x', model: claude-x}\n"
        "  oai: {kind: openai, api_key: k, tools: [Read]}\n"
        "models:\n  m: {route: [{provider: agent}, {provider: oai}]}\n"
    )
    assert lines_of(text) == [
        "line 2: providers.agent: 'allowed_roots' is required",
        "line 2: providers.agent.base_url: a claude-cli provider takes none",
        "line 3: providers.oai.tools: only a claude-cli provider takes it",
    ]
