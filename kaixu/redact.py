"""Redaction: secrets never reach a client, a log line or the ledger.

A provider's error body can quote the request it got (some echo the `authorization` header), and that
request carried kaixu's provider key. Every provider text that kaixu passes on — error bodies (same format
or translated), relay error events, the ledger's `error` column, log lines — goes through the policy's
`Redactor` first: every configured provider key, the caller's own key on bring-your-own-key routes, and
anything shaped like a credential (bearer tokens, `sk-...`, Google `AIza...` keys, `x-api-key: ...`).

The redactor is built once per policy load (`Policy.redactor`), never per request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"
_MIN_SECRET = 6
#: What a credential looks like; also the ledger's built-in content rules (kaixu/content.py).
CREDENTIAL_SHAPES = (
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{6,}",
    r"\bsk-[A-Za-z0-9_\-]{12,}",
    r"\bAIza[0-9A-Za-z_\-]{20,}",
    r"(?i:(?:x-api-key|x-goog-api-key|api-key|x-kaixu-token|x-pulse-key|authorization)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"',;}]{6,}",
)


class Redactor:
    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        known = sorted({s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len, reverse=True)
        self._known = re.compile("|".join(re.escape(s) for s in known)) if known else None
        self._shapes = re.compile("|".join(CREDENTIAL_SHAPES))

    def text(self, value: str, extra: str | None = None) -> str:
        """`value` with every secret replaced; `extra` is one more secret (a caller's own key)."""
        if extra and len(extra) >= _MIN_SECRET and extra in value:
            value = value.replace(extra, REDACTED)
        if self._known is not None:
            value = self._known.sub(REDACTED, value)
        return self._shapes.sub(_replacement, value)

    def json(self, value: Any, extra: str | None = None) -> Any:
        """A parsed JSON value with every string (keys too) redacted."""
        if isinstance(value, str):
            return self.text(value, extra)
        if isinstance(value, dict):
            return {self.text(k, extra): self.json(v, extra) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v, extra) for v in value]
        return value

    def body(self, raw: bytes, extra: str | None = None) -> tuple[Any | None, bytes]:
        """A provider body: (the redacted JSON value, or None when it is not JSON; the redacted bytes)."""
        try:
            parsed = json.loads(raw)
        except ValueError:
            return None, self.text(raw.decode("utf-8", "replace"), extra).encode()
        clean = self.json(parsed, extra)
        return clean, json.dumps(clean, separators=(",", ":")).encode()


def _replacement(match: re.Match[str]) -> str:
    text = match.group(0)
    for prefix in (":", "="):  # keep a header name (`x-api-key: `) so the message stays readable
        name, sep, _ = text.partition(prefix)
        if sep and len(name) < 40 and not name.lower().startswith("bearer"):
            return name + sep + " " + REDACTED
    if text[:6].lower() == "bearer":
        return "Bearer " + REDACTED
    return REDACTED
