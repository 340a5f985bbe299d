"""The web console at `/ui` (docs/console.md), while the policy says `ui: {enabled: true}`: its static pages (plain
HTML, CSS and JavaScript modules shipped inside the package, `kaixu/ui/static/`), and the sign-in that exchanges
an admin key for a session cookie (kaixu/console.py). The pages read the admin API under `/ui/api/` (the admin
step takes the session there) and call the model endpoints with the client key the person types.

Off, nothing here claims a path and `/ui` is the 404 of any unknown path. Every answer carries a
Content-Security-Policy without `unsafe-inline` (the pages have no inline script or style) and refuses framing.

- `GET /ui`, `/ui/`: the page; `GET /ui/static/NAME`: its assets (only the files shipped, by exact name).
- `POST /ui/session` with `{"key": "<admin key>"}`: 200 with the admin's name, the expiry and the CSRF token,
  and the HttpOnly, SameSite=Strict cookie; 401 for anything but an admin key.
- `GET /ui/session`: the same for a live session (so a reloaded page finds its CSRF token), else 401.
- `DELETE /ui/session` (with the CSRF token): signs out and clears the cookie.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from mitmproxy import http

from kaixu.call import Call, get_call
from kaixu.console import COOKIE_PATH, CSRF_HEADER, Session, clear_cookie, set_cookie
from kaixu.credentials import key_hash
from kaixu.gateway import Gateway
from kaixu.respond import add_headers, error_response, json_response
from kaixu.store.queries import iso

log = logging.getLogger("kaixu.ui")

STATIC = Path(__file__).resolve().parent.parent / "ui" / "static"
SESSION_PATH = "/ui/session"
_MAX_SIGN_IN_BYTES = 4096
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def _assets() -> dict[str, tuple[bytes, str]]:
    """Every shipped file by its path under `static/`, read once as the module loads (the console is small)."""
    found: dict[str, tuple[bytes, str]] = {}
    if STATIC.is_dir():
        for path in sorted(STATIC.rglob("*")):
            if path.is_file() and path.suffix in _TYPES:
                found[path.relative_to(STATIC).as_posix()] = (path.read_bytes(), _TYPES[path.suffix])
    return found


ASSETS = _assets()


class Ui:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        path = flow.request.path.partition("?")[0]
        if flow.response is not None or not (path == COOKIE_PATH or path.startswith(COOKIE_PATH + "/")):
            return
        call = get_call(flow)
        if call is None or not call.policy.ui.enabled or path.startswith(COOKIE_PATH + "/api/"):
            return  # off: the 404 of any unknown path; `/ui/api/` is the admin step's
        call.operation = "local"
        method = flow.request.method
        if path == SESSION_PATH:
            if method == "POST":
                return  # answered in `request`, once the body is read
            flow.response = self._session(call, flow.request) if method in ("GET", "DELETE") else None
        elif method not in ("GET", "HEAD"):
            flow.response = None
        elif path in (COOKIE_PATH, COOKIE_PATH + "/"):
            flow.response = self._asset(call, "index.html")
        elif path.startswith(COOKIE_PATH + "/static/"):
            flow.response = self._asset(call, path[len(COOKIE_PATH + "/static/") :])
        else:
            flow.response = error_response(call, 404, f"the console has no page {path!r}", "not_found_error",
                                           "not_found")  # fmt: skip
        if flow.response is None:
            flow.response = error_response(call, 405, f"method {method} is not allowed on {path}",
                                           "invalid_request_error", "method_not_allowed")  # fmt: skip
        add_headers(flow.response, SECURITY_HEADERS)

    def request(self, flow: http.HTTPFlow) -> None:
        """`POST /ui/session`: the sign-in, now that its (small) body is here."""
        call = get_call(flow)
        if call is None or flow.response is not None or call.operation != "local" or flow.request.method != "POST":
            return
        if flow.request.path.partition("?")[0] != SESSION_PATH or not call.policy.ui.enabled:
            return
        peer = flow.client_conn.peername
        flow.response = self._sign_in(call, flow.request, str(peer[0]) if peer else "")
        add_headers(flow.response, SECURITY_HEADERS)

    def _asset(self, call: Call, name: str) -> http.Response:
        asset = ASSETS.get(name)
        if asset is None:
            return error_response(call, 404, "no such console file", "not_found_error", "not_found")
        content, kind = asset
        cache = "no-cache" if name == "index.html" else "max-age=300"
        return http.Response.make(200, content, {"content-type": kind, "cache-control": cache})

    def _sign_in(self, call: Call, request: http.Request, address: str) -> http.Response:
        """The admin key for a session: JSON only (a cross-site form cannot send it without a CORS preflight);
        an address with too many refused sign-ins is refused for a while (`Sessions.wait_s`)."""
        wait = self.gateway.sessions.wait_s(address)
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            return error_response(call, 429, f"too many refused sign-ins from this address: retry in {retry} s",
                                  "rate_limit_error", "too_many_sign_ins", {"retry-after": retry})  # fmt: skip
        if not request.headers.get("content-type", "").startswith("application/json"):
            return error_response(call, 415, "sign in with a JSON body {\"key\": ...}", "invalid_request_error",
                                  "unsupported_media_type")  # fmt: skip
        raw = request.raw_content or b""
        key = None
        if len(raw) <= _MAX_SIGN_IN_BYTES:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            key = body.get("key") if isinstance(body, dict) else None
        if not isinstance(key, str) or not key:
            return error_response(call, 400, "sign in with a JSON body {\"key\": \"<admin key>\"}",
                                  "invalid_request_error", "invalid_parameter")  # fmt: skip
        admin = call.policy.admin_keys.get(key_hash(key))
        if admin is None:
            self.gateway.sessions.failed(address)
            log.warning("request %s: console: a sign-in with a key that is not an admin key", call.request_id)
            reason = "" if call.policy.admin_keys else " (the policy has no admin_keys)"
            return error_response(call, 401, f"that is not an admin key of this gateway{reason}",
                                  "authentication_error", "not_an_admin_key")  # fmt: skip
        session = self.gateway.sessions.create(admin, call.policy.ui.session_minutes * 60)
        log.info("request %s: console: %s signed in", call.request_id, admin)
        return json_response(call, 200, _session_json(session), {"set-cookie": set_cookie(session),
                                                                 "cache-control": "no-store"})  # fmt: skip

    def _session(self, call: Call, request: http.Request) -> http.Response:
        session = self.gateway.sessions.of(call.policy, request)
        if session is None:
            return error_response(call, 401, "not signed in to the console", "authentication_error",
                                  "not_signed_in")  # fmt: skip
        if request.method == "GET":
            return json_response(call, 200, _session_json(session), {"cache-control": "no-store"})
        if not session.csrf_ok(request):
            return error_response(call, 403, f"signing out needs the session's CSRF token in {CSRF_HEADER}",
                                  "permission_error", "csrf_token_invalid")  # fmt: skip
        self.gateway.sessions.end(session)
        log.info("request %s: console: %s signed out", call.request_id, session.admin)
        return json_response(call, 200, {"object": "session", "signed_in": False},
                             {"set-cookie": clear_cookie(), "cache-control": "no-store"})  # fmt: skip


def _session_json(session: Session) -> dict[str, object]:
    return {
        "object": "session",
        "signed_in": True,
        "admin": session.admin,
        "expires": iso(session.expires),
        "expires_in_s": max(0, round(session.expires - time.time())),
        "csrf_token": session.csrf,
    }
