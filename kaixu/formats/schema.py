"""JSON Schemas across formats: the one home for converting them.

Canonical schemas (``ResponseFormat.schema``, ``Tool.parameters``) are standard JSON Schema, which is what
OpenAI and Anthropic take. Gemini also speaks an OpenAPI-style dialect (its ``Schema`` object, in
``responseSchema`` and function ``parameters``; the Gemini CLI writes the same dialect in
``responseJsonSchema``): upper-case type names (``"OBJECT"``), ``nullable: true``, ``propertyOrdering``,
``format: "enum"``, and the snake_case spelling of its field names that the REST API also takes.
``from_gemini`` turns either Gemini field into standard JSON Schema:

* type names are lower-cased (``"STRING"`` -> ``"string"``; ``TYPE_UNSPECIFIED`` is left out);
* ``nullable: true`` becomes ``anyOf: [<the schema>, {"type": "null"}]``. ``anyOf`` rather than a type list
  (``["string", "null"]``): every target's structured-output subset accepts ``anyOf``, not every one takes a
  list of types. ``description`` and ``title`` stay on the outer schema, where models read them;
* ``propertyOrdering`` is left out (it only orders Gemini's own output), and so is ``format: "enum"`` next to
  an ``enum`` (Gemini's marker for a string enum; the ``enum`` says it); every other ``format`` and every
  ``enum`` is kept;
* snake_case field names (``any_of``, ``max_items``...) are camel-cased as JSON Schema spells them.

Only schema positions are walked (``properties``, ``items``, ``anyOf``...): property names, ``enum`` values,
``default`` and ``example`` are data and are never touched. Standard JSON Schema comes out unchanged, so the
conversion is safe on a schema that was already standard.

``closed_objects`` adapts a canonical schema to Anthropic's structured outputs, which refuse an object schema
that does not say ``additionalProperties: false``.
"""

from __future__ import annotations

from typing import Any

#: Keywords whose value is a map of names to schemas.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
#: Keywords whose value is a list of schemas.
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
#: Keywords whose value is one schema (``items`` may also be a list: draft 4 tuples).
_SCHEMA_ONE = frozenset(
    {
        "items",
        "additionalItems",
        "additionalProperties",
        "unevaluatedItems",
        "unevaluatedProperties",
        "propertyNames",
        "contains",
        "not",
        "if",
        "then",
        "else",
    }
)
#: Gemini ``Schema`` fields in the snake_case spelling the REST API accepts.
_CAMEL = {
    "any_of": "anyOf",
    "max_items": "maxItems",
    "min_items": "minItems",
    "max_length": "maxLength",
    "min_length": "minLength",
    "max_properties": "maxProperties",
    "min_properties": "minProperties",
    "property_ordering": "propertyOrdering",
}
_GEMINI_ONLY = frozenset({"propertyOrdering", "nullable"})


def _walk(schema: Any, convert: Any) -> Any:
    """Apply ``convert`` (schema dict -> schema dict) to every sub-schema, innermost first."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            value = {name: _walk(sub, convert) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            value = [_walk(sub, convert) for sub in value]
        elif key in _SCHEMA_ONE:
            value = [_walk(sub, convert) for sub in value] if isinstance(value, list) else _walk(value, convert)
        out[key] = value
    return convert(out)


def _lower(value: Any) -> Any:
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, list):
        return [v.lower() if isinstance(v, str) else v for v in value]
    return value


def _standard(schema: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            if value == "TYPE_UNSPECIFIED":
                continue
            value = _lower(value)
        elif key in _GEMINI_ONLY or (key == "format" and value == "enum" and "enum" in schema):
            continue
        out[key] = value
    if schema.get("nullable") is True:
        return _nullable(out)
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return schema
    branches = schema.get("anyOf")
    if isinstance(branches, list) and set(schema) <= {"anyOf", "description", "title"}:
        if {"type": "null"} not in branches:
            schema = {**schema, "anyOf": [*branches, {"type": "null"}]}
        return schema
    outer: dict[str, Any] = {k: schema[k] for k in ("description", "title") if k in schema}
    inner = {k: v for k, v in schema.items() if k not in outer}
    return {**outer, "anyOf": [inner, {"type": "null"}]}


def _camel(schema: Any) -> Any:
    """Snake_case Gemini field names -> camelCase, at schema positions only (before the walk that needs them)."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        key = _CAMEL.get(key, key)
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            value = {name: _camel(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            value = [_camel(sub) for sub in value]
        elif key in _SCHEMA_ONE:
            value = [_camel(sub) for sub in value] if isinstance(value, list) else _camel(value)
        out[key] = value
    return out


def from_gemini(schema: Any) -> Any:
    """A Gemini ``responseSchema``/``responseJsonSchema``/``parameters``/``parametersJsonSchema`` as standard
    JSON Schema (see the module docstring). Anything that is not an object is returned as it is."""
    return _walk(_camel(schema), _standard)


def _close(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
    if is_object and "additionalProperties" not in schema:
        return {**schema, "additionalProperties": False}
    return schema


def closed_objects(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object schema that does not say otherwise.

    Anthropic's structured outputs refuse an open object; a schema that explicitly allows extra properties is
    left as it is, for Anthropic to judge."""
    return _walk(schema, _close)
