"""What the ledger keeps of a request's text: the prompt's SHA-256 always, the prompt and answer text only when
the policy turns content logging on (`ledger.content`), redacted and cut. Defined exactly in docs/ledger.md.

The prompt hash is Pulse's audit trail: it must not depend on how the conversation was asked for (stream flag,
temperature, max tokens), so it covers only the body's prompt-bearing fields (each front door's
`FrontDoor.prompt_fields`), as canonical JSON. It is computed once, when the request is counted, from the body the
client sent: nothing is translated for it, so the pass-through path pays one `json.dumps` and one SHA-256.

Stored text is the text a human reads (message texts, tool-call arguments), not the JSON: images and other
base64 data are left out. It is redacted before it is cut, so a secret that straddles the cut is never kept
in part; the policy's provider keys (and anything shaped like a credential) are removed even when the
built-in rules are off, because secrets never reach the ledger. The rules, compiled once per policy load, are
`ContentRedactor` (kaixu/redact.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kaixu.formats.doors import front_door

if TYPE_CHECKING:
    from kaixu.call import Call

log = logging.getLogger("kaixu.content")

_NOT_TEXT = frozenset({"tools", "functions"})
"""Prompt fields that are hashed but not stored as text (tool schemas: the conversation is the text)."""
_SYSTEM_FIELDS = frozenset({"system", "systemInstruction", "system_instruction"})
#: Keys whose string values are text a human reads; every other string (ids, roles, base64 data, URLs) is not.
_TEXT_KEYS = frozenset({"content", "text", "prompt", "input", "system", "arguments", "refusal", "thinking"})
#: Where the answer is in a provider's JSON body, per wire format.
_ANSWER_FIELDS = {"openai": "choices", "anthropic": "content", "gemini": "candidates", "responses": "output"}
_MAX_DEPTH = 64

# --- the prompt ------------------------------------------------------------------------------------------


def prompt_fields(front: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The prompt-bearing fields of a request body (None: the request has none, e.g. it had no body)."""
    if not isinstance(body, dict):
        return None
    fields = {name: body[name] for name in front_door(front).prompt_fields if body.get(name) is not None}
    return fields or None


def canonical_json(value: Any) -> bytes:
    """The bytes that are hashed: keys sorted, no whitespace, non-ASCII as `\\uXXXX` escapes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def prompt_sha256(front: str, body: dict[str, Any] | None) -> str | None:
    """SHA-256 (hex) of the canonical JSON of the prompt-bearing fields; None when there are none."""
    fields = prompt_fields(front, body)
    return None if fields is None else hashlib.sha256(canonical_json(fields)).hexdigest()


def prompt_text(front: str, body: dict[str, Any] | None) -> str | None:
    """The prompt as text: `role: text` per message, the system prompt as `system: ...`, one per line."""
    fields = prompt_fields(front, body)
    if fields is None:
        return None
    out: list[str] = []
    for name, value in fields.items():
        if name in _NOT_TEXT:
            continue
        if name in _SYSTEM_FIELDS:
            system: list[str] = []
            _texts(value, "text", system, roles=False, depth=0)
            if system:
                out.append("system: " + "\n".join(system))
        else:
            _texts(value, name, out, roles=True, depth=0)
    return "\n".join(out)


# --- the answer ------------------------------------------------------------------------------------------


def collect_answer(call: Call, payload: dict[str, Any]) -> None:
    """Keep the text of a buffered chat answer (the provider's JSON body) when the policy stores content:
    appended to `call.bill.streamed_text`, where a stream's text is collected too."""
    collected = call.bill.streamed_text
    served = call.served
    if collected is None or served is None:
        return
    field = _ANSWER_FIELDS.get(served.format)
    if field is not None and field in payload:
        texts: list[str] = []
        _texts(payload[field], "content" if field == "content" else field, texts, roles=False, depth=0)
        collected.append("\n".join(texts))


def _texts(value: Any, key: str, out: list[str], *, roles: bool, depth: int) -> None:
    """Append the human-readable strings of a JSON value (see `_TEXT_KEYS`); a tool call as `name(args)`."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, str):
        if key in _TEXT_KEYS and value:
            out.append(value)
    elif isinstance(value, list):
        for item in value:
            _texts(item, key, out, roles=roles, depth=depth + 1)
    elif isinstance(value, dict):
        role = value.get("role") if roles else None
        target: list[str] = [] if isinstance(role, str) else out
        name = value.get("name")
        for k, v in value.items():
            if (
                isinstance(name, str)
                and k in ("arguments", "args", "input")
                and v is not None
                and not (k == "input" and isinstance(v, str))
            ):
                arguments = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, separators=(",", ":"))
                target.append(f"{name}({arguments})")
            else:
                _texts(v, k, target, roles=roles, depth=depth + 1)
        if isinstance(role, str) and target:
            out.append(f"{role}: " + "\n".join(target))


# --- the ledger's fields ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recorded:
    prompt_sha256: str | None = None
    prompt: str | None = None
    answer: str | None = None


def start(call: Call) -> None:
    """Called once the body is read: a chat request under a policy that stores content collects its answer."""
    if call.operation == "chat" and call.policy.ledger.content.redactor is not None:
        call.bill.streamed_text = []


def recorded(call: Call) -> Recorded:
    """The ledger's `prompt_sha256`, `prompt` and `answer` of a call. Never raises: a request is counted
    whatever its body holds (a failure is logged and the text columns stay NULL)."""
    try:
        digest = prompt_sha256(call.front, call.body)
    except Exception:  # a body json.loads made is always serialisable; this is a guard, not a path
        log.exception("request %s: could not hash the prompt", call.request_id)
        return Recorded()
    redactor = call.policy.ledger.content.redactor
    if redactor is None:
        return Recorded(digest)
    try:
        text = prompt_text(call.front, call.body)
        prompt = None if text is None else redactor.clean(text, call.caller.client_key)
        streamed = call.bill.streamed_text
        answer = redactor.clean("".join(streamed), call.caller.client_key) if streamed else None
    except Exception:
        log.exception("request %s: could not record the prompt and answer text", call.request_id)
        return Recorded(digest)
    return Recorded(digest, prompt, answer)
