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

from dataclasses import dataclass

from .errors import FormatError

#: An unterminated event larger than this is a broken or hostile upstream, not a slow one.
MAX_EVENT_BYTES = 32 * 1024 * 1024


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str


class SSEParser:
    """Incremental SSE parser: ``feed(bytes) -> [SSEEvent]``; ``flush()`` at end of body."""

    __slots__ = ("_buf", "_pending_cr", "max_event_bytes")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()
        self._pending_cr = False
        self.max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes and return every event completed by them (possibly none)."""
        if self._pending_cr or b"\r" in chunk:
            chunk = self._normalise(chunk)
        if not chunk:
            return []
        buf = self._buf
        scan = len(buf) - 1 if buf else 0  # a boundary may straddle the old tail
        buf += chunk
        events: list[SSEEvent] = []
        start = 0
        while (end := buf.find(b"\n\n", scan)) >= 0:
            if end > start:
                event = _parse_block(bytes(buf[start:end]))
                if event is not None:
                    events.append(event)
            start = scan = end + 2
        if start:
            del buf[:start]
        if len(buf) > self.max_event_bytes:
            raise FormatError("stream", f"SSE event exceeds {self.max_event_bytes} bytes")
        return events

    def flush(self) -> list[SSEEvent]:
        """End of body: an unterminated final event is still delivered (lenient to sloppy servers)."""
        self._pending_cr = False
        block = bytes(self._buf).strip(b"\n")
        self._buf.clear()
        if not block:
            return []
        event = _parse_block(block)
        return [event] if event is not None else []

    def _normalise(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._pending_cr = True
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _parse_block(block: bytes) -> SSEEvent | None:
    """Parse one event's lines; ``None`` when it carries no data (comments, keep-alives)."""
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
    return SSEEvent(event, data[0] if len(data) == 1 else "\n".join(data))


def encode_sse(data: str, event: str | None = None) -> bytes:
    """One SSE event. JSON payloads never contain raw newlines, so the common case is one line."""
    if "\n" in data:
        data = data.replace("\r\n", "\n").replace("\n", "\ndata: ")
    if event is None:
        return f"data: {data}\n\n".encode()
    return f"event: {event}\ndata: {data}\n\n".encode()
