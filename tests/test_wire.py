"""HTTP/1 and HTTP/2 message rules a client (or a proxy in front of kaixu that reuses connections) relies on,
through raw sockets: an HTTP client library would hide each of these bugs.

* An answer to HEAD is a head and nothing more, whoever wrote it (a local endpoint, an error, kaixu's HTTP
  layer): a body after it is read by the next request's client as its status line.
* `Connection: close` is honoured after every answer, routed or not, and every answer after which kaixu closes
  says `connection: close`; a stream the provider cuts is framed to its end and leaves the connection usable.
* An HTTP version other than 1.0 and 1.1 on an HTTP/1 request line, and a bare CR in a header field, are a 400
  in kaixu's JSON shape, then the connection closes.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import pytest

from tests.fakes.provider import FakeProvider, Fault
from tests.harness import TEST_KEY, Kaixu, key_hash, policy_for
from tests.hostile import Answer, NoAnswer, RawConnection

HELLO = [{"role": "user", "content": "Hello"}]
STORY = [{"role": "user", "content": "tell me a long story about seven gulls and a lighthouse keeper"}]
KEY = f"authorization: Bearer {TEST_KEY}\r\n".encode()
BROKE = "sk-broke"
"""A key whose budget (a micro-dollar) no request fits: refused with 402 after the router has aimed it."""
TIMEOUT_S = 10.0
"""The bound on every read: kaixu answers (or closes) within it, or the test fails."""


@pytest.fixture(scope="module")
def gw(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    policy = policy_for(fake.base_url)
    # the same deployment with an attempt plan: its streams go through the relay (kaixu/reliability/relay.py)
    policy["models"]["guarded"] = {**policy["models"]["gpt-4o-mini"], "retries": {"attempts": 2}}
    policy["keys"].append({"name": "broke", "hash": key_hash(BROKE), "budget": {"usd": 0.000001, "period": "month"}})
    gateway = Kaixu(tmp_path_factory.mktemp("wire"), policy).start()
    yield gateway
    gateway.stop()


def connect(gw: Kaixu) -> RawConnection:
    return RawConnection(gw.host, gw.port, TIMEOUT_S)


def post(path: str, body: object, extra: bytes = b"", version: bytes = b"HTTP/1.1", key: bytes = KEY) -> bytes:
    data = json.dumps(body).encode()
    return b"POST %s %s\r\nhost: x\r\n%scontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        path.encode(),
        version,
        key,
        len(data),
        extra,
        data,
    )


def says_close(answer: Answer) -> bool:
    return "close" in (answer.header("connection") or "").lower()


# --- HEAD --------------------------------------------------------------------------------------------------

HEAD_PATHS = [
    pytest.param(b"/", b"", id="root"),
    pytest.param(b"/no/such/endpoint", b"", id="404"),
    pytest.param(b"/v1/chat/completions", b"", id="405-without-key"),
    pytest.param(b"/v1/chat/completions", KEY, id="405-with-key"),
    pytest.param(b"/v1/models", KEY, id="models"),
    pytest.param(b"/v1beta/models/gemini-test:generateContent", KEY, id="gemini"),
    pytest.param(b"/health", b"", id="health"),
    pytest.param(b"/api/costs", b"", id="admin-401"),
]


@pytest.mark.parametrize(("path", "auth"), HEAD_PATHS)
def test_a_head_answer_is_a_head_only_and_the_next_answer_on_the_connection_parses(
    gw: Kaixu, path: bytes, auth: bytes
) -> None:
    with connect(gw) as conn:
        conn.send(b"HEAD %s HTTP/1.1\r\nhost: x\r\n%s\r\n" % (path, auth))
        head = conn.answer(head_only=True)
        assert head.header("x-request-id"), head.raw
        conn.send(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        after = conn.rest()  # the GET's answer, then kaixu closes: nothing may come between the two
    assert after.startswith(b"HTTP/1.1 200 "), f"bytes after the HEAD answer's head: {after[:300]!r}"
    assert json.loads(after.partition(b"\r\n\r\n")[2])["status"] == "ok"


def test_an_error_kaixus_http_layer_writes_for_a_head_request_has_no_body(gw: Kaixu) -> None:
    """kaixu/mitm.py writes these answers itself (here: a Content-Length mitmproxy cannot read)."""
    with connect(gw) as conn:
        conn.send(b"HEAD / HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n")
        answer = conn.answer(head_only=True)
        assert answer.status == 400 and says_close(answer)
        assert conn.rest() == b""


def test_a_head_request_line_mitmproxy_cannot_parse_is_answered_with_a_head_only(gw: Kaixu) -> None:
    """A request line mitmproxy refuses itself (a LF inside its target): the head is gone from the buffer by then,
    and the answer must still know it was HEAD (found by bench/probe.py)."""
    with connect(gw) as conn:
        conn.send(b"HEAD /v1beta/models/a\nX-Injected:%201:generateContent HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = conn.answer(head_only=True)
        assert answer.status == 400
        assert conn.rest() == b""


H2Request = tuple[str, str, list[tuple[str, str]], bytes]


def h2_exchange(gw: Kaixu, requests: list[H2Request]) -> dict[int, tuple[int, bytes]]:
    """Requests on one HTTP/2 connection (prior knowledge): each stream's status and body. The h2 library
    checks what it receives: a DATA frame on a HEAD stream raises InvalidBodyLengthError."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    streams: dict[int, tuple[int, bytes]] = {}
    bodies: dict[int, bytes] = {}
    for method, path, extra, body in requests:
        stream_id = conn.get_next_available_stream_id()
        headers = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "x"), *extra]
        conn.send_headers(stream_id, headers, end_stream=not body)
        streams[stream_id], bodies[stream_id] = (0, b""), body
    ended: set[int] = set()
    with socket.create_connection((gw.host, gw.port), timeout=TIMEOUT_S) as sock:
        while len(ended) < len(streams):
            for stream_id, body in bodies.items():  # as much of each body as flow control lets go
                while body and stream_id not in ended:
                    size = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size, len(body))
                    if size <= 0:
                        break
                    conn.send_data(stream_id, body[:size], end_stream=size == len(body))
                    body = bodies[stream_id] = body[size:]
            sock.sendall(conn.data_to_send())
            data = sock.recv(65536)
            assert data, f"the connection closed with streams {set(streams) - ended} open"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                    streams[event.stream_id] = (status, streams[event.stream_id][1])
                elif isinstance(event, h2.events.DataReceived):
                    status, body = streams[event.stream_id]
                    streams[event.stream_id] = (status, body + event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended.add(event.stream_id)
    return streams


@pytest.mark.parametrize("path", ["/", "/no/such/endpoint", "/v1/chat/completions", "/health"])
def test_a_head_answer_over_http2_has_no_data(gw: Kaixu, path: str) -> None:
    head, get = h2_exchange(gw, [("HEAD", path, [], b""), ("GET", "/health", [], b"")]).values()
    assert head[0] >= 200 and head[1] == b""
    assert get[0] == 200 and json.loads(get[1])["status"] == "ok"


def test_an_error_kaixus_http_layer_writes_for_a_head_request_over_http2_has_no_data(gw: Kaixu) -> None:
    """A HEAD with a body over the limit: mitmproxy refuses it on the stream (kaixu/mitm.py writes the JSON)."""
    big = ("HEAD", "/v1/chat/completions", [("authorization", f"Bearer {TEST_KEY}")], b"x" * 1_100_000)
    head, get = h2_exchange(gw, [big, ("GET", "/health", [], b"")]).values()
    assert head == (413, b"")
    assert get[0] == 200


# --- Connection: close ---------------------------------------------------------------------------------------

CLOSING_REQUESTS = [
    pytest.param(post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}, b"connection: close\r\n"),
                 id="routed"),
    pytest.param(post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO, "stream": True},
                      b"connection: close\r\n"), id="routed-stream"),
    pytest.param(post("/v1/chat/completions", {"model": "guarded", "messages": HELLO, "stream": True},
                      b"connection: close\r\n"), id="relayed-stream"),
    pytest.param(post("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 20, "messages": HELLO},
                      b"connection: close\r\n"), id="translated"),
    pytest.param(post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}, b"Connection: Close\r\n"),
                 id="routed-any-case"),
    pytest.param(post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}, version=b"HTTP/1.0"),
                 id="routed-http1.0"),
    pytest.param(post("/v1/chat/completions", {"model": "no-such-model", "messages": HELLO}, b"connection: close\r\n"),
                 id="refused-by-the-router"),
    pytest.param(post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}, b"connection: close\r\n",
                      key=f"authorization: Bearer {BROKE}\r\n".encode()), id="refused-after-routing-402"),
    pytest.param(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", id="local"),
    pytest.param(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
                 id="refused-401"),
]  # fmt: skip


@pytest.mark.parametrize("request_bytes", CLOSING_REQUESTS)
def test_connection_close_is_honoured_and_said_after_every_answer(gw: Kaixu, request_bytes: bytes) -> None:
    with connect(gw) as conn:
        conn.send(request_bytes)
        answer = conn.answer()
        assert says_close(answer), answer.raw[:600]
        assert conn.rest() == b""  # and then kaixu closes, at once (bounded by the timeout, not a sleep)


def test_a_provider_error_passed_through_honours_connection_close(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(status=429, retry_after=1))
    with connect(gw) as conn:
        conn.send(post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}, b"connection: close\r\n"))
        answer = conn.answer()
        assert answer.status == 429 and says_close(answer)
        assert conn.rest() == b""


def test_a_keep_alive_connection_stays_open_for_the_next_request(gw: Kaixu) -> None:
    """The other side of the rule: without `Connection: close`, routed answers keep the connection."""
    with connect(gw) as conn:
        for _ in range(2):
            conn.send(post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}))
            answer = conn.answer()
            assert answer.status == 200 and not says_close(answer)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "guarded"], ids=["forwarded", "relayed"])
def test_a_stream_the_provider_cuts_ends_framed_and_the_connection_serves_the_next_request(
    gw: Kaixu, fake: FakeProvider, model: str
) -> None:
    """A client pool puts the connection back after the stream's last chunk: the next request on it is
    answered, not lost on a connection kaixu closed without saying so."""
    fake.add_fault(Fault(disconnect_after_events=3))
    with connect(gw) as conn:
        conn.send(post("/v1/chat/completions", {"model": model, "messages": STORY, "stream": True}))
        stream = conn.answer()  # chunked: read to its last chunk
        assert stream.status == 200 and b"broke" in stream.body, stream.body[-400:]
        assert not says_close(stream)
        conn.send(post("/v1/chat/completions", {"model": model, "messages": HELLO}))  # to the provider again
        try:
            following = conn.answer()
        except NoAnswer as exc:
            pytest.fail(f"the connection did not serve the next request: {exc}")
        assert following.status == 200 and b"echo: Hello" in following.body


@pytest.mark.parametrize("model", ["gpt-4o-mini", "guarded"], ids=["forwarded", "relayed"])
def test_a_cut_stream_of_a_client_that_asked_to_close_says_so_and_closes(
    gw: Kaixu, fake: FakeProvider, model: str
) -> None:
    fake.add_fault(Fault(disconnect_after_events=3))
    with connect(gw) as conn:
        conn.send(post("/v1/chat/completions", {"model": model, "messages": STORY, "stream": True},
                       b"connection: close\r\n"))  # fmt: skip
        stream = conn.answer()
        assert stream.status == 200 and b"broke" in stream.body and says_close(stream)
        assert conn.rest() == b""


# --- HTTP versions and bare CRs ----------------------------------------------------------------------------

REFUSED_HEADS = [
    pytest.param(b"GET /health HTTP/1.2\r\nhost: x\r\n\r\n", id="HTTP/1.2"),
    pytest.param(b"GET /health HTTP/3.0\r\nhost: x\r\n\r\n", id="HTTP/3.0"),
    pytest.param(b"GET /health HTTP/0.9\r\nhost: x\r\n\r\n", id="HTTP/0.9"),
    pytest.param(b"GET /health HTTP/9.9\r\nhost: x\r\n\r\n", id="HTTP/9.9"),
    pytest.param(b"GET /health HTTP/2.0\r\nhost: x\r\n\r\n", id="HTTP/2.0-on-an-HTTP/1-line"),
    pytest.param(b"POST /health HTTP/1.2\r\nhost: x\r\ncontent-length: abc\r\n\r\n", id="HTTP/1.2-and-a-bad-length"),
    pytest.param(b"GET /health HTTP/1.1\r\nhost: x\r\nx-a: a\rb\r\n\r\n", id="bare-CR-in-a-value"),
    pytest.param(b"GET /health HTTP/1.1\r\nhost: x\r\nx-a: a\rx-b: b\r\n\r\n", id="bare-CR-as-a-line-break"),
    pytest.param(b"GET /health HTTP/1.1\r\nhost: x\r\nx\ra: b\r\n\r\n", id="bare-CR-in-a-name"),
    pytest.param(post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}, b"x-kaixu-user: a\rb\r\n"),
                 id="bare-CR-on-a-routed-request"),
    pytest.param(post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}, version=b"HTTP/1.2"),
                 id="HTTP/1.2-on-a-routed-request"),
]  # fmt: skip


@pytest.mark.parametrize("request_bytes", REFUSED_HEADS)
def test_unknown_http_versions_and_bare_crs_are_a_json_400_then_close(
    gw: Kaixu, fake: FakeProvider, request_bytes: bytes
) -> None:
    fake.clear()
    with connect(gw) as conn:
        conn.send(request_bytes)
        answer = conn.answer()
        assert answer.status == 400, answer.raw[:600]
        assert (answer.header("content-type") or "").startswith("application/json") and says_close(answer)
        error = json.loads(answer.body)["error"]
        assert "malformed HTTP request" in error["message"] and error["code"] == "bad_request"
        assert answer.header("x-request-id")
        assert conn.rest() == b""
    assert fake.requests == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /health HTTP/1.0\r\n\r\n", id="HTTP/1.0"),
        pytest.param(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", id="HTTP/1.1"),
        pytest.param(b"GET /health HTTP/1.1\nhost: x\nconnection: close\n\n", id="bare-LF-line-ends"),
    ],
)
def test_http_1_0_and_1_1_are_still_served(gw: Kaixu, request_bytes: bytes) -> None:
    with connect(gw) as conn:
        conn.send(request_bytes)
        answer = conn.answer()
        assert answer.status == 200 and says_close(answer)
        assert conn.rest() == b""


def test_an_interim_100_continue_does_not_say_close(gw: Kaixu) -> None:
    """`connection: close` belongs on the final answer: on a `100 Continue` it tells the client the connection
    ends before its body is even sent."""
    body = json.dumps({"model": "gpt-4o-mini", "messages": HELLO}).encode()
    with connect(gw) as conn:
        conn.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n%scontent-type: application/json\r\n"
            b"content-length: %d\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n" % (KEY, len(body))
        )
        interim = conn.reader.until(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 ") and b"connection" not in interim.lower(), interim
        conn.send(body)
        answer = conn.answer()
        assert answer.status == 200 and says_close(answer)
        assert conn.rest() == b""
