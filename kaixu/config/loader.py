"""Read proxy.yaml into a validated `Policy`, or a list of every problem with its YAML path and line.

The loader never stops at the first problem: an operator fixing a policy wants the whole list at once,
each item pointing at a line of the file they edit (`kaixu check` and `kaixu run` print the same list).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from kaixu.config.policy import Policy, build_policy, reference_problems, renamed_fields
from kaixu.exceptions import KaixuError
from kaixu.formats import json_type

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SCHEMA: dict[str, Any] | None = None
_BOOL_TAG = "tag:yaml.org,2002:bool"
_STR_TAG = "tag:yaml.org,2002:str"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy: where it is (a YAML path and a 1-based line) and what is wrong."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '(top level)'}: {self.message}"


class PolicyError(KaixuError):
    """The policy cannot be used; `problems` lists every reason."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(str(p) for p in problems))


def schema() -> dict[str, Any]:
    """The JSON Schema of the policy language (kaixu/schema/proxy.schema.json), loaded once."""
    global _SCHEMA
    if _SCHEMA is None:
        text = resources.files("kaixu.schema").joinpath("proxy.schema.json").read_text("utf-8")
        _SCHEMA = json.loads(text)
    return _SCHEMA


def load_policy(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Policy:
    """Read, interpolate and validate a policy file. Raises PolicyError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise PolicyError(source, [Problem("", None, f"cannot read the policy file: {exc.strerror}")]) from exc
    return parse_policy(text, source=source, environ=environ, base_dir=Path(path).resolve().parent)


def parse_policy(
    text: str,
    *,
    source: str = "<policy>",
    environ: dict[str, str] | None = None,
    base_dir: Path | None = None,
) -> Policy:
    """Parse policy text. `environ` defaults to os.environ; `base_dir` anchors relative file paths."""
    env = os.environ if environ is None else environ
    lines: dict[tuple[str | int, ...], int] = {}
    problems: list[Problem] = []
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _index_lines(node, (), lines, problems)
        data = yaml.SafeLoader("").construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(source, [Problem("", line, f"invalid YAML: {problem}")]) from exc
    if data is None:
        data = {}

    data = _interpolate(data, (), env, lines, problems)
    if not isinstance(data, dict):
        problems.append(Problem("", 1, "the policy must be a mapping (key: value pairs) at the top level"))
        raise PolicyError(source, problems)

    # A field of an older version gets one message naming its new spelling, instead of "unknown field" plus
    # "'usd' is required" for the fields that replace it.
    renamed = dict(renamed_fields(data))
    renamed_parents = {path[:-1] for path in renamed}
    for where, message in renamed.items():
        problems.append(Problem(_dotted(where), _line_of(where, lines), message))
    validator = jsonschema.Draft202012Validator(schema())
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        where = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = set(error.schema.get("properties", {}))
            for unknown in sorted(set(error.instance) - known, key=str):
                at = (*where, unknown)
                if at not in renamed:
                    problems.append(Problem(_dotted(at), _line_of(at, lines), "unknown field"))
            continue
        if error.validator == "required" and where in renamed_parents:
            continue
        problems.append(Problem(_dotted(where), _line_of(where, lines), _describe(error)))
    # Cross-references are checked even when the schema failed: the operator gets the whole list in one go.
    for where, message in reference_problems(data, base_dir=base_dir or Path.cwd()):
        problems.append(Problem(_dotted(where), _line_of(where, lines), message))
    if problems:
        raise PolicyError(source, sorted(problems, key=_by_line))

    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
    policy, warnings = build_policy(data, digest=digest, base_dir=base_dir or Path.cwd())
    notes = sorted(
        (Problem(_dotted(where), _line_of(where, lines), message) for where, message in warnings), key=_by_line
    )
    return replace(policy, warnings=tuple(map(str, notes)))


def _by_line(problem: Problem) -> int:
    """File order, for reading a list top to bottom while editing (sorting is stable: one line keeps its order)."""
    return problem.line or 0


def _index_lines(
    node: yaml.Node, path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int], problems: list[Problem]
) -> None:
    """Record the line of every path, and refuse mapping keys that YAML 1.1 reads as booleans.

    `on:`, `off:`, `yes:`, `no:`, `true:`, `false:` as keys become True/False, not the words: a field or a
    model named `on` would silently be another one. Such a key is a problem; it is kept as its text so the
    rest of the checks still see it under the name the file gives it. A date (`2027-06-30`) stays its text.
    """
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode) and node.tag == _TIMESTAMP_TAG:
        node.tag = _STR_TAG  # `expires: 2027-06-30` is the text the schema checks, not a Python date
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            at = (*path, key)
            line = key_node.start_mark.line + 1
            if key_node.tag == _BOOL_TAG:
                meaning = str(yaml.constructor.SafeConstructor.bool_values[key.lower()]).lower()
                problems.append(
                    Problem(
                        _dotted(at),
                        line,
                        f"YAML reads the unquoted key {key} as the boolean {meaning}, not as the text {key!r}: "
                        f'quote it ("{key}": ...) if you mean the name',
                    )
                )
                key_node.tag = _STR_TAG
            _index_lines(value_node, at, lines, problems)
            lines[at] = line
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*path, index), lines, problems)


def _line_of(path: tuple[Any, ...], lines: dict[tuple[str | int, ...], int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_ARTICLES = {"object": "an object", "array": "an array", "integer": "an integer", "null": "null"}


def _describe(error: jsonschema.ValidationError) -> str:
    """jsonschema's message, with JSON names and values where it would print Python's (None, dict, True)."""
    if error.validator == "required":
        return error.message.replace("is a required property", "is required")
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        names = " or ".join(_ARTICLES.get(name, f"a {name}") for name in expected)
        got = "nothing (null)" if error.instance is None else json_type(error.instance)
        return f"must be {names}, got {got}"
    if error.validator == "enum":
        return f"must be one of {', '.join(map(_json, error.validator_value))}, got {_json(error.instance)}"
    if error.validator == "const":
        return f"must be {_json(error.validator_value)}, got {_json(error.instance)}"
    if error.validator in ("minProperties", "maxProperties"):
        bound = "at least" if error.validator == "minProperties" else "at most"
        count = error.validator_value
        return f"must have {bound} {count} field{'s' if count != 1 else ''}"
    return error.message


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _interpolate(
    value: Any,
    path: tuple[str | int, ...],
    env: Any,
    lines: dict[tuple[str | int, ...], int],
    problems: list[Problem],
) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string; an unset variable without a default is a problem."""
    if isinstance(value, str):
        if "${" not in value:
            return value

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return str(env[name])
            if default is not None:
                return default
            problems.append(Problem(_dotted(path), _line_of(path, lines), f"environment variable {name} is not set"))
            return ""

        return _ENV_PATTERN.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k), env, lines, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), env, lines, problems) for i, v in enumerate(value)]
    return value
