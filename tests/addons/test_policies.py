"""`policies:` (step 4, kaixu/addons/caller_rules.py): allowed and denied models, tokens per request (reject or clamp),
matches by team, key, app and project, shadow mode, refused in every front door's shape and never forwarded.

Real clients (the openai and anthropic SDKs, httpx on Pulse's `POST /api/ai/request`) against a real kaixu and
the fake provider, which records what it was sent: a refusal must leave it with no request at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from kaixu.config import parse_policy
from kaixu.config.policy import NOT_ENFORCED
from tests import scrape
from tests.config.test_policy_check import check
from tests.fakes.provider import FakeProvider
from tests.harness import Kaixu, key_hash, ledger_row, policy_for, wait_for

GROWTH, CAPPED, CLAMPED, SHADOW, PLAIN = "sk-growth", "sk-capped", "sk-clamped", "sk-shadow", "sk-plain"
NARROW = "sk-narrow"
PULSE = "/api/ai/request"
CAP = 60

POLICIES: list[dict[str, Any]] = [
    {"name": "Production Policy", "match": {"team": "growth"}, "allow_models": ["gpt-4*", "claude-*"],
     "deny_models": ["gpt-4"]},
    {"name": "Token cap", "match": {"key": "capped"}, "max_tokens_per_request": CAP},
    {"name": "Token clamp", "match": {"key": "clamped"}, "max_tokens_per_request": CAP, "on_max_tokens": "clamp"},
    {"name": "Billing app", "match": {"app": "billing"}, "deny_models": ["claude-*"]},
    {"name": "Secret project", "match": {"project": "p-secret", "key": "plain"}, "deny_models": ["gpt-4o*"]},
    {"name": "Shadow", "match": {"key": "shadowed"}, "deny_models": ["gpt-4o-mini"], "enforce": False},
    {"name": "Everyone", "deny_models": ["mock-model"]},
]  # fmt: skip


@pytest.fixture(scope="module")
def gateway(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    work = tmp_path_factory.mktemp("policies")
    teams = {"growth": {}, "narrow": {"models": ["gpt-4o-mini", "claude-test", "mock-model"]}}
    policy = policy_for(fake.base_url, store={"sqlite": str(work / "ledger.db")}, teams=teams, policies=POLICIES)
    policy["models"]["gpt-4"] = {"route": [{"provider": "oai"}]}
    policy["keys"] += [
        {"name": "growth", "hash": key_hash(GROWTH), "team": "growth"},
        {"name": "capped", "hash": key_hash(CAPPED)},
        {"name": "clamped", "hash": key_hash(CLAMPED)},
        {"name": "shadowed", "hash": key_hash(SHADOW)},
        {"name": "plain", "hash": key_hash(PLAIN)},
        {"name": "narrowed", "hash": key_hash(NARROW), "team": "narrow"},
    ]
    kaixu = Kaixu(work, policy).start()
    yield kaixu
    kaixu.stop()


def pulse(gateway: Kaixu, key: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(gateway.url + PULSE, json=body, headers={"x-pulse-key": key, **(headers or {})})


def oai(gateway: Kaixu, key: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, default_headers=headers)


def claude(gateway: Kaixu, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


HI = [{"role": "user", "content": "hi"}]


# --- allowed and denied models -----------------------------------------------------------------------------


def test_a_denied_model_is_refused_with_pulses_reason_and_never_forwarded(gateway: Kaixu, fake: FakeProvider) -> None:
    response = pulse(gateway, GROWTH, {"model": "gpt-4", "prompt": "hi", "teamId": "t"})
    assert response.status_code == 403
    request_id = response.headers["x-kaixu-request-id"]
    assert response.json() == {
        "success": False,
        "error": 'Model gpt-4 is blocked by policy "Production Policy"',
        "request_id": request_id,
    }
    assert fake.requests == []


def test_allow_models_are_globs(gateway: Kaixu, fake: FakeProvider) -> None:
    refused = pulse(gateway, GROWTH, {"model": "gemini-test", "prompt": "hi"})
    assert refused.status_code == 403
    assert refused.json()["error"] == 'Model gemini-test is not allowed by policy "Production Policy"'
    assert fake.requests == []
    # "gpt-4*" allows gpt-4o-mini (and "gpt-4" itself is denied: deny wins); "claude-*" allows claude-test
    answer = oai(gateway, GROWTH).chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "echo: hi"
    message = claude(gateway, GROWTH).messages.create(model="claude-test", max_tokens=20, messages=HI)  # type: ignore[arg-type]
    assert message.content[0].text == "echo: hi"  # type: ignore[union-attr]
    assert len(fake.requests) == 2


def test_a_rule_matches_only_its_team(gateway: Kaixu) -> None:
    # the same model for a key outside the team: no rule of team growth applies
    assert pulse(gateway, PLAIN, {"model": "gemini-test", "prompt": "hi"}).status_code == 200


def test_the_refusal_in_each_front_doors_shape(gateway: Kaixu, fake: FakeProvider) -> None:
    reason = 'Model gpt-4 is blocked by policy "Production Policy"'
    with pytest.raises(openai.PermissionDeniedError) as refused:
        oai(gateway, GROWTH).chat.completions.create(model="gpt-4", messages=HI)  # type: ignore[arg-type]
    assert refused.value.status_code == 403
    assert refused.value.body["message"] == reason  # type: ignore[index]
    assert refused.value.body["type"] == "permission_error"  # type: ignore[index]
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        claude(gateway, GROWTH).messages.create(model="gpt-4", max_tokens=20, messages=HI)  # type: ignore[arg-type]
    assert denied.value.status_code == 403
    assert denied.value.body["type"] == "error"  # type: ignore[index]
    assert denied.value.body["error"] == {"type": "permission_error", "message": reason}  # type: ignore[index]
    gemini = httpx.post(gateway.url + "/v1beta/models/gemini-test:generateContent",
                        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
                        headers={"x-goog-api-key": GROWTH})  # fmt: skip
    assert gemini.status_code == 403
    error = gemini.json()["error"]
    assert error["code"] == 403 and error["status"] == "PERMISSION_DENIED"
    assert error["message"] == 'Model gemini-test is not allowed by policy "Production Policy"'
    assert fake.requests == []


def test_an_empty_match_applies_to_everyone(gateway: Kaixu) -> None:
    for key in (PLAIN, CAPPED, SHADOW):
        response = pulse(gateway, key, {"model": "mock-model", "prompt": "hi"})
        assert response.status_code == 403
        assert response.json()["error"] == 'Model mock-model is blocked by policy "Everyone"'


def listed(gateway: Kaixu, key: str) -> dict[str, set[str]]:
    """The model list each SDK's door gives the key (OpenAI, Anthropic and Gemini shapes)."""
    openai_ids = {m.id for m in oai(gateway, key).models.list()}
    anthropic_ids = {m.id for m in claude(gateway, key).models.list()}
    gemini = httpx.get(gateway.url + "/v1beta/models", headers={"x-goog-api-key": key})
    assert gemini.status_code == 200
    gemini_ids = {m["name"].removeprefix("models/") for m in gemini.json()["models"]}
    return {"openai": openai_ids, "anthropic": anthropic_ids, "gemini": gemini_ids}


@pytest.mark.parametrize(
    ("key", "expected"),
    [(GROWTH, {"gpt-4o-mini", "claude-test"}), (NARROW, {"gpt-4o-mini", "claude-test"})],
    ids=["policies-deny-and-allow", "team-models"],
)
def test_the_model_list_hides_what_routing_refuses(gateway: Kaixu, fake: FakeProvider, key: str,
                                                   expected: set[str]) -> None:  # fmt: skip
    # growth: its rule allows gpt-4* and claude-* but denies gpt-4, and "Everyone" denies mock-model;
    # narrowed: its team's `models` leave gpt-4o-mini, claude-test and mock-model, and "Everyone" denies mock-model
    lists = listed(gateway, key)
    assert lists == {"openai": expected, "anthropic": expected, "gemini": expected}
    for model in ("gpt-4", "gemini-test", "mock-model", "alias"):
        assert model not in expected
        with pytest.raises(openai.PermissionDeniedError):
            oai(gateway, key).chat.completions.create(model=model, messages=HI)  # type: ignore[arg-type]
        one = httpx.get(gateway.url + f"/v1/models/{model}", headers={"authorization": f"Bearer {key}"})
        assert one.status_code == 404, model
    assert fake.requests == []
    assert httpx.get(gateway.url + "/v1/models/gpt-4o-mini", headers={"authorization": f"Bearer {key}"}).json()[
        "id"] == "gpt-4o-mini"  # fmt: skip


# --- app and project: Pulse's body or kaixu's headers ----------------------------------------------------------


def test_match_by_app_from_pulses_body_or_the_header(gateway: Kaixu, fake: FakeProvider) -> None:
    blocked = 'Model claude-test is blocked by policy "Billing app"'
    by_body = pulse(gateway, PLAIN, {"model": "claude-test", "prompt": "hi", "appId": "billing"})
    assert by_body.status_code == 403 and by_body.json()["error"] == blocked
    by_header = pulse(gateway, PLAIN, {"model": "claude-test", "prompt": "hi"}, {"x-kaixu-app": "billing"})
    assert by_header.status_code == 403 and by_header.json()["error"] == blocked
    with pytest.raises(anthropic.PermissionDeniedError):
        anthropic.Anthropic(base_url=gateway.url, api_key=PLAIN, max_retries=0,
                            default_headers={"x-kaixu-app": "billing"}).messages.create(
            model="claude-test", max_tokens=20, messages=HI)  # type: ignore[arg-type]  # fmt: skip
    assert fake.requests == []
    other_app = pulse(gateway, PLAIN, {"model": "claude-test", "prompt": "hi", "appId": "web"})
    assert other_app.status_code == 200, other_app.text


def test_match_by_project_and_key_together(gateway: Kaixu, fake: FakeProvider) -> None:
    blocked = 'Model gpt-4o-mini is blocked by policy "Secret project"'
    by_body = pulse(gateway, PLAIN, {"model": "gpt-4o-mini", "prompt": "hi", "projectId": "p-secret"})
    assert by_body.status_code == 403 and by_body.json()["error"] == blocked
    with pytest.raises(openai.PermissionDeniedError) as refused:
        oai(gateway, PLAIN, **{"x-kaixu-project": "p-secret"}).chat.completions.create(
            model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]  # fmt: skip
    assert refused.value.body["message"] == blocked  # type: ignore[index]
    assert fake.requests == []
    # every match field must hold: the same project with another key is not this rule's
    assert pulse(gateway, CAPPED, {"model": "gpt-4o-mini", "prompt": "hi", "projectId": "p-secret"}).status_code == 200


# --- tokens per request ------------------------------------------------------------------------------------------


def test_over_the_token_cap_is_refused(gateway: Kaixu, fake: FakeProvider) -> None:
    response = pulse(gateway, CAPPED, {"model": "gpt-4o-mini", "prompt": "hi", "maxTokens": 1000})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error.startswith("Request of about ") and error.endswith(
        f'exceeds the limit of {CAP} tokens per request set by policy "Token cap"'
    ), error
    with pytest.raises(openai.PermissionDeniedError):
        oai(gateway, CAPPED).chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=1000)  # type: ignore[arg-type]
    with pytest.raises(anthropic.PermissionDeniedError):
        claude(gateway, CAPPED).messages.create(model="claude-test", max_tokens=1000, messages=HI)  # type: ignore[arg-type]
    long_prompt = "word " * (CAP * 4)  # the input alone is over the cap
    assert pulse(gateway, CAPPED, {"model": "gpt-4o-mini", "prompt": long_prompt}).status_code == 403
    assert fake.requests == []
    within = pulse(gateway, CAPPED, {"model": "gpt-4o-mini", "prompt": "hi", "maxTokens": 10})
    assert within.status_code == 200, within.text
    assert fake.requests[-1].json["max_completion_tokens"] == 10


def test_clamp_lowers_the_output_in_the_clients_format(gateway: Kaixu, fake: FakeProvider) -> None:
    # OpenAI's door, forwarded as the client's bytes: the field the client set is the one lowered
    oai(gateway, CLAMPED).chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=1000)  # type: ignore[arg-type]
    sent = fake.requests[-1].json
    assert 0 < sent["max_tokens"] < CAP and "max_completion_tokens" not in sent
    # no maximum asked: one is set, so the cap holds whatever the provider's default
    oai(gateway, CLAMPED).chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    assert 0 < fake.requests[-1].json["max_completion_tokens"] < CAP
    # Anthropic's door to an Anthropic provider
    claude(gateway, CLAMPED).messages.create(model="claude-test", max_tokens=1000, messages=HI)  # type: ignore[arg-type]
    assert 0 < fake.requests[-1].json["max_tokens"] < CAP
    # Pulse's `maxTokens`, translated to Anthropic's `max_tokens`
    answer = pulse(gateway, CLAMPED, {"model": "claude-test", "prompt": "hi", "maxTokens": 1000})
    assert answer.status_code == 200 and answer.json()["success"] is True
    assert 0 < fake.requests[-1].json["max_tokens"] < CAP
    # Gemini's door: `generationConfig.maxOutputTokens` is added beside the settings the client gave
    gemini = httpx.post(gateway.url + "/v1beta/models/gemini-test:generateContent",
                        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                              "generationConfig": {"temperature": 0.5}},
                        headers={"x-goog-api-key": CLAMPED})  # fmt: skip
    assert gemini.status_code == 200, gemini.text
    config = fake.requests[-1].json["generationConfig"]
    assert config["temperature"] == 0.5 and 0 < config["maxOutputTokens"] < CAP
    # under the cap: untouched
    oai(gateway, CLAMPED).chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=5)  # type: ignore[arg-type]
    assert fake.requests[-1].json["max_tokens"] == 5
    assert len(fake.requests) == 6


def test_clamp_cannot_shrink_the_input(gateway: Kaixu, fake: FakeProvider) -> None:
    response = pulse(gateway, CLAMPED, {"model": "gpt-4o-mini", "prompt": "word " * (CAP * 4), "maxTokens": 10})
    assert response.status_code == 403 and 'policy "Token clamp"' in response.json()["error"]
    assert fake.requests == []


# --- shadow mode --------------------------------------------------------------------------------------------------


def test_shadow_mode_forwards_logs_counts_and_marks(gateway: Kaixu, fake: FakeProvider) -> None:
    def counted() -> float:
        return scrape.total(scrape.samples(gateway), "kaixu_policy_shadow_refusals_total", policy="Shadow")

    before = counted()
    response = pulse(gateway, SHADOW, {"model": "gpt-4o-mini", "prompt": "hi"})
    assert response.status_code == 200 and response.json()["success"] is True
    assert len(fake.requests) == 1
    assert counted() == before + 1
    request_id = response.headers["x-kaixu-request-id"]
    wait_for(lambda: f"request {request_id}: policy Shadow (shadow mode" in gateway.log(), 10, "the shadow log line")
    assert '"policy_shadow":"Shadow"' in (ledger_row(gateway, request_id)["attributes"] or "")


# --- kaixu check -----------------------------------------------------------------------------------------------------

CHECKED = """\
providers:
  mock: {kind: mock}
models:
  fast:
    route: [{provider: mock}]
policies:
  - {name: a, deny_models: ["o1*"], allow_models: ["fast"], max_tokens_per_request: 10, on_max_tokens: clamp}
  - {name: b, enforce: false, max_cost_per_day: {eur: 50}}
"""


def test_every_policy_field_is_enforced_so_none_is_warned_about(workdir: Path) -> None:
    assert [w for w in parse_policy(CHECKED).warnings if NOT_ENFORCED in w] == []
    result = check(workdir, CHECKED)
    assert result.returncode == 0, result.stderr
    assert NOT_ENFORCED not in result.stdout


def test_rules_are_compiled_at_load() -> None:
    (first, second) = parse_policy(CHECKED).policies
    assert first.deny_models is not None and first.deny_models.matches("o1-preview")
    assert not first.deny_models.matches("fast")
    assert first.allow_models is not None and first.allow_models.matches("fast")
    assert not first.allow_models.matches("fast-2")
    assert (first.on_max_tokens, first.enforce, second.enforce, second.allow_models) == ("clamp", True, False, None)
