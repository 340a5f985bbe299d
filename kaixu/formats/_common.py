"""Helpers shared by the codecs: body validation, JSON, data URLs, extras and error bodies.

Kept out of the codec modules so each codec reads as a description of its wire
format rather than a pile of plumbing.
"""

from __future__ import annotations

import json
import mimetypes
import time
import uuid
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any

from .canonical import ChatRequest, ImagePart, Part, RawPart, StreamError, StreamEvent, TextPart, Usage
from .errors import FormatError, UnsupportedFeature
from .sse import SSEParser

JSON = dict[str, Any]

#: Compact, non-ASCII-preserving JSON; one encoder instance so no per-call setup cost.
dumps: Callable[[Any], str] = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
#: A str as a JSON string literal (C-accelerated); the hot path of every stream encoder.
jstr: Callable[[str], str] = encode_basestring


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def join_path(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


# --- validation ----------------------------------------------------------------------


def json_type(value: Any) -> str:
    """The JSON name of a value's type (object, array, string, number, boolean, null) for messages people read.

    Clients and operators write JSON or YAML, so Python's names (dict, NoneType) would only puzzle them.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return "non-JSON value"


def expect_dict(value: Any, field: str) -> JSON:
    if not isinstance(value, dict):
        raise FormatError(field or "body", f"must be a JSON object, got {json_type(value)}")
    return value


def expect_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise FormatError(field, f"must be an array, got {json_type(value)}")
    return value


def opt_str(body: JSON, key: str, prefix: str = "") -> str | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise FormatError(join_path(prefix, key), "must be a string")


def req_str(body: JSON, key: str, prefix: str = "") -> str:
    value = body.get(key)
    if value is None:
        raise FormatError(join_path(prefix, key), "is required")
    if not isinstance(value, str):
        raise FormatError(join_path(prefix, key), "must be a string")
    return value


def opt_num(body: JSON, key: str, prefix: str = "") -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FormatError(join_path(prefix, key), "must be a number")
    return value


def opt_int(body: JSON, key: str, prefix: str = "") -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(join_path(prefix, key), "must be an integer")
    return value


def opt_bool(body: JSON, key: str, prefix: str = "") -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise FormatError(join_path(prefix, key), "must be a boolean")


def str_list(value: Any, field: str) -> list[str]:
    """A string or list of strings (stop sequences) as a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    items = expect_list(value, field)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise FormatError(f"{field}[{i}]", "must be a string")
    return list(items)


def parse_arguments(text: str, field: str) -> JSON:
    """Tool-call arguments JSON text -> object, for formats that carry arguments as objects.

    Empty text means "no arguments" (streams often send nothing for a no-arg call).
    """
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise FormatError(field, "tool call arguments are not valid JSON") from None
    if not isinstance(value, dict):
        raise FormatError(field, "tool call arguments must be a JSON object")
    return value


# --- media ---------------------------------------------------------------------------


def parse_data_url(url: str) -> tuple[str | None, str] | None:
    """``data:<type>;base64,<data>`` -> (media type, base64 data); ``None`` for anything else."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url.partition(",")
    if not sep or not header.endswith(";base64"):
        return None
    media_type = header[5:-7] or None
    return media_type, data


def image_at(url: str, detail: str | None = None) -> ImagePart:
    """An image by URL as OpenAI's formats give it: a ``data:`` URL becomes inline data, any other stays a URL."""
    inline = parse_data_url(url)
    if inline is not None:
        return ImagePart(data=inline[1], media_type=inline[0], detail=detail)
    return ImagePart(url=url, detail=detail)


def content_parts(content: Any, path: str, part: Callable[[Any, str], Part]) -> list[Part]:
    """OpenAI's formats' message content: absent, a string (one text part) or an array of parts (``part``)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)]
    if isinstance(content, list):
        return [part(p, f"{path}[{j}]") for j, p in enumerate(content)]
    raise FormatError(path, "must be a string or an array of content parts")


def data_url(media_type: str | None, data: str) -> str:
    return f"data:{media_type or 'application/octet-stream'};base64,{data}"


def guess_media_type(url: str) -> str | None:
    return mimetypes.guess_type(url.partition("?")[0])[0]


def safe_id(text: str) -> str:
    """Restrict to ``[A-Za-z0-9_-]``, the id alphabet every provider accepts."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in "_-" else "_" for c in text)


# --- extras and raw parts ------------------------------------------------------------


def merge_extra(body: JSON, req: ChatRequest, target: str) -> None:
    """Same-format forwarding of ``extra``: dotted keys go one level down, lists extend."""
    for key, value in req.extra.get(target, {}).items():
        outer, dot, inner = key.partition(".")
        if dot:
            nested = body.setdefault(outer, {})
            if isinstance(nested, dict):
                nested[inner] = value
            continue
        current = body.get(key)
        if isinstance(current, list) and isinstance(value, list):
            body[key] = current + value
        elif isinstance(current, dict) and isinstance(value, dict):
            body[key] = {**current, **value}
        else:
            body[key] = value


def raw_part(part: RawPart, target: str, field: str) -> JSON:
    """A ``RawPart`` for ``target``: its data if native, else raise."""
    if part.format == target:
        return part.data
    kind = part.data.get("type") or next(iter(part.data), "part")
    raise UnsupportedFeature(field, f"{part.format} content '{kind}' cannot be expressed in the {target} format")


# --- errors --------------------------------------------------------------------------

STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

GOOGLE_STATUS_TYPES = {
    "INVALID_ARGUMENT": "invalid_request_error",
    "FAILED_PRECONDITION": "invalid_request_error",
    "OUT_OF_RANGE": "invalid_request_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "NOT_FOUND": "not_found_error",
    "RESOURCE_EXHAUSTED": "rate_limit_error",
    "UNAVAILABLE": "overloaded_error",
    "DEADLINE_EXCEEDED": "timeout_error",
    "INTERNAL": "api_error",
    "UNKNOWN": "api_error",
}


def token_count(value: Any) -> int:
    """A token count as a provider reports it: an int (not a bool), else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def openai_style_usage(raw: Any, input_key: str, output_key: str, input_details: str, output_details: str) -> Usage:
    """The usage object of OpenAI's two APIs, which differ only in their field names (chat completions:
    `prompt_tokens`, `completion_tokens`, `*_tokens_details`; Responses: `input_tokens`, `output_tokens`...)."""
    if not isinstance(raw, dict):
        return Usage()
    inp = raw.get(input_details)
    out = raw.get(output_details)
    inp = inp if isinstance(inp, dict) else {}
    out = out if isinstance(out, dict) else {}
    return Usage(
        input_tokens=token_count(raw.get(input_key)),
        output_tokens=token_count(raw.get(output_key)),
        cached_input_tokens=token_count(inp.get("cached_tokens")),
        cache_creation_input_tokens=token_count(inp.get("cache_write_tokens")),
        reasoning_tokens=token_count(out.get("reasoning_tokens")),
    )


def reports_usage(raw: Any, counters: tuple[str, ...]) -> bool:
    """Whether a usage object reports anything: it is an object holding at least one of the format's token
    counts. An answer without one has *unknown* usage, which is estimated, never taken as zero tokens."""
    return isinstance(raw, dict) and any(isinstance(raw.get(name), int) for name in counters)


def class_type(status: int) -> str:
    """The error type of a status by its class alone: kaixu's own errors that name no finer type (mitmproxy's
    protocol errors, kaixu/addons/errors.py), and the fallback of `status_type`."""
    return "api_error" if status >= 500 else "invalid_request_error"


def status_type(status: int) -> str:
    """The error type a provider's status means when its body names none (`STATUS_TYPES`, else its class)."""
    return STATUS_TYPES.get(status) or class_type(status)


def decode_error_body(status: int, body: bytes) -> tuple[str, str]:
    """(message, type) from any of the three providers' error shapes, or from garbage.

    Recognises ``{"error": {"message", "type"}}`` (OpenAI), ``{"type": "error",
    "error": {...}}`` (Anthropic), ``{"error": {"code", "message", "status"}}`` and a
    list of those (Gemini), plus the loose ``{"error": "..."}``/``{"message": ...}``
    of OpenAI-compatible servers.
    """
    fallback_type = status_type(status)
    try:
        data: Any = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()[:500]
        return text or f"HTTP {status}", fallback_type
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        return (str(data)[:500] or f"HTTP {status}"), fallback_type
    err = data.get("error", data)
    if isinstance(err, str):
        return err, fallback_type
    if not isinstance(err, dict):
        return f"HTTP {status}", fallback_type
    message = err.get("message") or data.get("message") or data.get("detail") or f"HTTP {status}"
    etype = err.get("type")
    if not isinstance(etype, str) or not etype:
        etype = GOOGLE_STATUS_TYPES.get(str(err.get("status")), fallback_type)
    return str(message), etype


# --- stream decoding -----------------------------------------------------------------


class SSEStreamDecoder:
    """Shared shell of the stream decoders: SSE splitting, end of body, and containment.

    A malformed provider event must not raise out of mitmproxy's stream callable
    (that would kill the connection without telling the client), so it becomes a
    ``StreamError`` event and the decoder stops.
    """

    __slots__ = ("_done", "_sse", "usage")

    def __init__(self) -> None:
        self._sse = SSEParser()
        self._done = False
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        try:
            events = self._sse.feed(chunk)
        except FormatError as exc:
            return self._fail(str(exc), out)
        for event in events:
            self._safe_handle(event.data, out)
        return out

    def close(self) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for event in self._sse.flush():
            self._safe_handle(event.data, out)
        if not self._done:
            self._done = True
            self._at_eof(out)
        return out

    def _safe_handle(self, data: str, out: list[StreamEvent]) -> None:
        try:
            self._handle(data, out)
        except FormatError as exc:
            self._fail(f"malformed upstream stream event: {exc}", out)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError):
            # The event's own text, not the exception's: "KeyError: 'choices'" speaks Python to the client.
            excerpt = data if len(data) <= 200 else data[:200] + "..."
            self._fail(f"malformed upstream stream event: {excerpt}", out)

    def _fail(self, message: str, out: list[StreamEvent]) -> list[StreamEvent]:
        if not self._done:
            self._done = True
            out.append(StreamError(message, "api_error"))
        return out

    def _handle(self, data: str, out: list[StreamEvent]) -> None:
        raise NotImplementedError

    def _at_eof(self, out: list[StreamEvent]) -> None:
        """End of body before the stream said it was finished."""
        out.append(StreamError("upstream stream ended before the answer was complete", "api_error"))
