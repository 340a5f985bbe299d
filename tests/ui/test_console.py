"""The web console (`/ui`, kaixu/addons/ui.py) in a real browser: Debian's Chromium, headless, driven by
Playwright, against one kaixu on the mock provider (one kaixu and one browser for the module). Each page is
screenshotted at a laptop's size (1280x800) into KAIXU_SCREENSHOTS (default: a temporary folder); the best are
in docs/console/. The sign-in and CSRF rules are also checked with httpx, without a browser."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright  # pinned in pyproject's test extras

from tests.harness import Kaixu, key_hash, wait_for
from tests.ui.browser import ensure_chromium

ADMIN_KEY = "sk-admin-console-test"
CLIENT_KEY = "sk-console-client"
BROKE_KEY = "sk-console-broke"
SLOW_KEY = "sk-console-slow"
PEPPER = "console-test-pepper-0123456789"
VIEWPORT = {"width": 1280, "height": 800}
UNLABELLED = """() => [...document.querySelectorAll('#main input, #main select, #main textarea')]
    .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.id || e.name)"""


def console_policy(*, enabled: bool = True) -> dict[str, Any]:
    return {
        "version": 1,
        "listen": [{"host": "127.0.0.1", "port": 0}],
        "store": {"sqlite": "kaixu.db"},
        "providers": {
            "mock": {"kind": "mock"},
            "offline": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-not-real"},
        },
        "models": {
            "gpt-4o-mini": {"route": [{"provider": "mock"}]},
            "claude-3-5-haiku-latest": {"route": [{"provider": "mock"}]},
            "fast": {"route": [{"provider": "mock", "model": "mock-fast"}]},
            "resilient": {"route": [{"provider": "offline"}], "fallbacks": ["gpt-4o-mini"]},
        },
        "keys": [
            {
                "name": "demo",
                "hash": key_hash(CLIENT_KEY),
                "team": "growth",
                "budget": {"usd": 5, "period": "day"},
                "limits": {"rpm": 1000},
            },
            {"name": "broke", "hash": key_hash(BROKE_KEY), "budget": {"usd": 0.000001, "period": "total"}},
            {"name": "slow", "hash": key_hash(SLOW_KEY), "limits": {"rpm": 1}},
        ],
        "teams": {"growth": {"limits": {"rpm": 1000}}},
        "admin_keys": [{"name": "ops", "hash": key_hash(ADMIN_KEY)}],
        "policies": [
            {"name": "token-cap", "max_tokens_per_request": 100000},
            {"name": "tiny-shadow", "max_tokens_per_request": 1, "enforce": False},
        ],
        "ledger": {"content": {"enabled": True}},
        "ui": {"enabled": enabled},
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    kaixu = Kaixu(tmp_path_factory.mktemp("console"), console_policy(), env={"KAIXU_KEY_PEPPER": PEPPER}).start()
    yield kaixu
    kaixu.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("KAIXU_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = ensure_chromium()
    with sync_playwright() as playwright:
        # as root, Chromium runs only without its sandbox
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, gateway: Kaixu) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT, base_url=gateway.url)  # type: ignore[arg-type]
    context.set_default_timeout(10_000)
    opened = context.new_page()
    yield opened
    context.close()


def sign_in(page: Page, key: str = ADMIN_KEY) -> None:
    page.goto("/ui")
    field = page.get_by_label("Admin key", exact=True)
    field.fill(key)
    field.press("Enter")  # Enter submits


def signed_in(page: Page) -> Page:
    sign_in(page)
    expect(page.get_by_role("navigation", name="Console pages")).to_be_visible()
    return page


def chat(page: Page, key: str, model: str, text: str) -> None:
    page.goto("/ui#playground")
    page.get_by_label("Client key", exact=True).fill(key)
    page.get_by_label("Client key", exact=True).press("Enter")  # loads the models the key may call
    expect(page.get_by_label("Model", exact=True)).to_be_enabled()
    page.get_by_label("Model", exact=True).select_option(model)
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_label("Message", exact=True).press("Enter")


def session_client(gateway: Kaixu) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=gateway.url)
    signed = client.post("/ui/session", json={"key": ADMIN_KEY})
    assert signed.status_code == 200, signed.text
    return client, signed.json()["csrf_token"]


def test_a_wrong_admin_key_is_refused(page: Page, gateway: Kaixu) -> None:
    sign_in(page, CLIENT_KEY)  # a client key is not an admin key
    expect(page.get_by_role("alert")).to_contain_text("not an admin key")
    expect(page.get_by_role("navigation", name="Console pages")).to_be_hidden()
    assert not [c for c in page.context.cookies() if c["name"] == "kaixu_console"]
    answer = httpx.post(gateway.url + "/ui/session", json={"key": "sk-wrong"})
    assert answer.status_code == 401 and "set-cookie" not in answer.headers


def test_sign_in_sets_a_strict_http_only_session_cookie_and_a_csp(gateway: Kaixu) -> None:
    page = httpx.get(gateway.url + "/ui")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script>" not in page.text and " style=" not in page.text  # nothing inline: the CSP allows none
    signed = httpx.post(gateway.url + "/ui/session", json={"key": ADMIN_KEY})
    cookie = signed.headers["set-cookie"]
    assert re.match(r"kaixu_console=[\w-]{40,};", cookie)
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=28800"):
        assert attribute in cookie
    assert ADMIN_KEY not in cookie and ADMIN_KEY not in signed.text


def test_sign_in_and_stream_a_chat_with_its_cost(page: Page, shots: Path) -> None:
    signed_in(page)
    expect(page.locator("nav a[aria-current=page]")).to_have_text("Playground")
    chat(page, CLIENT_KEY, "gpt-4o-mini", "Hello from the console")
    meta = page.locator(".msg.assistant .meta").last
    expect(meta).to_contain_text("cost $")
    expect(page.locator(".msg.assistant .answer-text").last).to_contain_text("echo: Hello from the console")
    assert float(meta.get_attribute("data-cost") or "0") > 0  # the stream's `: kaixu-cost-usd=` line, read
    expect(meta).to_contain_text(re.compile(r"\d+ in · \d+ out"))
    page.screenshot(path=shots / "playground.png")


def test_a_spent_budget_and_a_rate_limit_are_said_in_plain_words(page: Page) -> None:
    signed_in(page)
    chat(page, BROKE_KEY, "gpt-4o-mini", "Anything")
    expect(page.locator(".msg.failed").last).to_contain_text("budget for this key")
    expect(page.locator(".msg.failed .meta").last).to_have_text("HTTP 402")
    chat(page, SLOW_KEY, "gpt-4o-mini", "One")  # 1 request per minute: the second is refused
    expect(page.locator(".msg.assistant .meta").last).to_contain_text("cost $")
    page.get_by_label("Message", exact=True).fill("Two")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(page.locator(".msg.failed").last).to_contain_text(
        re.compile(r"Too many requests: a rate limit was reached\. Try again in \d+ s")
    )
    expect(page.locator(".msg.failed .meta").last).to_have_text("HTTP 429")


def test_create_a_key_and_use_it_in_the_playground(page: Page, gateway: Kaixu, shots: Path) -> None:
    signed_in(page)
    page.get_by_role("link", name="Keys").click()
    page.get_by_label("Name", exact=True).fill("console-made")
    page.get_by_label("Team", exact=True).fill("web")
    page.get_by_label("Budget (USD)", exact=True).fill("2.5")
    page.get_by_label("Seats", exact=True).fill("3")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret-value")
    expect(secret).to_have_text(re.compile(r"^sk-"))
    key = secret.inner_text()
    row = page.get_by_role("table", name="Store keys").get_by_role("row").filter(has_text="console-made")
    expect(row).to_contain_text("2.500000 USD / month")
    expect(row).to_contain_text("active")
    models = gateway.url + "/v1/models"  # a running kaixu reads the store's new keys within a second
    wait_for(lambda: httpx.get(models, headers={"authorization": f"Bearer {key}"}).status_code == 200, 5, "the new key")
    chat(page, key, "fast", "From the new key")
    expect(page.locator(".msg.assistant .meta").last).to_contain_text("cost $")
    page.get_by_role("link", name="Keys").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke console-made").click()
    expect(row).to_contain_text("revoked")
    installs = page.get_by_role("table", name="Installs").get_by_role("row").filter(has_text="key:console-made")
    expect(installs).to_contain_text("kaixu-console-")  # the playground's install took one of its seats
    page.screenshot(path=shots / "keys.png", full_page=True)


def test_a_request_appears_live_and_its_page_shows_attempts_and_verdicts(
    page: Page, gateway: Kaixu, shots: Path
) -> None:
    signed_in(page)
    page.get_by_role("link", name="Requests").click()
    expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()
    live = {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "live one"}]}
    made = httpx.post(
        gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"}, json=live
    )
    assert made.status_code == 200
    request_id = made.headers["x-kaixu-request-id"]
    row = page.get_by_role("row").filter(has_text="claude-3-5-haiku-latest")
    expect(row.first).to_be_visible()  # polled in while the page is open, no reload
    page.screenshot(path=shots / "requests.png")
    page.locator(f"a[href^='#request/{request_id}']").click()
    expect(page.get_by_role("heading", name=re.compile("Request"))).to_contain_text(request_id)
    attempts = page.get_by_role("table", name="Attempts")
    expect(attempts).to_contain_text("mock / claude-3-5-haiku-latest")
    expect(attempts).to_contain_text("200")
    verdicts = page.get_by_role("table", name="Verdicts")
    expect(verdicts.get_by_role("row").filter(has_text="token-cap")).to_contain_text("allowed")
    expect(verdicts.get_by_role("row").filter(has_text="tiny-shadow")).to_contain_text("shadow")
    rows = verdicts.get_by_role("row").filter(has_text="key demo")
    expect(rows.filter(has_text="rate limit")).to_contain_text("counted")
    expect(rows.filter(has_text="budget")).to_contain_text("reserved")
    expect(page.locator("#request-cost")).to_contain_text("USD")
    expect(page.locator("pre").first).to_contain_text("live one")  # ledger.content keeps the prompt here
    page.screenshot(path=shots / "request.png", full_page=True)


def test_a_fallback_shows_every_attempt(page: Page, gateway: Kaixu) -> None:
    body = {"model": "resilient", "messages": [{"role": "user", "content": "fall back"}]}
    made = httpx.post(
        gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"}, json=body
    )
    assert made.status_code == 200 and made.headers["x-kaixu-degraded"] == "true"
    request_id = made.headers["x-kaixu-request-id"]
    signed_in(page)
    wait_for(lambda: page.request.get(f"/ui/api/requests/{request_id}").status == 200, 10, "the ledger record")
    page.goto(f"/ui#request/{request_id}")
    attempts = page.get_by_role("table", name="Attempts").get_by_role("row")
    expect(attempts).to_have_count(3)  # the header, then the dead provider and the fallback that answered
    expect(attempts.nth(1)).to_contain_text("offline / resilient")
    expect(attempts.nth(1)).to_contain_text("502")
    expect(attempts.nth(2)).to_contain_text("mock / gpt-4o-mini")
    expect(attempts.nth(2)).to_contain_text("200")
    expect(page.get_by_text("(a fallback served it)")).to_be_visible()


def test_spend_shows_a_chart_with_data_and_the_budgets(page: Page, gateway: Kaixu, shots: Path) -> None:
    httpx.post(gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
               json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "spend"}]})  # fmt: skip
    signed_in(page)
    page.get_by_role("link", name="Spend").click()
    chart = page.get_by_role("img", name="Cost by key")
    expect(chart.locator("rect").first).to_be_visible()
    expect(page.get_by_role("table", name="Cost by Key").get_by_role("row").filter(has_text="demo")).to_be_visible()
    page.get_by_label("Group by", exact=True).select_option("model")
    expect(page.get_by_role("img", name="Cost by model")).to_contain_text("gpt-4o-mini")
    budgets = page.get_by_role("table", name="Budgets")
    expect(budgets.get_by_role("row").filter(has_text="key demo")).to_contain_text("day")
    expect(budgets.get_by_role("row").filter(has_text="team growth")).to_have_count(0)  # the team has no budget
    page.screenshot(path=shots / "spend.png", full_page=True)


def test_models_setup_and_policy_pages(page: Page, gateway: Kaixu, shots: Path) -> None:
    signed_in(page)
    page.get_by_role("link", name="Models").click()
    routes = page.get_by_role("table", name="Routes")
    expect(routes.get_by_role("row").filter(has_text="mock / mock-fast")).to_contain_text("closed")
    page.screenshot(path=shots / "models.png")
    page.get_by_role("link", name="Client setup").click()
    expect(page.locator("#base-url")).to_have_text(gateway.url)
    for client in ("Claude Code", "Codex", "Gemini CLI", "Python: OpenAI SDK", "Node: OpenAI SDK", "curl"):
        expect(page.get_by_role("button", name=f"Copy the {client} lines")).to_be_visible()
    expect(page.get_by_role("region", name="Claude Code")).to_contain_text(f"ANTHROPIC_BASE_URL={gateway.url}")
    page.screenshot(path=shots / "setup.png")
    page.get_by_role("link", name="Policy").click()
    expect(page.locator("#policy-digest")).to_have_text(gateway.health()["policy"]["hash"])
    expect(page.locator("#reload-status")).to_have_text("no error")
    page.screenshot(path=shots / "policy.png")


def test_every_field_is_labelled_and_the_navigation_is_keyboard_reachable(page: Page) -> None:
    signed_in(page)
    for route in ("playground", "keys", "requests", "spend"):
        page.goto(f"/ui#{route}")
        expect(page.locator("#main h1")).to_be_visible()
        unlabelled = page.evaluate(UNLABELLED)
        assert unlabelled == [], route
    page.goto("/ui#playground")
    page.reload()  # focus back at the start of the document
    expect(page.locator("#main h1")).to_have_text("Playground")
    page.keyboard.press("Tab")  # the skip link first
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")  # Playground, then Spend
    assert page.evaluate("document.activeElement.textContent") == "Spend"
    page.keyboard.press("Enter")
    expect(page.locator("#main h1")).to_have_text("Spend")


def test_sign_out_ends_the_session(page: Page) -> None:
    signed_in(page)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Admin key", exact=True)).to_be_visible()
    expect(page.get_by_role("alert")).to_have_text("Signed out.")
    assert page.request.get("/ui/api/costs").status == 401  # the browser's cookie, if any, names no session
    page.reload()
    expect(page.get_by_label("Admin key", exact=True)).to_be_visible()


def test_a_state_changing_call_without_the_csrf_token_is_refused(gateway: Kaixu) -> None:
    client, csrf = session_client(gateway)
    try:
        assert client.get("/ui/api/keys").status_code == 200  # reads need the session only
        refused = client.post("/ui/api/keys", json={"name": "no-csrf"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_token_invalid"
        wrong = client.post("/ui/api/keys", json={"name": "no-csrf"}, headers={"x-kaixu-csrf": "x" * len(csrf)})
        assert wrong.status_code == 403
        assert client.delete("/ui/api/keys/anything").status_code == 403
        assert client.delete("/ui/session").status_code == 403  # signing out too
        made = client.post("/ui/api/keys", json={"name": "with-csrf"}, headers={"x-kaixu-csrf": csrf})
        assert made.status_code == 201, made.text
        session = client.cookies["kaixu_console"]
        assert client.delete("/ui/session", headers={"x-kaixu-csrf": csrf}).status_code == 200
        ended = httpx.get(gateway.url + "/ui/api/keys", cookies={"kaixu_console": session})
        assert ended.status_code == 401  # signed out on the server, not only in the browser
    finally:
        client.close()
    stale = httpx.get(gateway.url + "/ui/api/keys", cookies={"kaixu_console": "not-a-session"})
    assert stale.status_code == 401
    without_cookie_path = httpx.get(gateway.url + "/api/keys")
    assert without_cookie_path.status_code == 401  # /api/ itself still takes only admin keys


def reload(gateway: Kaixu, policy: dict[str, Any]) -> None:
    generation = gateway.health()["policy"]["generation"]
    gateway.write_policy(policy)
    wait_for(lambda: gateway.health()["policy"]["generation"] > generation, 10, "the reload")


def test_a_session_ends_when_a_reload_removes_its_admin_key(gateway: Kaixu) -> None:
    client, _ = session_client(gateway)
    try:
        assert client.get("/ui/api/policy").status_code == 200
        other = console_policy()
        other["admin_keys"] = [{"name": "someone-else", "hash": key_hash("sk-admin-other")}]
        reload(gateway, other)
        assert client.get("/ui/api/policy").status_code == 401
        reload(gateway, console_policy())
        assert client.get("/ui/api/policy").status_code == 401  # ended, not suspended
    finally:
        client.close()


def test_with_the_ui_off_ui_is_a_404(gateway: Kaixu) -> None:
    """Last: the policy is reloaded with the console off (and turned on again)."""
    reload(gateway, console_policy(enabled=False))
    try:
        for path in ("/ui", "/ui/", "/ui/static/app.js", "/ui/api/costs"):
            assert httpx.get(gateway.url + path).status_code == 404, path
        assert httpx.post(gateway.url + "/ui/session", json={"key": ADMIN_KEY}).status_code == 404
    finally:
        reload(gateway, console_policy())


def test_guessing_the_admin_key_is_slowed_down(gateway: Kaixu) -> None:
    """Last of all: this address cannot sign in for a minute afterwards."""
    refused = 0
    while (answer := httpx.post(gateway.url + "/ui/session", json={"key": f"sk-guess-{refused}"})).status_code == 401:
        refused += 1
        assert refused <= 10, "more than 10 refused sign-ins in a minute from one address"
    assert answer.status_code == 429 and int(answer.headers["retry-after"]) >= 1
    right = httpx.post(gateway.url + "/ui/session", json={"key": ADMIN_KEY})
    assert right.status_code == 429 and "set-cookie" not in right.headers  # no more tries, even the right one
    assert httpx.get(gateway.url + "/api/costs", headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
