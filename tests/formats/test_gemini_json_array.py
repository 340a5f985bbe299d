"""Gemini `:streamGenerateContent` without `?alt=sse`: what Google sends then is one JSON array of
GenerateContentResponse objects, streamed element by element (`[{...}`, `\\n,\\r\\n{...}`, ..., `\\n]`).
kaixu asks every Gemini provider for SSE and re-frames it; other providers are translated into it."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.fakes.provider import FakeProvider, Fault
from tests.harness import TEST_KEY, Kaixu
from tests.scrape import tokens_metered

BODY = {"contents": [{"role": "user", "parts": [{"text": "Hello there my friend"}]}]}
# model in the test policy -> the upstream path kaixu must call for it
UPSTREAMS = {
    "gemini-test": "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",  # pass-through, re-framed
    "gpt-4o-mini": "/v1/chat/completions",  # translated
}


def stream_array(kaixu: Kaixu, model: str, path_suffix: str = "") -> tuple[httpx.Response, list[tuple[float, bytes]]]:
    """POST without alt=sse and read the body chunk by chunk as it arrives (arrival time, bytes)."""
    url = f"{kaixu.url}/v1beta/models/{model}:streamGenerateContent{path_suffix}"
    chunks: list[tuple[float, bytes]] = []
    with httpx.stream("POST", url, json=BODY, headers={"x-goog-api-key": TEST_KEY}, timeout=10) as response:
        for chunk in response.iter_raw():
            chunks.append((time.monotonic(), chunk))
    return response, chunks


def text_of(elements: list[Any]) -> str:
    return "".join(p.get("text", "") for e in elements for p in e["candidates"][0]["content"]["parts"])


@pytest.mark.parametrize("model", list(UPSTREAMS))
def test_stream_without_alt_sse_is_a_json_array_streamed_element_by_element(
    kaixu: Kaixu, fake: FakeProvider, model: str
) -> None:
    provider = "gem" if model == "gemini-test" else "oai"
    upstream_model = "gemini-2.5-flash" if model == "gemini-test" else model
    before = tokens_metered(kaixu, provider, model)
    fake.add_fault(Fault(event_delay_ms=150))
    response, chunks = stream_array(kaixu, model)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert fake.requests[-1].path == UPSTREAMS[model].replace("gemini-2.5-flash", upstream_model)
    raw = b"".join(chunk for _, chunk in chunks)
    elements = json.loads(raw)
    assert isinstance(elements, list) and len(elements) > 1
    assert text_of(elements) == "echo: Hello there my friend"
    assert elements[-1]["candidates"][0]["finishReason"] == "STOP"
    assert elements[-1]["usageMetadata"]["candidatesTokenCount"] > 0
    # Google's framing: `[` then the first element, `\n,\r\n` before each next one, `\n]` at the end
    assert raw.startswith(b"[{") and raw.endswith(b"}\n]") and raw.count(b"}\n,\r\n{") == len(elements) - 1
    # Streamed, not buffered: the first element reached the client, whole, long before the last one
    assert len(chunks) > 1
    first_arrival, first = chunks[0]
    assert first.startswith(b"[{")
    assert json.loads(first[1:])["candidates"][0]["content"]["parts"][0]["text"]
    assert chunks[-1][0] - first_arrival >= 0.150 * (len(elements) - 2)
    assert tokens_metered(kaixu, provider, model) > before


def test_alt_json_is_the_array_too_and_alt_sse_stays_sse(kaixu: Kaixu) -> None:
    response, chunks = stream_array(kaixu, "gemini-test", "?alt=json")
    assert response.status_code == 200 and text_of(json.loads(b"".join(c for _, c in chunks))) == (
        "echo: Hello there my friend"
    )
    response, chunks = stream_array(kaixu, "gemini-test", "?alt=sse")
    assert response.headers["content-type"].startswith("text/event-stream")
    assert b"".join(c for _, c in chunks).startswith(b"data: {")
