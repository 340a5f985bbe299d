"""Shared fixtures for the seed front-door tests: canonical answers and SSE reading."""

from __future__ import annotations

import json
from typing import Any

from kaixu.formats.base import StreamEncoder
from kaixu.formats.canonical import (
    ChatResponse,
    Message,
    MessageEnd,
    MessageStart,
    StreamError,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    Usage,
    UsageUpdate,
)
from kaixu.formats.sse import SSEParser

FINAL_USAGE = Usage(input_tokens=14, output_tokens=120, reasoning_tokens=20)


def answer(text: str = "The answer from the model...", **kwargs: Any) -> ChatResponse:
    kwargs.setdefault("usage", Usage(input_tokens=14, output_tokens=120))
    return ChatResponse("resp-1", "gemini-2.5-flash", 1_700_000_000, Message("assistant", [TextPart(text)]), **kwargs)


def tool_answer() -> ChatResponse:
    call = ToolCall("call_1", "get_weather", '{"location":"Paris"}')
    msg = Message("assistant", [], [call])
    return ChatResponse("resp-2", "gemini-2.5-flash", 0, msg, "tool_calls", usage=Usage(10, 5))


def happy_events() -> list[StreamEvent]:
    """What a provider stream decodes to: start, a usage report, text, end with the final usage."""
    return [
        MessageStart("resp-1", "gemini-2.5-flash"),
        UsageUpdate(Usage(input_tokens=14)),
        TextDelta("Stoicism "),
        TextDelta("is a "),
        TextDelta("philosophy — ü."),
        MessageEnd("stop", FINAL_USAGE),
    ]


def failing_events() -> list[StreamEvent]:
    return [
        MessageStart("resp-1", "gemini-2.5-flash"),
        TextDelta("Stoicism "),
        StreamError("upstream stream ended before the answer was complete", "api_error"),
    ]


def run(encoder: StreamEncoder, events: list[StreamEvent]) -> bytes:
    return b"".join(encoder.encode(e) for e in events) + encoder.close()


def sse_events(raw: bytes) -> list[tuple[str | None, Any]]:
    """``(event name, parsed data)`` pairs; non-JSON data (``[DONE]``) is kept as text."""
    parser = SSEParser()
    out: list[tuple[str | None, Any]] = []
    for event in [*parser.feed(raw), *parser.flush()]:
        try:
            data: Any = json.loads(event.data)
        except ValueError:
            data = event.data
        out.append((event.event, data))
    return out
