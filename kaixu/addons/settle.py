"""The settle step: the answer is complete. Read its usage, put it (or an upstream error) in the client's format,
and count it.

The one place a request ends, whichever hook ends it (`_count`): the pool, the price, the budget's settlement
and the rate limits' token count (`Governor.finish`), metrics, the access log and the ledger.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

from mitmproxy import http

from kaixu import content, mitm
from kaixu.call import Call, get_call
from kaixu.estimates import estimate_usage
from kaixu.formats import embeddings, fronts, get_codec
from kaixu.formats.canonical import ChatResponse, TextPart, ThinkingPart
from kaixu.formats.doors import front_door
from kaixu.formats.droppable import summary
from kaixu.gateway import Gateway
from kaixu.log import safe
from kaixu.metrics import count_request
from kaixu.pricing import cents, convert_micros
from kaixu.reliability.failures import credentials_rejected, deployment_failed, hides_provider_answer
from kaixu.reliability.served import answer_headers
from kaixu.request_facts import attribution
from kaixu.respond import add_headers, error_json
from kaixu.store import LedgerRecord

log = logging.getLogger("kaixu.settle")
access = logging.getLogger("kaixu.access")


def replace_body(response: http.Response, body: object, status: int | None = None) -> None:
    """Put kaixu's JSON in place of the provider's (a translated answer, or an error in the client's shape)."""
    if status is not None:
        response.status_code = status
    response.content = json.dumps(body, separators=(",", ":")).encode()
    response.headers["content-type"] = "application/json"


def answer_chars(answer: ChatResponse) -> int:
    """The characters of text, thinking and tool calls in a whole answer (what a stream counts as it goes)."""
    message = answer.message
    chars = sum(len(p.text) for p in message.parts if isinstance(p, TextPart | ThinkingPart))
    return chars + sum(len(c.name) + len(c.arguments) for c in message.tool_calls)


def _passed_through_chars(call: Call, payload: dict[str, object], response: http.Response) -> int:
    """`answer_chars` of an answer kaixu forwarded without reading it. What a codec cannot decode was still
    sent to the client: it is sized by its bytes, an upper bound (never less than what was produced)."""
    if call.operation != "chat":
        return 0
    try:
        return answer_chars(get_codec(call.front).decode_response(payload))
    except Exception:
        return len(response.content or b"")


def _answer_began(flow: http.HTTPFlow, call: Call) -> bool:
    """The provider accepted the request and started answering: from then on it bills, so kaixu does."""
    response = flow.response
    return response is not None and response.status_code < 400 and call.delivery.relay_status is None


def mark_degraded(call: Call, response: http.Response) -> None:
    """The Intelligent AI Gateway's `degraded: true` in the body of a chat answer a fallback served, at the doors
    that show it (`FrontDoor.degraded_field`: OpenAI's, whose chat routes are the Gateway's); every front door has
    the `x-kaixu-degraded` header."""
    if not front_door(call.front).degraded_field or call.operation != "chat":
        return
    payload = json.loads(response.content or b"null")
    if isinstance(payload, dict):
        payload["degraded"] = True
        replace_body(response, payload)


def _path(request: http.Request) -> str:
    """The path for the access log: without the query string (`?key=` may carry a credential), one line."""
    return safe(request.path.partition("?")[0], 120)


class Settle:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def response(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        response = flow.response
        if call is None or response is None:
            return
        if call.route.routed and response.stream is False:  # not a refusal kaixu made itself, after routing
            try:
                self._settle_buffered(call, response)
            except Exception:
                log.exception("could not read the upstream answer of request %s", call.request_id)
                message = "the provider's answer could not be read"
                body = error_json(call.front, call.request_id, 502, message, "api_error", "bad_upstream_response")
                replace_body(response, body, status=502)
            else:
                headers = answer_headers(call, response.status_code)
                if call.bill.usage is not None and response.status_code < 400:
                    headers.update(call.bill.answer_headers())
                    if call.route.degraded:
                        mark_degraded(call, response)
                add_headers(response, headers)
        # A relayed stream is a 200 to the client even when the provider failed before its first byte.
        self._count(flow.request, call, call.delivery.relay_status or response.status_code, call.delivery.relay_error)

    def error(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.error is None or call.delivery.recovered is not None:
            return  # recovered: a later attempt answered, and was settled then (kaixu/addons/retries.py)
        fault = mitm.client_fault_status(flow)
        if call.served is not None and not call.bill.usage_final and _answer_began(flow, call):
            estimate_usage(call)  # cut by the provider or left by the client midway: bill what was produced
        if fault is not None:
            # the client's doing, not the gateway's: 499 when it went away (flagged in the ledger), 413, 400
            call.client_disconnected = fault == mitm.CLIENT_CLOSED
            self._count(flow.request, call, fault, flow.error.msg)
        elif flow.response is None:
            self._count(flow.request, call, 504 if call.timed_out else 502, flow.error.msg)
        elif flow.response.stream:  # a stream cut by the provider: the client had its 200 and part of the answer
            self._count(flow.request, call, flow.response.status_code, flow.error.msg)
        else:  # a buffered answer cut mid-body: the client got kaixu's 502 instead (errors.render_error)
            self._count(flow.request, call, 502, flow.error.msg)

    def _settle_buffered(self, call: Call, response: http.Response) -> None:
        served = call.served
        assert served is not None
        upstream = get_codec(served.format)
        same_format = served.format == call.front
        if hides_provider_answer(response.status_code, call.caller.byok):
            rejected = credentials_rejected(served.provider.name)
            log.warning("request %s: %s", call.request_id, rejected.message)
            body = error_json(call.front, call.request_id, rejected.status, rejected.message, rejected.type,
                              rejected.code)  # fmt: skip
            replace_body(response, body, status=rejected.status)
            return
        if response.status_code >= 400:
            redactor, own_key = call.policy.redactor, call.caller.client_key
            if not same_format:
                message, type = upstream.decode_error(response.status_code, response.content or b"")
                message = redactor.text(message, own_key)
                replace_body(response, error_json(call.front, call.request_id, response.status_code, message, type))
                return
            parsed, clean = redactor.body(response.content or b"", own_key)
            if isinstance(parsed, dict):  # the provider's own error shape, with kaixu's request id added
                parsed.setdefault("request_id", call.request_id)
                replace_body(response, parsed)
            else:
                response.content = clean
            return
        if call.operation not in ("chat", "embeddings", "batch_embeddings"):
            return
        payload = json.loads(response.content or b"null")
        if not isinstance(payload, dict):
            raise ValueError("the provider's answer is not a JSON object")
        content.collect_answer(call, payload)
        bill = call.bill
        embedding_request = served.embedding_request
        if embedding_request is not None:
            vectors = embeddings.decode_response(served.format, payload, embedding_request.model)
            bill.usage = vectors.usage
            if bill.usage is None:  # Gemini never counts embedding tokens
                estimate_usage(call, 0)
            bill.settle(served.price)
            replace_body(response, embeddings.encode_response(call.front, vectors, embedding_request))
            return
        # A missing usage is unknown, not zero tokens: estimated, from the answer as decoded only then.
        bill.usage = upstream.usage_from_response(payload)
        if call.canonical is None:
            if bill.usage is None:
                estimate_usage(call, _passed_through_chars(call, payload, response))
            bill.settle(served.price)
            return
        answer = upstream.decode_response(payload)
        if bill.usage is None:
            estimate_usage(call, answer_chars(answer))
        bill.settle(served.price)
        context = call.seed_context
        if context is not None and bill.cost_micros is not None:  # the seeds' own cost fields
            eur = convert_micros(bill.cost_micros, call.policy.pricing.eur_per_usd)
            context = replace(context, cost_cents=cents(bill.cost_micros), cost_eur=eur / 1_000_000)
        replace_body(response, fronts.encode_response(call.front, answer, context, call.canonical))

    def _count(self, request: http.Request, call: Call, status: int, error: str | None) -> None:
        if call.operation == "local":
            return
        if error:
            error = call.policy.redactor.text(error, call.caller.client_key)
        elapsed = time.monotonic() - call.started
        served = call.served
        if call.forwarded and served is not None and not call.outcome_counted:
            # the deployment's fault: it throttled, failed or did not answer; not a client's 4xx or hang-up
            failed = deployment_failed(status) and not call.client_disconnected and not call.failed
            self.gateway.deployments.finished(served.target, failed, elapsed, call.policy.routing)
        self.gateway.pool.finished(call, status, error)
        bill = call.bill
        bill.settle(call.price)
        if call.parent is not None:  # an agent's own model call: its cost joins the request that ran the agent
            call.parent.ended(bill.cost_micros, bill.usage)
        governor = self.gateway.governor
        if governor is not None and call.governance.holds:
            used = bill.usage
            tokens = used.input_tokens + used.output_tokens if used else None
            cost = bill.cost_micros
            if bill.inner_calls:  # the agent's own calls were settled against the same counters one by one
                cost = bill.own_cost_micros
                tokens = 0 if served is not None and served.provider.agent is not None else tokens
            governor.finish(call.governance, cost, tokens, call.policy.alerts, call.policy.ca_file)
        provider = served.provider.name if served is not None else "-"
        model = served.route if served is not None else "-"  # a policy name, never the client's string
        upstream_model = served.model if served is not None else None
        who = attribution(call)
        count_request(call, provider, model, status, elapsed, error, who.customer)
        usage = call.bill.usage
        if access.isEnabledFor(logging.INFO):
            access.info(
                "%s %s %s %s %s %d %.1fms %s -> %s/%s tokens=%s/%s cost=%s key=%s%s",
                call.request_id, safe(request.method, 20), _path(request), call.front, call.operation or "-", status,
                elapsed * 1000, safe(call.model) if call.model else "-", provider,
                upstream_model or "-", usage.input_tokens if usage else "-", usage.output_tokens if usage else "-",
                call.bill.cost_usd() if usage else "-", call.caller.key.name if call.caller.key else "-",
                f" error={safe(error)!r}" if error else "",
            )  # fmt: skip
        if self.gateway.ledger is not None:
            text = content.recorded(call)
            self.gateway.ledger.record(
                LedgerRecord(
                    request_id=call.request_id,
                    ts=time.time(),
                    front=call.front,
                    operation=call.operation,
                    key_name=call.caller.key.name if call.caller.key else None,
                    team=who.team,
                    model=call.model,
                    provider=served.provider.name if served is not None else None,
                    upstream_model=upstream_model,
                    status=status,
                    stream=int(call.stream),
                    input_tokens=usage.input_tokens if usage else None,
                    output_tokens=usage.output_tokens if usage else None,
                    cached_input_tokens=usage.cached_input_tokens if usage else None,
                    latency_ms=round(elapsed * 1000, 3),
                    error=error,
                    attributes=json.dumps(call.caller.attributes, separators=(",", ":"))
                    if call.caller.attributes
                    else None,
                    client_disconnected=int(call.client_disconnected),
                    dropped=summary(call.dropped) if call.dropped else None,
                    customer=who.customer,
                    user_id=who.user,
                    app=who.app,
                    project=who.project,
                    client=who.client,
                    cache_write_tokens=usage.cache_creation_input_tokens if usage else None,
                    reasoning_tokens=usage.reasoning_tokens if usage else None,
                    usage_source=bill.usage_source,
                    cost_micros=bill.cost_micros,
                    unpriced=int(bill.unpriced),
                    ttft_ms=None
                    if bill.first_token_at is None
                    else round((bill.first_token_at - call.started) * 1000, 3),
                    prompt_sha256=text.prompt_sha256,
                    prompt=text.prompt,
                    answer=text.answer,
                    attempts=call.route.attempts.ledger() if call.route.attempts is not None else None,
                    degraded=int(call.route.degraded),
                    verdicts=json.dumps(call.verdicts, separators=(",", ":")) if call.verdicts else None,
                    parent_request_id=call.parent.outer.request_id if call.parent is not None else None,
                )
            )
