from __future__ import annotations

from kaixu.formats import estimate_tokens
from kaixu.formats.canonical import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    ChatRequest,
    ImagePart,
    Message,
    TextPart,
    Tool,
    ToolCall,
    Usage,
)


def test_usage_arithmetic() -> None:
    a, b = Usage(10, 5, 4, 1, 2), Usage(1, 2, 0, 0, 1)
    assert a.total_tokens == 15
    assert a + b == Usage(11, 7, 4, 1, 3)


def test_estimate_tokens_counts_everything_the_prompt_carries() -> None:
    empty = ChatRequest("m")
    assert estimate_tokens(empty) == 0
    req = ChatRequest(
        "m",
        [
            Message("user", [TextPart("x" * 400), ImagePart(data="A" * 100_000, media_type="image/png")]),
            Message("assistant", [], [ToolCall("c", "f", "{}")]),
        ],
        system="s" * 40,
        tools=[Tool("lookup", "d" * 36, {})],
    )
    chars = 400 + 40 + len("f") + len("{}") + len("lookup") + 36 + len("{}")
    expected = 2 * MESSAGE_OVERHEAD_TOKENS + IMAGE_TOKENS + (chars + 3) // 4
    assert estimate_tokens(req) == expected  # base64 image data is not counted as text
