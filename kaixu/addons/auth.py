"""The auth step: who is calling? A kaixu virtual key (the policy's, stored as its SHA-256, or the store's, made by
`kaixu keys create` and kept as a peppered HMAC: docs/keys.md), or the client's own provider key when the
policy allows bring-your-own-key. Anything else is a 401 in the front door's error shape.

Store keys are looked up in the snapshot kaixu/addons/store_keys.py keeps fresh, never in the store itself."""

from __future__ import annotations

import datetime
import time

from mitmproxy import http

from kaixu.agents.grants import CREDENTIAL_PREFIX, run_for_credential
from kaixu.call import Call, get_call
from kaixu.config import VirtualKey
from kaixu.credentials import INTERNAL_HEADER, internal_key_name, key_hash, presented_key
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

    def identify(self, call: Call, key: str) -> VirtualKey | http.Response | None:
        """The kaixu key `key` is (the policy's, then the store's), a refusal (expired, revoked, store unreadable),
        or None when it is not a kaixu key."""
        virtual = call.policy.keys.get(key_hash(key))
        if virtual is None:
            return self.store_key(call, key)
        return _expired(call) if _is_expired(virtual) else virtual

    def internal(self, flow: http.HTTPFlow, call: Call, credential: str) -> None:
        """kaixu's own background request (a job, kaixu/jobs/runner.py) for the key named in its credential:
        that key as it is now (a key revoked or expired since the job was made is refused as itself)."""
        name = internal_key_name(self.gateway.internal_secret, credential, time.time())
        if name is None:
            message = "invalid internal credential"
            flow.response = error_response(call, 401, message, "authentication_error", "invalid_api_key")
            return
        if name == "":
            if not call.policy.anonymous:
                flow.response = error_response(call, 401, "missing API key", "authentication_error", "missing_api_key")
            return
        virtual = call.policy.key_named(name)
        if virtual is not None:
            if _is_expired(virtual):
                flow.response = _expired(call)
                return
            call.caller.key = virtual
            return
        snapshot = self.gateway.key_snapshot
        stored = snapshot.named(name) if snapshot is not None else None
        state = stored.state(time.time()) if stored is not None else "unknown"
        if stored is None or state != "active":
            message = f"the key that made this job is no longer valid ({state})"
            flow.response = error_response(call, 401, message, "authentication_error", "invalid_api_key")
            return
        call.caller.key = stored.virtual()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or call.operation == "local":
            return  # kaixu's own endpoints (admin ones check the admin key themselves: admin_refusal)
        internal = flow.request.headers.get(INTERNAL_HEADER)
        if internal is not None and flow.response is None:
            self.internal(flow, call, internal)
            return
        key = presented_key(flow.request)
        policy = call.policy
        caller = call.caller
        if flow.response is not None:
            # Refused on its head already (unknown endpoint, method, model name): the access log and the
            # ledger still name a caller whose key is valid. Nothing else changes for the refused request.
            named = caller.proxy_key or key
            if named is not None:
                found = self.identify(call, named)
                caller.key = found if isinstance(found, VirtualKey) else None
            return
        if caller.via_forward:
            self._forwarded(flow, call, key)
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
        if key.startswith(CREDENTIAL_PREFIX):  # an agent's own model call (kaixu/agents/grants.py)
            self._agent_call(flow, call, key)
            return
        found = self.identify(call, key)
        if isinstance(found, VirtualKey):
            caller.key = found
            return
        if found is not None:
            flow.response = found
            return
        if policy.byok:
            caller.client_key = key
            caller.byok = True
            return
        flow.response = _invalid(call)

    def _forwarded(self, flow: http.HTTPFlow, call: Call, key: str | None) -> None:
        """A forward listener's caller (docs/forward-proxy.md): the proxy credential when there is one (it must
        be a kaixu key), else the kaixu key in the provider's header; under `forward.credentials: replace` an
        app without one is billed to the key `forward.clients` names for its address (its provider key is
        replaced by kaixu's, as every client credential is); `forward.byok` forwards an unknown key as-is."""
        caller, forward = call.caller, call.policy.forward
        if caller.proxy_key is not None:
            found = self.identify(call, caller.proxy_key)
            if found is None:
                message = "invalid proxy credential: the proxy password is not a kaixu key known to this gateway"
                found = error_response(call, 401, message, "authentication_error", "invalid_proxy_credential")
            self._settle(flow, call, found)
            return
        found = self.identify(call, key) if key is not None else None
        if found is not None:
            self._settle(flow, call, found)
            return
        if forward.credentials == "replace":
            mapped = forward.client_key(flow.client_conn.peername[0])
            if mapped is not None:
                self._settle(flow, call, _expired(call) if _is_expired(mapped) else mapped)
                return
        if key is not None and forward.byok:
            caller.client_key = key
            caller.byok = True
            return
        if key is not None:
            flow.response = _invalid(call)
        elif not call.policy.anonymous:
            message = ("missing API key: send a kaixu key in the provider's header or as the proxy password "
                       "(HTTPS_PROXY=http://app:<key>@host:port)")  # fmt: skip
            flow.response = error_response(call, 401, message, "authentication_error", "missing_api_key")

    @staticmethod
    def _agent_call(flow: http.HTTPFlow, call: Call, key: str) -> None:
        """An agent's model call presents its run's credential: it is made as the caller of the request that runs
        the agent (its key, or its own provider key under bring-your-own-key, never shown to the agent), with
        that request as its parent; an unknown, closed or expired run is a 401."""
        run = run_for_credential(key)
        if run is None:
            message = "this agent credential is unknown or no longer valid"
            flow.response = error_response(call, 401, message, "authentication_error", "invalid_api_key")
            return
        outer = run.outer.caller
        call.caller.key, call.caller.client_key, call.caller.byok = outer.key, outer.client_key, outer.byok
        call.parent = run
        run.began()

    @staticmethod
    def _settle(flow: http.HTTPFlow, call: Call, found: VirtualKey | http.Response) -> None:
        if isinstance(found, VirtualKey):
            call.caller.key = found
        else:
            flow.response = found


def _is_expired(virtual: VirtualKey) -> bool:
    # valid through its `expires` day (UTC), as a store key's date
    return virtual.expires is not None and virtual.expires < datetime.datetime.now(datetime.UTC).date()


def _expired(call: Call) -> http.Response:
    return error_response(call, 401, "this API key has expired", "authentication_error", "expired_api_key")


def _invalid(call: Call) -> http.Response:
    return error_response(
        call,
        401,
        "invalid API key: it is not a kaixu key known to this gateway",
        "authentication_error",
        "invalid_api_key",
    )
