"""Structured output and tool schemas: Gemini's OpenAPI-style dialect becomes standard JSON Schema, and every
format's response format decodes to one canonical record that each target writes in its own field."""

from __future__ import annotations

from typing import Any

import pytest

from kaixu.formats import get_codec
from kaixu.formats.canonical import ResponseFormat
from kaixu.formats.schema import closed_objects, from_gemini

# Written from Gemini's Schema reference: type names in upper case, nullable, propertyOrdering, format "enum".
GEMINI_DIALECT: dict[str, Any] = {
    "type": "OBJECT",
    "description": "A routing decision",
    "properties": {
        "reasoning": {"type": "STRING", "description": "why"},
        "choice": {"type": "STRING", "format": "enum", "enum": ["FAST", "SMART"]},
        "when": {"type": "STRING", "format": "date-time", "nullable": True},
        "type": {"type": "INTEGER"},  # a property *named* type
        "tags": {"type": "ARRAY", "items": {"type": "STRING"}, "max_items": 3},
        "either": {"any_of": [{"type": "NUMBER"}, {"type": "BOOLEAN"}]},
    },
    "required": ["reasoning", "choice"],
    "propertyOrdering": ["reasoning", "choice"],
}
STANDARD: dict[str, Any] = {
    "type": "object",
    "description": "A routing decision",
    "properties": {
        "reasoning": {"type": "string", "description": "why"},
        "choice": {"type": "string", "enum": ["FAST", "SMART"]},  # enum values are data: kept as sent
        "when": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
        "type": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "either": {"anyOf": [{"type": "number"}, {"type": "boolean"}]},
    },
    "required": ["reasoning", "choice"],
}
USER = {"role": "user", "parts": [{"text": "route this"}]}


def test_gemini_dialect_becomes_standard_json_schema() -> None:
    assert from_gemini(GEMINI_DIALECT) == STANDARD


def test_standard_json_schema_comes_out_unchanged() -> None:
    assert from_gemini(STANDARD) == STANDARD
    schema = {"type": ["string", "null"], "default": {"type": "KEEP"}, "examples": [{"type": "KEEP"}]}
    assert from_gemini(schema) == schema  # default and examples are data, not schemas


def test_nullable_keeps_description_outside_and_extends_an_existing_any_of() -> None:
    assert from_gemini({"type": "STRING", "description": "d", "nullable": True}) == {
        "description": "d",
        "anyOf": [{"type": "string"}, {"type": "null"}],
    }
    assert from_gemini({"anyOf": [{"type": "STRING"}], "nullable": True}) == {
        "anyOf": [{"type": "string"}, {"type": "null"}]
    }
    assert from_gemini({"type": "STRING", "nullable": False}) == {"type": "string"}
    assert from_gemini({"type": "TYPE_UNSPECIFIED", "description": "d"}) == {"description": "d"}


def test_closed_objects_for_anthropic() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {}}, "b": {"type": "string"}}}
    assert closed_objects(schema) == {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {}, "additionalProperties": False},
            "b": {"type": "string"},
        },
        "additionalProperties": False,
    }
    explicit = {"type": "object", "additionalProperties": {"type": "string"}}
    assert closed_objects(explicit) == explicit  # what the client said stays; Anthropic judges it


@pytest.mark.parametrize("field", ["responseJsonSchema", "responseSchema", "response_json_schema"])
def test_gemini_response_schemas_decode_to_standard_json_schema(field: str) -> None:
    body = {"contents": [USER], "generationConfig": {"responseMimeType": "application/json", field: GEMINI_DIALECT}}
    req = get_codec("gemini").decode_request(body, model="g")
    assert req.response_format == ResponseFormat("json_schema", STANDARD)
    anthropic = get_codec("anthropic").encode_request(req)
    assert anthropic["output_config"] == {"format": {"type": "json_schema", "schema": closed_objects(STANDARD)}}
    openai = get_codec("openai").encode_request(req)
    assert openai["response_format"] == {"type": "json_schema", "json_schema": {"name": "response", "schema": STANDARD}}


def test_a_gemini_schema_without_mime_type_means_json() -> None:
    body = {"contents": [USER], "generationConfig": {"responseJsonSchema": GEMINI_DIALECT}}
    req = get_codec("gemini").decode_request(body, model="g")
    assert req.response_format == ResponseFormat("json_schema", STANDARD)


def test_gemini_tool_parameters_in_either_field_become_standard() -> None:
    decls = [
        {"name": "a", "parameters": GEMINI_DIALECT},
        {"name": "b", "parametersJsonSchema": GEMINI_DIALECT},
    ]
    body = {"contents": [USER], "tools": [{"functionDeclarations": decls}]}
    req = get_codec("gemini").decode_request(body, model="g")
    assert [t.parameters for t in req.tools] == [STANDARD, STANDARD]
    tools = get_codec("anthropic").encode_request(req)["tools"]
    assert [t["input_schema"] for t in tools] == [STANDARD, STANDARD]


OPENAI_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}


def test_openai_json_schema_to_gemini_and_anthropic() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "forecast"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "forecast", "schema": OPENAI_SCHEMA, "strict": True},
        },
    }
    req = get_codec("openai").decode_request(body)
    assert req.response_format == ResponseFormat("json_schema", OPENAI_SCHEMA, "forecast", True)
    config = get_codec("gemini").encode_request(req)["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseJsonSchema": OPENAI_SCHEMA}
    anthropic = get_codec("anthropic").encode_request(req)["output_config"]
    assert anthropic == {"format": {"type": "json_schema", "schema": OPENAI_SCHEMA}}


def test_openai_json_object_to_gemini() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "json"}], "response_format": {"type": "json_object"}}
    config = get_codec("gemini").encode_request(get_codec("openai").decode_request(body))["generationConfig"]
    assert config == {"responseMimeType": "application/json"}


def test_anthropic_output_config_format_to_openai_and_gemini() -> None:
    body = {
        "model": "m",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "forecast"}],
        "output_config": {"format": {"type": "json_schema", "schema": OPENAI_SCHEMA}},
    }
    req = get_codec("anthropic").decode_request(body)
    assert req.response_format == ResponseFormat("json_schema", OPENAI_SCHEMA)
    openai = get_codec("openai").encode_request(req)["response_format"]
    assert openai == {"type": "json_schema", "json_schema": {"name": "response", "schema": OPENAI_SCHEMA}}
    gemini = get_codec("gemini").encode_request(req)["generationConfig"]
    assert gemini == {
        "maxOutputTokens": 50,
        "responseMimeType": "application/json",
        "responseJsonSchema": OPENAI_SCHEMA,
    }
