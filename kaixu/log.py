"""Logging helpers: what a client sent never forges a log line.

Request ids are validated where they are made (addons/ingress.py); everything else that comes from a request
(model names, paths, provider messages) goes through `safe()` before it reaches a log call.
"""

from __future__ import annotations

_MAX = 200
_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F]} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def safe(value: object, limit: int = _MAX) -> str:
    """`value` as one printable line: control characters escaped, long values cut (with a marker)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    text = text.translate(_ESCAPES)
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
