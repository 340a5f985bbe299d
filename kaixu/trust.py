"""Whose certificates kaixu trusts when it calls out over TLS: certifi's roots, or the policy's `tls.ca_file`
instead (a private CA for self-hosted models, an internal alert webhook). One home, so the executor's upstream
client (kaixu/reliability/upstream.py) and the budget alert webhook (kaixu/limits/governor.py) never disagree."""

from __future__ import annotations

import functools
import ssl

import certifi


@functools.lru_cache(maxsize=8)
def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The client SSL context for the policy's `tls.ca_file` (None: certifi's roots). Reading a CA bundle takes a
    few milliseconds of disk and parsing, so each trust store is built once per process and shared (an
    SSLContext may be used by many connections at once)."""
    return ssl.create_default_context(cafile=ca_file or certifi.where())
