"""The forward listeners (`listen[].mode: forward`): kaixu as an apps' `HTTPS_PROXY`.

A client's CONNECT to a provider's public host (or a `forward.intercept_hosts` one) is let through, and mitmproxy
terminates its TLS with a certificate from kaixu's CA (kaixu/ca.py): the requests inside are kaixu flows like a
reverse listener's, the front door known from their host and path. A CONNECT to any other host is tunnelled
untouched (never decrypted) or, under `forward.others: deny`, answered 403; so is a plain-HTTP request to one.

The proxy credential (`Proxy-Authorization`, sent on the CONNECT, or on each plain-HTTP request) is kept per
client connection and handed to the auth step on the call (`Caller.proxy_key`); it is taken off every request,
so it never reaches a provider, another host, a log or the ledger.
"""

from __future__ import annotations

import json
import logging

from mitmproxy import connection, http

from kaixu import mitm
from kaixu.call import get_call
from kaixu.forward import PROXY_AUTHORIZATION, intercepts, proxy_credential
from kaixu.gateway import Gateway
from kaixu.log import safe
from kaixu.respond import JSON_HEADERS

log = logging.getLogger("kaixu.forward")


def _refusal(host: str) -> http.Response:
    message = f"kaixu's forward proxy does not go to {host} (forward.others: deny)"
    body = {"error": {"message": message, "type": "permission_error", "code": "host_not_allowed"}}
    return http.Response.make(403, json.dumps(body), JSON_HEADERS)


class Forward:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._proxy_keys: dict[str, str] = {}
        """The proxy credential each client connection sent on its CONNECT, by connection id."""

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if not mitm.is_forward_client(flow.client_conn):
            return
        policy = self.gateway.require_policy()
        host = flow.request.host
        if not intercepts(policy, host):
            if policy.forward.others == "deny":
                log.info("CONNECT to %s refused (forward.others: deny)", safe(host))
                flow.response = _refusal(safe(host))
            return  # tunnelled: next_layer below passes its bytes through
        key = proxy_credential(flow.request.headers)
        if key is not None:
            self._proxy_keys[flow.client_conn.id] = key

    def next_layer(self, nextlayer: object) -> None:
        context = nextlayer.context  # type: ignore[attr-defined]
        if not mitm.is_forward_client(context.client):
            return
        host = mitm.tunnel_destination(nextlayer)
        if host is None:
            return
        try:
            intercepted = intercepts(self.gateway.require_policy(), host)
        except Exception:  # never decrypt on a decision that was not made
            log.exception("forward listener: cannot decide on %s; tunnelled untouched", safe(host))
            intercepted = False
        if not intercepted:
            mitm.pass_through(nextlayer)

    def client_disconnected(self, client: connection.Client) -> None:
        self._proxy_keys.pop(client.id, None)

    def untouched(self, flow: http.HTTPFlow) -> bool:
        """A forward client's plain-HTTP request to a host kaixu does not intercept: passed on as it came (less the
        proxy credential) or refused. Not kaixu's call: no step sees it."""
        if not mitm.is_forward_client(flow.client_conn):
            return False
        policy = self.gateway.require_policy()
        if intercepts(policy, flow.request.host):
            return False
        flow.request.headers.pop(PROXY_AUTHORIZATION, None)
        if policy.forward.others == "deny":
            flow.response = _refusal(safe(flow.request.host))
        return True

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or not mitm.is_forward_client(flow.client_conn):
            return
        call.caller.via_forward = True
        key = proxy_credential(flow.request.headers) or self._proxy_keys.get(flow.client_conn.id)
        flow.request.headers.pop(PROXY_AUTHORIZATION, None)
        call.caller.proxy_key = key
