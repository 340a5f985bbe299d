"""What a translated request may leave out: fields that only tune the source vendor's own machinery.

Translation must not change what an answer means, so a client field the target format cannot express is
refused (``UnsupportedFeature``: a 400 naming the field), unless it is on its format's table below, with the
reason losing it is harmless. Then it is dropped, and the router reports it (the ``x-kaixu-dropped`` response
header, the ledger's ``dropped`` column). The policy's ``translation.unsupported: reject`` refuses those too.
A field of no table (an unknown one included) is never dropped silently.

A loss is one of three kinds, all named as the client's format spells them:

* a field the decoder kept in ``ChatRequest.extra`` (top level, or one level down with a dotted key:
  ``generationConfig.candidateCount``); the same-format encoder forwards it;
* a field inside a repeated element, which the canonical model does not carry (``cache_control`` on a content
  block): the decoder lists its path in ``ChatRequest.unmodeled`` (``messages[3].content[0].cache_control``);
  the tables list it with the indexes left out (``messages[].content[].cache_control``);
* a canonical field the *target* has no room for (``seed`` to Anthropic): the target codec names it, and
  ``SPELLING`` says how the source format spells it.

Reasoning controls and thinking content (``thinking``, ``reasoning_effort``, ``thinkingConfig``,
``output_config.effort``) are not here: they are decided elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .canonical import ChatRequest
from .errors import UnsupportedFeature


@dataclass(frozen=True, slots=True)
class Droppable:
    reason: str
    """Why losing the field leaves the answer's meaning intact (for the reader of this table and the docs)."""
    when: Callable[[Any], bool] | None = None
    """Only values this accepts may be dropped (``n: 1`` may, ``n: 2`` may not); None: any value."""


_CACHE = "a prompt-cache breakpoint: caching changes cost and latency, not the answer"
_USER = "an end-user id for the provider's abuse monitoring"
_PARALLEL = "the target cannot be told to avoid parallel tool calls; the client still gets each call"
_SEED = "best-effort reproducibility of sampling; the target cannot be seeded"

OPENAI: dict[str, Droppable] = {
    "store": Droppable("keeps the completion in OpenAI's dashboard (evals, distillation)"),
    "metadata": Droppable("tags for OpenAI's stored completions"),
    "service_tier": Droppable("OpenAI's capacity tier (flex, priority); the target serves at its own"),
    "prompt_cache_key": Droppable("routes to OpenAI's prompt cache: " + _CACHE),
    "prompt_cache_retention": Droppable("how long OpenAI keeps its prompt cache: " + _CACHE),
    "safety_identifier": Droppable(_USER),
    "user": Droppable(_USER + " (Anthropic gets it as metadata.user_id)"),
    "verbosity": Droppable("a length hint for GPT-5 answers"),
    "prediction": Droppable("a predicted output speeds up OpenAI's decoding; the answer is the same without it"),
    "n": Droppable("one choice is what every target returns", when=lambda v: v in (None, 1)),
    "logprobs": Droppable("log probabilities were not asked for", when=lambda v: not v),
    "modalities": Droppable("text, the only output every target gives", when=lambda v: v in (None, ["text"])),
    "stream_options.include_obfuscation": Droppable("pads OpenAI stream events against a length side channel"),
    "parallel_tool_calls": Droppable(_PARALLEL),
    "seed": Droppable(_SEED),
}

ANTHROPIC: dict[str, Droppable] = {
    "cache_control": Droppable("Anthropic's automatic prompt caching: " + _CACHE),
    "system[].cache_control": Droppable(_CACHE),
    "messages[].cache_control": Droppable(_CACHE),
    "messages[].content[].cache_control": Droppable(_CACHE),
    "messages[].content[].content[].cache_control": Droppable(_CACHE),
    "tools[].cache_control": Droppable(_CACHE),
    "tools[].defer_loading": Droppable(
        "Anthropic's tool search loads the tool when needed; the target has it up front"
    ),
    "tools[].eager_input_streaming": Droppable("how finely Anthropic streams tool input; the target streams its way"),
    "context_management": Droppable(
        "Anthropic's server-side context editing (clearing old tool results or thinking); the target reads the "
        "whole history instead"
    ),
    "metadata": Droppable("Anthropic request metadata other than user_id"),
    "metadata.user_id": Droppable(_USER + " (OpenAI gets it as user)"),
    "service_tier": Droppable("Anthropic's capacity tier; the target serves at its own"),
    "container": Droppable(
        "an Anthropic code-execution container for its server tools, which no other format has (they are a 400)"
    ),
    "inference_geo": Droppable("where Anthropic runs the request; the route chose another provider"),
    "speed": Droppable("Anthropic's fast output mode"),
    "diagnostics": Droppable("Anthropic's prompt-cache diagnostics"),
    "tool_choice.disable_parallel_tool_use": Droppable(_PARALLEL),
}

GEMINI: dict[str, Droppable] = {
    "safetySettings": Droppable("Gemini's own content-filter thresholds; the target applies its own policy"),
    "labels": Droppable("billing labels for Google Cloud"),
    "generationConfig.candidateCount": Droppable(
        "one candidate is what every target returns", lambda v: v in (None, 1)
    ),
    "generationConfig.responseModalities": Droppable(
        "text, the only output every target gives", lambda v: v in (None, ["TEXT"], ["text"])
    ),
    "generationConfig.responseLogprobs": Droppable("log probabilities were not asked for", lambda v: not v),
    "generationConfig.mediaResolution": Droppable("how finely Gemini tokenizes input images and video"),
    "generationConfig.seed": Droppable(_SEED),
}

#: What a Responses request may lose. `previous_response_id` is not here: kaixu's stored responses expand it
#: before translation (without a stored response it would change the answer: a 400).
RESPONSES: dict[str, Droppable] = {
    "store": Droppable("whether the provider keeps the response; kaixu keeps it (or not) by this same field"),
    "metadata": Droppable("tags of the stored response (kaixu keeps them with it)"),
    "include": Droppable(
        "extra output only OpenAI produces (encrypted reasoning for a stateless round trip)",
        when=lambda v: v is None or (isinstance(v, list) and set(v) <= {"reasoning.encrypted_content"}),
    ),
    "truncation": Droppable("what OpenAI does with an input past the context window; the target refuses it instead"),
    "prompt_cache_key": Droppable("routes to OpenAI's prompt cache: " + _CACHE),
    "prompt_cache_retention": Droppable("how long OpenAI keeps its prompt cache: " + _CACHE),
    "client_metadata": Droppable("a client's tags for OpenAI's logs (Codex sends its session and turn ids)"),
    "safety_identifier": Droppable(_USER),
    "user": Droppable(_USER),
    "service_tier": Droppable("OpenAI's capacity tier (flex, priority); the target serves at its own"),
    "text.verbosity": Droppable("a length hint for GPT-5 answers"),
    "reasoning.context": Droppable(
        "which earlier turns' reasoning OpenAI keeps in context; other formats' own thinking is never sent back"
    ),
    "stream_options.include_obfuscation": Droppable("pads OpenAI stream events against a length side channel"),
    "stream_options": Droppable("only obfuscation padding of OpenAI's stream events"),
    "max_tool_calls": Droppable("caps OpenAI's built-in tool calls, which a translated request cannot have"),
    "top_logprobs": Droppable("log probabilities were not asked for", when=lambda v: not v),
    "parallel_tool_calls": Droppable(_PARALLEL),
    "seed": Droppable(_SEED),
}

TABLES: dict[str, dict[str, Droppable]] = {
    "openai": OPENAI,
    "anthropic": ANTHROPIC,
    "gemini": GEMINI,
    "responses": RESPONSES,
}

#: How a source format spells the canonical fields a target may have no room for (OpenAI: as canonical).
SPELLING: dict[str, dict[str, str]] = {
    "anthropic": {"user": "metadata.user_id", "parallel_tool_calls": "tool_choice.disable_parallel_tool_use"},
    "gemini": {"seed": "generationConfig.seed"},
}

#: The longest ``x-kaixu-dropped`` value (and ledger ``dropped`` text); a longer list ends with a count.
MAX_SUMMARY = 1024
_INDEX = re.compile(r"\[\d+\]")


def pattern(path: str) -> str:
    """``messages[3].content[0].cache_control`` -> ``messages[].content[].cache_control`` (a table key)."""
    return _INDEX.sub("[]", path)


def _check(source: str, table: dict[str, Droppable], path: str, value: Any, target: str) -> None:
    entry = table.get(pattern(path))
    if entry is None or (entry.when is not None and not entry.when(value)):
        raise UnsupportedFeature(path, f"{source} field not supported by the {target} format")


def losses(req: ChatRequest, target: str, lost: Iterable[str] = ()) -> list[str]:
    """The paths of what encoding ``req`` for ``target`` leaves out, in the client's spelling.

    ``lost``: canonical fields the target codec has no room for. Raises ``UnsupportedFeature`` for the first
    field that is on no table (or whose value its table refuses): that one would change the answer.
    """
    out: list[str] = []
    for source, fields in req.extra.items():
        if source == target:
            continue  # forwarded by the same-format encoder
        table = TABLES.get(source, {})
        for key, value in fields.items():
            _check(source, table, key, value, target)
            out.append(key)
    source = req.source or ""
    table = TABLES.get(source, {})
    for path in req.unmodeled:
        _check(source, table, path, None, target)
        out.append(path)
    for name in lost:
        path = SPELLING.get(source, {}).get(name, name)
        if source in TABLES:  # a request built in code (or by a seed front door) has no table to consult
            _check(source, table, path, None, target)
        out.append(path)
    return out


def summary(paths: Sequence[str], limit: int = MAX_SUMMARY) -> str:
    """``a, b, c``, bounded: past ``limit`` characters the rest is counted (``a, b, ... (+7 more)``)."""
    text = ", ".join(paths)
    if len(text) <= limit:
        return text
    kept: list[str] = []
    size = 0
    for path in paths:
        tail = f", ... (+{len(paths) - len(kept)} more)"
        if size + len(path) + 2 + len(tail) > limit:
            break
        kept.append(path)
        size += len(path) + 2
    return ", ".join(kept) + f", ... (+{len(paths) - len(kept)} more)" if kept else f"... ({len(paths)} fields)"


def refusal(paths: Sequence[str], target: str) -> UnsupportedFeature:
    """The 400 of ``translation.unsupported: reject``: every field that would have been dropped, by name."""
    return UnsupportedFeature(
        summary(paths),
        f"not supported by the {target} format, and translation.unsupported is reject (drop would leave them out)",
    )
