"""kaixu as an HTTPS forward proxy (`listen[].mode: forward`, docs/forward-proxy.md): the official SDKs with their
default base URLs, sent through kaixu only by a proxy setting and kaixu's CA, get their answers from the fake
provider the policy routes the providers' hosts to, priced, limited and recorded as on a reverse listener; every
other host is tunnelled untouched (the client sees that host's own certificate) or refused; a client that does
not trust kaixu's CA gets a TLS error, never an answer.

There is no network here: `api.openai.com` and the others are never resolved, since the proxy decides where a
CONNECT goes and the policy sends those hosts to the fake provider. The "other" host is a TLS server of the
test's own on `localhost`, with a certificate from a throwaway CA (tests/tls.py).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types

from tests.fakes.provider import FakeProvider
from tests.harness import (
    LIMITED_KEY,
    TEST_KEY,
    UPSTREAM_KEYS,
    Kaixu,
    ledger_row,
    policy_for,
    unavailable,
    wait_for,
)
from tests.tls import make_tls_files

FORWARD_HOST = "127.0.0.2"  # the reverse listener takes 127.0.0.1:0 (two port-0 listeners need two hosts)
REAL_PROVIDER_KEY = "sk-proj-REAL-provider-key-baked-into-the-app"
SELF_HOSTED = "llm.example.test"  # a host the policy adds to the intercepted ones (never resolved: routed)


class Other:
    """A TLS server on `localhost` that is not a provider: what a forward proxy must tunnel untouched."""

    def __init__(self, folder: Path) -> None:
        self.ca_file, context = make_tls_files(folder)
        self.seen: list[dict[str, str]] = []
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append({k.lower(): v for k, v in self.headers.items()})
                body = b'{"other": true}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def forward_policy(fake: FakeProvider, **forward: Any) -> dict[str, Any]:
    policy = policy_for(
        fake.base_url,
        listen=[{"host": "127.0.0.1", "port": 0}, {"host": FORWARD_HOST, "port": 0, "mode": "forward"}],
        store={"sqlite": "ledger.db"},
    )
    policy["keys"][1]["limits"] = {"rpm": 2}  # `limited`: limits apply through the forward listener too
    policy["forward"] = {"intercept_hosts": [SELF_HOSTED], **forward}
    return policy


@pytest.fixture(scope="module")
def gw(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    gateway = Kaixu(tmp_path_factory.mktemp("forward"), forward_policy(fake)).start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def strict(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    """`others: deny`, and `credentials: replace` billing apps on this machine to the `limited` key."""
    policy = forward_policy(
        fake, others="deny", credentials="replace", clients=[{"address": "127.0.0.0/8", "key": "limited"}]
    )
    policy["keys"][1]["limits"] = {"rpm": 1000}
    gateway = Kaixu(tmp_path_factory.mktemp("strict"), policy).start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Other]:
    server = Other(tmp_path_factory.mktemp("other"))
    yield server
    server.stop()


def ca_file(gateway: Kaixu) -> Path:
    return gateway.workdir / "kaixu-ca" / "mitmproxy-ca-cert.pem"


def trusting(gateway: Kaixu) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file(gateway)))


def proxied(gateway: Kaixu, key: str | None = None) -> httpx.Client:
    """An httpx client going through the forward listener (with `key` as the proxy password), trusting kaixu's CA."""
    proxy = gateway.proxy_urls[0]
    if key is not None:
        proxy = proxy.replace("http://", f"http://app:{key}@")
    return httpx.Client(proxy=proxy, verify=trusting(gateway), timeout=20)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def upstream_saw(fake: FakeProvider, marker: str) -> dict[str, str]:
    """The headers of the one request the fake provider got whose body carries `marker`."""
    found = [r for r in fake.requests if marker.encode() in r.body]
    assert len(found) == 1, [r.path for r in fake.requests]
    return {k.lower(): v for k, v in found[0].headers.items()}


def assert_no_secret_left(headers: dict[str, str], *secrets: str) -> None:
    assert "proxy-authorization" not in headers
    for secret in secrets:
        assert all(secret not in value for value in headers.values()), secret


# -- the SDKs, default base URLs ------------------------------------------------------------------------------------


def test_openai_sdk_json_and_stream_through_the_forward_listener(gw: Kaixu, fake: FakeProvider) -> None:
    client = openai.OpenAI(api_key=TEST_KEY, http_client=proxied(gw), max_retries=0)
    assert str(client.base_url) == "https://api.openai.com/v1/"
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=chat("forward json"))  # type: ignore[arg-type]
    answer = raw.parse()
    assert answer.choices[0].message.content == "echo: forward json"
    assert raw.headers["x-kaixu-served-by"] == "oai/gpt-4o-mini"
    row = ledger_row(gw, raw.headers["x-request-id"])
    assert (row["key_name"], row["status"], row["input_tokens"]) == ("test", 200, answer.usage.prompt_tokens)  # type: ignore[union-attr]
    assert row["cost_micros"] > 0
    sent = upstream_saw(fake, "forward json")
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEYS['openai']}"  # kaixu's provider key, not the client's
    assert_no_secret_left(sent, TEST_KEY)

    stream = client.chat.completions.create(model="gpt-4o-mini", messages=chat("forward stream"), stream=True)  # type: ignore[arg-type]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "echo: forward stream"


def test_anthropic_sdk_json_and_stream(gw: Kaixu, fake: FakeProvider) -> None:
    http_client = anthropic.DefaultHttpxClient(proxy=gw.proxy_urls[0], verify=trusting(gw))  # (this SDK's httpx2)
    client = anthropic.Anthropic(api_key=TEST_KEY, http_client=http_client, max_retries=0)
    assert str(client.base_url).rstrip("/") == "https://api.anthropic.com"
    raw = client.messages.with_raw_response.create(model="claude-test", max_tokens=50, messages=chat("ant json"))  # type: ignore[arg-type]
    message = raw.parse()
    assert message.content[0].text == "echo: ant json"  # type: ignore[union-attr]
    row = ledger_row(gw, raw.headers["x-request-id"])
    assert (row["key_name"], row["status"]) == ("test", 200) and row["cost_micros"] > 0
    sent = upstream_saw(fake, "ant json")
    assert sent["x-api-key"] == UPSTREAM_KEYS["anthropic"]
    assert_no_secret_left(sent, TEST_KEY)
    with client.messages.stream(model="claude-test", max_tokens=50, messages=chat("ant stream")) as stream:  # type: ignore[arg-type]
        assert "".join(stream.text_stream) == "echo: ant stream"


def test_google_genai_sdk_json_and_stream(gw: Kaixu, fake: FakeProvider) -> None:
    client = genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(httpx_client=proxied(gw)))
    answer = client.models.generate_content(model="gemini-test", contents="gem json")
    assert answer.text == "echo: gem json"
    sent = upstream_saw(fake, "gem json")
    assert sent["x-goog-api-key"] == UPSTREAM_KEYS["gemini"]
    assert_no_secret_left(sent, TEST_KEY)
    text = "".join(c.text or "" for c in client.models.generate_content_stream(model="gemini-test", contents="gem s"))
    assert text == "echo: gem s"


def test_the_sdk_configured_by_the_environment_alone(gw: Kaixu) -> None:
    """What a person does (`kaixu env python`): HTTPS_PROXY and SSL_CERT_FILE, no code change, in a fresh process."""
    script = (
        "import openai\n"
        "c = openai.OpenAI(max_retries=0)\n"
        "r = c.chat.completions.create(model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'env only'}])\n"
        "print(r.choices[0].message.content)\n"
    )
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper() and not k.startswith("OPENAI_")}
    env |= {"HTTPS_PROXY": gw.proxy_urls[0], "SSL_CERT_FILE": str(ca_file(gw)), "OPENAI_API_KEY": TEST_KEY}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "echo: env only"


def test_the_host_names_the_door_where_the_path_does_not(gw: Kaixu) -> None:
    """`/v1/models` is shared by three SDKs, an unknown path has no door: the provider's host the app called says."""
    with proxied(gw) as client:
        models = client.get("https://api.anthropic.com/v1/models", headers={"x-api-key": TEST_KEY})
        assert models.status_code == 200 and "has_more" in models.json()  # Anthropic's list, no anthropic-version
        unknown = client.get("https://generativelanguage.googleapis.com/v9/nothing", headers={"x-goog-api-key": "k"})
        assert unknown.status_code == 404 and unknown.json()["error"]["status"] == "NOT_FOUND"  # Gemini's shape


def test_intercept_hosts_adds_a_host(gw: Kaixu, fake: FakeProvider) -> None:
    client = openai.OpenAI(api_key=TEST_KEY, base_url=f"https://{SELF_HOSTED}/v1", http_client=proxied(gw))
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=chat("self hosted"))  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "echo: self hosted"
    assert upstream_saw(fake, "self hosted")["authorization"] == f"Bearer {UPSTREAM_KEYS['openai']}"


# -- credentials -----------------------------------------------------------------------------------------------------


def test_a_kaixu_key_as_the_proxy_password_governs_an_app_with_a_real_provider_key(
    gw: Kaixu, fake: FakeProvider
) -> None:
    client = openai.OpenAI(api_key=REAL_PROVIDER_KEY, http_client=proxied(gw, TEST_KEY), max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=chat("proxy password"))  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == "echo: proxy password"
    assert ledger_row(gw, raw.headers["x-request-id"])["key_name"] == "test"
    sent = upstream_saw(fake, "proxy password")
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEYS['openai']}"
    assert_no_secret_left(sent, TEST_KEY, REAL_PROVIDER_KEY)
    assert TEST_KEY not in gw.log() and REAL_PROVIDER_KEY not in gw.log()


def test_limits_apply_through_the_forward_listener(gw: Kaixu) -> None:
    client = openai.OpenAI(api_key=REAL_PROVIDER_KEY, http_client=proxied(gw, LIMITED_KEY), max_retries=0)
    statuses = []
    for index in range(3):
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=chat(f"limited {index}"))  # type: ignore[arg-type]
            statuses.append(200)
        except openai.RateLimitError as exc:
            statuses.append(exc.status_code)
            assert exc.response.headers["retry-after"]
    assert statuses == [200, 200, 429]


def test_unknown_credentials_are_refused_and_nothing_is_forwarded(gw: Kaixu, fake: FakeProvider) -> None:
    client = openai.OpenAI(api_key=REAL_PROVIDER_KEY, http_client=proxied(gw), max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=chat("unknown key"))  # type: ignore[arg-type]
    assert refused.value.code == "invalid_api_key"
    wrong = openai.OpenAI(api_key=TEST_KEY, http_client=proxied(gw, "sk-not-a-kaixu-key"), max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.chat.completions.create(model="gpt-4o-mini", messages=chat("wrong proxy password"))  # type: ignore[arg-type]
    assert refused.value.code == "invalid_proxy_credential"
    with proxied(gw) as bare:  # no credential at all
        missing = bare.post("https://api.openai.com/v1/chat/completions", json={"model": "gpt-4o-mini"})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert not [r for r in fake.requests if b"unknown key" in r.body or b"wrong proxy password" in r.body]
    assert "sk-not-a-kaixu-key" not in gw.log()


def test_forward_byok_forwards_the_apps_own_key(gw: Kaixu, fake: FakeProvider) -> None:
    """`forward.byok: true` (a hot reload of the module's gateway, undone after): an unknown key goes upstream as is."""
    generation = gw.health()["policy"]["generation"]
    gw.write_policy(forward_policy(fake, byok=True))
    wait_for(lambda: gw.health()["policy"]["generation"] > generation, 10, "the byok policy")
    try:
        client = openai.OpenAI(api_key=REAL_PROVIDER_KEY, http_client=proxied(gw), max_retries=0)
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=chat("own key"))  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "echo: own key"
        assert upstream_saw(fake, "own key")["authorization"] == f"Bearer {REAL_PROVIDER_KEY}"
    finally:
        generation = gw.health()["policy"]["generation"]
        gw.write_policy(forward_policy(fake))
        wait_for(lambda: gw.health()["policy"]["generation"] > generation, 10, "the policy back")


def test_replace_bills_an_app_by_its_address_and_replaces_its_provider_key(strict: Kaixu, fake: FakeProvider) -> None:
    client = openai.OpenAI(api_key=REAL_PROVIDER_KEY, http_client=proxied(strict), max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=chat("by address"))  # type: ignore[arg-type]
    assert ledger_row(strict, raw.headers["x-request-id"])["key_name"] == "limited"
    sent = upstream_saw(fake, "by address")
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEYS['openai']}"
    assert_no_secret_left(sent, REAL_PROVIDER_KEY)
    # a kaixu key the app does send still names the caller
    named = openai.OpenAI(api_key=TEST_KEY, http_client=proxied(strict), max_retries=0)
    raw = named.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=chat("named"))  # type: ignore[arg-type]
    assert ledger_row(strict, raw.headers["x-request-id"])["key_name"] == "test"


# -- other hosts -----------------------------------------------------------------------------------------------------


def connect(proxy_url: str, host: str, port: int, key: str | None = None) -> tuple[int, socket.socket]:
    """A CONNECT through the forward listener, as any proxy client sends it: the status and the socket."""
    proxy = urlsplit(proxy_url)
    sock = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
    head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if key is not None:
        head += f"Proxy-Authorization: Basic {base64.b64encode(f'app:{key}'.encode()).decode()}\r\n"
    sock.sendall((head + "\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        data = sock.recv(4096)
        if not data:
            break
        answer += data
    return int(answer.split(b" ", 2)[1]), sock


def test_another_host_is_tunnelled_untouched(gw: Kaixu, other: Other) -> None:
    status, sock = connect(gw.proxy_urls[0], "localhost", other.port, TEST_KEY)
    assert status == 200
    context = ssl.create_default_context(cafile=str(other.ca_file))
    with context.wrap_socket(sock, server_hostname="localhost") as tls:
        issuer = dict(item[0] for item in tls.getpeercert()["issuer"])  # type: ignore[index]
        assert issuer["commonName"] == "kaixu test CA"  # the host's own certificate: kaixu did not terminate TLS
        tls.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
        assert answer.endswith(b'{"other": true}')
    assert_no_secret_left(other.seen[-1], TEST_KEY)
    # kaixu's CA does not vouch for it: the certificate is not one kaixu made
    status, sock = connect(gw.proxy_urls[0], "localhost", other.port)
    with pytest.raises(ssl.SSLCertVerificationError), trusting(gw).wrap_socket(sock, server_hostname="localhost"):
        pass
    # and an SDK-style client reaches it through the same proxy
    with httpx.Client(proxy=gw.proxy_urls[0], verify=ssl.create_default_context(cafile=str(other.ca_file))) as c:
        assert c.get(f"https://localhost:{other.port}/y").json() == {"other": True}


def test_plain_http_to_another_host_goes_without_the_proxy_credential(gw: Kaixu, fake: FakeProvider) -> None:
    body = {"model": "gpt-4o-mini", "messages": chat("plain other")}
    with proxied(gw, TEST_KEY) as client:  # the fake provider as an ordinary host, over plain HTTP: not intercepted
        answer = client.post(fake.base_url + "/v1/chat/completions", json=body, headers={"authorization": "Bearer x"})
    assert answer.status_code == 200 and "x-kaixu-request-id" not in answer.headers  # not kaixu's: passed on as is
    assert upstream_saw(fake, "plain other")["authorization"] == "Bearer x"
    assert_no_secret_left(upstream_saw(fake, "plain other"), TEST_KEY)


def test_others_deny_refuses_the_connect(strict: Kaixu, other: Other, fake: FakeProvider) -> None:
    status, sock = connect(strict.proxy_urls[0], "localhost", other.port)
    sock.close()
    assert status == 403
    seen = len(other.seen)
    verify = ssl.create_default_context(cafile=str(other.ca_file))
    with httpx.Client(proxy=strict.proxy_urls[0], verify=verify) as c, pytest.raises(httpx.ProxyError):
        c.get(f"https://localhost:{other.port}/z")
    assert len(other.seen) == seen
    with httpx.Client(proxy=strict.proxy_urls[0]) as plain:  # a plain-HTTP request to another host: refused too
        body = {"model": "gpt-4o-mini", "messages": chat("plain denied")}
        assert plain.post(fake.base_url + "/v1/chat/completions", json=body).status_code == 403
    assert not [r for r in fake.requests if b"plain denied" in r.body]
    # the providers' hosts still go through
    client = openai.OpenAI(api_key=TEST_KEY, http_client=proxied(strict), max_retries=0)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=chat("deny others"))  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "echo: deny others"


# -- trust -----------------------------------------------------------------------------------------------------------


def test_a_client_that_does_not_trust_the_ca_gets_a_tls_error(gw: Kaixu, fake: FakeProvider) -> None:
    client = openai.OpenAI(
        api_key=TEST_KEY, http_client=httpx.Client(proxy=gw.proxy_urls[0], timeout=10), max_retries=0
    )
    with pytest.raises(openai.APIConnectionError) as failed:
        client.chat.completions.create(model="gpt-4o-mini", messages=chat("untrusted"))  # type: ignore[arg-type]
    assert isinstance(failed.value.__cause__, httpx.ConnectError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value.__cause__)
    assert not [r for r in fake.requests if b"untrusted" in r.body]


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        unavailable("curl is not installed")


def test_curl_through_the_proxy(gw: Kaixu) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "messages": chat("curl json")})
    url = "https://api.openai.com/v1/chat/completions"
    headers = ["-H", f"authorization: Bearer {TEST_KEY}", "-H", "content-type: application/json"]
    done = curl("-x", gw.proxy_urls[0], "--cacert", str(ca_file(gw)), url, *headers, "-d", body)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["choices"][0]["message"]["content"] == "echo: curl json"
    refused = curl("-x", gw.proxy_urls[0], url, *headers, "-d", body)  # without --cacert: no answer at all
    assert refused.returncode == 60 and refused.stdout == ""


def test_health_names_the_ca_in_use(gw: Kaixu) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(ca_file(gw).read_bytes())
    forward = gw.health()["forward"]
    assert forward["ca"]["fingerprint"] == "sha256:" + cert.fingerprint(hashes.SHA256()).hex()
    assert "api.openai.com" in forward["intercept_hosts"] and forward["others"] == "tunnel"
    key_file = gw.workdir / "kaixu-ca" / "mitmproxy-ca.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in gw.log()
