"""Usage you can trust: the 24-case matrix of issue 10, through the official SDKs.

{OpenAI, Anthropic, Gemini provider} x {JSON, stream} x {success, provider error, cut by the provider midway,
client gone midway}, each through the provider's own front door and through a translated one (the fake
provider upstream, `tests/fakes/provider.py`, injects the faults). Every case asserts exactly one ledger
record for the client's request, the status the client saw, and usage that matches what the provider
reported, or, when its final count never came, the estimate of what was produced (docs/pricing.md, "What is
billed"). Token numbers are the fake's (a fault's `usage` override) or hand-computed here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types

from kaixu.addons.stream import meter, translator
from kaixu.call import Bill, Call
from kaixu.config import parse_policy
from kaixu.formats import get_codec
from kaixu.formats.canonical import Usage
from tests.fakes.provider import FakeProvider, Fault, StreamRecord
from tests.harness import TEST_KEY, Kaixu, only_record, policy_for, wait_for

PROMPT = "Tell me the story of the lighthouse keeper and the seven gulls"
#: kaixu's prompt estimate for one user message (`kaixu.formats.estimate_tokens`): 4 tokens of message
#: overhead plus characters / 4, rounded up.
PROMPT_ESTIMATE = 4 + (len(PROMPT) + 3) // 4

# provider wire format -> the test policy's model routed to the fake in that format
MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-test", "gemini": "gemini-test"}
# provider wire format -> the SDK of the translated door used for it (each SDK translates for one provider)
TRANSLATED_DOOR = {"openai": "gemini", "anthropic": "openai", "gemini": "anthropic"}

#: What the fake reports (each provider's own spelling), with cache reads, cache writes, reasoning and an
#: explicit zero, and the canonical usage it must be recorded as (input includes cache reads and writes,
#: output includes reasoning).
REPORTED: dict[str, dict[str, Any]] = {
    "openai": {
        "prompt_tokens": 1500,
        "completion_tokens": 40,
        "total_tokens": 1540,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
    "anthropic": {
        "input_tokens": 300,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 200,
        "output_tokens": 40,
        "output_tokens_details": {"thinking_tokens": 12},
    },
    "gemini": {
        "promptTokenCount": 1500,
        "cachedContentTokenCount": 1024,
        "candidatesTokenCount": 30,
        "thoughtsTokenCount": 10,
        "totalTokenCount": 1540,
    },
}
# input, output, cached_input, cache_write, reasoning
RECORDED = {
    "openai": (1500, 40, 1024, 0, 0),
    "anthropic": (1500, 40, 1000, 200, 12),
    "gemini": (1500, 40, 1024, 0, 10),
}
#: What the provider's stream had said before a cut (Anthropic's `message_start`, Gemini's early chunks:
#: input and cache counts, final; a running output count of 1 from Anthropic), as (input, output, cached,
#: cache_write); None: nothing (OpenAI counts only at the end).
REPORTED_EARLY = {"openai": None, "anthropic": (1500, 1, 1000, 200), "gemini": (1500, 0, 1024, 0)}
#: Events the fake sends before it hangs up: some text must have reached the client.
CUT_AFTER = {"openai": 3, "anthropic": 5, "gemini": 2}
TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens")


@pytest.fixture(scope="module")
def gw(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    gateway = Kaixu(tmp_path_factory.mktemp("usage"), policy_for(fake.base_url, store={"sqlite": "ledger.db"}))
    gateway.start()
    yield gateway
    gateway.stop()


# --- the three SDKs, driven the same way ---------------------------------------------------------------


@dataclass
class Seen:
    """What the client saw: the HTTP status (None: no answer at all), the answer text it read, its error."""

    status: int | None
    text: str = ""
    error: BaseException | None = None


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, openai.APIStatusError | anthropic.APIStatusError):
        return exc.status_code
    if isinstance(exc, genai.errors.APIError):
        return exc.code
    return None


def _drive(start: Callable[[], Any], pieces: Callable[[Any], Iterator[str]], leave: bool) -> Seen:
    """Run one request; for a stream, read its text pieces (``leave``: go away after the first one)."""
    try:
        answer = start()
    except Exception as exc:
        return Seen(_status(exc), error=exc)
    seen = Seen(200)
    try:
        for piece in pieces(answer):
            seen.text += piece
            if leave and seen.text:
                break
    except Exception as exc:  # google-genai sends a stream's request only when it is first read
        seen.error = exc
        seen.status = _status(exc) or seen.status
    finally:
        close = getattr(answer, "close", None)
        if close is not None:
            close()  # a stream left midway: the SDK closes its connection
    return seen


def call_openai(gw: Kaixu, model: str, stream: bool, leave: bool, timeout: float) -> Seen:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=timeout)
    messages: Any = [{"role": "user", "content": PROMPT}]
    if not stream:
        return _drive(
            lambda: client.chat.completions.create(model=model, messages=messages),
            lambda c: iter([c.choices[0].message.content or ""]),
            False,
        )
    return _drive(
        lambda: client.chat.completions.create(model=model, messages=messages, stream=True),
        lambda s: ((c.choices[0].delta.content or "") for c in s if c.choices),
        leave,
    )


def call_anthropic(gw: Kaixu, model: str, stream: bool, leave: bool, timeout: float) -> Seen:
    client = anthropic.Anthropic(base_url=gw.url, api_key=TEST_KEY, max_retries=0, timeout=timeout)
    messages: Any = [{"role": "user", "content": PROMPT}]
    if not stream:
        return _drive(
            lambda: client.messages.create(model=model, max_tokens=500, messages=messages),
            lambda m: iter(b.text for b in m.content if b.type == "text"),
            False,
        )

    def texts(events: Any) -> Iterator[str]:
        for event in events:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                yield event.delta.text

    return _drive(
        lambda: client.messages.create(model=model, max_tokens=500, messages=messages, stream=True), texts, leave
    )


def call_gemini(gw: Kaixu, model: str, stream: bool, leave: bool, timeout: float) -> Seen:
    options = types.HttpOptions(base_url=gw.url, timeout=int(timeout * 1000))
    client = genai.Client(api_key=TEST_KEY, http_options=options)
    if not stream:
        return _drive(
            lambda: client.models.generate_content(model=model, contents=PROMPT),
            lambda r: iter([r.text or ""]),
            False,
        )
    return _drive(
        lambda: client.models.generate_content_stream(model=model, contents=PROMPT),
        lambda chunks: ((c.text or "") for c in chunks),
        leave,
    )


SDKS = {"openai": call_openai, "anthropic": call_anthropic, "gemini": call_gemini}


# --- the ledger ----------------------------------------------------------------------------------------


def tokens(row: dict[str, Any]) -> tuple[int | None, ...]:
    return tuple(row[c] for c in TOKEN_COLUMNS)


def finished_stream(fake: FakeProvider) -> StreamRecord:
    wait_for(lambda: fake.streams and fake.streams[-1].outcome != "streaming", 10, "the fake's stream to end")
    return fake.streams[-1]


# --- the matrix ----------------------------------------------------------------------------------------

OUTCOMES = ["success", "provider_error", "cut", "client_gone"]


@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("mode", ["json", "stream"])
@pytest.mark.parametrize("door", ["same", "translated"])
@pytest.mark.parametrize("provider", list(MODEL))
def test_one_record_with_the_status_seen_and_the_usage_reported(
    gw: Kaixu, fake: FakeProvider, provider: str, door: str, mode: str, outcome: str
) -> None:
    stream = mode == "stream"
    sdk = provider if door == "same" else TRANSLATED_DOOR[provider]
    if outcome == "success":
        fake.add_fault(Fault(usage=REPORTED[provider]))
    elif outcome == "provider_error":
        fake.add_fault(Fault(status=429))
    elif outcome == "cut":
        cut = Fault(disconnect_after_events=CUT_AFTER[provider]) if stream else Fault(cut_body_after_bytes=60)
        fake.add_fault(replace(cut, usage=REPORTED[provider]))
    elif stream:  # the client goes away after the first text it reads; the provider paces its events
        fake.add_fault(Fault(event_delay_ms=150, usage=REPORTED[provider]))
    else:  # the client gives up waiting for a slow provider
        fake.add_fault(Fault(latency_ms=1500, usage=REPORTED[provider]))

    seen = SDKS[sdk](gw, MODEL[provider], stream, leave=outcome == "client_gone", timeout=0.5 if mode == "json" else 10)
    request_id = fake.requests[-1].headers["x-request-id"]
    if stream and outcome in ("success", "cut", "client_gone"):
        upstream = finished_stream(fake)
    row = only_record(gw, request_id)

    assert row["stream"] == int(stream)
    if outcome == "success":
        assert seen.status == 200 and seen.error is None and seen.text, seen
        assert (row["status"], row["usage_source"], row["client_disconnected"]) == (200, "provider", 0)
        assert tokens(row) == RECORDED[provider]
        assert isinstance(row["cost_micros"], int) and row["cost_micros"] > 0 and row["unpriced"] == 0
    elif outcome == "provider_error":
        assert seen.status == 429
        assert (row["status"], row["usage_source"], row["cost_micros"], row["unpriced"]) == (429, None, None, 0)
        assert tokens(row) == (None,) * 5  # the provider refused: nothing was produced, nothing is billed
    elif outcome == "cut" and not stream:
        assert seen.status == 502  # kaixu's JSON 502: the provider's answer never arrived whole
        assert (row["status"], row["usage_source"], row["client_disconnected"]) == (502, "estimated", 0)
        assert tokens(row) == (PROMPT_ESTIMATE, 0, 0, 0, 0)  # the prompt was sent; no answer was seen
    elif outcome == "client_gone" and not stream:
        assert seen.status is None and seen.error is not None  # the client's own timeout
        assert (row["status"], row["client_disconnected"], row["usage_source"], row["cost_micros"]) == (
            499,
            1,
            None,
            None,
        )
        assert tokens(row) == (None,) * 5  # gone before the provider answered: nothing was produced
    else:  # a stream that ended without the provider's final count: what was produced, estimated
        # google-genai reports the code of the terminal error event it raised on (test_terminal_events.py)
        cut_status = 500 if outcome == "cut" and sdk == "gemini" else 200
        assert seen.status == cut_status and seen.text, seen
        if outcome == "cut":
            assert seen.error is not None  # the client saw its stream break
            assert upstream.outcome == "cut"
        else:
            # the upstream request was cancelled: the provider saw its connection closed and stopped generating
            assert upstream.outcome == "peer_closed" and upstream.events_sent < upstream.events_total, upstream
            assert (row["status"], row["client_disconnected"]) == (499, 1)
        if outcome == "cut":
            assert (row["status"], row["client_disconnected"]) == (200, 0)  # the client had its 200
        assert row["usage_source"] == "estimated"
        early = REPORTED_EARLY[provider] or (PROMPT_ESTIMATE, 0, 0, 0)
        produced = (len(seen.text) + 3) // 4  # what the client read, at 4 characters a token
        assert (row["input_tokens"], row["cached_input_tokens"], row["cache_write_tokens"]) == (
            early[0],
            early[2],
            early[3],
        )
        if outcome == "cut":  # every byte the provider sent reached the client
            assert row["output_tokens"] == max(early[1], produced)
        else:  # kaixu may have forwarded an event more than the client read before it left
            assert row["output_tokens"] >= max(early[1], produced)
        assert isinstance(row["cost_micros"], int) and row["cost_micros"] > 0


# --- a missing count is unknown, an explicit zero is zero ----------------------------------------------


@pytest.mark.parametrize("mode", ["json", "stream"])
@pytest.mark.parametrize("provider", list(MODEL))
def test_an_answer_without_usage_is_estimated_never_zero(
    gw: Kaixu, fake: FakeProvider, provider: str, mode: str
) -> None:
    fake.add_fault(Fault(omit_usage=True))
    seen = SDKS[provider](gw, MODEL[provider], mode == "stream", leave=False, timeout=10)
    assert seen.status == 200 and seen.error is None and seen.text, seen
    row = only_record(gw, fake.requests[-1].headers["x-request-id"])
    assert (row["status"], row["usage_source"]) == (200, "estimated")
    assert tokens(row) == (PROMPT_ESTIMATE, (len(seen.text) + 3) // 4, 0, 0, 0)
    assert isinstance(row["cost_micros"], int) and row["cost_micros"] > 0


#: A provider that says no tokens came out, in each spelling: the last word on output is 0 (Gemini leaves a
#: zero count out, as proto3 JSON does; Anthropic's `message_start` said 1, its last `message_delta` 0).
ZERO_OUTPUT = {
    "openai": {"prompt_tokens": 20, "completion_tokens": 0, "total_tokens": 20},
    "anthropic": {"input_tokens": 20, "output_tokens": 0},
    "gemini": {"promptTokenCount": 20, "totalTokenCount": 20},
}


@pytest.mark.parametrize("mode", ["json", "stream"])
@pytest.mark.parametrize("provider", list(MODEL))
def test_an_explicit_zero_stays_zero(gw: Kaixu, fake: FakeProvider, provider: str, mode: str) -> None:
    fake.add_fault(Fault(usage=ZERO_OUTPUT[provider]))
    seen = SDKS[provider](gw, MODEL[provider], mode == "stream", leave=False, timeout=10)
    assert seen.status == 200 and seen.text  # text came, and the provider says it cost no output tokens
    row = only_record(gw, fake.requests[-1].headers["x-request-id"])
    assert (row["usage_source"], tokens(row)) == ("provider", (20, 0, 0, 0, 0))


# --- the cost at the end of a stream -------------------------------------------------------------------

STREAM_DOORS: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "openai": ("/v1/chat/completions", {"stream": True, "messages": [{"role": "user", "content": PROMPT}]}, {}),
    "anthropic": (
        "/v1/messages",
        {"stream": True, "max_tokens": 300, "messages": [{"role": "user", "content": PROMPT}]},
        {"anthropic-version": "2023-06-01"},
    ),
    "gemini": (
        "/v1beta/models/{model}:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]},
        {},
    ),
}


def raw_stream(gw: Kaixu, door: str, model: str) -> tuple[str, bytes]:
    path, body, headers = STREAM_DOORS[door]
    if door != "gemini":
        body = {**body, "model": model}
    url = gw.url + path.format(model=model)
    auth = {"x-goog-api-key": TEST_KEY} if door == "gemini" else {"authorization": f"Bearer {TEST_KEY}"}
    response = httpx.post(url, json=body, headers={**auth, **headers}, timeout=10)
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"], response.content


@pytest.mark.parametrize("provider", list(MODEL))
@pytest.mark.parametrize("door", list(STREAM_DOORS))
def test_a_stream_ends_with_its_cost_where_the_clients_parser_skips_comments(
    gw: Kaixu, fake: FakeProvider, door: str, provider: str
) -> None:
    """The matrix's stream rows prove the SDKs still parse these streams; here is what they skipped."""
    fake.add_fault(Fault(usage=REPORTED[provider]))
    request_id, raw = raw_stream(gw, door, MODEL[provider])
    row = only_record(gw, request_id)
    comments = [line for line in raw.decode().splitlines() if line.startswith(":")]
    if door == "gemini":
        assert comments == []  # google-genai would fail on a non-`data:` line: the cost is in the ledger
        return
    micros = row["cost_micros"]
    input_, output, cached, cache_write, reasoning = RECORDED[provider]
    assert raw.endswith(
        f": kaixu-cost-usd={micros // 1_000_000}.{micros % 1_000_000:06d}\n"
        f": kaixu-usage=input={input_}, output={output}, cached={cached}, cache_write={cache_write}, "
        f"reasoning={reasoning}\n\n".encode()
    )


def sse_events(text: str) -> list[tuple[str | None, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = block.split("\n")
        name = next((line[6:].strip() for line in lines if line.startswith("event:")), None)
        data = [line[5:].strip() for line in lines if line.startswith("data:")]
        if data:
            events.append((name, "\n".join(data)))
    return events


def test_gateway13_done_event_carries_the_recorded_cost(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(usage=REPORTED["anthropic"]))
    body = {"model": "claude-test", "messages": [{"role": "user", "content": PROMPT}]}
    response = httpx.post(
        gw.url + "/.netlify/functions/gateway-stream", json=body, headers={"authorization": f"Bearer {TEST_KEY}"}
    )
    assert response.status_code == 200
    name, data = sse_events(response.text)[-1]
    assert name == "done"
    row = only_record(gw, response.headers["x-request-id"])
    assert tokens(row) == RECORDED["anthropic"] and row["cost_micros"] > 0
    done = json.loads(data)
    assert done["usage"]["cost_cents"] == row["cost_micros"] / 10_000
    assert (done["usage"]["input_tokens"], done["usage"]["output_tokens"]) == (1500, 40)


def test_a_relayed_stream_left_by_its_client_cancels_the_provider_and_is_estimated(
    gw: Kaixu, fake: FakeProvider
) -> None:
    """Gateway 13 streams go through kaixu's relay (kaixu/reliability/relay.py): its own upstream request."""
    fake.add_fault(Fault(event_delay_ms=150, usage=REPORTED["anthropic"]))
    body = {"model": "claude-test", "messages": [{"role": "user", "content": PROMPT}]}
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    with httpx.stream("POST", gw.url + "/.netlify/functions/gateway-stream", json=body, headers=headers) as response:
        received = b""
        for chunk in response.iter_raw():
            received += chunk
            if b"event: delta" in received:
                break
    upstream = finished_stream(fake)
    assert upstream.outcome == "peer_closed" and upstream.events_sent < upstream.events_total, upstream
    row = only_record(gw, fake.requests[-1].headers["x-request-id"])
    assert (row["status"], row["client_disconnected"], row["usage_source"]) == (499, 1, "estimated")
    assert (row["input_tokens"], row["cached_input_tokens"], row["cache_write_tokens"]) == (1500, 1000, 200)
    assert row["output_tokens"] >= 1


def test_a_relayed_stream_cut_by_the_provider_is_estimated(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(disconnect_after_events=CUT_AFTER["anthropic"], usage=REPORTED["anthropic"]))
    body = {"model": "claude-test", "messages": [{"role": "user", "content": PROMPT}]}
    response = httpx.post(
        gw.url + "/.netlify/functions/gateway-stream", json=body, headers={"authorization": f"Bearer {TEST_KEY}"}
    )
    text = "".join(json.loads(d)["text"] for n, d in sse_events(response.text) if n == "delta")
    row = only_record(gw, response.headers["x-request-id"])
    assert (row["status"], row["usage_source"]) == (200, "estimated")  # the relay had said 200
    assert tokens(row) == (1500, max(1, (len(text) + 3) // 4), 1000, 200, 0)


# --- the pieces, on their own --------------------------------------------------------------------------


def openai_chunk(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


OPENAI_STREAM = (
    b"".join(
        openai_chunk({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": t}}]})
        for t in ("Hel", "lo", " you")
    )
    + openai_chunk({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    + openai_chunk({"id": "c", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    + b"data: [DONE]\n\n"
)


def a_call(max_chars: int = 4000, collect: bool = False) -> Call:
    policy = parse_policy(f"providers: {{mock: {{kind: mock}}}}\nledger: {{content: {{max_chars: {max_chars}}}}}\n")
    call = Call(request_id="r", policy=policy, operation="chat")
    call.bill.streamed_text = [] if collect else None
    return call


def test_the_stream_callables_count_what_the_client_is_sent_and_keep_its_text_bounded() -> None:
    call = a_call(max_chars=5, collect=True)
    on_chunk = meter(call, get_codec("openai").stream_decoder())
    for byte in range(len(OPENAI_STREAM)):  # one byte at a time: events complete across chunks
        on_chunk(OPENAI_STREAM[byte : byte + 1])
    on_chunk(b"")
    assert call.bill.streamed_chars == len("Hello you")
    assert call.bill.streamed_text == ["Hel", "lo"]  # ledger.content.max_chars: 5
    assert call.bill.usage_final and call.bill.usage == Usage(7, 3)
    quiet = a_call()
    meter(quiet, get_codec("openai").stream_decoder())(OPENAI_STREAM)
    assert quiet.bill.streamed_text is None and quiet.bill.streamed_chars == 9  # content logging off


class BrokenEncoder:
    """A client encoder that fails on every event: the translator drops the chunk (a reliability matter for a
    later issue), but what the provider reported must still be billed."""

    def encode(self, event: object) -> bytes:
        raise RuntimeError("encoder bug")

    def close(self) -> bytes:
        return b""


def test_a_failing_translation_still_records_the_usage() -> None:
    call = a_call()
    on_chunk = translator(call, get_codec("openai").stream_decoder(), BrokenEncoder())
    assert on_chunk(OPENAI_STREAM) == []
    assert call.bill.usage == Usage(7, 3) and call.bill.streamed_chars == 9


def test_an_estimate_keeps_final_counts_and_never_bills_less_than_was_sent() -> None:
    bill = Bill(usage=Usage(1500, 1, 1000, 200, 0))  # an Anthropic message_start, then the stream was cut
    bill.estimate(prompt_tokens=60, output_chars=101)
    assert (bill.usage, bill.usage_source) == (Usage(1500, 26, 1000, 200, 0), "estimated")
    bill.estimate(prompt_tokens=60, output_chars=101)
    assert bill.usage == Usage(1500, 26, 1000, 200, 0)  # idempotent: the stream's end and settle both call it
    nothing = Bill()
    nothing.estimate(prompt_tokens=60, output_chars=0)
    assert nothing.usage == Usage(60, 0)
    running = Bill(usage=Usage(10, 50))  # a running output count above the estimate wins
    running.estimate(prompt_tokens=60, output_chars=8)
    assert running.usage == Usage(10, 50)


@pytest.mark.parametrize(
    ("wire", "answer"),
    [
        ("openai", {"choices": []}),
        ("openai", {"usage": None}),
        ("anthropic", {"content": [], "usage": {}}),
        ("gemini", {"candidates": []}),
        ("gemini", {"usageMetadata": {"promptTokensDetails": []}}),
    ],
)
def test_a_missing_usage_is_none_not_zeros(wire: str, answer: dict[str, Any]) -> None:
    assert get_codec(wire).usage_from_response(answer) is None


def test_reported_zeros_are_zeros() -> None:
    assert get_codec("openai").usage_from_response({"usage": {"prompt_tokens": 0, "completion_tokens": 0}}) == Usage()
    assert get_codec("anthropic").usage_from_response({"usage": {"input_tokens": 5, "output_tokens": 0}}) == Usage(5)
    assert get_codec("gemini").usage_from_response({"usageMetadata": {"promptTokenCount": 5}}) == Usage(5)
