"""Errors raised while decoding or encoding wire formats.

Both carry the dotted path of the offending field so the gateway can answer
``400`` with a message a client can act on (``messages[2].content[0].type: ...``)
instead of a bare "bad request".
"""

from __future__ import annotations

from kaixu.exceptions import KaixuError


class FormatError(KaixuError, ValueError):
    """A body does not follow its wire format (missing field, wrong type, bad value)."""

    status, type, code = 400, "invalid_request_error", "invalid_field"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class UnsupportedFeature(FormatError):
    """The *target* format cannot express this field, so translating it would silently lose meaning."""
