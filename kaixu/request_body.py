"""Reading a request body safely: decompressed within a bound (`limits.max_body_bytes` applies to the
inflated size too, so a 1 MB gzip bomb costs at most the limit in memory), then parsed as a JSON object whose
nesting is bounded (so no step after it can recurse itself to death on a hostile body). Used by the body step
for API requests and by the admin API for `POST /api/keys`."""

from __future__ import annotations

import json
import zlib
from typing import Any

from kaixu.exceptions import KaixuError
from kaixu.formats import json_type

#: Deepest JSON nesting accepted. Chat bodies nest about 10 deep (tool schemas a little more).
MAX_JSON_DEPTH = 64
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class BodyRefused(KaixuError):
    """A request body kaixu will not read (its encoding, its size once decoded): an `invalid_request_error`."""

    type = "invalid_request_error"

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message, status=status, code=code)
        self.message = message


def decompress(raw: bytes, encoding: str, limit: int) -> bytes:
    """`raw` decoded by its Content-Encoding, refusing (413) as soon as the output passes `limit` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    wbits = _ZLIB_WBITS.get(encoding)
    if wbits is None:
        raise BodyRefused(
            415, f"content-encoding {encoding[:40]!r} is not supported; use gzip or deflate", "unsupported_encoding"
        )
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(raw, limit + 1)
        if len(out) > limit or decoder.unconsumed_tail:
            raise BodyRefused(
                413, f"the decompressed request body is larger than the limit of {limit} bytes", "request_too_large"
            )
        out += decoder.flush()
    except zlib.error as exc:
        raise BodyRefused(400, f"the request body is not valid {encoding}: {exc}", "invalid_encoding") from None
    if len(out) > limit:
        raise BodyRefused(
            413, f"the decompressed request body is larger than the limit of {limit} bytes", "request_too_large"
        )
    if not decoder.eof:
        raise BodyRefused(400, f"the request body is truncated {encoding} data", "invalid_encoding")
    return out


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests deeper than `limit` (iterative: the check itself cannot overflow the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return False


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise BodyRefused(400, "the request body is empty; send a JSON object", "empty_body")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BodyRefused(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", "invalid_json") from None
    except UnicodeDecodeError:
        raise BodyRefused(400, "the request body is not valid JSON: it is not UTF-8 text", "invalid_json") from None
    except ValueError as exc:
        raise BodyRefused(400, f"the request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise BodyRefused(400, f"the request body must be a JSON object, got {json_type(body)}", "invalid_json")
    if (raw.count(b"{") + raw.count(b"[")) > MAX_JSON_DEPTH and json_depth_exceeds(body, MAX_JSON_DEPTH):
        raise BodyRefused(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", "invalid_json")
    return body
