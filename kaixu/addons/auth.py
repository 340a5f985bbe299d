"""Step 3: who is calling? A kaixu virtual key (the policy's, stored as its SHA-256, or the store's, made by
`kaixu keys create` and kept as a peppered HMAC: docs/keys.md), or the client's own provider key when the
policy allows bring-your-own-key. Anything else is a 401 in the front door's error shape.

Store keys are looked up in the snapshot kaixu/addons/store_keys.py keeps fresh, never in the store itself."""

from __future__ import annotations

import datetime
import hashlib
import time

from mitmproxy import http

from kaixu.call import Call, get_call
from kaixu.config import Policy, VirtualKey
from kaixu.gateway import Gateway
from kaixu.respond import error_response

# Every header a supported client SDK may carry its credential in (none is forwarded: see router's allowlist).
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "x-kaixu-token", "x-pulse-key")


def presented_key(request: http.Request) -> str | None:
    """The credential the client sent, whichever SDK convention it used."""
    headers = request.headers
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    for name in CREDENTIAL_HEADERS[1:]:
        value = headers.get(name)
        if value:
            return value.strip()
    if "key=" in request.path:
        value = request.query.get("key")
        if value:
            return value
    return None


def key_hash(key: str) -> str:
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


class Auth:
    """Runs on the request head, so an unknown caller is refused before its body is decompressed or parsed."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def store_key(self, call: Call, key: str) -> VirtualKey | http.Response | None:
        """The store key `key` is (a `VirtualKey`), a refusal (revoked, expired, store unreadable), or None
        when the store does not know it (or store keys are not looked up: no pepper, no store file)."""
        snapshot = self.gateway.key_snapshot
        if snapshot is None:
            return None
        if not snapshot.fresh(time.monotonic()):
            message = "kaixu cannot read its key store right now; retry shortly"
            return error_response(call, 503, message, "api_error", "key_store_unavailable", {"retry-after": "1"})
        stored = snapshot.find(key)
        if stored is None:
            return None
        state = stored.state(time.time())
        if state == "revoked":
            return error_response(call, 401, "this API key was revoked", "authentication_error", "revoked_api_key")
        if state == "expired":
            return error_response(call, 401, "this API key has expired", "authentication_error", "expired_api_key")
        if state == "rotated":
            message = "this API key was rotated: its grace period is over; use the key's new secret"
            return error_response(call, 401, message, "authentication_error", "rotated_api_key")
        return stored.virtual()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or call.operation == "local":
            return  # kaixu's own endpoints (admin ones check the admin key themselves: admin_refusal)
        key = presented_key(flow.request)
        policy = call.policy
        if flow.response is not None:
            # Refused on its head already (unknown endpoint, method, model name): the access log and the
            # ledger still name a caller whose key is valid. Nothing else changes for the refused request.
            if key is not None:
                call.caller.key = policy.keys.get(key_hash(key))
                if call.caller.key is None:
                    found = self.store_key(call, key)
                    call.caller.key = found if isinstance(found, VirtualKey) else None
            return
        if key is None:
            if policy.anonymous:
                return
            flow.response = error_response(
                call,
                401,
                "missing API key: send a kaixu key as 'Authorization: Bearer <key>' (or x-api-key / x-goog-api-key)",
                "authentication_error",
                "missing_api_key",
            )
            return
        virtual = policy.keys.get(key_hash(key))
        if virtual is not None:
            if virtual.expires is not None and virtual.expires < datetime.datetime.now(datetime.UTC).date():
                # valid through its `expires` day (UTC), as a store key's date
                flow.response = error_response(
                    call, 401, "this API key has expired", "authentication_error", "expired_api_key"
                )
                return
            call.caller.key = virtual
            return
        found = self.store_key(call, key)
        if isinstance(found, VirtualKey):
            call.caller.key = found
            return
        if found is not None:
            flow.response = found
            return
        if policy.byok:
            call.caller.client_key = key
            call.caller.byok = True
            return
        flow.response = error_response(
            call,
            401,
            "invalid API key: it is not a kaixu key known to this gateway",
            "authentication_error",
            "invalid_api_key",
        )
