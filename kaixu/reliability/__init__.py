"""Reliability (issue 12): what happens when a provider fails. One entry, `serve.py`, for every request kaixu
forwards; the steps (dispatch, retries, errors) only hand it their hooks.

- `serve.py`: the entry (`Reliability`): how a request's attempts run (mitmproxy's forwarding, the executor or
  the relay), the first attempt's timeout, and the attempts after mitmproxy's first when it failed.
- `failures.py`: the one classifier of upstream failures (no answer, a deployment's failure, a hidden 401).
- `plan.py`: the attempt plan of a request (the model asked for, then its fallbacks), the record of each
  attempt, how long to wait before the next (exponential backoff, full jitter, `Retry-After`), and which
  failures are retried, which move to a fallback and which are the client's.
- `executor.py`: runs a plan with its own HTTP client (`upstream.py`), owning each attempt's timeouts.
- `relay.py`: a stream with a plan, through kaixu's loopback server, up to the first byte the client is sent.
- `pools.py`: per-provider concurrency caps with a bounded queue (the Intelligent AI Gateway's process pool).
- `health.py`: each deployment's in-flight count, latency and circuit breaker, and the routing strategies.
- `served.py`: the headers that say how an answer was served.

A request whose model has none of this (one attempt, no timeouts, no cap) never meets more of it than its
timeout: mitmproxy forwards it as before, and a buffered one that has a plan meets the executor only when
its first attempt fails.
"""
