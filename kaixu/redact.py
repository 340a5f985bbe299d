"""Redaction: secrets never reach a client, a log line or the ledger.

A provider's error body can quote the request it got (some echo the `authorization` header), and that
request carried kaixu's provider key. Every provider text that kaixu passes on — error bodies (same format
or translated), relay error events, the ledger's `error` column, log lines — goes through the policy's
`Redactor` first: every configured provider key, the caller's own key on bring-your-own-key routes, and
anything shaped like a credential (bearer tokens, `sk-...`, Google `AIza...` keys, `x-api-key: ...`).

The redactor is built once per policy load (`Policy.redactor`), never per request, and so are the ledger's
content rules (`ContentRedactor`: what kaixu/content.py keeps of a prompt and an answer, `ledger.content`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"
_MIN_SECRET = 6
#: What a credential looks like; also the ledger's built-in content rules (`ContentRedactor`).
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


# Built-in content rules (`ledger.content.builtin_redactions`). Each match starts at the start of its run of
# characters (the lookbehinds), so a long run is scanned once, not once per position.
_EMAIL = r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@(?:[A-Za-z0-9\-]+\.)+[A-Za-z]{2,}"
_CARD = r"(?<!\d)\d(?:[ \-]?\d){12,18}(?!\d)"
"""13 to 19 digits, single spaces or hyphens between them; only those passing the Luhn check are replaced."""
_BUILTIN = re.compile("|".join([f"(?P<card>{_CARD})", _EMAIL, *CREDENTIAL_SHAPES]))


def luhn(digits: str) -> bool:
    """The card-number checksum (ISO/IEC 7812): true for every real card number, for 1 in 10 random ones."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _builtin_replacement(match: re.Match[str]) -> str:
    card = match.group("card")
    if card is not None and not luhn(card.replace(" ", "").replace("-", "")):
        return card
    return CONTENT_REDACTED


CONTENT_REDACTED = "[REDACTED]"
"""What the ledger's content rules put in place of what they match (secrets read `REDACTED`)."""
_MARGIN = 4096
"""Characters kept past `max_chars` before redacting: a match that starts before the cut is still whole."""


class ContentRedactor:
    """The `ledger.content` rules of one policy load, compiled once (`build_policy`): built-in rules, the
    policy's own regexes, then the secrets redactor (provider keys, credential shapes), then the cut."""

    def __init__(self, secrets: Redactor, *, builtin: bool, patterns: Iterable[str], max_chars: int) -> None:
        self.secrets = secrets
        self.builtin = builtin
        self.patterns = tuple(re.compile(p) for p in patterns)
        self.max_chars = max_chars

    def clean(self, text: str, extra: str | None = None) -> str:
        """`text` redacted, then cut to `max_chars`; `extra` is one more secret (a caller's own key)."""
        text = text[: self.max_chars + _MARGIN]
        if self.builtin:
            text = _BUILTIN.sub(_builtin_replacement, text)
        for pattern in self.patterns:
            text = pattern.sub(CONTENT_REDACTED, text)
        return self.secrets.text(text, extra)[: self.max_chars]
