"""The one Server-Sent Events splitter, shared by every stream decoder.

Upstream bodies reach us in arbitrary byte chunks (mitmproxy hands the stream
callable whatever the socket produced), so the parser keeps the unfinished tail
between calls. It only decodes UTF-8 once an event is complete: an event boundary
is an ASCII blank line, so a multi-byte character split across chunks is always
whole by then. Line endings may be ``\\n``, ``\\r\\n`` or ``\\r`` (all three are legal
SSE); they are normalised to ``\\n`` on the way in, holding back a trailing ``\\r``
until we know whether a ``\\n`` follows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FormatError

#: An unterminated event larger than this is a broken or hostile upstream, not a slow one.
MAX_EVENT_BYTES = 32 * 1024 * 1024


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str


class SSEParser:
    """Incremental SSE parser: ``feed(bytes) -> [SSEEvent]``; ``flush()`` at end of body.

    The unfinished tail is kept as a list of pieces and joined only once a chunk
    brings an event boundary, so an event spread over many chunks costs one copy,
    not one per chunk.
    """

    __slots__ = ("_pending_cr", "_size", "_tail", "max_event_bytes")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._tail: list[bytes] = []
        self._size = 0
        self._pending_cr = False
        self.max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes and return every event completed by them (possibly none)."""
        if self._pending_cr or b"\r" in chunk:
            chunk = self._normalise(chunk)
        if not chunk:
            return []
        if self._tail:
            straddles = chunk[:1] == b"\n" and self._tail[-1][-1:] == b"\n"
            if not straddles and b"\n\n" not in chunk:
                return self._keep(chunk)
            chunk = b"".join(self._tail) + chunk
            self._tail, self._size = [], 0
        events: list[SSEEvent] = []
        start = 0
        while (end := chunk.find(b"\n\n", start)) >= 0:
            if end > start:
                event = _parse_block(chunk[start:end])
                if event is not None:
                    events.append(event)
            start = end + 2
        if start < len(chunk):
            self._keep(chunk[start:] if start else chunk)
        return events

    def flush(self) -> list[SSEEvent]:
        """End of body: an unterminated final event is still delivered (lenient to sloppy servers)."""
        self._pending_cr = False
        block = b"".join(self._tail).strip(b"\n")
        self._tail, self._size = [], 0
        if not block:
            return []
        event = _parse_block(block)
        return [event] if event is not None else []

    def _keep(self, piece: bytes) -> list[SSEEvent]:
        self._tail.append(piece)
        self._size += len(piece)
        if self._size > self.max_event_bytes:
            raise FormatError("stream", f"SSE event exceeds {self.max_event_bytes} bytes")
        return []

    def _normalise(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._pending_cr = True
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _parse_block(block: bytes) -> SSEEvent | None:
    """One event's lines -> ``SSEEvent``; ``None`` when it carries no data (comments, keep-alives)."""
    # Fast paths for the two shapes providers actually send: "data: X" and "event: E\ndata: X".
    if block[:6] == b"data: ":
        if b"\n" not in block:
            return SSEEvent(None, block[6:].decode("utf-8", "replace"))
    elif block[:7] == b"event: ":
        eol = block.find(b"\n")
        if block[eol + 1 : eol + 7] == b"data: " and block.find(b"\n", eol + 1) < 0:
            return SSEEvent(block[7:eol].decode("utf-8", "replace"), block[eol + 7 :].decode("utf-8", "replace"))
    return _parse_lines(block)


def _parse_lines(block: bytes) -> SSEEvent | None:
    """The general case: any mix of fields, comments and multi-line data."""
    event: str | None = None
    data: list[str] = []
    for line in block.decode("utf-8", "replace").split("\n"):
        if not line or line[0] == ":":
            continue
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if not data:
        return None
    return SSEEvent(event, "\n".join(data))


def encode_sse(data: str, event: str | None = None) -> bytes:
    """One SSE event. JSON payloads never contain raw newlines, so the common case is one line."""
    if "\n" in data:
        data = data.replace("\r\n", "\n").replace("\n", "\ndata: ")
    if event is None:
        return utf8(f"data: {data}\n\n")
    return utf8(f"event: {event}\ndata: {data}\n\n")


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def utf8(text: str) -> bytes:
    """What kaixu wrote for a client (JSON, SSE events) as the UTF-8 it is sent: every encoder's text becomes
    bytes here. A provider may send a lone surrogate as the JSON escape `\\ud800` (valid JSON, no valid
    Unicode); Python's `json` decodes it into a str that UTF-8 cannot encode, which ended translated streams
    with an exception. It goes out as that same escape: what the provider sent, what a pass-through forwards
    and what kaixu's buffered answers write (`ensure_ascii`), so every door reads the same text. Only inside a
    JSON string can such a character stand (kaixu writes provider text nowhere else), where the escape is
    valid. Costs nothing when the text encodes, which is always but for this."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub(lambda found: f"\\u{ord(found[0]):04x}", text).encode()
