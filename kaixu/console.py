"""Console sessions: the web console (kaixu/addons/ui.py, docs/console.md) exchanges an admin key for a session,
so that the key is never kept by the browser. A session is a random id (the HttpOnly cookie's value) -> the admin
key's name, an expiry and a CSRF token; it lives in this process only (a restart or another replica asks to sign in
again). The ui step makes and ends sessions; the admin step (kaixu/addons/admin.py) takes a live one as another way
to be an admin: both read them here.

A session stops being an admin's when its expiry passes, when it is signed out, or when the policy in force no
longer names its admin key (a reload that removes the key ends its sessions at their next request)."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie

from mitmproxy import http

from kaixu.config import Policy

COOKIE = "kaixu_console"
COOKIE_PATH = "/ui"
"""The cookie goes to the console's own paths only (its pages and `/ui/api/`, the admin API under it), never
to the model endpoints."""
CSRF_HEADER = "x-kaixu-csrf"
MAX_SESSIONS = 1000
"""Live sessions kept at once; beyond it the one that expires first is dropped (a sign-in flood cannot grow
the process)."""
SAFE_METHODS = ("GET", "HEAD")
MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0
"""A client address with this many refused sign-ins within the window is refused (429) until the oldest ages out:
guessing an admin key through the console costs a minute per ten tries."""
_MAX_ADDRESSES = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    admin: str
    """The name of the admin key signed in with (`admin_keys[].name`), never the key."""
    expires: float
    csrf: str

    def csrf_ok(self, request: http.Request) -> bool:
        """A state-changing request carries the session's CSRF token in `x-kaixu-csrf` (a header another site's
        form or image cannot set), compared in constant time."""
        sent = request.headers.get(CSRF_HEADER, "")
        return hmac.compare_digest(sent.encode("utf-8", "surrogateescape"), self.csrf.encode())


@dataclass(slots=True)
class Sessions:
    """The live console sessions of this process, by id."""

    live: dict[str, Session] = field(default_factory=dict)
    failures: dict[str, deque[float]] = field(default_factory=dict)
    """Recent refused sign-ins (monotonic times) by client address."""

    def create(self, admin: str, seconds: float) -> Session:
        now = time.time()
        self._prune(now)
        if len(self.live) >= MAX_SESSIONS:
            oldest = min(self.live.values(), key=lambda s: s.expires)
            del self.live[oldest.id]
        session = Session(secrets.token_urlsafe(32), admin, now + seconds, secrets.token_urlsafe(32))
        self.live[session.id] = session
        return session

    def wait_s(self, address: str) -> float:
        """Seconds before this address may try to sign in again (0: now)."""
        now = time.monotonic()
        recent = self.failures.get(address)
        while recent and now - recent[0] >= FAILURE_WINDOW_S:
            recent.popleft()
        if not recent:
            self.failures.pop(address, None)
            return 0.0
        return FAILURE_WINDOW_S - (now - recent[0]) if len(recent) >= MAX_FAILURES else 0.0

    def failed(self, address: str) -> None:
        """A refused sign-in from this address (the table is bounded: the oldest address is forgotten first)."""
        if address not in self.failures and len(self.failures) >= _MAX_ADDRESSES:
            del self.failures[next(iter(self.failures))]
        self.failures.setdefault(address, deque(maxlen=MAX_FAILURES)).append(time.monotonic())

    def end(self, session: Session) -> None:
        self.live.pop(session.id, None)

    def of(self, policy: Policy, request: http.Request) -> Session | None:
        """The live session the request's cookie names, still an admin's under ``policy``; else None."""
        session_id = cookie_value(request)
        if session_id is None:
            return None
        session = self.live.get(session_id)
        if session is None:
            return None
        if session.expires <= time.time() or session.admin not in policy.admin_keys.values():
            self.end(session)
            return None
        return session

    def _prune(self, now: float) -> None:
        for session in [s for s in self.live.values() if s.expires <= now]:
            del self.live[session.id]


def cookie_value(request: http.Request) -> str | None:
    """The console cookie's value, from every `Cookie` header the request has."""
    for header in request.headers.get_all("cookie"):
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(header)
        except CookieError:
            continue
        if COOKIE in jar:
            return jar[COOKIE].value
    return None


def set_cookie(session: Session) -> str:
    seconds = max(0, round(session.expires - time.time()))
    return f"{COOKIE}={session.id}; Path={COOKIE_PATH}; Max-Age={seconds}; HttpOnly; SameSite=Strict"


def clear_cookie() -> str:
    return f"{COOKIE}=; Path={COOKIE_PATH}; Max-Age=0; HttpOnly; SameSite=Strict"
