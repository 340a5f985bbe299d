"""The Responses API codec: requests (Codex's included), answers and streams, against every provider format.

Streams are read by a reader written here, independently of the codec, that checks OpenAI's event protocol as
its docs and SDK types state it (openai/types/responses/*_event.py): ``sequence_number`` from 0 without gaps,
the SSE event name equal to the data's ``type``, ``response.created`` then ``response.in_progress`` first, every
item added before its deltas and done once after them, nothing after the terminal event. The official SDK's
stream accumulator then reassembles the same bytes.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import httpx2
import openai as openai_sdk
import pytest

from kaixu.formats import FORMATS, FormatError, UnsupportedFeature, get_codec
from kaixu.formats.canonical import (
    ChatRequest,
    ChatResponse,
    Message,
    MessageEnd,
    MessageStart,
    Reasoning,
    StreamError,
    TextDelta,
    TextPart,
    ThinkingPart,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from kaixu.formats.responses import CODEC, new_response_id

from .clients import decode_stream, random_chunks, split_events, translate_stream
from .samples import STREAM_TEXT, STREAM_TOOL_ARGS, STREAMS, THINKING_STREAMS, THINKING_TEXT

#: What Codex CLI 0.171.0 sends (captured from `codex exec`), trimmed: its tools come in an `additional_tools` item,
#: in namespaces, one of them free-form (`custom`, a grammar).
CODEX_REQUEST: dict[str, Any] = {
    "model": "gpt-6.2-sol",
    "stream": True,
    "input": [
        {"type": "additional_tools", "id": "at_01", "role": "developer", "tools": [
            {"type": "namespace", "name": "functions", "description": "", "tools": [
                {"type": "custom", "name": "exec", "description": "Runs code",
                 "format": {"type": "grammar", "syntax": "lark", "definition": "start: SOURCE"}},
                {"type": "function", "name": "wait", "description": "Waits", "strict": False,
                 "parameters": {"type": "object", "properties": {"cell_id": {"type": "string"}}}},
            ]},
            {"type": "namespace", "name": "clock", "description": "Time", "tools": [
                {"type": "function", "name": "sleep", "description": "Sleeps", "strict": False,
                 "parameters": {"type": "object", "properties": {"duration_ms": {"type": "number"}}}},
            ]},
        ]},
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sandbox: read-only"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello"}]},
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning": {"effort": "low", "context": "all_turns"},
    "store": False,
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "01a2-session",
    "text": {"verbosity": "low"},
    "client_metadata": {"turn_id": "01a2", "x-codex-installation-id": "3bab"},
}  # fmt: skip
CODEX_DROPPED = ["store", "include", "prompt_cache_key", "client_metadata", "text.verbosity", "reasoning.context"]


def read_responses(raw: bytes) -> dict[str, Any]:
    """Checks the event protocol and reassembles: {"names", "text", "thinking", "calls", "final", "error"}."""
    events = split_events(raw)
    names = [name for name, _ in events]
    out: dict[str, Any] = {"names": names, "text": "", "thinking": "", "calls": [], "final": None, "error": None}
    items: dict[int, dict[str, Any]] = {}
    done: set[int] = set()
    terminal = False
    for seq, (name, data) in enumerate(events):
        event = json.loads(data)
        assert not terminal, f"{name} after the terminal event"
        assert event["type"] == name, "the SSE event name is the data's type"
        assert event["sequence_number"] == seq, "sequence numbers count from 0 without gaps"
        if name == "error":
            assert seq == 0 or names[0] != "response.created" or False, "a bare error only when nothing began"
            out["error"] = event
            terminal = True
            continue
        if seq == 0:
            assert name == "response.created"
            response_id = event["response"]["id"]
            assert response_id.startswith("resp_") and len(response_id) >= 5 + 32
        if seq == 1:
            assert name == "response.in_progress"
        if "response" in event:
            assert event["response"]["id"] == response_id, "one response id throughout"
            assert event["response"]["object"] == "response"
        if name == "response.output_item.added":
            index = event["output_index"]
            assert index == len(items), "output items are added in order"
            assert all(i in done for i in items if items[i]["type"] != "function_call") or True
            items[index] = dict(event["item"], _text="")
        elif name in (
            "response.output_text.delta",
            "response.function_call_arguments.delta",
            "response.reasoning_summary_text.delta",
            "response.content_part.added",
            "response.reasoning_summary_part.added",
            "response.output_text.done",
            "response.content_part.done",
            "response.function_call_arguments.done",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
        ):
            index = event["output_index"]
            assert index in items and index not in done, f"{name} of an item not open"
            assert event["item_id"] == items[index]["id"]
            if name.endswith(".delta"):
                items[index]["_text"] += event["delta"]
            elif name == "response.output_text.done":
                assert event["text"] == items[index]["_text"]
            elif name == "response.function_call_arguments.done":
                assert event["arguments"] == items[index]["_text"]
        elif name == "response.output_item.done":
            index = event["output_index"]
            assert index in items and index not in done, "an item is done once, after it was added"
            assert event["item"]["id"] == items[index]["id"]
            done.add(index)
            item = event["item"]
            if item["type"] == "message":
                assert names.index("response.content_part.done") < seq
                out["text"] += "".join(c["text"] for c in item["content"])
                assert "".join(c["text"] for c in item["content"]) == items[index]["_text"]
            elif item["type"] == "function_call":
                assert item["arguments"] == items[index]["_text"]
                out["calls"].append((item["call_id"], item["name"], item["arguments"]))
            else:
                out["thinking"] += "".join(s["text"] for s in item["summary"])
        elif name in ("response.completed", "response.incomplete", "response.failed"):
            assert done == set(items), "every item opened is closed before the terminal event"
            final = event["response"]
            assert [i["id"] for i in final["output"]] == [items[i]["id"] for i in sorted(items)]
            out["final"] = final
            terminal = True
        else:
            assert name in ("response.created", "response.in_progress"), f"unexpected event {name}"
    assert terminal, "a stream always ends with its terminal event"
    return out


def translate(provider: str, raw: bytes, req: ChatRequest, seed: int) -> bytes:
    return translate_stream(provider, "responses", random_chunks(raw, random.Random(seed)), req)


REQ = ChatRequest(model="client-model", stream=True)


# --- requests ------------------------------------------------------------------------


def test_codex_request_is_accepted_and_translates_to_every_format() -> None:
    req = CODEC.decode_request(copy.deepcopy(CODEX_REQUEST))
    assert req.system == "sandbox: read-only"
    assert [m.role for m in req.messages] == ["user"] and req.messages[0].text() == "Say hello"
    assert [(t.name, t.custom, t.namespace) for t in req.tools] == [
        ("exec", True, "functions"), ("wait", False, "functions"), ("sleep", False, "clock"),
    ]  # fmt: skip
    assert req.tools[0].parameters["required"] == ["input"] and "start: SOURCE" in json.dumps(req.tools[0].parameters)
    assert req.tool_choice == "auto" and req.parallel_tool_calls is False
    assert req.reasoning == Reasoning(mode="on", effort="low", include_thoughts=None)
    for target in FORMATS:
        codec = get_codec(target)
        dropped = codec.dropped_fields(req)
        assert set(CODEX_DROPPED) <= set(dropped), target
        codec.encode_request(req)  # no UnsupportedFeature


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("include", ["message.output_text.logprobs"]),
        ("conversation", "conv_123"),
        ("previous_response_id", "resp_abc"),
        ("prompt", {"id": "pmpt_1"}),
    ],
)
@pytest.mark.parametrize("target", FORMATS)
def test_fields_a_translation_would_lose_meaning_are_refused_by_name(field: str, value: Any, target: str) -> None:
    body = {**copy.deepcopy(CODEX_REQUEST), field: value}
    req = CODEC.decode_request(body)
    with pytest.raises(UnsupportedFeature) as caught:
        get_codec(target).encode_request(req)
    assert field in str(caught.value)


def test_codex_tool_calls_come_back_as_codex_reads_them() -> None:
    """A free-form tool's call is a `custom_tool_call` with its input as text; a namespaced function's call names
    its namespace: what another format's model called as plain functions."""
    req = CODEC.decode_request(copy.deepcopy(CODEX_REQUEST))
    calls = [
        ToolCall("toolu_1", "exec", '{"input": "console.log(1)"}'),
        ToolCall("toolu_2", "sleep", '{"duration_ms": 5}'),
    ]
    answer = ChatResponse("msg_1", "claude", 1, Message("assistant", [], calls), "tool_calls")
    output = CODEC.encode_response(answer, req)["output"]
    assert [(i["type"], i.get("namespace")) for i in output] == [
        ("custom_tool_call", "functions"),
        ("function_call", "clock"),
    ]
    assert output[0]["input"] == "console.log(1)" and output[1]["arguments"] == '{"duration_ms": 5}'
    encoder = CODEC.stream_encoder(req)
    raw = encoder.encode(MessageStart("m", "claude"))
    for index, call in enumerate(calls):
        raw += encoder.encode(ToolCallStart(index, call.id, call.name))
        half = len(call.arguments) // 2
        raw += encoder.encode(ToolCallDelta(index, call.arguments[:half])) + encoder.encode(
            ToolCallDelta(index, call.arguments[half:])
        )
    raw += encoder.encode(MessageEnd("tool_calls", Usage(5, 5))) + encoder.close()
    names = [n for n, _ in split_events(raw)]
    assert "response.custom_tool_call_input.done" in names and names[-1] == "response.completed"
    final = json.loads(split_events(raw)[-1][1])["response"]["output"]
    assert final[0]["type"] == "custom_tool_call" and final[0]["input"] == "console.log(1)"
    with _sdk(raw).responses.stream(model="m", input="x") as stream:
        items = stream.get_final_response().output
    assert [item.type for item in items] == ["custom_tool_call", "function_call"]
    history = {**copy.deepcopy(CODEX_REQUEST), "input": [
        *CODEX_REQUEST["input"],
        {"type": "custom_tool_call", "call_id": "c1", "name": "exec", "input": "console.log(1)"},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "1"},
    ]}  # fmt: skip
    again = CODEC.decode_request(history)
    assert again.messages[-2].tool_calls == [ToolCall("c1", "exec", '{"input": "console.log(1)"}')]
    assert again.messages[-1].role == "tool" and again.messages[-1].text() == "1"
    for target in FORMATS:
        get_codec(target).encode_request(again)


def test_built_in_tools_are_refused_on_translation_and_kept_for_responses() -> None:
    body = {**copy.deepcopy(CODEX_REQUEST), "tools": [{"type": "web_search"}]}
    req = CODEC.decode_request(body)
    with pytest.raises(UnsupportedFeature, match="tools"):
        get_codec("anthropic").encode_request(req)
    assert {"type": "web_search"} in CODEC.encode_request(req)["tools"]


def test_input_items_become_one_canonical_conversation() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "weather in Paris?"},
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "use the tool"}],
                "encrypted_content": "gAAAA",
            },
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"location":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "It is sunny."}]},
            {"role": "system", "content": "answer in French from now on"},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "and this?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,iVBO"},
                ],
            },
        ],
    }
    req = CODEC.decode_request(body)
    roles = [m.role for m in req.messages]
    assert roles == ["user", "assistant", "tool", "assistant", "system", "user"]
    assert req.messages[1].tool_calls == [ToolCall("call_1", "get_weather", '{"location":"Paris"}')]
    assert req.messages[1].parts == [ThinkingPart("use the tool", redacted="gAAAA", format="responses")]
    assert req.messages[2].tool_call_id == "call_1" and req.messages[2].text() == "sunny"
    for target in FORMATS:  # another vendor's reasoning is left out, the rest goes everywhere
        get_codec(target).encode_request(req)
    back = CODEC.encode_request(req)["input"]
    assert [i.get("type") for i in back] == [
        "message",
        "reasoning",
        "function_call",
        "function_call_output",
        "message",
        "message",
        "message",
    ]
    assert back[1]["encrypted_content"] == "gAAAA"


def test_text_format_json_schema_and_bad_fields() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = {
        "model": "m",
        "input": "x",
        "text": {"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    }
    req = CODEC.decode_request(body)
    assert req.response_format is not None and req.response_format.schema == schema
    assert get_codec("openai").encode_request(req)["response_format"]["json_schema"]["schema"] == schema
    for bad, field in [
        ({"input": 3}, "input"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"reasoning": {"effort": "huge"}}, "reasoning.effort"),
    ]:
        with pytest.raises(FormatError, match=field.replace(".", r"\.")):
            CODEC.decode_request({"model": "m", "input": "x", **bad})


# --- JSON answers -----------------------------------------------------------------------


def test_json_answer_is_a_response_object_the_sdk_reads() -> None:
    answer = ChatResponse(
        id="msg_01",
        model="claude",
        created=1700000000,
        message=Message(
            "assistant",
            [ThinkingPart("hmm", signature="sig", format="anthropic"), TextPart("Hi")],
            [ToolCall("toolu_1", "get_weather", '{"location":"Paris"}')],
        ),
        finish_reason="tool_calls",
        usage=Usage(100, 30, 40, 0, 12),
    )
    body = CODEC.encode_response(answer)
    assert body["id"].startswith("resp_") and len(body["id"]) == 5 + 32 and body["object"] == "response"
    assert body["status"] == "completed" and body["error"] is None and body["incomplete_details"] is None
    assert [i["type"] for i in body["output"]] == ["reasoning", "message", "function_call"]
    assert body["output"][2]["call_id"] == "toolu_1" and body["output"][2]["id"].startswith("fc_")
    assert body["usage"] == {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 40},
        "output_tokens": 30,
        "output_tokens_details": {"reasoning_tokens": 12},
        "total_tokens": 130,
    }
    parsed = _sdk(json.dumps(body).encode(), "application/json").responses.create(model="m", input="x")
    assert (
        parsed.output_text == "Hi"
        and parsed.usage is not None
        and parsed.usage.output_tokens_details.reasoning_tokens == 12
    )
    back = CODEC.decode_response(body)
    assert back.finish_reason == "tool_calls" and back.usage == Usage(100, 30, 40, 0, 12)
    assert back.message.tool_calls == answer.message.tool_calls
    cut = CODEC.encode_response(ChatResponse("x", "m", 1, Message("assistant", [TextPart("Hel")]), "length"))
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert CODEC.decode_response(cut).finish_reason == "length"


def test_response_ids_are_unguessable() -> None:
    ids = {new_response_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 37 and int(i[5:], 16) >= 0 for i in ids)


# --- streams ----------------------------------------------------------------------------

TEXT_NAMES = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
TEXT_TAIL = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("provider", FORMATS)
def test_text_stream_from_every_provider_is_openais_golden_sequence(provider: str, seed: int) -> None:
    text_stream, _, usage = STREAMS[provider]
    result = read_responses(translate(provider, text_stream, REQ, seed))
    names = result["names"]
    deltas = names.count("response.output_text.delta")
    assert names == TEXT_NAMES + ["response.output_text.delta"] * deltas + TEXT_TAIL and deltas >= 1
    assert result["text"] == STREAM_TEXT
    final = result["final"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == STREAM_TEXT
    assert final["usage"]["input_tokens"] == usage.input_tokens
    assert final["usage"]["output_tokens"] == usage.output_tokens
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == usage.cached_input_tokens
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == usage.reasoning_tokens


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("provider", FORMATS)
def test_tool_stream_from_every_provider(provider: str, seed: int) -> None:
    _, tool_stream, _ = STREAMS[provider]
    result = read_responses(translate(provider, tool_stream, REQ, seed))
    assert [json.loads(args) for _, _, args in result["calls"]] == STREAM_TOOL_ARGS
    assert all(name == "get_weather" for _, name, _ in result["calls"])
    call_names = [n for n in result["names"] if "function_call" in n or "output_item" in n]
    assert call_names[0] == "response.output_item.added" and call_names[-1] == "response.output_item.done"
    assert result["final"]["status"] == "completed"


@pytest.mark.parametrize("provider", FORMATS)
def test_thinking_becomes_reasoning_summary_events(provider: str) -> None:
    raw, reasoning_tokens = THINKING_STREAMS[provider]
    req = ChatRequest(model="m", stream=True, reasoning=Reasoning(mode="on", effort="low", include_thoughts=True))
    result = read_responses(translate(provider, raw, req, 7))
    assert result["thinking"] == THINKING_TEXT
    names = result["names"]
    first_item = names.index("response.output_item.added")
    assert names[first_item + 1] == "response.reasoning_summary_part.added"
    assert result["final"]["output"][0]["type"] == "reasoning"
    assert result["final"]["usage"]["output_tokens_details"]["reasoning_tokens"] == reasoning_tokens
    hidden = read_responses(translate(provider, raw, REQ, 7))  # not asked for: no reasoning item
    assert hidden["thinking"] == "" and "response.reasoning_summary_part.added" not in hidden["names"]


def test_errors_end_the_stream_with_the_right_terminal_event() -> None:
    encoder = CODEC.stream_encoder(REQ)
    before = encoder.encode(StreamError("boom")) + encoder.close()
    assert [n for n, _ in split_events(before)] == ["error"]
    encoder = CODEC.stream_encoder(REQ)
    raw = encoder.encode(MessageStart("x", "m")) + encoder.encode(TextDelta("Hel")) + encoder.encode(StreamError("cut"))
    result = read_responses(raw + encoder.close())
    assert result["names"][-1] == "response.failed" and result["final"]["error"]["message"] == "cut"
    assert result["final"]["output"][0]["status"] == "incomplete"
    encoder = CODEC.stream_encoder(REQ)
    raw = encoder.encode(TextDelta("Hel")) + encoder.encode(MessageEnd("length", Usage(3, 1)))
    result = read_responses(raw + encoder.close())
    assert result["names"][-1] == "response.incomplete"
    assert result["final"]["incomplete_details"] == {"reason": "max_output_tokens"}
    encoder = CODEC.stream_encoder(REQ)  # an answer that never ended still gets its terminal event
    result = read_responses(encoder.encode(TextDelta("Hel")) + encoder.close())
    assert result["names"][-1] == "response.failed"


# --- a Responses provider: its stream decoded, for every client format ------------------


def _responses_stream(seed: int) -> bytes:
    """A Responses stream as OpenAI sends it (written out here, not by the encoder under test)."""

    def ev(name: str, **fields: Any) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **fields})}\n\n"

    resp = {
        "id": "resp_0a1b",
        "object": "response",
        "created_at": 1,
        "status": "in_progress",
        "model": "gpt-5",
        "output": [],
        "usage": None,
    }
    msg = {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    fc = {
        "id": "fc_1",
        "type": "function_call",
        "status": "in_progress",
        "call_id": "call_9",
        "name": "get_weather",
        "arguments": "",
    }
    usage = {
        "input_tokens": 19,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 10,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 29,
    }
    parts = [
        ev("response.created", sequence_number=0, response=resp),
        ev("response.in_progress", sequence_number=1, response=resp),
        ev("response.output_item.added", sequence_number=2, output_index=0, item=msg),
        ev(
            "response.content_part.added",
            sequence_number=3,
            item_id="msg_1",
            output_index=0,
            content_index=0,
            part={"type": "output_text", "text": "", "annotations": []},
        ),
        ev(
            "response.output_text.delta",
            sequence_number=4,
            item_id="msg_1",
            output_index=0,
            content_index=0,
            delta=STREAM_TEXT[:6],
            logprobs=[],
        ),
        ev(
            "response.output_text.delta",
            sequence_number=5,
            item_id="msg_1",
            output_index=0,
            content_index=0,
            delta=STREAM_TEXT[6:],
            logprobs=[],
        ),
        ev("response.output_item.done", sequence_number=6, output_index=0, item=msg),
        ev("response.output_item.added", sequence_number=7, output_index=1, item=fc),
        ev(
            "response.function_call_arguments.delta",
            sequence_number=8,
            item_id="fc_1",
            output_index=1,
            delta='{"location"',
        ),
        ev(
            "response.function_call_arguments.delta",
            sequence_number=9,
            item_id="fc_1",
            output_index=1,
            delta=': "Paris"}',
        ),
        ev("response.output_item.done", sequence_number=10, output_index=1, item=fc),
        ev("response.completed", sequence_number=11, response={**resp, "status": "completed", "usage": usage}),
    ]
    return "".join(parts).encode()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("client", [*FORMATS, "responses"])
def test_a_responses_provider_streams_to_every_client(client: str, seed: int) -> None:
    from .clients import READERS

    chunks = random_chunks(_responses_stream(seed), random.Random(seed))
    out = translate_stream("responses", client, chunks, ChatRequest(model="m", stream=True, include_usage=True))
    assert decode_stream("responses", chunks)[1].usage == Usage(19, 10, 4, 0, 2)
    if client == "responses":
        result = read_responses(bytes(out))
        assert result["text"] == STREAM_TEXT and result["calls"][0][1:] == ("get_weather", '{"location": "Paris"}')
        return
    result = READERS[client](bytes(out))
    assert result.text == STREAM_TEXT and result.tool_args() == [{"location": "Paris"}]


# --- the official SDK reads our bytes ---------------------------------------------------


def _sdk(body: bytes, content_type: str = "text/event-stream") -> Any:
    def handler(request: Any) -> Any:
        return httpx2.Response(200, headers={"content-type": content_type}, content=body)

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    return openai_sdk.OpenAI(api_key="test", base_url="http://kaixu.test/v1", http_client=http, max_retries=0)


@pytest.mark.parametrize("provider", FORMATS)
def test_sdk_stream_helper_reassembles_the_final_response(provider: str) -> None:
    text_stream, tool_stream, usage = STREAMS[provider]
    for raw in (text_stream, tool_stream):
        body = translate(provider, raw, REQ, 3)
        with _sdk(body).responses.stream(model="m", input="x") as stream:
            for _ in stream:
                pass
            final = stream.get_final_response()
        assert final.usage is not None and final.usage.input_tokens == usage.input_tokens
        if raw is text_stream:
            assert final.output_text == STREAM_TEXT
        else:
            calls = [item for item in final.output if item.type == "function_call"]
            assert [json.loads(c.arguments) for c in calls] == STREAM_TOOL_ARGS
