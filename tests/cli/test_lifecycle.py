"""kaixu as a process: policy checks, refusing bad policies, hot reload, graceful stop, the mitmdump plugin."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.fakes.provider import FakeProvider, Fault
from tests.harness import ROOT, TEST_KEY, UPSTREAM_KEYS, Kaixu, policy_for, wait_for
from tests.scrape import samples, total
from tests.tls import make_tls_files

HELLO = [{"role": "user", "content": "Hello"}]


def kaixu_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kaixu", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def chat(url: str, model: str = "gpt-4o-mini", key: str = TEST_KEY) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": HELLO},
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


BROKEN = """\
providers:
  mock: {kind: mock}
  openai: {kind: openai, api_key: "${KAIXU_TEST_UNSET_VARIABLE}"}
models:
  fast:
    route: [{provider: nowhere}]
keys:
  - {name: k, hash: "md5:abc"}
colour: blue
"""


def test_check_lists_every_problem_with_its_line(workdir: Path) -> None:
    (workdir / "bad.yaml").write_text(BROKEN)
    result = kaixu_cli("check", str(workdir / "bad.yaml"))
    assert result.returncode == 1
    err = result.stderr
    assert "line 3: providers.openai.api_key: environment variable KAIXU_TEST_UNSET_VARIABLE is not set" in err
    assert "line 8: keys[0].hash" in err
    assert "line 9: colour: unknown field" in err


def test_check_reports_cross_references(workdir: Path) -> None:
    (workdir / "bad.yaml").write_text(
        BROKEN.replace('"${KAIXU_TEST_UNSET_VARIABLE}"', "sk")
        .replace("md5:abc", "sha256:" + "a" * 64)
        .replace("colour: blue\n", "")
    )
    result = kaixu_cli("check", str(workdir / "bad.yaml"))
    assert result.returncode == 1
    assert "line 6: models.fast.route[0].provider: unknown provider 'nowhere'" in result.stderr


def test_check_accepts_the_shipped_policy() -> None:
    result = kaixu_cli("check", str(ROOT / "proxy.yaml"))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_warns_about_providers_no_request_can_use(workdir: Path) -> None:
    (workdir / "p.yaml").write_text(
        "providers:\n  mock: {kind: mock}\n  openai: {kind: openai}\n  spare: {kind: anthropic, api_key: x}\n"
        "models:\n  gpt-4o: {route: [{provider: openai}]}\n  m: {route: [{provider: mock}]}\n"
    )
    result = kaixu_cli("check", str(workdir / "p.yaml"))
    assert result.returncode == 0
    assert "warning: line 3: providers.openai: no api_key and auth.byok is off" in result.stdout
    assert "warning: line 4: providers.spare: no model routes to this provider" in result.stdout


def test_run_refuses_an_invalid_policy_with_the_same_messages(workdir: Path) -> None:
    (workdir / "bad.yaml").write_text(BROKEN)
    result = kaixu_cli("run", str(workdir / "bad.yaml"), "--listen", "127.0.0.1:0")
    assert result.returncode == 1
    assert "environment variable KAIXU_TEST_UNSET_VARIABLE is not set" in result.stderr
    assert "not starting" in result.stderr


def test_invalid_yaml_names_the_line(workdir: Path) -> None:
    (workdir / "bad.yaml").write_text("providers:\n  mock: {kind: mock\nmodels: {}\n")
    result = kaixu_cli("check", str(workdir / "bad.yaml"))
    assert result.returncode == 1 and "invalid YAML" in result.stderr and "line 3" in result.stderr


def test_health_reports_without_secrets(kaixu: Kaixu) -> None:
    health = kaixu.health()
    assert health["status"] == "ok" and health["version"]
    assert health["policy"]["generation"] >= 1 and len(health["policy"]["hash"]) == 12
    assert health["providers"]["oai"] == {"kind": "openai", "key_configured": True}
    assert health["uptime_seconds"] >= 0
    assert health["store"]["kind"] == "sqlite" and health["store"]["ok"] is True
    text = json.dumps(health)
    assert not any(secret in text for secret in UPSTREAM_KEYS.values())


def test_metrics_are_exposed(kaixu: Kaixu) -> None:
    chat(kaixu.url)
    labels = {"front": "openai", "model": "gpt-4o-mini", "operation": "chat", "provider": "oai", "status": "200"}
    assert total(samples(kaixu), "kaixu_requests_total", **labels) >= 1
    assert TEST_KEY not in httpx.get(kaixu.url + "/metrics").text


def test_byok_forwards_the_clients_own_key(fake: FakeProvider, workdir: Path) -> None:
    gateway = Kaixu(workdir, policy_for(fake.base_url, auth={"byok": True})).start()
    try:
        assert chat(gateway.url, key="sk-my-own-openai-key").status_code == 200
        assert fake.requests[-1].headers["authorization"] == "Bearer sk-my-own-openai-key"
        assert chat(gateway.url).status_code == 200  # a kaixu key still gets the provider's key
        assert fake.requests[-1].headers["authorization"] == "Bearer " + UPSTREAM_KEYS["openai"]
    finally:
        gateway.stop()


def test_byok_is_off_by_default(kaixu: Kaixu) -> None:
    assert chat(kaixu.url, key="sk-my-own-openai-key").status_code == 401


def test_cors_is_strict_by_default_and_allows_listed_origins(fake: FakeProvider, workdir: Path) -> None:
    gateway = Kaixu(workdir, policy_for(fake.base_url, cors={"allowed_origins": ["https://app.example.com"]})).start()
    try:
        ok = httpx.options(
            gateway.url + "/v1/chat/completions",
            headers={"origin": "https://app.example.com", "access-control-request-method": "POST"},
        )
        assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == "https://app.example.com"
        other = httpx.options(gateway.url + "/v1/chat/completions", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": HELLO},
            headers={"authorization": f"Bearer {TEST_KEY}", "origin": "https://app.example.com"},
        )
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    finally:
        gateway.stop()


def test_hot_reload_applies_edits_keeps_serving_and_rejects_bad_edits(fake: FakeProvider, workdir: Path) -> None:
    policy = policy_for(fake.base_url)
    gateway = Kaixu(workdir, policy).start()
    try:
        assert chat(gateway.url, model="brand-new").status_code == 404
        generation = gateway.health()["policy"]["generation"]

        statuses: list[int] = []
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(timeout=10) as http:
                while not stop.is_set():
                    r = http.post(
                        gateway.url + "/v1/chat/completions",
                        json={"model": "gpt-4o-mini", "messages": HELLO},
                        headers={"authorization": f"Bearer {TEST_KEY}"},
                    )
                    statuses.append(r.status_code)

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            for n in range(3):
                policy["models"][f"brand-new-{n}"] = {"route": [{"provider": "mock"}]}
                gateway.write_policy(policy)
                wait_for(lambda g=generation + n + 1: gateway.health()["policy"]["generation"] >= g, 10, "reload")
            policy["models"]["brand-new"] = {"route": [{"provider": "oai"}]}
            gateway.write_policy(policy)
            wait_for(lambda: chat(gateway.url, model="brand-new").status_code == 200, 10, "the new model")
        finally:
            stop.set()
            worker.join()
        assert statuses and set(statuses) == {200}, "a request failed during reloads"

        good_generation = gateway.health()["policy"]["generation"]
        gateway.write_policy("providers: {mock: {kind: nope}}\n")
        wait_for(lambda: gateway.health()["policy"]["last_reload_error"] is not None, 10, "the rejection")
        health = gateway.health()
        assert health["policy"]["generation"] == good_generation
        assert "providers.mock.kind" in health["policy"]["last_reload_error"]
        assert chat(gateway.url, model="brand-new").status_code == 200
        assert "policy reload rejected" in gateway.log()
        metrics = httpx.get(gateway.url + "/metrics").text
        assert f"kaixu_policy_generation {float(good_generation)}" in metrics
        assert "kaixu_policy_reload_failures_total 1.0" in metrics
    finally:
        gateway.stop()


def test_sigterm_lets_in_flight_requests_finish_and_flushes_the_ledger(fake: FakeProvider, workdir: Path) -> None:
    gateway = Kaixu(workdir, policy_for(fake.base_url, store={"sqlite": "ledger.db"})).start()
    assert chat(gateway.url, model="claude-test").status_code == 200
    fake.add_fault(Fault(latency_ms=1000))
    result: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: result.append(chat(gateway.url)))
    worker.start()
    wait_for(lambda: len(fake.requests) == 2, 10, "the request to reach the provider")
    assert gateway.stop() == 0
    worker.join()
    assert result[0].status_code == 200
    assert result[0].json()["choices"][0]["message"]["content"] == "echo: Hello"
    with sqlite3.connect(workdir / "ledger.db") as db:
        columns = "request_id, key_name, model, provider, status, input_tokens, output_tokens"
        rows = db.execute(f"SELECT {columns} FROM requests ORDER BY ts").fetchall()
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        ("test", "claude-test", "ant", 200),
        ("test", "gpt-4o-mini", "oai", 200),
    ]
    assert rows[1][0] == result[0].headers["x-request-id"]
    assert all(r[5] > 0 and r[6] > 0 for r in rows)


def test_mitmdump_plugin_runs_the_same_addons(fake: FakeProvider, workdir: Path) -> None:
    gateway = Kaixu(workdir, policy_for(fake.base_url), plugin=True).start()
    try:
        c = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)
        assert (
            c.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices[0].message.content == "echo: Hello"
        )
        chunks = list(c.chat.completions.create(model="mock-model", messages=HELLO, stream=True))
        assert "".join(x.choices[0].delta.content or "" for x in chunks if x.choices) == "echo: Hello"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gateway.url + "/v1", api_key="bad", max_retries=0).models.list()
        assert chat(gateway.url, model="dead-model").json()["error"]["code"] == "upstream_connect_error"
    finally:
        gateway.stop()


def test_shipped_policy_serves_the_mock(workdir: Path) -> None:
    text = (ROOT / "proxy.yaml").read_text()
    policy = yaml.safe_load(text)
    policy["listen"] = [{"host": "127.0.0.1", "port": 0}]
    gateway = Kaixu(workdir, policy).start()
    try:
        c = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-kaixu-demo", max_retries=0)
        assert (
            c.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices[0].message.content == "echo: Hello"
        )
        # the README's error examples
        assert chat(gateway.url, key="wrong").json()["error"]["code"] == "invalid_api_key"
        dead = chat(gateway.url, model="offline-demo", key="sk-kaixu-demo")
        assert dead.status_code == 502 and dead.json()["error"]["code"] == "upstream_connect_error"
    finally:
        gateway.stop()


def test_keys_new_prints_a_policy_line_that_authenticates_the_key(fake: FakeProvider, workdir: Path) -> None:
    made = kaixu_cli("keys", "new", "--name", "web-app")
    assert made.returncode == 0
    key = made.stderr.split("store it now): ", 1)[1].split()[0]
    entry = yaml.safe_load(made.stdout)[0]
    assert entry["name"] == "web-app" and key not in made.stdout
    assert kaixu_cli("keys", "hash", key).stdout.strip() == entry["hash"]
    policy = policy_for(fake.base_url)
    policy["keys"].append(entry)
    gateway = Kaixu(workdir, policy).start()
    try:
        assert chat(gateway.url, key=key).status_code == 200
    finally:
        gateway.stop()


def test_keys_hash_of_a_key_that_is_not_utf8_authenticates_it(fake: FakeProvider, workdir: Path) -> None:
    # a key is bytes on the wire: `kaixu keys hash` hashes it as the auth step does (one key_hash), not crash on it
    raw = b"sk-\xff-latin1"
    hashed = subprocess.run([sys.executable, "-m", "kaixu", "keys", "hash", raw], capture_output=True, timeout=60)
    assert hashed.returncode == 0, hashed.stderr
    policy = policy_for(fake.base_url)
    policy["keys"].append({"name": "raw", "hash": hashed.stdout.decode().strip()})
    gateway = Kaixu(workdir, policy).start()
    try:
        body = {"model": "gpt-4o-mini", "messages": HELLO}
        answer = httpx.post(
            gateway.url + "/v1/chat/completions", json=body, headers={"authorization": b"Bearer " + raw}
        )
        assert answer.status_code == 200, answer.text
    finally:
        gateway.stop()


def test_ledger_records_who_the_client_says_it_is(fake: FakeProvider, workdir: Path) -> None:
    gateway = Kaixu(workdir, policy_for(fake.base_url, store={"sqlite": "ledger.db"})).start()
    try:
        headers = {"authorization": f"Bearer {TEST_KEY}", "x-kaixu-app": "notes", "x-kaixu-build": "b7"}
        body = {"model": "gpt-4o-mini", "messages": HELLO}
        assert (
            httpx.post(gateway.url + "/.netlify/functions/gateway-chat", json=body, headers=headers).status_code == 200
        )
        pulse = {"model": "gpt-4o-mini", "prompt": "hi", "teamId": "team-1", "projectId": "p-2"}
        assert httpx.post(gateway.url + "/api/ai/request", json=pulse, headers=headers).status_code == 200
    finally:
        gateway.stop()
    with sqlite3.connect(workdir / "ledger.db") as db:
        rows = [json.loads(r[0]) for r in db.execute("SELECT attributes FROM requests ORDER BY ts")]
    assert rows == [
        {"app": "notes", "build": "b7"},
        {"app": "notes", "build": "b7", "teamId": "team-1", "projectId": "p-2"},
    ]


def test_access_log_has_one_line_per_request_without_secrets(fake: FakeProvider, workdir: Path) -> None:
    gateway = Kaixu(workdir, policy_for(fake.base_url), args=("--access-log",)).start()
    try:
        response = chat(gateway.url)
        assert chat(gateway.url, key="sk-wrong-key").status_code == 401
    finally:
        gateway.stop()
    lines = [line for line in gateway.log().splitlines() if "kaixu.access" in line]
    assert len(lines) == 2
    assert response.headers["x-request-id"] in lines[0] and " 200 " in lines[0] and "key=test" in lines[0]
    assert f" cost={response.headers['x-kaixu-cost-usd']} " in lines[0]  # the cost the client was told
    assert " 401 " in lines[1] and " cost=- " in lines[1]
    assert "sk-wrong-key" not in gateway.log() and TEST_KEY not in gateway.log()


def test_a_relayed_stream_cut_by_the_provider_is_logged_in_plain_words(fake: FakeProvider, workdir: Path) -> None:
    gateway = Kaixu(workdir, policy_for(fake.base_url), args=("--access-log",)).start()
    try:
        fake.add_fault(Fault(disconnect_after_events=2))
        body = {"model": "gpt-4o-mini", "messages": HELLO}
        headers = {"authorization": f"Bearer {TEST_KEY}"}
        httpx.post(gateway.url + "/.netlify/functions/gateway-stream", json=body, headers=headers, timeout=10)
        wait_for(lambda: " error=" in gateway.log(), 10, "the access log line")
    finally:
        gateway.stop()
    line = next(line for line in gateway.log().splitlines() if " error=" in line)
    assert "stream from provider 'oai' broke: peer closed connection" in line, line
    assert "Error(" not in line  # no Python exception repr (RemoteProtocolError('...'))


def test_https_provider_is_verified_against_the_policys_ca(workdir: Path) -> None:
    _ca_file, server_tls = make_tls_files(workdir)
    with FakeProvider(ssl_context=server_tls) as tls_fake:
        assert tls_fake.base_url.startswith("https://")
        policy = policy_for(tls_fake.base_url, tls={"ca_file": "ca.pem"})
        gateway = Kaixu(workdir, policy).start()
        try:
            response = chat(gateway.url)
            assert response.status_code == 200, response.text
            assert tls_fake.requests[-1].headers["authorization"] == "Bearer " + UPSTREAM_KEYS["openai"]
            # without the CA, the provider's certificate is not trusted: a JSON 502, never a plaintext retry
            del policy["tls"]
            gateway.write_policy(policy)
            wait_for(lambda: chat(gateway.url).status_code == 502, 10, "the reload without the CA")
            error = chat(gateway.url).json()["error"]
            assert error["code"] == "upstream_connect_error" and "certificate" in error["message"].lower()
        finally:
            gateway.stop()


def test_missing_ca_file_is_a_policy_problem(workdir: Path) -> None:
    (workdir / "p.yaml").write_text("providers: {mock: {kind: mock}}\ntls: {ca_file: nowhere.pem}\n")
    result = kaixu_cli("check", str(workdir / "p.yaml"))
    assert result.returncode == 1 and "line 2: tls.ca_file: no such file" in result.stderr


def test_a_provider_rejecting_kaixus_key_is_a_502_without_the_providers_words(workdir: Path) -> None:
    with FakeProvider(require_key="sk-what-the-provider-expects") as strict:
        gateway = Kaixu(workdir, policy_for(strict.base_url)).start()
        try:
            response = chat(gateway.url)
            assert response.status_code == 502
            error = response.json()["error"]
            assert error["code"] == "provider_auth_failed" and "'oai'" in error["message"]
            assert "Incorrect API key" not in response.text and UPSTREAM_KEYS["openai"] not in response.text
            stream = httpx.post(
                gateway.url + "/.netlify/functions/gateway-stream",
                json={"model": "gpt-4o-mini", "messages": HELLO},
                headers={"authorization": f"Bearer {TEST_KEY}"},
            )
            assert "rejected the API key configured for it" in stream.text and "Incorrect" not in stream.text
            assert "rejected the API key configured for it" in gateway.log()
        finally:
            gateway.stop()


def test_with_byok_the_providers_401_reaches_the_client(workdir: Path) -> None:
    with FakeProvider(require_key="sk-what-the-provider-expects") as strict:
        gateway = Kaixu(workdir, policy_for(strict.base_url, auth={"byok": True})).start()
        try:
            response = chat(gateway.url, key="sk-clients-own-wrong-key")
            assert response.status_code == 401 and "Incorrect API key" in response.text
        finally:
            gateway.stop()


def test_access_log_names_method_path_and_a_valid_key_even_for_an_unknown_endpoint(
    fake: FakeProvider, workdir: Path
) -> None:
    gateway = Kaixu(workdir, policy_for(fake.base_url), args=("--access-log",)).start()
    try:
        auth = {"authorization": f"Bearer {TEST_KEY}"}
        ok = chat(gateway.url)
        unknown = httpx.post(gateway.url + "/v1/nope?key=secret-in-query", json={}, headers=auth, timeout=10)
        assert unknown.status_code == 404
        stranger = httpx.post(gateway.url + "/v1/nope", json={}, headers={"authorization": "Bearer sk-wrong"})
        assert stranger.status_code == 404
        wait_for(lambda: gateway.log().count("kaixu.access") == 3, 10, "three access log lines")
    finally:
        gateway.stop()
    lines = {
        line.split("kaixu.access: ")[1].split()[0]: line
        for line in gateway.log().splitlines()
        if "kaixu.access" in line
    }
    assert " POST /v1/chat/completions openai chat 200 " in lines[ok.headers["x-request-id"]]
    line = lines[unknown.headers["x-request-id"]]
    assert " POST /v1/nope openai - 404 " in line and "key=test" in line, line
    assert "secret-in-query" not in gateway.log()
    assert "key=-" in lines[stranger.headers["x-request-id"]]  # an invalid key names no one


def test_root_answers_get_and_head_without_a_404(kaixu: Kaixu) -> None:
    """Claude Code sends `HEAD /` to its base URL before it starts; a person may open the URL in a browser."""
    got = httpx.get(kaixu.url + "/")
    assert got.status_code == 200 and got.headers["x-request-id"]
    body = got.json()
    assert body["name"] == "kaixu" and body["version"] and "docs" in body
    head = httpx.head(kaixu.url + "/")
    assert head.status_code == 200 and head.content == b"" and head.headers["x-request-id"]
    assert " 404 " not in kaixu.log()


async def test_the_mock_puts_the_request_id_in_its_own_errors() -> None:
    """The mock is kaixu's own provider: its errors carry the call's id (sent as x-request-id) like kaixu's."""
    from kaixu.providers.mock import MOCK_ROUTE, LoopbackServer

    server = LoopbackServer([MOCK_ROUTE])
    url = server.start()
    try:
        async with httpx.AsyncClient(base_url=url, headers={"x-request-id": "req-42"}) as client:
            answers = [
                await client.post("/v1/chat/completions", content=b"{not json"),
                await client.post("/v1/messages", json={"model": "m", "messages": [{"role": "bogus"}]}),
                await client.post("/v1/nowhere", json={}),
                await client.get("/v1/nowhere"),
            ]
    finally:
        await server.stop()
    assert [a.status_code for a in answers] == [400, 400, 404, 404]
    assert all(a.json()["request_id"] == "req-42" for a in answers), [a.text for a in answers]
