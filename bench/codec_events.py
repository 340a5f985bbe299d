"""Per-event cost of stream translation (not a test; run it by hand).

    .venv/bin/python bench/codec_events.py

For every (provider, client) pair it builds a provider SSE body of N short text
deltas (one token each, the worst case: most overhead per byte) and measures
decoder.feed + encoder.encode per upstream event, feeding the body one event per
chunk (how providers flush) and in 4 KiB chunks. "meter" is the same-format
pass-through cost: decode only, for usage.
"""

from __future__ import annotations

import json
import time
from typing import Any

from kaixu.formats import FORMATS, get_codec
from kaixu.formats.canonical import ChatRequest

N = 5000
ROUNDS = 5


def provider_events(provider: str, n: int) -> list[bytes]:
    """One SSE event per list item, in the provider's real shape."""
    if provider == "openai":
        head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
        body = [{**head, "choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}]}] * n
        end: list[dict[str, Any]] = [
            {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {
                **head,
                "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": n + 5},
            },
        ]
        return [f"data: {json.dumps(e)}\n\n".encode() for e in body + end] + [b"data: [DONE]\n\n"]
    if provider == "anthropic":
        start = {
            "type": "message_start",
            "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 5}},
        }
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " tok"}}
        end = [
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": n}},
            {"type": "message_stop"},
        ]
        events: list[dict[str, Any]] = [start, block, *[delta] * n, *end]
        return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]
    if provider == "responses":
        resp = {"id": "resp_1", "object": "response", "status": "in_progress", "model": "gpt-5", "output": []}
        usage = {"input_tokens": 5, "output_tokens": n, "total_tokens": n + 5}
        item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
        head = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
        seq: list[dict[str, Any]] = [
            {"type": "response.created", "response": resp},
            {"type": "response.in_progress", "response": resp},
            {"type": "response.output_item.added", "output_index": 0, "item": item},
            {"type": "response.content_part.added", **head, "part": {"type": "output_text", "text": ""}},
            *[{"type": "response.output_text.delta", **head, "delta": " tok", "logprobs": []}] * n,
            {"type": "response.output_text.done", **head, "text": " tok" * n, "logprobs": []},
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": {**resp, "status": "completed", "usage": usage}},
        ]
        return [
            f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': i})}\n\n".encode()
            for i, e in enumerate(seq)
        ]
    meta = {"modelVersion": "gemini-2.5-flash", "responseId": "r1"}
    chunk = {
        "candidates": [{"content": {"parts": [{"text": " tok"}], "role": "model"}, "index": 0}],
        "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5},
        **meta,
    }
    last = {
        "candidates": [{"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": n, "totalTokenCount": n + 5},
        **meta,
    }
    return [f"data: {json.dumps(e)}\r\n\r\n".encode() for e in [*[chunk] * n, last]]


def rechunk(events: list[bytes], size: int) -> list[bytes]:
    body = b"".join(events)
    return [body[i : i + size] for i in range(0, len(body), size)]


def run(provider: str, client: str | None, chunks: list[bytes]) -> float:
    """Best-of-ROUNDS microseconds per upstream event; client None = decode only (metering)."""
    best = float("inf")
    req = ChatRequest(model="m", stream=True, include_usage=True)
    for _ in range(ROUNDS):
        decoder = get_codec(provider).stream_decoder()
        encoder = get_codec(client).stream_encoder(req) if client else None
        start = time.perf_counter_ns()
        if encoder is None:
            for chunk in chunks:
                decoder.feed(chunk)
        else:
            encode = encoder.encode
            for chunk in chunks:
                for event in decoder.feed(chunk):
                    encode(event)
        decoder.close()
        best = min(best, (time.perf_counter_ns() - start) / 1000 / N)
    return best


def main() -> None:
    print(f"{N} text-delta events per stream; microseconds per upstream event (best of {ROUNDS})")
    print(f"{'provider':>10} {'client':>10} {'1 event/chunk':>14} {'4 KiB chunks':>13}")
    for provider in (*FORMATS, "responses"):
        events = provider_events(provider, N)
        big = rechunk(events, 4096)
        for client in (None, *FORMATS, "responses"):
            label = client or "meter"
            one, many = run(provider, client, events), run(provider, client, big)
            print(f"{provider:>10} {label:>10} {one:>14.2f} {many:>13.2f}")


if __name__ == "__main__":
    main()
