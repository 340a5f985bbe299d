"""The credentials a request carries: the key a client sent, whichever SDK convention it used, its hash as the
policy lists keys, and whether it is one of the policy's admin keys (`admin_keys:`), with the one refusal of an
admin-only endpoint. The auth step (kaixu/addons/auth.py) and kaixu's own endpoints (admin API, `/metrics`)
read them the same way."""

from __future__ import annotations

import base64
import hashlib
import hmac

from mitmproxy import http

from kaixu.call import Call
from kaixu.config import Policy
from kaixu.formats.doors import KEY_HEADERS, KEY_QUERY
from kaixu.respond import error_response


def presented_key(request: http.Request) -> str | None:
    """The credential the client sent, whichever SDK convention it used (the doors' `key_headers` and
    `key_query`, kaixu/formats/doors.py; none is forwarded: see the router's allowlist)."""
    headers = request.headers
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    for name in KEY_HEADERS[1:]:  # `authorization` (read above) comes first
        value = headers.get(name)
        if value:
            return value.strip()
    for name in KEY_QUERY:
        if f"{name}=" in request.path:
            value = request.query.get(name)
            if value:
                return value
    return None


def key_hash(key: str) -> str:
    """The hex sha256 the policy lists a key by (`keys[].hash`, `admin_keys[].hash` as `sha256:<hex>`): the one
    encoding, read by the auth step and printed by `kaixu keys hash` / `kaixu keys new`. A header value is bytes
    that mitmproxy decodes with `surrogateescape` (and so is a command-line argument), so the bytes are hashed."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def admin_name(policy: Policy, request: http.Request) -> str | None:
    """The name of the admin key the request carries (`admin_keys:` in the policy), else None. Admin keys
    guard kaixu's own endpoints (`/api/*`, `/metrics` under `metrics.auth: admin`); they are not client keys
    and a client key is never an admin key."""
    key = presented_key(request)
    return None if key is None else policy.admin_keys.get(key_hash(key))


def admin_refusal(call: Call, request: http.Request, what: str) -> http.Response | None:
    """The one answer to a request for an admin-only endpoint (`what` names it) without an admin key: 401
    `missing_admin_key` without a key, 403 `not_an_admin_key` with any other key (a client key included).
    None when the request carries an admin key."""
    if admin_name(call.policy, request) is not None:
        return None
    if presented_key(request) is None:
        message = f"{what} needs an admin key: send it as 'Authorization: Bearer <key>'"
        return error_response(call, 401, message, "authentication_error", "missing_admin_key")
    reason = "admin_keys lists the keys that may" if call.policy.admin_keys else "the policy has no admin_keys"
    message = f"this key is not an admin key ({reason}); {what} is for admin keys only"
    return error_response(call, 403, message, "permission_error", "not_an_admin_key")


INTERNAL_HEADER = "x-kaixu-internal"
"""Where kaixu's own background work (kaixu/jobs/runner.py) says whose request it sends to kaixu itself: a
credential `internal_credential` made, never a client's key (a job keeps no key). No provider gets it (the
router's header allowlist)."""


def internal_credential(secret: bytes, key_name: str, expires_at: float) -> str:
    """A short-lived credential for the key named `key_name`, valid in the process holding `secret` (a random
    secret made at start, never stored) until `expires_at`: `<name, base64url>.<expiry>.<HMAC-SHA256>`."""
    name = base64.urlsafe_b64encode(key_name.encode()).decode().rstrip("=") or "-"
    payload = f"{name}.{int(expires_at)}"
    return f"{payload}.{hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()}"


def internal_key_name(secret: bytes, credential: str, now: float) -> str | None:
    """The key name an `internal_credential` carries ("" for an anonymous caller), or None when it is forged,
    made by another process or expired."""
    payload, _, mac = credential.rpartition(".")
    name, _, expiry = payload.partition(".")
    expected = hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac.encode(), expected.encode()) or not expiry.isdigit() or int(expiry) < now:
        return None
    if name == "-":
        return ""
    return base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
