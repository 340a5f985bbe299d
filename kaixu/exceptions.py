"""The root of kaixu's own exceptions: every error kaixu raises on purpose is a `KaixuError`, and each says
what a client is answered when it ends a request: the HTTP status, the error type (OpenAI's vocabulary, which
kaixu/respond.py puts in the caller's format) and kaixu's code. The class gives the defaults; an instance may
say otherwise (`RouteRefused(403, ...)`), so a step that answers an exception reads its fields instead of
spelling them again.

A class that callers also catch as a built-in error keeps that base too (`FormatError` is a `ValueError`,
`ConnectError` an `OSError`). Named `exceptions`, not `errors`: `kaixu/addons/errors.py` is the step that turns
mitmproxy's own failures into JSON, and `kaixu/formats/errors.py` holds the codecs' errors.
"""

from __future__ import annotations


class KaixuError(Exception):
    """An error of kaixu's own, with the answer it means (see the module docstring)."""

    status: int = 500
    type: str = "api_error"
    code: str = "internal_error"

    def __init__(self, *args: object, status: int | None = None, type: str | None = None, code: str | None = None):
        super().__init__(*args)
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
