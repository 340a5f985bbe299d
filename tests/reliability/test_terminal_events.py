"""A stream the provider breaks after it began ends with a terminal error event in the client's own format,
which each official SDK raises as an error naming the provider: never a clean end of a truncated answer.

Both paths: a stream mitmproxy forwards itself (no attempt plan: kaixu/mitm.py writes the event and the last
chunk) and one the relay runs (a model with retries: kaixu/reliability/relay.py). Both in the provider's own
format and translated. The ledger records the break.

Then what a provider may send that kaixu cannot pass on as it came: text with a lone surrogate (valid JSON,
not UTF-8) reaches every door escaped, streamed or not; and a stream kaixu fails to translate (any exception
in the translator) ends like a broken one, with the door's terminal error event, recorded in the ledger.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types

from tests.fakes.provider import FakeProvider, Fault
from tests.harness import TEST_KEY, Kaixu, ledger_row, only_record, policy_for

PROMPT = "tell me a long story about seven gulls and a lighthouse keeper"
MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-test", "gemini": "gemini-test"}
GUARDED = {name: f"{name}-guarded" for name in MODEL}


@pytest.fixture(scope="module")
def gw(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"})
    for name, model in MODEL.items():  # the same deployments, with an attempt plan (so: through the relay)
        policy["models"][GUARDED[name]] = {**policy["models"][model], "retries": {"attempts": 2}}
    gateway = Kaixu(tmp_path_factory.mktemp("terminal"), policy).start()
    yield gateway
    gateway.stop()


def read_openai(gw: Kaixu, model: str) -> str:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=10)
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], stream=True)
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def read_anthropic(gw: Kaixu, model: str) -> str:
    client = anthropic.Anthropic(base_url=gw.url, api_key=TEST_KEY, max_retries=0, timeout=10)
    text = ""
    with client.messages.stream(model=model, max_tokens=200, messages=[{"role": "user", "content": PROMPT}]) as s:
        for event in s:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
    return text


def read_gemini(gw: Kaixu, model: str) -> str:
    client = genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(base_url=gw.url, timeout=10_000))
    return "".join(chunk.text or "" for chunk in client.models.generate_content_stream(model=model, contents=PROMPT))


READERS: dict[str, Any] = {"openai": read_openai, "anthropic": read_anthropic, "gemini": read_gemini}
#: the client's SDK -> a provider format it is translated from
TRANSLATED = {"openai": "anthropic", "anthropic": "gemini", "gemini": "openai"}
#: what each SDK raises on the terminal event (the httpx errors of a cut connection are not among them)
RAISES: dict[str, type[Exception] | tuple[type[Exception], ...]] = {
    "openai": openai.APIError,
    "anthropic": anthropic.APIError,
    "gemini": genai.errors.APIError,
}


@pytest.mark.parametrize("path", ["forwarded", "relayed"])
@pytest.mark.parametrize("provider", list(MODEL))
@pytest.mark.parametrize("sdk", list(READERS))
def test_each_sdk_raises_on_the_terminal_event_of_a_broken_stream(
    gw: Kaixu, fake: FakeProvider, sdk: str, provider: str, path: str
) -> None:
    fake.add_fault(Fault(disconnect_after_events=3))
    model = MODEL[provider] if path == "forwarded" else GUARDED[provider]
    with pytest.raises(RAISES[sdk]) as raised:
        READERS[sdk](gw, model)
    assert "broke" in str(raised.value), raised.value
    provider_name = {"openai": "oai", "anthropic": "ant", "gemini": "gem"}[provider]
    assert f"provider {provider_name!r}" in str(raised.value)
    row = only_record(gw, fake.requests[-1].headers["x-request-id"])
    assert row["status"] == 200 and row["error"] and row["usage_source"] == "estimated"


def test_a_stream_that_ends_whole_has_no_terminal_error(gw: Kaixu, fake: FakeProvider) -> None:
    for model in (MODEL["anthropic"], GUARDED["anthropic"]):
        assert read_openai(gw, model).startswith("echo:")


def test_gateway13_gets_its_own_error_event(gw: Kaixu, fake: FakeProvider) -> None:
    fake.add_fault(Fault(disconnect_after_events=3))
    body = {"model": "claude-test", "messages": [{"role": "user", "content": PROMPT}]}
    response = httpx.post(gw.url + "/.netlify/functions/gateway-stream", json=body,
                          headers={"authorization": f"Bearer {TEST_KEY}"})  # fmt: skip
    assert response.status_code == 200
    assert "event: error" in response.text and "broke" in response.text, response.text[-400:]
    assert ledger_row(gw, response.headers["x-request-id"])["error"]


# --- provider text kaixu cannot encode as sent, and streams it cannot translate --------------------------------

LONE = "gull \ud800 keeper"
"""A prompt with a lone surrogate: JSON can carry it (`\\ud800`), UTF-8 cannot. The fake echoes it, so every
provider's answer (each in its own format, streamed or not) carries it as the JSON escape, as a provider would."""


def door_post(gw: Kaixu, door: str, model: str, text: str) -> httpx.Response:
    """A request to one front door (`openai-stream`, `gemini-array`, ...), its JSON written with escapes (as
    `json.dumps` does by default: a lone surrogate is sent as `\\ud800`)."""
    path, body, headers = door_request(door, model, text)
    headers = {**headers, "content-type": "application/json"}
    return httpx.post(gw.url + path, content=json.dumps(body), headers=headers, timeout=10)


def door_request(door: str, model: str, text: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    """Path, body and headers of a request to one front door."""
    bearer = {"authorization": f"Bearer {TEST_KEY}"}
    user = [{"role": "user", "content": text}]
    gemini = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    return {
        "openai-json": ("/v1/chat/completions", {"model": model, "messages": user}, bearer),
        "openai-stream": ("/v1/chat/completions", {"model": model, "messages": user, "stream": True}, bearer),
        "anthropic-json": ("/v1/messages", {"model": model, "max_tokens": 64, "messages": user}, bearer),
        "anthropic-stream": (
            "/v1/messages",
            {"model": model, "max_tokens": 64, "messages": user, "stream": True},
            bearer,
        ),
        "gemini-json": (f"/v1beta/models/{model}:generateContent", gemini, bearer),
        "gemini-sse": (f"/v1beta/models/{model}:streamGenerateContent?alt=sse", gemini, bearer),
        "gemini-array": (f"/v1beta/models/{model}:streamGenerateContent", gemini, bearer),
        "gateway13-json": ("/.netlify/functions/gateway-chat", {"model": model, "messages": user}, bearer),
        "gateway13-stream": ("/.netlify/functions/gateway-stream", {"model": model, "messages": user}, bearer),
        "gate-json": ("/v1/generate", {"model": model, "input": {"type": "text", "content": text}}, bearer),
        "gate-stream": ("/v1/stream", {"model": model, "input": {"type": "text", "content": text}}, bearer),
        "pulse-json": ("/api/ai/request", {"model": model, "prompt": text}, {"x-pulse-key": TEST_KEY}),
    }[door]


DOORS = ("openai-json", "openai-stream", "anthropic-json", "anthropic-stream", "gemini-json", "gemini-sse",
         "gemini-array", "gateway13-json", "gateway13-stream", "gate-json", "gate-stream", "pulse-json")  # fmt: skip


#: how each door's answer ends when it is whole (streams are cut into pieces of a few characters by the fake)
ENDS = {
    "openai-stream": "data: [DONE]", "anthropic-stream": "event: message_stop", "gemini-sse": '"finishReason":"STOP"',
    "gemini-array": '"finishReason": "STOP"', "gateway13-stream": "event: done", "gate-stream": "data: [DONE]",
} | {door: "keeper" for door in DOORS if door.endswith("-json")}  # fmt: skip


@pytest.mark.parametrize("provider", list(MODEL))
@pytest.mark.parametrize("door", DOORS)
def test_a_lone_surrogate_from_the_provider_reaches_every_door_escaped(
    gw: Kaixu, fake: FakeProvider, door: str, provider: str
) -> None:
    """Translated or relayed, streamed or not: the client gets valid UTF-8 with the surrogate escaped as the
    provider sent it (`\\ud800`, what a pass-through forwards and kaixu's JSON answers write), the whole answer,
    and the ledger a plain success."""
    response = door_post(gw, door, MODEL[provider], LONE)
    assert response.status_code == 200, response.text[:400]
    text = response.content.decode("utf-8")  # strict: what a client's parser reads
    assert "\\ud800" in text and "error" not in text, text[-600:]
    assert ENDS[door] in text, text[-600:]
    row = only_record(gw, response.headers["x-request-id"])
    assert row["status"] == 200 and row["error"] is None, row


OPENAI_CHUNK = (
    '{"id":"chatcmpl-\\ud800","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[%s]}'
)
RAW_STREAMS = {
    # each provider: a first event of text, then one whose text is a number (its decoder passes it on, as it
    # trusts a field's type; the encoder cannot write it), then the rest of a whole answer
    "openai": [
        "data: " + OPENAI_CHUNK % '{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}',
        "data: " + OPENAI_CHUNK % '{"index":0,"delta":{"content":5},"finish_reason":null}',
        "data: " + OPENAI_CHUNK % '{"index":0,"delta":{"content":" world"},"finish_reason":null}',
        "data: " + OPENAI_CHUNK % '{"index":0,"delta":{},"finish_reason":"stop"}',
        "data: [DONE]",
    ],
    "anthropic": [
        'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_\\ud800","type":"message",'
        '"role":"assistant","model":"claude-3-5-haiku-latest","content":[],"stop_reason":null,'
        '"usage":{"input_tokens":5,"output_tokens":1}}}',
        'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        '"content_block":{"type":"text","text":""}}',
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        '"delta":{"type":"text_delta","text":"Hello"}}',
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        '"delta":{"type":"text_delta","text":5}}',
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        '"delta":{"type":"text_delta","text":" world"}}',
        'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}',
        'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        '"usage":{"output_tokens":3}}',
        'event: message_stop\ndata: {"type":"message_stop"}',
    ],
    "gemini": [
        'data: {"candidates":[{"content":{"parts":[{"text":"Hello"}],"role":"model"},"index":0}],'
        '"modelVersion":"gemini-2.5-flash","responseId":"r\\ud800"}',
        'data: {"candidates":[{"content":{"parts":[{"text":5}],"role":"model"},"index":0}]}',
        'data: {"candidates":[{"content":{"parts":[{"text":" world"}],"role":"model"},"finishReason":"STOP",'
        '"index":0}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":3,"totalTokenCount":8}}',
    ],
}


def raw_stream(provider: str, broken: bool) -> list[str]:
    numbered = ('"content":5}', '"text":5}')  # the text that is a number
    events = [e for e in RAW_STREAMS[provider] if broken or not any(mark in e for mark in numbered)]
    return [event + "\n\n" for event in events]


TRANSLATED_STREAMS = [
    (door, provider)
    for door in ("openai-stream", "anthropic-stream", "gemini-sse", "gemini-array", "gateway13-stream")
    for provider in MODEL
    if door.split("-")[0] != provider or door == "gemini-array"  # the same format is forwarded as it came
]
"""Every stream kaixu translates or re-frames (Gemini's JSON array from Gemini's SSE), by door and provider."""


@pytest.mark.parametrize("path", ["forwarded", "relayed"])
@pytest.mark.parametrize(("door", "provider"), TRANSLATED_STREAMS)
def test_a_stream_kaixu_cannot_translate_ends_with_the_doors_error_event(
    gw: Kaixu, fake: FakeProvider, door: str, provider: str, path: str
) -> None:
    """Any exception while kaixu translates a provider's stream (here: a text that is a number, after text
    reached the client) ends the client's stream with its door's terminal error event, and the ledger records
    the error. The lone surrogates in the provider's ids go out escaped on the way."""
    fake.add_fault(Fault(raw_events=raw_stream(provider, broken=True)))
    response = door_post(gw, door, (MODEL if path == "forwarded" else GUARDED)[provider], PROMPT)
    assert response.status_code == 200
    text = response.content.decode("utf-8")
    assert "Hello" in text and "world" not in text, text
    provider_name = {"openai": "oai", "anthropic": "ant", "gemini": "gem"}[provider]
    assert f"could not translate the stream from provider {provider_name!r}" in text, text
    ends = {
        "openai-stream": '"type":"api_error"', "anthropic-stream": "event: error\ndata: ",
        "gemini-sse": '"status":"INTERNAL"', "gemini-array": '"status": "INTERNAL"', "gateway13-stream": "event: error",
    }  # fmt: skip
    assert ends[door] in text, text
    assert text.count("could not translate") == 1, "one terminal event"
    if door == "openai-stream":
        assert "[DONE]" not in text
    if door == "gemini-array":
        assert json.loads(text)[-1]["error"]["code"] == 500, "the array is whole, its last element the error"
    row = only_record(gw, response.headers["x-request-id"])
    assert row["status"] == 200 and "could not translate" in row["error"], row


@pytest.mark.parametrize("sdk", list(READERS))
def test_each_sdk_raises_on_the_error_event_of_a_stream_kaixu_cannot_translate(
    gw: Kaixu, fake: FakeProvider, sdk: str
) -> None:
    provider = TRANSLATED[sdk]
    fake.add_fault(Fault(raw_events=raw_stream(provider, broken=True)))
    with pytest.raises(RAISES[sdk]) as raised:
        READERS[sdk](gw, MODEL[provider])
    assert "could not translate" in str(raised.value), raised.value


@pytest.mark.parametrize("sdk", list(READERS))
def test_ids_with_a_lone_surrogate_are_escaped_in_a_translated_stream(gw: Kaixu, fake: FakeProvider, sdk: str) -> None:
    """The same provider streams without the broken event: whole, through each SDK."""
    provider = TRANSLATED[sdk]
    fake.add_fault(Fault(raw_events=raw_stream(provider, broken=False)))
    assert READERS[sdk](gw, MODEL[provider]) == "Hello world"


ENDED_WITH_AN_ERROR = {
    "its own error event": (
        'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    ),
    "an event kaixu cannot read": (
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":"x"}'
    ),
}


@pytest.mark.parametrize("door", ["openai-stream", "anthropic-stream"])
@pytest.mark.parametrize("ending", list(ENDED_WITH_AN_ERROR))
def test_a_stream_that_ends_in_an_error_event_is_an_error_in_the_ledger(
    gw: Kaixu, fake: FakeProvider, ending: str, door: str
) -> None:
    """The provider ends its stream with an error after text (Anthropic's `overloaded_error` mid-stream), or
    with an event kaixu's decoder cannot read: the client's stream ends with an error event (passed through:
    the provider's own, or its unreadable event as it came), and the ledger records that error, not a plain
    200."""
    head = RAW_STREAMS["anthropic"][:3]  # message_start, a text block, "Hello"
    events = [*head, ENDED_WITH_AN_ERROR[ending], 'event: message_stop\ndata: {"type":"message_stop"}']
    fake.add_fault(Fault(raw_events=[event + "\n\n" for event in events]))
    response = door_post(gw, door, MODEL["anthropic"], PROMPT)
    assert response.status_code == 200 and "Hello" in response.text
    if door == "openai-stream" or ending == "its own error event":
        assert "error" in response.text, response.text
    row = only_record(gw, response.headers["x-request-id"])
    assert row["status"] == 200 and row["error"], row
    assert ("Overloaded" if ending == "its own error event" else "malformed") in row["error"], row
