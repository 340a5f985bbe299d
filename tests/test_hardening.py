"""The request path against hostile and careless clients: each test here failed on the code before the
hardening issue (bodies, timeouts, injection, headers, protocol errors, HTTP/2, disconnects)."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.provider import FakeProvider, Fault
from tests.harness import TEST_KEY, UPSTREAM_KEYS, Kaixu, ledger_row, policy_for, wait_for

HELLO = [{"role": "user", "content": "Hello"}]
AUTH = {"authorization": f"Bearer {TEST_KEY}"}
LIMIT = 1_000_000


@pytest.fixture(scope="module")
def gw(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"})
    policy["limits"].update({"client_header_timeout_s": 1, "client_idle_timeout_s": 1, "max_body_bytes": LIMIT})
    policy["models"]["glob-*"] = {"route": [{"provider": "gem"}]}
    policy["models"]["oai-*"] = {"route": [{"provider": "oai"}]}
    gateway = Kaixu(tmp_path_factory.mktemp("hardening"), policy, args=("--access-log",)).start()
    yield gateway
    gateway.stop()


def answer_complete(received: bytes) -> bool:
    head, sep, body = received.partition(b"\r\n\r\n")
    length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return bool(sep and length) and len(body) >= int(length[0].split(b":")[1])


def raw_exchange(gateway: Kaixu, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes on a fresh connection; read until kaixu closes it or the answer is complete."""
    with socket.create_connection((gateway.host, gateway.port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
            if answer_complete(received):
                return received


def test_an_oversized_body_is_a_413_every_client_can_read_and_is_recorded_as_413(gw: Kaixu) -> None:
    big = "x" * (LIMIT + 10)
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": big}]},
        headers=AUTH,
        timeout=15,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=15)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": big}])
    assert raised.value.status_code == 413
    assert ledger_row(gw, response.headers["x-request-id"])["status"] == 413
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'status="413"' in metrics


def test_gzip_is_inflated_only_after_auth_and_never_past_the_limit(gw: Kaixu, fake: FakeProvider) -> None:
    bomb = gzip.compress(b"\0" * 200_000_000)  # ~200 KB that inflates to 200 MB
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    anonymous = httpx.post(gw.url + "/v1/chat/completions", content=bomb, headers=headers)
    assert anonymous.status_code == 401
    authenticated = httpx.post(gw.url + "/v1/chat/completions", content=bomb, headers={**headers, **AUTH})
    assert authenticated.status_code == 413
    assert "decompressed" in authenticated.json()["error"]["message"]
    fake.clear()
    plain = json.dumps({"model": "gpt-4o-mini", "messages": HELLO}).encode()
    ok = httpx.post(gw.url + "/v1/chat/completions", content=gzip.compress(plain), headers={**headers, **AUTH})
    assert ok.status_code == 200, ok.text
    (forwarded,) = fake.requests
    assert "content-encoding" not in forwarded.headers and forwarded.json["messages"] == HELLO
    not_gzip = httpx.post(gw.url + "/v1/chat/completions", content=b"not gzip", headers={**headers, **AUTH})
    assert not_gzip.status_code == 400


def test_a_body_nested_10000_deep_is_a_400_and_goes_nowhere(gw: Kaixu, fake: FakeProvider) -> None:
    fake.clear()
    deep = b'{"model":"gpt-4o-mini","messages":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    response = httpx.post(gw.url + "/v1/chat/completions", content=deep, headers=AUTH)
    assert response.status_code == 400 and "nests deeper" in response.json()["error"]["message"]
    tool_schema: dict[str, Any] = {}
    for _ in range(500):
        tool_schema = {"type": "object", "properties": {"x": tool_schema}}
    nested = {"model": "gemini-test", "messages": HELLO, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": tool_schema}}]}  # fmt: skip
    assert httpx.post(gw.url + "/v1/chat/completions", json=nested, headers=AUTH).status_code == 400
    assert fake.requests == []


@pytest.mark.parametrize(
    "model",
    ["glob-/../../../v1/models?x=", "glob-a?b", "glob-a#b", "glob-%2e%2e", "glob-a b", "glob-a\nb", "x" * 300],
)
def test_a_model_name_cannot_steer_the_provider_url(gw: Kaixu, fake: FakeProvider, model: str) -> None:
    fake.clear()
    response = httpx.post(gw.url + "/v1/chat/completions", json={"model": model, "messages": HELLO}, headers=AUTH)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_field"
    assert fake.requests == []


def test_a_slash_in_a_model_name_stays_inside_the_path_segment(gw: Kaixu, fake: FakeProvider) -> None:
    fake.clear()
    response = httpx.post(
        gw.url + "/v1/chat/completions", json={"model": "glob-org/model", "messages": HELLO}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    (forwarded,) = fake.requests
    assert forwarded.path == "/v1beta/models/glob-org%2Fmodel:generateContent"


def test_metric_labels_are_policy_names_never_the_clients_string(gw: Kaixu) -> None:
    response = httpx.post(
        gw.url + "/v1/chat/completions", json={"model": "oai-anything-1234", "messages": HELLO}, headers=AUTH
    )
    assert response.status_code == 200
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'model="oai-*"' in metrics and "oai-anything-1234" not in metrics


def test_a_newline_in_a_model_name_forges_no_log_line(gw: Kaixu) -> None:
    marker = "FORGED 200 injected-line"
    body = {"model": f"gpt-4o-mini\n{marker}", "messages": HELLO}
    assert httpx.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH).status_code == 400
    gemini = f"/v1beta/models/a%0A{marker.replace(' ', '%20')}:generateContent"
    assert httpx.post(gw.url + gemini, json={}, headers=AUTH).status_code == 400
    httpx.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO}, headers=AUTH)
    wait_for(lambda: "gpt-4o-mini -> oai" in gw.log(), 10, "the access log line")
    assert not any(line.startswith(marker) for line in gw.log().splitlines())


def test_only_allowlisted_headers_reach_the_provider(gw: Kaixu, fake: FakeProvider) -> None:
    fake.clear()
    sent = {
        **AUTH,
        "cookie": "session=secret-cookie",
        "proxy-authorization": "Basic cHJveHk6c2VjcmV0",
        "api-key": "client-azure-key",
        "x-forwarded-for": "10.1.2.3",
        "x-kaixu-app": "my-app",
        "anthropic-beta": "tools-2024-04-04",
    }
    response = httpx.post(
        gw.url + "/v1/messages",
        json={"model": "claude-test", "max_tokens": 16, "messages": HELLO},
        headers={**sent, "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 200, response.text
    (forwarded,) = fake.requests
    names = {name.lower() for name in forwarded.headers}
    assert not names & {"cookie", "proxy-authorization", "api-key", "x-forwarded-for", "x-kaixu-app", "authorization"}
    assert forwarded.headers.get("x-api-key") == UPSTREAM_KEYS["anthropic"]
    assert forwarded.headers.get("anthropic-beta") == "tools-2024-04-04"


def test_the_provider_gets_the_calls_request_id(gw: Kaixu, fake: FakeProvider) -> None:
    """kaixu's own mock puts it in its errors; a provider's logs line up with kaixu's. A client's id that kaixu
    did not adopt (not printable) is not forwarded as it came."""
    body = {"model": "gpt-4o-mini", "messages": HELLO}
    for sent in ({}, {"x-request-id": "client-id-7"}, {"x-request-id": "x" * 300}):
        fake.clear()
        response = httpx.post(gw.url + "/v1/chat/completions", json=body, headers={**AUTH, **sent})
        assert response.status_code == 200, response.text
        (forwarded,) = fake.requests
        assert forwarded.headers.get("x-request-id") == response.headers["x-request-id"], sent
    assert response.headers["x-request-id"] != "x" * 300


def test_a_malformed_chunked_body_is_a_json_400(gw: Kaixu) -> None:
    answer = raw_exchange(
        gw,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: kaixu\r\nauthorization: Bearer sk-test\r\n"
        b"transfer-encoding: chunked\r\n\r\nzz\r\n",
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"application/json" in head
    assert "malformed" in json.loads(body)["error"]["message"]
    request_id = head.partition(b"x-request-id: ")[2].partition(b"\r\n")[0].decode()
    assert ledger_row(gw, request_id)["status"] == 400


def test_an_unparseable_request_head_is_a_json_400(gw: Kaixu) -> None:
    answer = raw_exchange(gw, b"POST /v1/chat/completions HTTP/1.1\r\nno colon here\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"application/json" in head
    assert "error" in json.loads(body)


def test_an_oversized_request_head_is_a_json_431(gw: Kaixu) -> None:
    answer = raw_exchange(gw, b"GET /health HTTP/1.1\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ") and b"application/json" in answer.partition(b"\r\n\r\n")[0]


def test_an_http2_client_with_prior_knowledge_is_answered(gw: Kaixu) -> None:
    common = ["curl", "-s", "-i", "--http2-prior-knowledge", "--max-time", "10", gw.url + "/v1/chat/completions"]
    body = json.dumps({"model": "gpt-4o-mini", "messages": HELLO})
    ok = subprocess.run([*common, "-H", f"authorization: Bearer {TEST_KEY}", "-d", body], capture_output=True)
    assert ok.stdout.startswith(b"HTTP/2 200"), ok
    refused = subprocess.run([*common, "-d", body], capture_output=True)
    assert refused.stdout.startswith(b"HTTP/2 401") and b'"missing_api_key"' in refused.stdout
    dead = subprocess.run(
        [
            *common,
            "-H",
            f"authorization: Bearer {TEST_KEY}",
            "-d",
            json.dumps({"model": "dead-model", "messages": HELLO}),
        ],
        capture_output=True,
    )
    assert dead.stdout.startswith(b"HTTP/2 502") and b"application/json" in dead.stdout


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the peer closed `sock` (bounded: raises if it is still open after `seconds`)."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return time.monotonic() - start


def test_a_client_sending_its_head_slowly_is_cut_off(gw: Kaixu) -> None:
    with socket.create_connection((gw.host, gw.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")  # and never the rest
        assert closed_within(sock, 8) < 8


def test_idle_keep_alive_connections_are_closed(gw: Kaixu) -> None:
    with socket.create_connection((gw.host, gw.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert closed_within(sock, 8) < 8


def test_connections_beyond_the_cap_are_closed(fake: FakeProvider, workdir: Path) -> None:
    policy = policy_for(fake.base_url)
    policy["limits"]["max_client_connections"] = 3
    gateway = Kaixu(workdir, policy).start()
    held = [socket.create_connection((gateway.host, gateway.port)) for _ in range(3)]
    try:
        for sock in held:  # all three are served
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        with socket.create_connection((gateway.host, gateway.port)) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            assert closed_within(extra, 8) < 8
    finally:
        for sock in held:
            sock.close()
        gateway.stop()


def test_a_client_that_disconnects_mid_stream_is_recorded_as_499(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(event_delay_ms=300))
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "a long story " * 20}]}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=AUTH) as response,
    ):
        request_id = response.headers["x-request-id"]
        next(response.iter_raw())
    row = ledger_row(gw, request_id)
    assert (row["status"], row["client_disconnected"]) == (499, 1)


def test_same_format_provider_errors_carry_the_request_id(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=429, retry_after=3))
    response = httpx.post(
        gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO}, headers=AUTH
    )
    assert response.status_code == 429 and response.headers.get("retry-after") == "3"
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert "error" in response.json()


def test_under_mitmdump_other_listeners_keep_stock_behaviour(fake: FakeProvider, workdir: Path) -> None:
    """kaixu as a plugin takes its reverse listener; a regular proxy listener in the same mitmdump is untouched."""
    with socket.socket() as probe:  # mitmproxy refuses two listeners on "port 0" of one host
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    # not quiet: mitmdump's dumper prints a line per flow it sees
    gateway = Kaixu(
        workdir, policy_for(fake.base_url), plugin=True, quiet=False, args=("--mode", f"regular@127.0.0.1:{free}")
    )
    gateway.start()
    try:
        addrs = json.loads(gateway.port_file.read_text())
        assert len(addrs) == 2
        proxy = "http://{}:{}".format(*addrs[1])
        fake.clear()
        with httpx.Client(proxy=proxy, timeout=10) as client:
            direct = client.post(
                fake.base_url + "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": HELLO},
                headers={"authorization": f"Bearer {UPSTREAM_KEYS['openai']}", "cookie": "c=1"},
            )
            assert direct.status_code == 200 and "x-kaixu-request-id" not in direct.headers
            (forwarded,) = fake.requests
            assert forwarded.headers.get("cookie") == "c=1"  # kaixu's allowlist is not applied here
            dead = client.get("http://127.0.0.1:9/")
            assert dead.status_code == 502 and "text/html" in dead.headers["content-type"]  # mitmproxy's own page
        assert httpx.post(gateway.url + "/v1/chat/completions?kaixus-own", json={}).status_code == 401  # kaixu's
    finally:
        gateway.stop()
    # kaixu's flows meet only the addons `kaixu run` has (kaixu/mitm.py PluginAddonManager): the dumper, one of
    # mitmdump's default addons, printed the regular listener's flows and not kaixu's
    assert "127.0.0.1:9/" in gateway.log() and "kaixus-own" not in gateway.log()


def test_an_absolute_form_request_target_goes_upstream_in_origin_form(gw: Kaixu, fake: FakeProvider) -> None:
    fake.clear()
    body = json.dumps({"model": "gpt-4o-mini", "messages": HELLO}).encode()
    answer = raw_exchange(
        gw,
        b"POST http://evil.example/v1/chat/completions HTTP/1.1\r\nhost: evil.example\r\n"
        b"authorization: Bearer sk-test\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    (forwarded,) = fake.requests
    assert forwarded.path == "/v1/chat/completions" and "evil" not in forwarded.headers.get("host", "")


def test_a_slow_reader_gets_its_whole_answer_past_the_idle_timeout(gw: Kaixu) -> None:
    """The idle timeout starts when an answer is handed over; what is still buffered for a slow reader is
    delivered before the connection closes."""
    inputs = [f"text {i}" for i in range(200)]  # about 2 MB of answer: more than the sockets' buffers hold
    body = json.dumps({"model": "text-embedding-3-small", "input": inputs, "dimensions": 512}).encode()
    with socket.create_connection((gw.host, gw.port), timeout=15) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-test\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        time.sleep(3)  # the scenario itself: a client that reads nothing for 3 idle timeouts
        received = b""
        while not answer_complete(received):
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {len(received)} bytes"
            received += chunk
    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and len(json.loads(payload)["data"]) == 200


def test_an_upstream_failure_after_100_continue_is_still_a_json_502(gw: Kaixu) -> None:
    """mitmproxy sends no error at all once it has sent `100 Continue`; kaixu's clients get their 502."""
    body = json.dumps({"model": "dead-model", "messages": HELLO}).encode()
    with socket.create_connection((gw.host, gw.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-test\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\nexpect: 100-continue\r\n\r\n" % len(body)
        )
        assert sock.recv(1000).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        received = b""
        while not answer_complete(received):
            chunk = sock.recv(65536)
            assert chunk, f"closed without an answer after {received!r}"
            received += chunk
    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 ") and json.loads(payload)["error"]["code"] == "upstream_connect_error"


def test_answers_do_not_name_the_loopback_servers_software(gw: Kaixu) -> None:
    answer = httpx.post(gw.url + "/v1/chat/completions", json={"model": "mock-model", "messages": HELLO}, headers=AUTH)
    assert answer.status_code == 200 and "tornado" not in answer.headers.get("server", "").lower()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", b'{"model": "mock-model", "input": "\xed\xa0\x80"}'),
        ("/v1beta/models/mock-model:embedContent", b'{"content": {"parts": [{"text": "\xed\xa0\x80"}]}}'),
        ("/v1/chat/completions", b'{"model": "mock-model", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}'),
    ],
)
def test_the_mock_provider_answers_json_to_a_lone_surrogate(gw: Kaixu, path: str, body: bytes) -> None:
    """Found by the wire fuzz: UTF-8 bytes of a lone surrogate (json.loads takes them) made the built-in mock
    provider raise, and the client got tornado's HTML 500."""
    headers = {**AUTH, "x-goog-api-key": TEST_KEY, "content-type": "application/json"}
    response = httpx.post(gw.url + path, content=body, headers=headers, timeout=10)
    assert response.headers["content-type"].startswith("application/json"), response.text
    assert response.status_code < 500, response.text
    response.json()
