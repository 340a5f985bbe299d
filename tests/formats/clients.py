"""Test-side readers of client SSE streams, written independently of the codecs.

Each reader parses a stream the way a client of that format would and checks the
protocol invariants along the way (OpenAI: role first, ``[DONE]`` last; Anthropic:
``message_start`` first, blocks started/stopped in order with the right indexes;
Gemini: every chunk a ``GenerateContentResponse``, ``finishReason`` on the last).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from kaixu.formats import get_codec
from kaixu.formats.canonical import ChatRequest, StreamEvent


@dataclass
class Reassembled:
    text: str = ""
    thinking: str = ""  # Anthropic thinking blocks, Gemini thought parts, OpenAI reasoning_content
    signatures: list[str] = field(default_factory=list)  # of thinking blocks / thought parts, as sent
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)  # (id, name, arguments)
    finish: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def tool_args(self) -> list[Any]:
        return [json.loads(args) for _, _, args in self.tool_calls]


def split_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) pairs: a deliberately simple SSE reader, independent of ``kaixu.formats.sse``."""
    out = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((name, "\n".join(data)))
    return out


def read_openai(raw: bytes) -> Reassembled:
    events = split_events(raw)
    assert events[-1][1] == "[DONE]", "OpenAI streams end with [DONE]"
    result = Reassembled()
    calls: dict[int, list[str]] = {}
    first = True
    for _, data in events[:-1]:
        chunk = json.loads(data)
        if "error" in chunk:
            result.error = chunk["error"]
            continue
        assert chunk["object"] == "chat.completion.chunk"
        assert isinstance(chunk["created"], int) and chunk["id"] and chunk["model"]
        if not chunk["choices"]:
            result.usage = chunk["usage"]
            continue
        choice = chunk["choices"][0]
        delta = choice["delta"]
        if first:
            assert delta.get("role") == "assistant", "first delta carries the role"
            first = False
        result.text += delta.get("content") or ""
        result.thinking += delta.get("reasoning_content") or ""
        for call in delta.get("tool_calls") or []:
            if "id" in call:
                calls[call["index"]] = [
                    call["id"],
                    call["function"]["name"],
                    call["function"].get("arguments", ""),
                ]
            else:
                calls[call["index"]][2] += call["function"]["arguments"]
        if choice["finish_reason"]:
            result.finish = choice["finish_reason"]
    result.tool_calls = [(c[0], c[1], c[2]) for _, c in sorted(calls.items())]
    return result


def read_anthropic(raw: bytes) -> Reassembled:
    events = split_events(raw)
    result = Reassembled()
    if events and events[-1][0] == "error":
        result.error = json.loads(events[-1][1])["error"]
        events = events[:-1]
    names = [name for name, _ in events]
    assert not names or names[0] == "message_start"
    if result.error is None:
        assert names[-2:] == ["message_delta", "message_stop"]
    blocks: list[dict[str, Any]] = []
    open_block: int | None = None
    start_usage: dict[str, Any] = {}
    for name, data in events:
        event = json.loads(data)
        assert event["type"] == name, "SSE event name matches the JSON type"
        if name == "message_start":
            start_usage = event["message"]["usage"]
            assert event["message"]["content"] == [] and event["message"]["role"] == "assistant"
        elif name == "content_block_start":
            assert open_block is None, "previous block was stopped"
            assert event["index"] == len(blocks), "block indexes are sequential"
            blocks.append(dict(event["content_block"], _json=""))
            open_block = event["index"]
        elif name == "content_block_delta":
            block = blocks[event["index"]]
            delta = event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                assert block["type"] == "thinking"
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                assert block["type"] == "thinking"
                block["signature"] = delta["signature"]
            else:
                block["_json"] += delta["partial_json"]
        elif name == "content_block_stop":
            assert event["index"] == open_block
            open_block = None
        elif name == "message_delta":
            assert open_block is None
            result.finish = event["delta"]["stop_reason"]
            result.usage = {**start_usage, **event["usage"]}
    for block in blocks:
        if block["type"] == "text":
            result.text += block["text"]
        elif block["type"] == "thinking":
            assert isinstance(block["signature"], str), "the SDKs require a signature string"
            result.thinking += block["thinking"]
            result.signatures.append(block["signature"])
        else:
            result.tool_calls.append((block["id"], block["name"], block["_json"]))
    return result


def read_gemini(raw: bytes) -> Reassembled:
    result = Reassembled()
    events = split_events(raw)
    for i, (_, data) in enumerate(events):
        chunk = json.loads(data)
        if "error" in chunk:
            result.error = chunk["error"]
            continue
        candidate = chunk["candidates"][0]
        for part in candidate.get("content", {}).get("parts", []):
            if part.get("thought"):
                result.thinking += part.get("text", "")
                if "thoughtSignature" in part:
                    result.signatures.append(part["thoughtSignature"])
            elif "text" in part:
                result.text += part["text"]
            if "functionCall" in part:
                call = part["functionCall"]
                result.tool_calls.append(("", call["name"], json.dumps(call["args"])))
        if "finishReason" in candidate:
            assert i == len(events) - 1, "finishReason only on the last chunk"
            result.finish = candidate["finishReason"]
        if "usageMetadata" in chunk:
            result.usage = chunk["usageMetadata"]
    return result


READERS = {"openai": read_openai, "anthropic": read_anthropic, "gemini": read_gemini}


def random_chunks(data: bytes, rng: random.Random, max_size: int = 17) -> list[bytes]:
    """Split ``data`` at random byte offsets (including inside UTF-8 sequences and CRLFs)."""
    chunks, i = [], 0
    while i < len(data):
        size = rng.randint(1, max_size)
        chunks.append(data[i : i + size])
        i += size
    return chunks


def decode_stream(provider: str, chunks: list[bytes]) -> tuple[list[StreamEvent], Any]:
    decoder = get_codec(provider).stream_decoder()
    events: list[StreamEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.close()
    return events, decoder


def translate_stream(provider: str, client: str, chunks: list[bytes], req: ChatRequest) -> bytes:
    """Provider SSE chunks -> provider decoder -> client encoder -> client SSE bytes."""
    decoder = get_codec(provider).stream_decoder()
    encoder = get_codec(client).stream_encoder(req)
    out = bytearray()
    for chunk in chunks:
        for event in decoder.feed(chunk):
            out += encoder.encode(event)
    for event in decoder.close():
        out += encoder.encode(event)
    out += encoder.close()
    return bytes(out)
