"""What a forward listener (`listen[].mode: forward`, an `HTTPS_PROXY` for apps) decides, read by the steps that
act on it (kaixu/addons/forward.py, the auth step): which hosts kaixu intercepts, and the proxy credential a
client sent. docs/forward-proxy.md.

Only the providers' public API hosts (their doors' `public_hosts`, kaixu/formats/doors.py) and the policy's
`forward.intercept_hosts` are ever decrypted; every other host is tunnelled untouched or refused."""

from __future__ import annotations

import base64
import binascii

from mitmproxy import http

from kaixu.config import Policy
from kaixu.formats.doors import PUBLIC_HOSTS

PROXY_AUTHORIZATION = "proxy-authorization"


def intercepts(policy: Policy, host: str) -> bool:
    """Whether a forward listener terminates TLS for `host` and hands its requests to kaixu's chain."""
    name = host.lower().rstrip(".")
    return name in PUBLIC_HOSTS or name in policy.forward.intercept_hosts


def proxy_credential(headers: http.Headers) -> str | None:
    """The kaixu key a client sent as its proxy credential: the password of `Proxy-Authorization: Basic`
    (`HTTPS_PROXY=http://app:KEY@host:port`; the user name when there is no password), or a `Bearer` token.
    None without one (or one that cannot be read)."""
    value = headers.get(PROXY_AUTHORIZATION)
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer":
        return token or None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8", "surrogateescape")
    except (binascii.Error, ValueError):
        return None
    user, _, password = decoded.partition(":")
    return password or user or None


def intercepted_hosts(policy: Policy) -> frozenset[str]:
    """Every host a forward listener decrypts under this policy."""
    return frozenset(PUBLIC_HOSTS) | policy.forward.intercept_hosts
