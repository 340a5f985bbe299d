"""Reliability (issue 12): what happens when a provider fails.

- `plan.py`: the attempt plan of a request (the model asked for, then its fallbacks), the record of each
  attempt, how long to wait before the next (exponential backoff, full jitter, `Retry-After`), and which
  failures are retried, which move to a fallback and which are the client's.
- `pools.py`: per-provider concurrency caps with a bounded queue (the Intelligent AI Gateway's process pool).
- `executor.py`: runs a plan with its own HTTP client (`upstream.py`): for a buffered answer from the attempt
  after mitmproxy's first (kaixu/addons/retries.py), or from the first when its provider has a queue; for a
  stream through the loopback relay (kaixu/providers/relay.py), up to the first byte the client is sent.

A request whose model has none of this (one attempt, no timeouts, no cap) never meets it: mitmproxy
forwards it as before, and a buffered one that has a plan meets it only when its first attempt fails.
Deployment health (the circuit breakers) is kaixu/providers/health.py.
"""
