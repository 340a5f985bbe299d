"""The auth step: who is calling? A kaixu virtual key (the policy's, stored as its SHA-256, or the store's, made by
`kaixu keys create` and kept as a peppered HMAC: docs/keys.md), or the client's own provider key when the
policy allows bring-your-own-key. Anything else is a 401 in the front door's error shape.

Store keys are looked up in the snapshot kaixu/addons/store_keys.py keeps fresh, never in the store itself."""

from __future__ import annotations

import datetime
import time

from mitmproxy import http

from kaixu.call import Call, get_call
from kaixu.config import VirtualKey
from kaixu.credentials import key_hash, presented_key
from kaixu.gateway import Gateway
from kaixu.respond import error_response


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
