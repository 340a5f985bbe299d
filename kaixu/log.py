"""Logging helpers: what a client sent never forges a log line, and an outage is a few lines, not a flood.

Request ids are validated where they are made (addons/ingress.py); everything else that comes from a request
(model names, paths, provider messages) goes through `safe()` before it reaches a log call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

_MAX = 200
_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F]} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}

OUTAGE_REPORT_S = 60.0
"""While a dependency stays away, how often the log says so again (with what it cost meanwhile)."""


class TermlogLevel:
    """Under `mitmdump -s kaixu/plugin.py` (kaixu/plugin.py loads it): kaixu's loggers take the level of mitmdump's
    `termlog_verbosity`. mitmdump sets the root logger to DEBUG and filters in its terminal handler, so without
    this every record below that level (the access line of every request, at info) would be built and thrown
    away; what is printed does not change. (`kaixu run` sets its levels itself: `--log-level`, `--access-log`.)"""

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx  # late: ctx.options exists only once a Master runs

        level = getattr(ctx.options, "termlog_verbosity", None) if "termlog_verbosity" in updated else None
        if isinstance(level, str):
            logging.getLogger("kaixu").setLevel(level.upper())


def safe(value: object, limit: int = _MAX) -> str:
    """`value` as one printable line: control characters escaped, long values cut (with a marker)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    text = text.translate(_ESCAPES)
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class Outage:
    """A server kaixu depends on (the counters' Redis, the PostgreSQL store) going away and coming back, as the
    log and /health tell it: one line when it goes, at most one every `report_s` seconds while it stays away,
    one when it is back; the last two say what the outage cost (`failed(..., effect)`: requests refused, let
    through uncounted, ...). Never a line per request: under load that is thousands a second (2,270 in 8 s with
    Redis down), which buries the lines that matter and keeps the log thread busy when kaixu is already hurt.

    Its owner says when a call failed and when the server answers again; it decides nothing else."""

    __slots__ = ("_clock", "_level", "_log", "_report_s", "_told_at", "_went_at", "effects", "error", "name")

    def __init__(
        self,
        name: str,
        logger: logging.Logger,
        *,
        level: int = logging.ERROR,
        report_s: float = OUTAGE_REPORT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._log = logger
        self._level = level
        self._report_s = report_s
        self._clock = clock
        self.error: str | None = None
        """The last failure, escaped."""
        self.effects: dict[str, int] = {}
        """What the current outage cost so far, by kind (`refused_requests`: 12)."""
        self._went_at: float | None = None
        """When it went away (the clock's time); None while it answers."""
        self._told_at = 0.0

    @property
    def down(self) -> bool:
        return self._went_at is not None

    def failed(self, error: object, effect: str | None = None) -> None:
        """A call failed; `effect` names what that cost the request (counted), None for a probe or a poll."""
        if effect is not None:
            self.effects[effect] = self.effects.get(effect, 0) + 1
        self.error = safe(error)
        now = self._clock()
        if self._went_at is None:
            self._went_at = self._told_at = now
            self._log.log(self._level, "%s unavailable: %s", self.name, self.error)
        elif now - self._told_at >= self._report_s:
            self._told_at = now
            self._log.log(self._level, "%s still unavailable after %.0f s%s: %s", self.name, now - self._went_at,
                          self._meanwhile(), self.error)  # fmt: skip

    def recovered(self) -> None:
        """A call succeeded: the line that ends the outage, once."""
        if self._went_at is None:
            return
        self._log.warning("%s available again after %.1f s%s", self.name, self._clock() - self._went_at,
                          self._meanwhile())  # fmt: skip
        self._went_at, self.error, self.effects = None, None, {}

    def _meanwhile(self) -> str:
        """` (meanwhile refused_requests=12, ...)`, or nothing when the owner counted nothing."""
        if not self.effects:
            return ""
        return " (meanwhile " + ", ".join(f"{kind}={count}" for kind, count in self.effects.items()) + ")"

    def status(self) -> dict[str, object]:
        """What /health shows: whether it answers, for how long it has not, the last error, the outage's cost."""
        away = None if self._went_at is None else round(self._clock() - self._went_at, 3)
        return {
            "ok": away is None,
            "unavailable_for_s": away,
            "last_error": self.error,
            "meanwhile": dict(self.effects),
        }
