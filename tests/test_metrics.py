"""`/metrics` and the Grafana dashboard, against a live kaixu and a real Prometheus.

Traffic goes through the fake provider with the official SDKs (JSON and streams, same-format and translated front
doors, a seed API, embeddings, a dead provider, an unpriced model, refusals). The scrape is read with
prometheus-client's own parser and checked against the ledger the same requests wrote: the token and cost counters
must equal the ledger's sums, request for request. Then every query of every panel of `docs/grafana/kaixu.json`
must use only metrics kaixu exports, and a real Prometheus that scrapes kaixu every second while traffic runs must
answer each of them with data.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types

from kaixu import metrics
from tests.fakes.provider import FakeProvider, Fault
from tests.harness import LIMITED_KEY, ROOT, TEST_KEY, UPSTREAM_KEYS, Kaixu, key_hash, policy_for, wait_for
from tests.prometheus import Prometheus, binary
from tests.scrape import samples, total

DASHBOARD = ROOT / "docs" / "grafana" / "kaixu.json"
ADMIN_KEY = "sk-admin-metrics"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
HELLO = [{"role": "user", "content": "Hello there"}]
CUSTOMER = "acme-corp"
CLIENT_TEAM = "team-the-client-made-up"
LEDGER_SUMS = {  # token type label -> ledger column
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cached_input_tokens",
    "cache_write": "cache_write_tokens",
    "reasoning": "reasoning_tokens",
}


class CachingProvider:
    """An Anthropic-format upstream whose answers report prompt-cache reads and writes, which the fake provider
    does not: a real server, so the cache token types go the whole way through kaixu."""

    ANSWER = {
        "id": "msg_cached",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-latest",
        "content": [{"type": "text", "text": "from the cache"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 3,
            "cache_creation_input_tokens": 40,
            "cache_read_input_tokens": 200,
        },
    }

    def __init__(self) -> None:
        answer = json.dumps(self.ANSWER).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CachingProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def caching() -> Iterator[CachingProvider]:
    with CachingProvider() as provider:
        yield provider


def metrics_policy(fake_url: str, caching_url: str) -> dict[str, Any]:
    policy = policy_for(
        fake_url,
        store={"sqlite": "ledger.db"},
        teams={"growth": {}},
        keys=[
            {"name": "test", "hash": key_hash(TEST_KEY), "team": "growth"},
            {"name": "limited", "hash": key_hash(LIMITED_KEY), "models": ["gpt-4o-mini"]},
        ],
        admin_keys=[{"name": "ops", "hash": key_hash(ADMIN_KEY)}],
        metrics={"auth": "admin", "labels": {"key": True, "customer": True}},
    )
    policy["models"]["local-llama"] = {"route": [{"provider": "oai", "model": "llama-3-local-unpriced"}]}
    policy["providers"]["cache"] = {"kind": "anthropic", "base_url": caching_url, "api_key": UPSTREAM_KEYS["anthropic"]}
    policy["models"]["cached-claude"] = {"route": [{"provider": "cache", "model": "claude-3-5-haiku-latest"}]}
    return policy


@pytest.fixture(scope="module")
def gw(fake: FakeProvider, caching: CachingProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    gateway = Kaixu(tmp_path_factory.mktemp("metrics"), metrics_policy(fake.base_url, caching.url)).start()
    yield gateway
    gateway.stop()


def drive(url: str) -> None:
    """One round of traffic: every front door family, JSON and streams, successes, failures and refusals."""
    oai = openai.OpenAI(base_url=url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=15)
    ant = anthropic.Anthropic(base_url=url, api_key=TEST_KEY, max_retries=0, timeout=15)
    gem = genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(base_url=url))
    customer = {"x-kaixu-customer": CUSTOMER}
    oai.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers=customer)
    list(oai.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))
    oai.chat.completions.create(model="gpt-4o-mini", messages=HELLO, reasoning_effort="low")
    oai.chat.completions.create(model="claude-test", messages=HELLO)  # translated
    list(oai.chat.completions.create(model="gemini-test", messages=HELLO, stream=True))
    oai.embeddings.create(model="text-embedding-3-small", input="Hello there")
    oai.chat.completions.create(model="local-llama", messages=HELLO)  # unpriced
    ant.messages.create(model="claude-test", max_tokens=64, messages=HELLO)
    with ant.messages.stream(model="claude-test", max_tokens=64, messages=HELLO) as stream:
        stream.get_final_message()
    ant.messages.create(model="gpt-4o-mini", max_tokens=64, messages=HELLO)  # translated
    ant.messages.create(model="cached-claude", max_tokens=64, messages=HELLO)  # prompt-cache reads and writes
    gem.models.generate_content(model="gemini-test", contents="Hello there")
    list(gem.models.generate_content_stream(model="gemini-test", contents="Hello there"))
    body = {"model": "gpt-4o-mini", "messages": HELLO}
    bearer = {"authorization": f"Bearer {TEST_KEY}"}
    seed = httpx.post(url + "/.netlify/functions/gateway-stream", json=body, headers=bearer, timeout=15)
    assert seed.status_code == 200, seed.text
    dead = httpx.post(url + "/v1/chat/completions", json={**body, "model": "dead-model"}, headers=bearer, timeout=15)
    assert dead.status_code == 502, dead.text
    assert httpx.post(url + "/v1/chat/completions", json=body, timeout=15).status_code == 401
    # a key without a team, and a client naming a team itself: not a label (only the policy's teams are)
    limited = {"authorization": f"Bearer {LIMITED_KEY}", "x-kaixu-team": CLIENT_TEAM}
    assert httpx.post(url + "/v1/chat/completions", json=body, headers=limited, timeout=15).status_code == 200


def ledger_rows(gateway: Kaixu) -> list[dict[str, Any]]:
    path = gateway.workdir / "ledger.db"
    if not path.exists():
        return []
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in db.execute("SELECT * FROM requests")]
        except sqlite3.OperationalError:  # the table is created by the first write
            return []


def settled(gateway: Kaixu) -> tuple[list[Any], list[dict[str, Any]]]:
    """A scrape and the ledger once they agree on the number of requests (the ledger is written in batches)."""
    found: list[Any] = []
    rows: list[dict[str, Any]] = []

    def agree() -> bool:
        nonlocal found, rows
        found, rows = samples(gateway, ADMIN), ledger_rows(gateway)
        return len(rows) > 0 and total(found, "kaixu_requests_total") == len(rows)

    wait_for(agree, 15, "the ledger to hold every request the metrics counted")
    return found, rows


def test_metrics_equal_the_ledger(gw: Kaixu) -> None:
    drive(gw.url)
    found, rows = settled(gw)
    for token_type, column in LEDGER_SUMS.items():
        ledger_sum = sum(row[column] or 0 for row in rows if row["provider"] is not None)
        assert total(found, "gen_ai_client_token_usage_sum", gen_ai_token_type=token_type) == ledger_sum, token_type
    for token_type in LEDGER_SUMS:
        assert total(found, "gen_ai_client_token_usage_sum", gen_ai_token_type=token_type) > 0, token_type
    cached = {"provider": "cache", "gen_ai_request_model": "cached-claude"}
    calls = total(found, "gen_ai_client_token_usage_count", gen_ai_token_type="input", **cached)
    by_type = {t: total(found, "gen_ai_client_token_usage_sum", gen_ai_token_type=t, **cached) for t in LEDGER_SUMS}
    assert calls >= 1 and by_type == {  # Anthropic counts cache reads and writes beside input; OTel inside it
        "input": 250 * calls,
        "output": 3 * calls,
        "cache_read": 200 * calls,
        "cache_write": 40 * calls,
        "reasoning": 0,
    }
    cost = sum(row["cost_micros"] or 0 for row in rows)
    assert cost > 0 and total(found, "kaixu_cost_usd_micros_total") == cost
    assert total(found, "kaixu_unpriced_requests_total") == sum(row["unpriced"] for row in rows) >= 1
    with_ttft = [row for row in rows if row["ttft_ms"] is not None]
    assert len(with_ttft) >= 4  # the streams
    assert total(found, "gen_ai_server_time_to_first_token_seconds_count") == len(with_ttft)
    assert total(found, "gen_ai_server_request_duration_seconds_count") == len(rows)
    for status in {row["status"] for row in rows}:
        counted = total(found, "kaixu_requests_total", status=str(status), status_class=f"{status // 100}xx")
        assert counted == sum(1 for row in rows if row["status"] == status), status
    fronts = {s.labels["front"] for s in found if s.name == "kaixu_requests_total"}
    assert {"openai", "anthropic", "gemini", "gateway13"} <= fronts
    # by the policy's names: the route, the provider, the key's team; the OTel names beside them
    assert total(found, "kaixu_cost_usd_micros_total", provider="ant", model="claude-test", team="growth") > 0
    usage = {"provider": "gem", "gen_ai_provider_name": "gcp.gemini", "gen_ai_request_model": "gemini-test"}
    assert total(found, "gen_ai_client_token_usage_count", gen_ai_operation_name="chat", **usage) > 0
    assert total(found, "kaixu_upstream_errors_total", provider="dead", kind="connect") >= 1
    error = {"provider": "dead", "error_type": "502"}
    assert total(found, "gen_ai_server_request_duration_seconds_count", **error) >= 1
    assert total(found, "kaixu_requests_in_flight") == 0


def test_a_stream_the_provider_cuts_is_an_upstream_error(gw: Kaixu, fake: FakeProvider) -> None:
    def interrupted() -> tuple[float, float]:
        found = samples(gw, ADMIN)
        return (
            total(found, "kaixu_upstream_errors_total", provider="oai", kind="interrupted"),
            total(found, "gen_ai_server_request_duration_seconds_count", provider="oai", error_type="interrupted"),
        )

    before = interrupted()
    fake.add_fault(Fault(disconnect_after_events=2))
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    bearer = {"authorization": f"Bearer {TEST_KEY}"}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=bearer, timeout=15) as response:
        assert response.status_code == 200  # the answer had started when the provider went away
        assert b'data: {"error":' in response.read()  # it ends with the terminal error event (test_terminal_events)
    wait_for(lambda: interrupted() == (before[0] + 1, before[1] + 1), 10, "the cut stream to be counted")


def test_labels_are_policy_names_and_opt_ins(gw: Kaixu) -> None:
    if not ledger_rows(gw):
        drive(gw.url)
    found, _ = settled(gw)
    text = httpx.get(gw.url + "/metrics", headers=ADMIN).text
    values = {value for s in found for value in s.labels.values()}
    teams = {s.labels["team"] for s in found if s.name == "kaixu_requests_total"}
    assert teams == {"growth", "-"}
    assert CLIENT_TEAM not in text
    # opted in (metrics.labels): the key's name and the customer the client named
    assert total(found, "kaixu_requests_total", key="limited", team="-") >= 1
    assert total(found, "kaixu_cost_usd_micros_total", key="test", customer=CUSTOMER) > 0
    for secret in [TEST_KEY, LIMITED_KEY, ADMIN_KEY, *UPSTREAM_KEYS.values()]:
        assert secret not in text
    request_ids = {row["request_id"] for row in ledger_rows(gw)}
    assert not request_ids & values


def test_metric_labels_stay_off_unless_opted_in(kaixu: Kaixu) -> None:
    headers = {"authorization": f"Bearer {TEST_KEY}", "x-kaixu-customer": CUSTOMER}
    body = {"model": "gpt-4o-mini", "messages": HELLO}
    assert httpx.post(kaixu.url + "/v1/chat/completions", json=body, headers=headers).status_code == 200
    found = samples(kaixu)  # metrics.auth: off (the default): no key needed
    requests = [s for s in found if s.name == "kaixu_requests_total"]
    assert requests and all(s.labels["key"] == "" and s.labels["customer"] == "" for s in requests)
    assert CUSTOMER not in httpx.get(kaixu.url + "/metrics").text


def test_a_customer_label_is_escaped_cut_and_bounded() -> None:
    metrics._customers.clear()
    assert metrics._customer_label("caf\udcff\n" + "x" * 200) == "caf\\udcff\\n" + "x" * 59 + "..."
    for n in range(metrics.MAX_CUSTOMERS - 1):
        assert metrics._customer_label(f"c{n}") == f"c{n}"
    assert metrics._customer_label("one-too-many") == "_other"
    assert metrics._customer_label("c7") == "c7"
    assert metrics._customer_label(None) == "-"
    metrics._customers.clear()


def test_a_customer_the_client_sends_as_raw_bytes_never_breaks_the_scrape(gw: Kaixu) -> None:
    """Bytes that are not UTF-8 text, or control characters, are refused (docs/compatibility.md); what passes is
    text, and the scrape stays parseable either way."""
    body = {"model": "gpt-4o-mini", "messages": HELLO}
    for value, status in ((b"caf\xc3\xa9-\xff\x01", 400), (b"caf\xc3\xa9-\xe2\x80\xae-rtl", 200)):
        headers = [(b"authorization", f"Bearer {TEST_KEY}".encode()), (b"x-kaixu-customer", value)]
        answer = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers)
        assert answer.status_code == status, answer.text
    customers = {s.labels["customer"] for s in samples(gw, ADMIN) if s.name == "kaixu_requests_total"}
    assert any(c.startswith("caf") and c.isprintable() for c in customers), customers


def test_metrics_auth_admin_needs_an_admin_key(gw: Kaixu) -> None:
    anonymous = httpx.get(gw.url + "/metrics")
    assert anonymous.status_code == 401 and anonymous.headers["content-type"] == "application/json"
    assert anonymous.json()["error"]["code"] == "missing_admin_key" and anonymous.json()["request_id"]
    client_key = httpx.get(gw.url + "/metrics", headers={"authorization": f"Bearer {TEST_KEY}"})
    assert client_key.status_code == 403 and client_key.json()["error"]["code"] == "not_an_admin_key"
    wrong = httpx.get(gw.url + "/metrics", headers={"x-api-key": "sk-admin-guess"})
    assert wrong.status_code == 403
    assert "kaixu_requests_total" not in anonymous.text + client_key.text + wrong.text
    admin = httpx.get(gw.url + "/metrics", headers=ADMIN)
    assert admin.status_code == 200 and admin.headers["content-type"].startswith("text/plain")


def test_metrics_auth_follows_a_reload(fake: FakeProvider, caching: CachingProvider, workdir: Path) -> None:
    policy = metrics_policy(fake.base_url, caching.url)
    policy["metrics"] = {"auth": "off"}
    gateway = Kaixu(workdir, policy).start()
    try:
        assert httpx.get(gateway.url + "/metrics").status_code == 200
        generation = gateway.health()["policy"]["generation"]
        gateway.write_policy({**policy, "metrics": {"auth": "admin"}})
        wait_for(lambda: gateway.health()["policy"]["generation"] > generation, 10, "the reload")
        assert httpx.get(gateway.url + "/metrics").status_code == 401
        assert httpx.get(gateway.url + "/metrics", headers=ADMIN).status_code == 200
    finally:
        gateway.stop()


# --- the dashboard -------------------------------------------------------------------------------------

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
_PROMQL_WORDS |= {"offset", "inf", "nan"}
# What Grafana substitutes before a query reaches Prometheus, for a Prometheus scraping every second.
GRAFANA_VARIABLES = {"$__rate_interval": "10s", "$__range": "2m", "$provider": ".*", "$model": ".*", "$team": ".*"}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [(p["title"], t["expr"]) for p in panels(board) if p["type"] != "row" for t in p["targets"]]


def variable_queries(board: dict[str, Any]) -> list[str]:
    return [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]


def grafana(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label matchers, ranges, grouping
    clauses, function calls, keywords and numbers are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if match.group() in _PROMQL_WORDS or expr[match.end() :].lstrip().startswith("("):
            continue  # a keyword or a function
        names.add(match.group())
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, provider) (rate(a_bucket{x="y{z}"}[5m]))) / on (i) b_total * 1e6'
    assert metric_names(expr) == {"a_bucket", "b_total"}
    assert metric_names("(sum(rate(c_total[1m])) or vector(0)) / sum(d)") == {"c_total", "d"}
    assert metric_names('label_values(e_total{p=~"$p"}, model)') == {"e_total", "model"}


def test_dashboard_is_importable() -> None:
    board = dashboard()
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert board["__inputs"][0]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in panels(board) if p["type"] != "row"]
    assert len(titles) == len(set(titles))
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
    rows = {p["title"] for p in board["panels"] if p["type"] == "row"}
    assert rows == {"Traffic", "Errors", "Latency", "Tokens", "Spend", "Ledger and policy"}


def test_every_metric_the_dashboard_queries_is_exported(gw: Kaixu) -> None:
    if not ledger_rows(gw):
        drive(gw.url)
    found, _ = settled(gw)
    exported = {s.name for s in found}
    board = dashboard()
    queries = [expr for _, expr in panel_queries(board)]
    used = set().union(*(metric_names(q) for q in queries))
    used |= {name for q in variable_queries(board) for name in metric_names(q.removeprefix("label_values"))}
    used -= {"provider", "model", "team"}  # label_values(metric, LABEL)
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"
    assert len(queries) >= 20


@pytest.fixture
def prometheus_binary() -> str:
    return binary()


def test_prometheus_evaluates_every_panel_with_data(gw: Kaixu, prometheus_binary: str, workdir: Path) -> None:
    server = Prometheus(workdir, f"{gw.host}:{gw.port}", bearer=ADMIN_KEY).start(prometheus_binary)
    stop = threading.Event()
    failures: list[BaseException] = []

    def traffic() -> None:
        while not stop.is_set():
            try:
                drive(gw.url)
            except BaseException as exc:  # reported by the test, not lost in the thread
                failures.append(exc)
                return

    thread = threading.Thread(target=traffic, name="traffic", daemon=True)
    thread.start()
    try:
        wait_for(lambda: [t["health"] for t in server.target_health()] == ["up"], 30, "prometheus to scrape kaixu")
        board = dashboard()
        pending = {(title, grafana(expr)) for title, expr in panel_queries(board)}
        answers: dict[tuple[str, str], list[dict[str, Any]]] = {}

        def all_answered() -> bool:
            if failures:
                raise failures[0]
            for query in sorted(pending):
                answers[query] = server.query(query[1])
                if has_data(answers[query]):
                    pending.discard(query)
            return not pending

        try:
            wait_for(all_answered, 60, "every panel query to return data")
        except TimeoutError:
            empty = {query: answers.get(query) for query in pending}
            raise AssertionError(f"queries without data: {empty}\n{server.log()}") from None
        for name in {q.removeprefix("label_values(").split(",")[0].split("{")[0] for q in variable_queries(board)}:
            assert server.query(f"count({name})"), name  # the variables' label_values have series to read
    finally:
        stop.set()
        thread.join(60)
        server.stop()
    assert not failures


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a real number (a histogram_quantile over no traffic is NaN)."""
    return any(math.isfinite(float(series["value"][1])) for series in result)


def test_every_metric_is_documented() -> None:
    text = (ROOT / "docs" / "observability.md").read_text()
    exported = {f"{m.name}_total" if m.type == "counter" else m.name for m in metrics.REGISTRY.collect()}
    documented = set(re.findall(r"^\| `([a-z_]+)` \| (?:counter|gauge|histogram) \|", text, re.MULTILINE))
    assert exported == documented
