"""The stream relay: for front doors whose streams must speak before the provider does (Kaixu Gateway 13
sends `ping` keep-alives while the model thinks), the flow is pointed at kaixu's loopback server, which
answers with stream headers at once and calls the provider itself (httpx, streaming).

mitmproxy cannot emit bytes for a flow on its own (docs/architecture.md): this is the
workaround measured for mitmproxy 12.2.3. Before the provider's first byte the relay writes SSE comment markers
(never mixed into the provider's events, which it forwards untouched); the stream step turns them into
the front door's keep-alive and error events. A provider that fails before its first byte becomes an
error marker: the client has already been told 200, as the seed's own gateway does.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import tornado.iostream
import tornado.web

from kaixu.call import Call
from kaixu.formats import get_codec
from kaixu.providers import credentials_rejected, hides_provider_answer

PING_MARKER = b": kaixu-ping"
ERROR_MARKER = b": kaixu-error "
MARKER_PREFIX = b": kaixu-"
ROUTE_PREFIX = "/_kaixu/relay/"


@dataclass(slots=True)
class RelayPlan:
    call: Call
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes
    ping_s: float


class Relay:
    def __init__(self) -> None:
        self.plans: dict[str, RelayPlan] = {}
        self._clients: dict[str | None, httpx.AsyncClient] = {}

    def register(self, plan: RelayPlan) -> str:
        token = uuid.uuid4().hex
        self.plans[token] = plan
        return ROUTE_PREFIX + token

    def client(self, ca_file: str | None) -> httpx.AsyncClient:
        """One pooled client per trust store (the policy's `tls.ca_file`, or certifi's roots)."""
        client = self._clients.get(ca_file)
        if client is None:
            verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
            client = httpx.AsyncClient(timeout=None, trust_env=False, verify=verify)
            self._clients[ca_file] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def route(self) -> tuple[str, type[RelayHandler], dict[str, Any]]:
        return (ROUTE_PREFIX + r"([0-9a-f]+)", RelayHandler, {"relay": self})


def _describe(exc: BaseException, provider: str, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"provider {provider!r} did not answer within {timeout:g} s"
    return f"provider {provider!r} is unreachable ({exc})"


def error_marker(message: str, status: int) -> bytes:
    return ERROR_MARKER + json.dumps({"status": status, "message": message}).encode() + b"\n\n"


class RelayHandler(tornado.web.RequestHandler):
    def set_default_headers(self) -> None:
        # tornado names itself in every answer, which clients would see as kaixu's own `Server` header
        self.clear_header("Server")

    def initialize(self, relay: Relay) -> None:
        self.relay = relay

    def check_xsrf_cookie(self) -> None:
        return None

    async def post(self, token: str) -> None:
        plan = self.relay.plans.pop(token, None)
        if plan is None:
            self.set_status(404)
            self.finish()
            return
        self.set_status(200)
        self.set_header("content-type", "text/event-stream")
        self.set_header("cache-control", "no-cache")
        try:
            await self.flush()  # the client gets its stream headers now, whatever the provider does
            await self._relay(plan)
        except tornado.iostream.StreamClosedError:
            return  # the client went away
        self.finish()

    async def _relay(self, plan: RelayPlan) -> None:
        call = plan.call
        client = self.relay.client(call.policy.ca_file)
        request = client.build_request(plan.method, plan.url, headers=plan.headers, content=plan.body)
        timeout = call.policy.upstream_timeout_s
        provider = call.route.provider.name if call.route.provider else "upstream"
        sending = asyncio.ensure_future(client.send(request, stream=True))
        try:
            response = await self._with_pings(sending, plan.ping_s, timeout)
        except BaseException as exc:
            sending.cancel()
            if not isinstance(exc, TimeoutError | httpx.HTTPError):
                raise
            await self._fail(call, _describe(exc, provider, timeout), 504 if isinstance(exc, TimeoutError) else 502)
            return
        try:
            if hides_provider_answer(response.status_code, call.caller.byok):
                await self._fail(call, credentials_rejected(provider), 502)
                return
            if response.status_code >= 400:
                body = await response.aread()
                message, _ = get_codec(call.route.format or "openai").decode_error(response.status_code, body)
                await self._fail(call, message, response.status_code)
                return
            chunks = response.aiter_raw()
            first = asyncio.ensure_future(anext(chunks, b""))
            chunk = await self._with_pings(first, plan.ping_s, timeout)
            while chunk:
                self.write(chunk)
                await self.flush()
                chunk = await anext(chunks, b"")
        except (TimeoutError, httpx.HTTPError) as exc:
            reason = f"no data within {timeout:g} s" if isinstance(exc, TimeoutError) else str(exc) or "connection lost"
            call.route.relay_error = f"stream from provider {provider!r} broke: {reason}"
        finally:
            await response.aclose()

    async def _with_pings(self, pending: asyncio.Future[Any], ping_s: float, timeout: float) -> Any:
        """Await the provider, writing a keep-alive marker every `ping_s` seconds meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                pending.cancel()
                raise TimeoutError
            done, _ = await asyncio.wait({pending}, timeout=min(ping_s, left))
            if done:
                return pending.result()
            if loop.time() < deadline:
                self.write(PING_MARKER + b"\n\n")
                await self.flush()

    async def _fail(self, call: Call, message: str, status: int) -> None:
        message = call.policy.redactor.text(message, call.caller.client_key)  # provider text may quote kaixu's key
        call.route.relay_error = message
        call.route.relay_status = status  # what the client would have got without the relay
        self.write(error_marker(message, status))
        await self.flush()
