"""Golden samples in each provider's documented wire format, and what they mean canonically.

Shapes follow the public API references (OpenAI Chat Completions, Anthropic Messages,
Gemini generateContent / streamGenerateContent?alt=sse), including the extra fields
real providers send (system_fingerprint, logprobs, ping events, safety ratings ...),
so the decoders are tested against what actually arrives on the wire.
"""

from __future__ import annotations

import json
from typing import Any

from kaixu.formats.canonical import Usage

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
IMAGE_URL = "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"location": {"type": "string", "description": "City name"}},
    "required": ["location"],
}


def sse(*events: Any, event_names: bool = False, sep: str = "\n\n") -> bytes:
    """Join JSON events as SSE; ``event_names`` adds Anthropic's ``event:`` lines."""
    out = []
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        name = f"event: {event['type']}\n" if event_names and isinstance(event, dict) else ""
        out.append(f"{name}data: {data}{sep}")
    return "".join(out).encode()


# --- OpenAI --------------------------------------------------------------------------

OPENAI_REQUEST: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather where this photo was taken, and in Tokyo?"},
                {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "low"}},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
            ],
            "name": "alice",
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                },
                {
                    "id": "call_def",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Tokyo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp_c":21}'},
        {"role": "tool", "tool_call_id": "call_def", "content": "rainy"},
        {"role": "user", "content": "Thanks! Summarise."},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": WEATHER_SCHEMA,
            },
        }
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "temperature": 0.3,
    "top_p": 0.9,
    "max_completion_tokens": 256,
    "stop": ["\n\nEND"],
    "stream": True,
    "stream_options": {"include_usage": True},
    "user": "user-42",
    "seed": 7,
    "store": False,
    "logprobs": True,
}

OPENAI_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me check both cities.",
                "refusal": None,
                "annotations": [],
                "tool_calls": [
                    {
                        "id": "call_abc",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                    },
                    {
                        "id": "call_def",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Tokyo"}'},
                    },
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 10,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}
OPENAI_RESPONSE_USAGE = Usage(1117, 46, 1024, 0, 10)


def _oa_chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }
    chunk.update(extra)
    return chunk


_OA_USAGE = {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0},
}

OPENAI_TEXT_STREAM = sse(
    _oa_chunk({"role": "assistant", "content": "", "refusal": None}),
    _oa_chunk({"content": "Hello"}),
    _oa_chunk({"content": " wörld, "}),
    _oa_chunk({"content": "你好 👋"}),
    _oa_chunk({}, "stop"),
    _oa_chunk(None, usage=_OA_USAGE),
    "[DONE]",
)

OPENAI_TOOL_STREAM = sse(
    _oa_chunk(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ],
            "refusal": None,
        }
    ),
    _oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"lo'}}]}),
    _oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'cation": "Paris"}'}}]}),
    _oa_chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_def",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    ),
    _oa_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"location": "Tokyo"}'}}]}),
    _oa_chunk({}, "tool_calls"),
    _oa_chunk(None, usage=_OA_USAGE),
    "[DONE]",
)
OPENAI_STREAM_USAGE = Usage(19, 10, 4, 0, 2)

# --- Anthropic -----------------------------------------------------------------------

ANTHROPIC_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "system": [
        {"type": "text", "text": "You are a weather bot."},
        {"type": "text", "text": "Answer in English.", "cache_control": {"type": "ephemeral"}},
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather where this photo was taken, and in Tokyo?"},
                {"type": "image", "source": {"type": "url", "url": IMAGE_URL}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check both cities."},
                {
                    "type": "tool_use",
                    "id": "toolu_01A",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_01B",
                    "name": "get_weather",
                    "input": {"location": "Tokyo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": '{"temp_c":21}'},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01B",
                    "content": [{"type": "text", "text": "service unavailable"}],
                    "is_error": True,
                },
                {"type": "text", "text": "Thanks! Summarise."},
            ],
        },
    ],
    "tools": [{"name": "get_weather", "description": "Current weather", "input_schema": WEATHER_SCHEMA}],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": False},
    "temperature": 0.3,
    "top_k": 40,
    "stop_sequences": ["\n\nEND"],
    "stream": True,
    "metadata": {"user_id": "user-42"},
    "thinking": {"type": "enabled", "budget_tokens": 2048},
}

ANTHROPIC_RESPONSE: dict[str, Any] = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "text", "text": "Let me check both cities."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"location": "Paris"}},
        {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": {"location": "Tokyo"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 93,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1024,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 46,
        "service_tier": "standard",
    },
}
ANTHROPIC_RESPONSE_USAGE = Usage(1117, 46, 1024, 0, 0)

_AN_START = {
    "type": "message_start",
    "message": {
        "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-5-20250929",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 25,
            "cache_creation_input_tokens": 3,
            "cache_read_input_tokens": 12,
            "output_tokens": 1,
        },
    },
}

ANTHROPIC_TEXT_STREAM = sse(
    _AN_START,
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " wörld, "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "你好 👋"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 10},
    },
    {"type": "message_stop"},
    event_names=True,
)

ANTHROPIC_TOOL_STREAM = sse(
    _AN_START,
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "Two cities."},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"},
    },
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {}},
    },
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"lo'},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": 'cation": "Paris"}'},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": '{"location": "Tokyo"}'},
    },
    {"type": "content_block_stop", "index": 2},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 10},
    },
    {"type": "message_stop"},
    event_names=True,
)
ANTHROPIC_STREAM_USAGE = Usage(40, 10, 12, 3, 0)

# --- Gemini --------------------------------------------------------------------------

GEMINI_REQUEST: dict[str, Any] = {
    "systemInstruction": {"parts": [{"text": "You are a weather bot."}, {"text": "Answer in English."}]},
    "contents": [
        {
            "role": "user",
            "parts": [
                {"text": "Weather where this photo was taken, and in Tokyo?"},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": IMAGE_URL}},
                {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
            ],
        },
        {
            "role": "model",
            "parts": [
                {"text": "Let me check both cities."},
                {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
                {"functionCall": {"name": "get_weather", "args": {"location": "Tokyo"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
                {"functionResponse": {"name": "get_weather", "response": {"output": "rainy"}}},
                {"text": "Thanks! Summarise."},
            ],
        },
    ],
    "tools": [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parameters": {
                        "type": "OBJECT",
                        "properties": {"location": {"type": "STRING", "description": "City name"}},
                        "required": ["location"],
                    },
                }
            ]
        }
    ],
    "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
    "generationConfig": {
        "temperature": 0.3,
        "topP": 0.9,
        "topK": 40,
        "maxOutputTokens": 256,
        "stopSequences": ["\n\nEND"],
        "thinkingConfig": {"thinkingBudget": 1024},
    },
    "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}],
}

GEMINI_RESPONSE: dict[str, Any] = {
    "candidates": [
        {
            "content": {
                "parts": [
                    {"text": "Let me check both cities."},
                    {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
                    {"functionCall": {"name": "get_weather", "args": {"location": "Tokyo"}}},
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}],
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 1117,
        "candidatesTokenCount": 36,
        "totalTokenCount": 1163,
        "cachedContentTokenCount": 1024,
        "thoughtsTokenCount": 10,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1117}],
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "mAitaLmkHPPlz7IPvtfUqQ4",
}
GEMINI_RESPONSE_USAGE = Usage(1117, 46, 1024, 0, 10)


def _ge_chunk(parts: list[dict[str, Any]] | None, finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": 0}
    if parts is not None:
        candidate["content"] = {"parts": parts, "role": "model"}
    if finish:
        candidate["finishReason"] = finish
    chunk: dict[str, Any] = {"candidates": [candidate]}
    chunk["usageMetadata"] = usage or {"promptTokenCount": 19, "totalTokenCount": 19}
    chunk["modelVersion"] = "gemini-2.5-flash"
    chunk["responseId"] = "tTCwacuEBMvnitYP06qsgQY"
    return chunk


_GE_USAGE = {
    "promptTokenCount": 19,
    "candidatesTokenCount": 8,
    "totalTokenCount": 29,
    "cachedContentTokenCount": 4,
    "thoughtsTokenCount": 2,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 19}],
}

GEMINI_TEXT_STREAM = sse(
    _ge_chunk([{"text": "Hello"}]),
    _ge_chunk([{"text": " wörld, "}]),
    _ge_chunk([{"text": "你好 👋"}]),
    _ge_chunk([{"text": ""}], "STOP", _GE_USAGE),
    sep="\r\n\r\n",
)

GEMINI_TOOL_STREAM = sse(
    _ge_chunk([{"text": "Plan: two lookups.", "thought": True}]),
    _ge_chunk(
        [
            {
                "functionCall": {"name": "get_weather", "args": {"location": "Paris"}},
                "thoughtSignature": "CiQB0e2Kb",
            },
            {"functionCall": {"name": "get_weather", "args": {"location": "Tokyo"}}},
        ],
        "STOP",
        _GE_USAGE,
    ),
    sep="\r\n\r\n",
)
GEMINI_STREAM_USAGE = Usage(19, 10, 4, 0, 2)

#: Per provider: (text stream, tool stream, stream usage).
STREAMS: dict[str, tuple[bytes, bytes, Usage]] = {
    "openai": (OPENAI_TEXT_STREAM, OPENAI_TOOL_STREAM, OPENAI_STREAM_USAGE),
    "anthropic": (ANTHROPIC_TEXT_STREAM, ANTHROPIC_TOOL_STREAM, ANTHROPIC_STREAM_USAGE),
    "gemini": (GEMINI_TEXT_STREAM, GEMINI_TOOL_STREAM, GEMINI_STREAM_USAGE),
}
STREAM_TEXT = "Hello wörld, 你好 👋"
STREAM_TOOL_ARGS = [{"location": "Paris"}, {"location": "Tokyo"}]

# --- thinking ------------------------------------------------------------------------
# Answers with visible reasoning, in each format's documented shape: Anthropic thinking blocks (with
# a signature, and a redacted block), Gemini thought parts (thoughtsTokenCount, a thoughtSignature),
# and the reasoning_content of OpenAI-compatible servers (the official API returns only the count).

THINKING_TEXT = "Greet back, 简短 🤔."
THINKING_SIGNATURE = "EqQBCgIYAhIMsig"
REDACTED_DATA = "EmwKAhgBEgy3va3pzix/LafPsn4a"

ANTHROPIC_THINKING_RESPONSE: dict[str, Any] = {
    **ANTHROPIC_RESPONSE,
    "content": [
        {"type": "thinking", "thinking": THINKING_TEXT, "signature": THINKING_SIGNATURE},
        {"type": "redacted_thinking", "data": REDACTED_DATA},
        {"type": "text", "text": STREAM_TEXT},
    ],
    "stop_reason": "end_turn",
}

GEMINI_THINKING_RESPONSE: dict[str, Any] = {
    **GEMINI_RESPONSE,
    "candidates": [
        {
            "content": {
                "parts": [
                    {"text": THINKING_TEXT, "thought": True},
                    {"text": STREAM_TEXT, "thoughtSignature": "CiQB0e2Kb"},
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
}

OPENAI_REASONING_RESPONSE: dict[str, Any] = {
    **OPENAI_RESPONSE,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": STREAM_TEXT, "reasoning_content": THINKING_TEXT},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
}

ANTHROPIC_THINKING_STREAM = sse(
    _AN_START,
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
    },
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Greet back, "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "简短 🤔."}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": THINKING_SIGNATURE}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking", "data": REDACTED_DATA}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "Hello wörld, "}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "你好 👋"}},
    {"type": "content_block_stop", "index": 2},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 30},
    },
    {"type": "message_stop"},
    event_names=True,
)

_GE_THINKING_USAGE = {**_GE_USAGE, "thoughtsTokenCount": 12, "totalTokenCount": 39}

GEMINI_THINKING_STREAM = sse(
    _ge_chunk([{"text": "Greet back, ", "thought": True}]),
    _ge_chunk([{"text": "简短 🤔.", "thought": True}]),
    _ge_chunk([{"text": "Hello wörld, "}]),
    _ge_chunk([{"text": "你好 👋", "thoughtSignature": "CiQB0e2Kb"}], "STOP", _GE_THINKING_USAGE),
    sep="\r\n\r\n",
)

OPENAI_REASONING_STREAM = sse(
    _oa_chunk({"role": "assistant", "content": None, "reasoning_content": ""}),
    _oa_chunk({"content": None, "reasoning_content": "Greet back, "}),
    _oa_chunk({"content": None, "reasoning_content": "简短 🤔."}),
    _oa_chunk({"content": "Hello wörld, ", "reasoning_content": None}),
    _oa_chunk({"content": "你好 👋"}),
    _oa_chunk({}, "stop"),
    _oa_chunk(None, usage={**_OA_USAGE, "completion_tokens_details": {"reasoning_tokens": 12}}),
    "[DONE]",
)

#: Per provider: (stream with visible thinking, its reasoning tokens as the provider counts them).
THINKING_STREAMS: dict[str, tuple[bytes, int]] = {
    "openai": (OPENAI_REASONING_STREAM, 12),
    "anthropic": (ANTHROPIC_THINKING_STREAM, 0),  # Anthropic sends no separate count
    "gemini": (GEMINI_THINKING_STREAM, 12),
}
THINKING_RESPONSES: dict[str, dict[str, Any]] = {
    "openai": OPENAI_REASONING_RESPONSE,
    "anthropic": ANTHROPIC_THINKING_RESPONSE,
    "gemini": GEMINI_THINKING_RESPONSE,
}
