"""The attempt executor: runs a request's plan (kaixu/reliability/plan.py) until one attempt is answered.

One component for both kinds of answer:
- a buffered (JSON) answer is fetched here from the dispatch step's hook and set as the flow's response, so
  mitmproxy never connects upstream itself; the response steps then translate, price and record it as usual;
- a stream is fetched from the loopback relay (kaixu/reliability/relay.py), which asks `run(stream=True)` for the
  winning attempt with its first chunk, and only then starts the client's answer.

Either way nothing reaches the client before an attempt has won, so a retry or a fallback is never spliced
into an answer already begun. Each attempt is a new `Attempt` (`kaixu.routing.aim`: provider, model, wire format,
price), added to the call's attempts only once aimed, so the steps after it translate and price what actually
served the request and a deployment that refuses leaves the call as it was; and each is counted
against its deployment's circuit breaker (kaixu/reliability/health.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from kaixu import metrics
from kaixu.call import Call
from kaixu.config.policy import ModelRoute, RouteTarget, Timeouts
from kaixu.estimates import estimate_usage
from kaixu.reliability.failures import (
    UpstreamFailure,
    deployment_failed,
    hides_provider_answer,
    native_failure,
    transport_failure,
)
from kaixu.reliability.plan import Attempts, Upstream, Verdict, backoff_s, retry_after_s, str_headers, verdict
from kaixu.reliability.pools import QUEUE_FULL, Pools, QueueFull
from kaixu.reliability.upstream import CONNECTION_HOP, RESPONSE_HOP, ProtocolError, Response, UpstreamClient
from kaixu.respond import error_json
from kaixu.routing import RouteRefused, aim, reachable_targets

AGENT_GRACE_S = 15.0
"""Beyond an agent provider's `timeout_s`: the time to stop its process and settle its model calls."""

if TYPE_CHECKING:
    from kaixu.reliability.health import Deployments

log = logging.getLogger("kaixu.reliability")

NO_TIMEOUTS = Timeouts()


@dataclass(slots=True)
class Outcome:
    """How an attempt ended: an answer (buffered in `body`, or a stream's `first` chunk with the rest still to
    read from `chunks`), a provider error, or kaixu's own 502/503/504 for one that could not be reached."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    first: bytes = b""
    chunks: AsyncIterator[bytes] | None = None
    response: Response | None = None
    release: Callable[[], None] | None = None
    transport_error: str | None = None
    cause: str | None = None
    """What the HTTP client said when there was no answer (the ledger's error for `Executor.forward`)."""
    deadline: float = 0.0
    idle_s: float = 0.0
    """How long a stream may go without data (the route's `idle_s`, else `limits.upstream_timeout_s`)."""
    total_s: float = 0.0
    reason: str | None = None
    """The provider's reason phrase (`forwarded_response`)."""
    local: bool = False
    """kaixu's own refusal before anything was sent (a full provider queue): no mark against the deployment."""
    answer_began: bool = False
    """No answer, but the provider had begun one (its head, a success status, then the body was cut): from then
    on it bills, so kaixu does (`Executor.forward`, as the settle step's error hook does for mitmproxy's)."""

    @property
    def ok(self) -> bool:
        return self.status < 400

    async def close(self) -> None:
        """Give the connection and the provider's queue slot back (idempotent)."""
        response, self.response = self.response, None
        release, self.release = self.release, None
        try:
            if response is not None:
                await response.aclose()
        finally:
            if release is not None:
                release()


class Executor:
    def __init__(self, deployments: Deployments, mock_url: Callable[[], str | None]) -> None:
        self.deployments = deployments
        """Each deployment's breaker and in-flight count (`Gateway.deployments`)."""
        self.mock_url = mock_url
        """The in-process mock provider's base URL once it listens (`Gateway.mock_url`)."""
        self.pools = Pools()
        self._clients: dict[str | None, UpstreamClient] = {}
        self._running: dict[str, dict[asyncio.Task[Any], Call]] = {}
        """The buffered requests being fetched, by client connection id: what a hang-up cancels."""

    def client_gone(self, client_id: str) -> None:
        """A client connection closed (the `client_disconnected` hook): cancel the fetches it was waiting for."""
        for task, call in self._running.pop(client_id, {}).items():
            call.client_disconnected = True
            task.cancel()

    # -- HTTP clients ----------------------------------------------------------------------------------------

    def client(self, ca_file: str | None) -> UpstreamClient:
        """One pooled client per trust store (the policy's `tls.ca_file`, or certifi's roots)."""
        client = self._clients.get(ca_file)
        if client is None:
            client = self._clients[ca_file] = UpstreamClient(ca_file)
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    # -- buffered answers ------------------------------------------------------------------------------------

    async def answer(self, flow: http.HTTPFlow, call: Call) -> None:
        """The dispatch step's hook for a guarded buffered request kaixu fetches itself (its provider has a
        queue): the winning attempt (or the last failure) becomes the flow's response."""
        outcome = await self.fetch(flow, call, Upstream.of(flow.request))
        if outcome is not None:
            flow.response = as_response(outcome)

    async def forward(self, flow: http.HTTPFlow, call: Call) -> None:
        """The dispatch step's hook for a buffered request without a plan that kaixu sends on a pooled
        connection rather than mitmproxy on a new one of its own (`Reliability.serve` decides when): one
        attempt, its time bounded as mitmproxy's would be (`limits.upstream_timeout_s`); the answer becomes the
        flow's response with the provider's headers as mitmproxy would pass them on (`forwarded_response`), a
        provider that gives none kaixu's 502/504 (the wording of `failures.upstream_failure`)."""
        attempt = self._attempt(call, None, Upstream.of(flow.request), False, native=True)
        outcome = await self._cancellable(flow, call, attempt)
        if outcome is not None:
            flow.response = forwarded_response(outcome)
            call.delivery.relay_error = outcome.cause  # the ledger's error, as mitmproxy's would be
            if outcome.answer_began and not call.bill.usage_final:
                estimate_usage(call)  # the provider began answering, then its body was cut: it bills

    async def fetch(
        self, flow: http.HTTPFlow, call: Call, first: Upstream | None, done: Outcome | None = None
    ) -> Outcome | None:
        """`run` for a buffered answer, from a flow hook (closed when it returns)."""
        return await self._cancellable(flow, call, self.run(call, first, stream=False, done=done))

    async def _cancellable(self, flow: http.HTTPFlow, call: Call, running_: Awaitable[Outcome]) -> Outcome | None:
        """Await a buffered answer's fetch from a flow hook (closed when it returns). A client that hangs up
        meanwhile cancels it (`client_gone`): the provider's request is dropped and its queue slot freed, the
        flow gets an empty 499, and the hook still ends normally, so mitmproxy goes on to the error hook and the
        settle step records the 499. None then."""
        task = asyncio.current_task()
        assert task is not None
        running = self._running.setdefault(flow.client_conn.id, {})
        running[task] = call
        try:
            outcome = await running_
        except asyncio.CancelledError:
            if task.cancelling() == 0 or not call.client_disconnected:
                raise  # not ours: kaixu is stopping
            task.uncancel()
            flow.response = http.Response.make(499, b"", {})
            return None
        finally:
            running.pop(task, None)
            if not running:
                self._running.pop(flow.client_conn.id, None)
        await outcome.close()
        return outcome

    # -- the plan ----------------------------------------------------------------------------------------------

    async def run(self, call: Call, first: Upstream | None, *, stream: bool, done: Outcome | None = None) -> Outcome:
        """Try the plan's attempts in order until one answers (returned open: for a stream, with its first
        chunk read) or the plan is spent (the last failure). The call is left aimed at the attempt returned.
        ``done``: the first attempt's outcome when mitmproxy made it (then ``first`` is None); returned as it
        is when nothing follows it (an answer, a final failure, a plan with no more attempts)."""
        plan = call.route.plan
        assert plan is not None
        deployments = self.deployments
        routing = call.policy.routing
        attempts = call.route.attempts = call.route.attempts or Attempts()
        upstream: Upstream | None = first
        last: Outcome | None = None
        for index in range(plan.start, len(plan.routes)):
            route = plan.routes[index]
            tried: list[RouteTarget] = []  # in the order they were tried
            for number in range(1, route.retries.attempts + 1):
                if upstream is None and done is None:
                    upstream = self._aim(call, route, tried, fallback=index > 0)
                    if upstream is None:
                        break  # no deployment of this model can take it: the next model
                served = call.served
                assert served is not None
                target = served.target
                if target in tried:
                    tried.remove(target)
                tried.append(target)
                if done is not None:  # mitmproxy's own first attempt
                    since, outcome, done = call.delivery.sent_at, done, None
                else:
                    assert upstream is not None
                    since = time.monotonic()
                    outcome = await self._attempt(call, route.timeouts, upstream, stream)
                upstream = None
                provider = served.provider.name
                if outcome.ok:
                    attempts.add(provider, served.model or "-", outcome.status, since)
                    attempts.degraded = index > 0
                    metrics.ATTEMPTS.inc((provider, "ok"))
                    if attempts.degraded:
                        metrics.FALLBACKS.inc((plan.routes[0].name,))
                    return outcome
                answer: Verdict
                if outcome.local or hides_provider_answer(outcome.status, call.caller.byok):
                    answer = "fallback"  # a full queue is not retried into itself; kaixu's own key was refused
                else:
                    answer = verdict(outcome.status, outcome.body, route.retries, route.fallback_on,
                                     transport=outcome.transport_error is not None)  # fmt: skip
                attempts.add(provider, served.model or "-", outcome.status, since, outcome.transport_error)
                more = self._more(plan.routes, index, number, answer)
                if answer == "final" or not more:
                    metrics.ATTEMPTS.inc((provider, "final"))
                    if outcome.local:  # never reached the provider: not the deployment's failure
                        deployments.released(target)
                        call.outcome_counted = True
                    return outcome  # counted against its deployment by the settle step, as any answer
                metrics.ATTEMPTS.inc((provider, "retried" if answer == "retry" and more == "retry" else "fallback"))
                await outcome.close()
                if outcome.local:
                    deployments.released(target)
                else:
                    deployments.finished(target, deployment_failed(outcome.status), time.monotonic() - since, routing)
                last = outcome
                if answer != "retry" or more != "retry":
                    break
                wait = retry_after_s(_header(outcome, "retry-after"), _header(outcome, "retry-after-ms"))
                await asyncio.sleep(backoff_s(route.retries, number, wait))
        # the models left could not take it (no deployment, or each refused before anything was sent): the last
        # failure stands; its deployment has been told already, so the settle step must not count it again
        assert last is not None
        call.outcome_counted = True
        return last

    @staticmethod
    def _more(routes: tuple[ModelRoute, ...], index: int, number: int, answer: Verdict) -> Verdict | None:
        """What comes after a failed attempt: another try of this model, the next model, or nothing."""
        if answer == "retry" and number < routes[index].retries.attempts:
            return "retry"
        if answer in ("retry", "fallback") and index + 1 < len(routes):
            return "fallback"
        return None

    def _aim(self, call: Call, route: ModelRoute, tried: list[RouteTarget], *, fallback: bool) -> Upstream | None:
        """Point the call at the next deployment of ``route``: one not tried yet, else the one tried longest
        ago (two deployments and three attempts: a, b, a), among those its breaker lets through."""
        plan = call.route.plan
        assert plan is not None
        targets = reachable_targets(call, route, fallback=fallback)
        if not targets:
            return None
        deployments, routing = self.deployments, call.policy.routing
        fresh = tuple(t for t in targets if t not in tried)
        if not fresh:
            fresh = next(((t,) for t in tried if t in targets and deployments.usable(t, routing)), targets)
        target = deployments.pick(fresh, routing)
        try:
            attempt = aim(call, route, target, plan.client_fields, plan.install_id, self.mock_url(), fallback=fallback)
        except RouteRefused as refused:
            deployments.get(target).probing = False
            log.warning("request %s: %s/%s skipped: %s", call.request_id, target.provider, target.model or route.name,
                        refused.message)  # fmt: skip
            return None
        prepared = attempt.prepared
        if prepared is None:  # a local answer (token counting) is never a fallback's business
            return None
        call.attempts.append(attempt)
        deployments.started(target)
        return Upstream("POST", prepared.url, str_headers(prepared.headers), prepared.content(plan.client_body))

    # -- one attempt -----------------------------------------------------------------------------------------

    async def _attempt(
        self, call: Call, timeouts: Timeouts | None, upstream: Upstream, stream: bool, native: bool = False
    ) -> Outcome:
        """One attempt on the pooled client, bounded by ``timeouts`` (a route's; None: `upstream_timeout_s`);
        ``native``: a failure is worded as mitmproxy's own forwarding's would be (`failures.native_failure`)."""
        served = call.served
        assert served is not None
        provider = served.provider
        timeouts = timeouts or NO_TIMEOUTS
        # an agent's run is bounded by its own timeout_s, and may be quiet as long (its tools run meanwhile)
        patience = (
            call.policy.upstream_timeout_s if provider.agent is None else provider.agent.timeout_s + AGENT_GRACE_S
        )
        total = timeouts.total_s or patience
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total
        pool = self.pools.get(provider)
        release: Callable[[], None] | None = None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.acquire(), total)
            except QueueFull as full:
                return self.refused(call, UpstreamFailure.of_error(full), retry_after="1", local=True)
            except TimeoutError:
                waited = QueueFull(f"{QUEUE_FULL}: no slot within {total:g} s")
                return self.refused(call, UpstreamFailure.of_error(waited), retry_after="1", local=True)
            release = pool.release
        client = self.client(call.policy.ca_file)
        response: Response | None = None
        what = "time to first byte"
        first_byte = min(timeouts.ttfb_s or total, total)
        try:
            sending = client.send(upstream.method, upstream.url, upstream.headers, upstream.body,
                                  min(timeouts.connect_s or total, first_byte))  # fmt: skip
            response = await asyncio.wait_for(sending, first_byte)
            headers = response.headers
            if response.status_code >= 400 or not stream:
                what = "answer"
                body = await asyncio.wait_for(response.aread(), max(0.0, deadline - loop.time()))
                await response.aclose()
                if release is not None:
                    release()
                return Outcome(response.status_code, headers, body=body, reason=response.reason)
            chunks = response.aiter_raw()
            left = max(0.0, min(first_byte, deadline - loop.time()))
            first = await asyncio.wait_for(anext(chunks, b""), left)
            if not first:
                raise ProtocolError("the stream ended before its first event")
            return Outcome(response.status_code, headers, first=first, chunks=chunks, response=response,
                           release=release, deadline=deadline if timeouts.total_s else 0.0, total_s=total,
                           idle_s=timeouts.idle_s or patience)  # fmt: skip
        except (TimeoutError, OSError) as exc:
            if response is not None:
                await response.aclose()
            if release is not None:
                release()
            seconds = first_byte if what == "time to first byte" else total
            failure = (native_failure if native else transport_failure)(exc, provider.name, seconds, what)
            log.warning("request %s: attempt on %s failed: %s", call.request_id, provider.name, failure.message)
            outcome = self.unanswered(call, failure)
            outcome.cause = str(exc) or type(exc).__name__
            outcome.answer_began = response is not None and response.status_code < 400
            return outcome
        except BaseException:
            if response is not None:
                await response.aclose()
            if release is not None:
                release()
            raise

    @classmethod
    def unanswered(cls, call: Call, failure: UpstreamFailure) -> Outcome:
        """The outcome of an attempt the provider gave no answer to: retried like a 5xx (`transport_error`)."""
        outcome = cls.refused(call, failure)
        outcome.transport_error = failure.message
        return outcome

    @staticmethod
    def refused(call: Call, failure: UpstreamFailure, retry_after: str | None = None, local: bool = False) -> Outcome:
        """kaixu's own error for an attempt, in the provider's wire format (the settle step puts it in the
        client's, as it does a provider's error). ``local``: refused before anything was sent."""
        served = call.served
        fmt = served.format if served is not None else call.front
        error = error_json(fmt, call.request_id, failure.status, failure.message, failure.type, failure.code)
        headers = [("content-type", "application/json")]
        if retry_after is not None:
            headers.append(("retry-after", retry_after))
        return Outcome(failure.status, headers, body=json.dumps(error).encode(), local=local)


def as_response(outcome: Outcome) -> http.Response:
    """An attempt's outcome as the flow's response, for the response steps to translate, price and record."""
    headers = [(k.encode(), v.encode()) for k, v in outcome.headers if k.lower() not in RESPONSE_HOP]
    return http.Response.make(outcome.status, outcome.body, headers)


def forwarded_response(outcome: Outcome) -> http.Response:
    """An answer kaixu fetched in mitmproxy's stead (`Executor.forward`) as the flow's response: the provider's
    status, reason and headers as mitmproxy would pass them on (its `date`, `server`, `content-encoding`...),
    only the connection's own headers replaced by a `content-length` of the body, which is kept as sent."""
    fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in outcome.headers if k.lower() not in CONNECTION_HOP]
    fields.append((b"content-length", str(len(outcome.body)).encode()))
    now = time.time()
    reason = outcome.reason.encode("latin-1") if outcome.reason is not None else None
    return http.Response(b"HTTP/1.1", outcome.status, reason or b"", http.Headers(fields), outcome.body, None, now, now)


def _header(outcome: Outcome, name: str) -> str | None:
    return next((v for k, v in outcome.headers if k.lower() == name), None)
