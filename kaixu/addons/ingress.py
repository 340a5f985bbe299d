"""The ingress step: every request gets an id and a Call; CORS; local endpoints (/health, /metrics) answered
in place."""

from __future__ import annotations

import time
import uuid

from mitmproxy import http

from kaixu import ca, mitm
from kaixu.call import Call, attach, get_call
from kaixu.config import Policy
from kaixu.credentials import admin_refusal
from kaixu.formats import doors
from kaixu.formats.doors import front_for_path
from kaixu.formats.droppable import summary
from kaixu.forward import intercepted_hosts
from kaixu.gateway import POOL_MAX_CONCURRENT, Gateway
from kaixu.metrics import exposition
from kaixu.respond import json_response, stamp_request_id

_MAX_CLIENT_ID = 128
_CORS_ALLOW_HEADERS = (
    "authorization, content-type, x-api-key, x-goog-api-key, anthropic-version, anthropic-beta, x-request-id, "
    "x-kaixu-app, x-kaixu-build, x-kaixu-request-id, x-kaixu-install-id, x-kaixu-token"
)


# kaixu's own, and the doors' (`FrontDoor.health_path`: Kaixu Gateway 13's); kAIxu Gate's /v1/health checks the
# token (addons/local.py).
HEALTH_PATHS = ("/health", *doors.HEALTH_PATHS)


def _request_id(request: http.Request) -> str:
    """The client's id when it sent a sane one (so its logs and ours line up), else a fresh uuid4."""
    for header in ("x-request-id", "x-kaixu-request-id"):
        value = request.headers.get(header)
        if value and len(value) <= _MAX_CLIENT_ID and value.isascii() and value.isprintable():
            return value
    return str(uuid.uuid4())


class Ingress:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Everything here needs the request head only: a body over the size limit is refused by mitmproxy
        # before the request hook, and that refusal must still carry the request id.
        self.gateway.inflight.add(flow.id)
        call = get_call(flow) or self._attach(flow)
        request = flow.request
        if request.method == "OPTIONS" and "origin" in request.headers:
            flow.response = self._preflight(call, request)
            return
        path = request.path.split("?", 1)[0]
        if path == "/" and request.method in ("GET", "HEAD"):
            # Claude Code sends HEAD to its base URL before it starts; a person may open the URL in a browser.
            call.operation = "local"
            flow.response = json_response(call, 200, self.about())
            if request.method == "HEAD":
                flow.response.content = b""
        elif path in HEALTH_PATHS and request.method == "GET":
            call.operation = "local"
            health = self.health()
            flow.response = json_response(call, 503 if health["status"] == "unavailable" else 200, health)
        elif path == "/queue/status" and request.method == "GET":
            call.operation = "local"
            flow.response = json_response(call, 200, self.queue_status())
        elif path == "/metrics" and request.method == "GET":
            call.operation = "local"
            flow.response = self.metrics(call, request)

    def _attach(self, flow: http.HTTPFlow) -> Call:
        """The call a flow carries through every later step, with the policy snapshot it will keep."""
        call = Call(request_id=_request_id(flow.request), policy=self.gateway.require_policy())
        call.front = front_for_path(flow.request.path.partition("?")[0], flow.request.host)
        origin = flow.request.headers.get("origin")
        if origin and self._origin_allowed(call, origin):
            call.cors_origin = origin  # decided here: the router forwards no origin header
        attach(flow, call)
        return call

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._decorate(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self.gateway.inflight.discard(flow.id)
        # Answers made by an addon skip `responseheaders`; upstream answers were decorated there.
        if flow.response is not None and "x-kaixu-request-id" not in flow.response.headers:
            self._decorate(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.gateway.inflight.discard(flow.id)

    def _decorate(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is None:
            return
        headers = flow.response.headers
        stamp_request_id(headers, call.request_id)
        if call.dropped:
            headers["x-kaixu-dropped"] = summary(call.dropped)
        origin = call.cors_origin
        if origin:
            headers["access-control-allow-origin"] = origin
            headers["access-control-expose-headers"] = "x-request-id, x-kaixu-request-id, x-cost-usd, x-kaixu-dropped"
            headers["vary"] = "Origin"

    @staticmethod
    def metrics(call: Call, request: http.Request) -> http.Response:
        """`GET /metrics`: open to whoever reaches the port, or only to an admin key (`metrics.auth: admin`):
        401 without a key, 403 with a key that is not an admin key (a client key included)."""
        if call.policy.metrics.auth == "admin":
            refusal = admin_refusal(call, request, "/metrics (metrics.auth: admin)")
            if refusal is not None:
                return refusal
        return http.Response.make(200, exposition(), {"content-type": "text/plain; version=0.0.4; charset=utf-8"})

    def about(self) -> dict[str, object]:
        """`GET /`: what this is and where to read on; nothing about the policy (no key needed)."""
        return {
            "name": "kaixu",
            "version": self.gateway.version,
            "docs": "docs/clients.md: point an OpenAI, Anthropic or Gemini SDK's base URL here",
            "health": "/health",
        }

    def health(self) -> dict[str, object]:
        """`GET /health`: the seeds' fields (`status`, `version`, `backend`, `uptime_seconds`, `routing`) and
        kaixu's own. `status` is `ok`; `unavailable` (answered 503, as health checkers expect) while the counters
        do not answer and requests with a budget or limit are refused (`fail: closed`); `degraded` while they
        do not answer and such requests are served uncounted (`fail: open`): up, but not governed."""
        policy = self.gateway.require_policy()
        counters = self.gateway.counters_status()
        status = "ok"
        if counters["ok"] is False:
            status = "degraded" if counters["fail"] == "open" else "unavailable"
        return {
            "status": status,
            "version": self.gateway.version,
            "backend": "intelligent-gateway",  # the Intelligent AI Gateway's (seed 002) name for itself
            "uptime_seconds": round(time.time() - self.gateway.started_at, 3),
            "policy": {
                "path": self.gateway.policy_path,
                "hash": policy.digest,
                "generation": self.gateway.generation,
                "last_reload_error": self.gateway.last_reload_error,
            },
            "providers": {name: {"kind": p.kind, "key_configured": p.has_key} for name, p in policy.providers.items()},
            "store": self.gateway.store_status(),
            "counters": counters,
            "routing": self.queue_status(),
            "deployments": self.gateway.deployments.public(),
            **({"workers": self.gateway.worker.fleet()} if self.gateway.worker is not None else {}),
            "forward": self.forward_status(policy),
        }

    @staticmethod
    def forward_status(policy: Policy) -> dict[str, object]:
        """The forward listeners' view: which CA signs the intercepted hosts (by fingerprint: the certificate a
        client must trust; nothing of its key), and what is intercepted."""
        cert = mitm.ca_in_use()
        return {
            "listeners": [f"{host}:{port}" for host, port in policy.forward_listen],
            "ca": None if cert is None else ca.describe(cert),
            "intercept_hosts": sorted(intercepted_hosts(policy)),
            "others": policy.forward.others,
            "credentials": policy.forward.credentials,
        }

    def queue_status(self) -> dict[str, object]:
        """The Intelligent AI Gateway's pool view (seed 002) of the requests forwarded to providers, from real
        counters: `queued` and `maxQueue` are the provider queues (`providers.X.max_concurrent`/`queue_size`,
        kaixu/reliability/pools.py); `maxConcurrent` is the sum of the caps, or the seed's default of 10 as the
        reference `utilization` is measured against when no provider has one."""
        policy = self.gateway.require_policy()
        counters = self.gateway.pool
        queues = self.gateway.reliability.executor.pools.status()
        queued = queues.get("queued", 0)
        capacity = queues.get("maxConcurrent") or POOL_MAX_CONCURRENT
        active = max(0, counters.active - queued)  # a waiting request is forwarded, not yet running
        tool = sum(1 for p in policy.providers.values() if p.agent is not None)
        counts = {"total": len(policy.providers), "tool": tool, "api": len(policy.providers) - tool}
        pool = {
            "active": active,
            "queued": queued,
            "maxConcurrent": capacity,
            "maxQueue": queues.get("maxQueue", 0),
            "utilization": round(active / capacity, 4),
            "totalProcessed": counters.processed,
            "totalQueued": queues.get("totalQueued", 0),
            "totalFailed": counters.failed,
        }
        return {"processPool": pool, "backends": counts}

    @staticmethod
    def _origin_allowed(call: Call, origin: str) -> bool:
        allowed = call.policy.cors_origins
        return "*" in allowed or origin in allowed

    def _preflight(self, call: Call, request: http.Request) -> http.Response:
        call.operation = "local"
        origin = request.headers["origin"]
        if not self._origin_allowed(call, origin):
            # Strict by default: no Access-Control-Allow-Origin, so the browser blocks the call.
            return http.Response.make(204, b"", {})
        return http.Response.make(
            204,
            b"",
            {
                "access-control-allow-origin": origin,
                "access-control-allow-methods": "GET, POST, OPTIONS",
                "access-control-allow-headers": request.headers.get("access-control-request-headers")
                or _CORS_ALLOW_HEADERS,
                "access-control-max-age": "600",
                "vary": "Origin",
            },
        )
