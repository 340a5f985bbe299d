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

from kaixu.config.policy import Policy, build_policy

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SCHEMA: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy: where it is (a YAML path and a 1-based line) and what is wrong."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '(top level)'}: {self.message}"


class PolicyError(Exception):
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
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(source, [Problem("", line, f"invalid YAML: {problem}")]) from exc
    if data is None:
        data = {}
    lines: dict[tuple[str | int, ...], int] = {}
    if node is not None:
        _index_lines(node, (), lines)

    problems: list[Problem] = []
    data = _interpolate(data, (), env, lines, problems)
    if not isinstance(data, dict):
        problems.append(Problem("", 1, "the policy must be a mapping (key: value pairs) at the top level"))
        raise PolicyError(source, problems)

    validator = jsonschema.Draft202012Validator(schema())
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        where = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = set(error.schema.get("properties", {}))
            for unknown in sorted(set(error.instance) - known, key=str):
                at = (*where, unknown)
                problems.append(Problem(_dotted(at), _line_of(at, lines), "unknown field"))
            continue
        problems.append(Problem(_dotted(where), _line_of(where, lines), _describe(error)))
    if problems:
        raise PolicyError(source, problems)

    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
    policy, semantic, warnings = build_policy(data, digest=digest, base_dir=base_dir or Path.cwd())
    for where, message in semantic:
        problems.append(Problem(_dotted(where), _line_of(where, lines), message))
    if problems:
        raise PolicyError(source, problems)
    notes = tuple(str(Problem(_dotted(where), _line_of(where, lines), message)) for where, message in warnings)
    return replace(policy, warnings=notes)


def _index_lines(node: yaml.Node, path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[(*path, key)] = key_node.start_mark.line + 1
            _index_lines(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*path, index), lines)


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


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "required":
        return error.message.replace("is a required property", "is required")
    return error.message


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
