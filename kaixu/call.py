"""The per-request record that the addons pass along a flow (`flow.metadata["kaixu"]`).

Each addon reads what earlier steps decided and adds its own decision; nothing is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mitmproxy import http

from kaixu.formats.canonical import ChatRequest, Usage
from kaixu.limits.governance import Governance
from kaixu.pricing import cost_micros, usd

if TYPE_CHECKING:
    from kaixu.config import Policy, ProviderConfig, RouteTarget, VirtualKey
    from kaixu.conversation import Session
    from kaixu.formats.canonical import ChatRequest
    from kaixu.formats.doors import Endpoint
    from kaixu.formats.embeddings import EmbeddingRequest
    from kaixu.formats.seeds import SeedContext
    from kaixu.pricing import Price
    from kaixu.reliability.plan import Attempts, Plan

METADATA_KEY = "kaixu"

# mitmproxy writes its own error pages from the HTTP/1 layer, which only sees the request object:
# this lets the errors addon find the call (request id, front door) from there.
_calls_by_request: weakref.WeakKeyDictionary[http.Request, Call] = weakref.WeakKeyDictionary()


UsageSource = Literal["provider", "estimated"]


@dataclass(slots=True, eq=False)
class Bill:
    """Usage and cost: what the call consumed and what that cost, decided by the router (the price of what is
    served), the stream and settle steps (usage, first token) and priced once, by `kaixu.pricing.cost_micros`."""

    usage: Usage | None = None
    """Token counts as the provider reported them (or as estimated, see `usage_source`); None: none known."""
    usage_source: UsageSource | None = None
    usage_final: bool = False
    """The provider's own final count arrived (a stream's end with its usage). Until then `usage` is a running
    count (Anthropic's `message_start` says 1 output token) or None, and a stream that ends anyway is estimated
    (`estimate`)."""
    cost_micros: int | None = None
    """What the call cost, integer micro-dollars; None when unknown (no usage, or no price)."""
    first_token_at: float | None = None
    """`time.monotonic()` of the first streamed byte of the answer (time to first token)."""
    streamed_chars: int = 0
    """Characters of text, thinking and tool arguments streamed to the client: what an estimate bills when a
    stream ends without the provider's usage."""
    streamed_text: list[str] | None = None
    """The streamed answer's text, collected only when the policy stores content (`ledger.content.enabled`):
    None means "do not collect"."""
    inner_calls: int = 0
    """An agent's own model calls settled so far (kaixu/agents/grants.py): their cost is part of this one's."""
    inner_cost_micros: int = 0
    inner_unpriced: bool = False
    """One of those calls used tokens at no known price: the sum is unknown."""
    own_cost_micros: int | None = None
    """What this request's own usage cost (`cost_micros` less the inner calls'), for its budget: the inner calls
    were settled against the budgets one by one."""

    @property
    def unpriced(self) -> bool:
        """Tokens were used but no price is known: the cost is unknown, never 0."""
        return self.usage is not None and self.cost_micros is None

    def estimate(self, prompt_tokens: int, output_chars: int) -> None:
        """Bill what was produced when the provider's final count never came (a stream cut by the provider or
        left by its client, an answer without usage): ``prompt_tokens`` estimated from the request, output as
        ``output_chars`` / 4 of the text, thinking and tool calls the client was sent. What the provider did
        report is kept where it is final (input and cache counts: Anthropic's `message_start`, every Gemini
        chunk); output takes the larger of its running count and the estimate, so it is never billed below
        what was produced. Idempotent (the stream's end and the settle step may both call it)."""
        reported = self.usage or Usage()
        output = max(reported.output_tokens, (output_chars + 3) // 4)
        self.usage = Usage(
            input_tokens=reported.input_tokens or prompt_tokens,
            output_tokens=output,
            cached_input_tokens=reported.cached_input_tokens,
            cache_creation_input_tokens=reported.cache_creation_input_tokens,
            reasoning_tokens=min(reported.reasoning_tokens, output),
        )
        self.usage_source = "estimated"

    def settle(self, price: Price | None) -> None:
        """Price the usage known now at ``price``, the served attempt's (`Call.price`), with
        `kaixu.pricing.cost_micros`, the one pricing function. Idempotent: the stream step prices at the end of a
        stream for its final comment, the settle step once more."""
        own = None
        if self.usage is not None:
            self.usage_source = self.usage_source or "provider"
            own = cost_micros(price, self.usage)
        self.own_cost_micros = own
        if not self.inner_calls:
            self.cost_micros = own
        elif self.inner_unpriced or (own is None and self.usage is not None):
            self.cost_micros = None
        else:
            self.cost_micros = (own or 0) + self.inner_cost_micros

    def cost_usd(self) -> str:
        """The cost as the answer shows it: exact USD (`0.000123`), or `unknown`."""
        return "unknown" if self.cost_micros is None else usd(self.cost_micros)

    def usage_summary(self) -> str:
        """`x-kaixu-usage`: every token count, as an RFC 8941 dictionary (`input=12, output=3, ...`)."""
        u = self.usage
        if u is None:
            return "unknown"
        return (
            f"input={u.input_tokens}, output={u.output_tokens}, cached={u.cached_input_tokens}, "
            f"cache_write={u.cache_creation_input_tokens}, reasoning={u.reasoning_tokens}"
        )

    def answer_headers(self) -> dict[str, str]:
        """The cost on a JSON answer: `X-Cost-USD` (the node gateway's), `x-kaixu-cost-usd`, `x-kaixu-usage`.
        An unknown cost is `unknown` in kaixu's header and absent from `X-Cost-USD`, which clients parse as a number."""
        headers = {"x-kaixu-cost-usd": self.cost_usd(), "x-kaixu-usage": self.usage_summary()}
        if self.cost_micros is not None:
            headers["X-Cost-USD"] = headers["x-kaixu-cost-usd"]
        if self.usage_source == "estimated":
            headers["x-kaixu-usage-source"] = "estimated"
        return headers

    def sse_comment(self) -> bytes:
        """The cost at the end of a stream, where headers cannot go: SSE comment lines, which every SSE client
        (the openai, anthropic and google-genai SDKs included) skips."""
        return f": kaixu-cost-usd={self.cost_usd()}\n: kaixu-usage={self.usage_summary()}\n\n".encode()


@dataclass(frozen=True, slots=True)
class Prepared:
    """One attempt's request: the endpoint, the body (b"": the client's bytes unchanged) and the headers, the
    provider's credential among them (kept out of `repr`, so a logged call never shows it)."""

    url: str
    body: bytes | dict[str, Any]
    headers: tuple[tuple[bytes, bytes], ...] = field(repr=False)

    def content(self, original: bytes) -> bytes:
        body = self.body
        return json.dumps(body, separators=(",", ":")).encode() if isinstance(body, dict) else (body or original)


@dataclass(frozen=True, slots=True)
class Attempt:
    """The call aimed at one deployment (`kaixu.routing.aim`): where it goes, at what price, the request it is
    sent and the translation state its answer is read back with. A value: aiming never edits the call, so a
    deployment that refuses leaves nothing to undo; the call keeps each attempt made (`Call.attempts`), and the
    last one is what serves it (`Call.served`)."""

    route: str
    """The policy's name for the model this attempt serves (a fallback's, or a glob route's glob): the only
    model name that becomes a metric label."""
    target: RouteTarget
    """The deployment (kaixu/reliability/health.py counts its outcome)."""
    provider: ProviderConfig
    model: str
    """The provider's name for the model (the client's, unless the route renames it)."""
    format: str
    """The provider's wire format (the client's front door format for the mock)."""
    operation: str | None
    """The provider-side operation when it differs from the client's (Gemini batch embeddings)."""
    price: Price | None
    """The price of this provider and upstream model (None: unpriced)."""
    prepared: Prepared | None
    """The request it is sent; None: answered locally (token counting for a provider without it)."""
    canonical: ChatRequest | None = None
    """Set only when the request is translated between wire formats."""
    dropped: tuple[str, ...] = ()
    """Client fields a translated request left out (paths as the client spells them: `context_management`,
    `messages[3].content[0].cache_control`, `headers.anthropic-beta`); answered as `x-kaixu-dropped`."""
    seed_context: SeedContext | None = None
    """Facts a seed API's answer carries that the canonical response does not (provider, install id...)."""
    embedding_request: EmbeddingRequest | None = None
    """Set only when embeddings are translated between wire formats."""
    strip_usage_chunk: bool = False
    """kaixu asked an OpenAI provider for the usage chunk the client did not ask for."""


@dataclass(slots=True, eq=False)
class Delivery:
    """How the answer reaches the client, written by the code that carries it: the dispatch step (which path it
    takes), the relay (kaixu/reliability/relay.py), the stream step and the retries step. Read by the settle,
    errors and stream steps to count and end it as it went."""

    native_first: bool = False
    """A buffered request with a plan whose first attempt mitmproxy makes itself (no cost when it succeeds);
    the retries step takes over when it fails (kaixu/addons/retries.py)."""
    sent_at: float = 0.0
    """`time.monotonic()` when that first attempt left."""
    recovered: http.Response | None = None
    """The answer of a request whose first attempt mitmproxy could not complete (a connection refused, a
    timeout) and a later one could: sent in place of mitmproxy's error page (kaixu/addons/errors.py)."""
    relayed: bool = False
    """The stream goes through the loopback relay (reliability/relay.py)."""
    relay_error: str | None = None
    """What ended the client's stream early (the ledger's error): a provider failure the relay saw, or a stream
    kaixu could not translate (kaixu/addons/stream.py: `untranslatable`); or why a request kaixu sent in
    mitmproxy's stead got no answer (`Executor.forward`)."""
    relay_status: int | None = None
    """What the provider answered when the relay had already told the client 200."""
    stream_broken: bool = False
    """The provider failed after the client's stream had begun, or kaixu could not translate it: it ends with a
    terminal error event."""
    ender: Callable[[str], bytes] | None = None
    """How the client's stream ends with an error once begun: the stream step sets it for a translated or
    re-framed stream, whose encoder knows what it has sent (kaixu/stream_errors.py: `terminal_error`)."""


@dataclass(slots=True, eq=False)
class Route:
    """Where the call may go, decided by the router: the attempt plan, and what each attempt did. Where it went
    is `Call.served` (its `route`: the policy's name for the route that served, the metric label); how its answer
    got back, `Call.delivery`."""

    routed: bool = False
    """The router pointed the flow at a provider (or the relay): nothing else may leave kaixu."""
    plan: Plan | None = None
    """Set when the attempt executor runs the request (retries, fallbacks, timeouts, a queue): kaixu/reliability."""
    attempts: Attempts | None = None
    """What each attempt did, once the executor has run one."""

    @property
    def degraded(self) -> bool:
        """A fallback model served it (the Intelligent AI Gateway's `degraded`)."""
        return self.attempts is not None and self.attempts.degraded


MAX_ATTRIBUTE_CHARS = 200
"""What the ledger keeps of one value a client says about itself (the rest is cut)."""
_NOT_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""Control characters (C0, DEL, C1: ESC, CR, NUL...) and lone surrogates (bytes that were not UTF-8)."""


# Client self-description headers (Kaixu Gateway 13 asks every app to send them) -> ledger attribute names.
#: What a client may say about itself, for the ledger and `/api/costs?group_by=` (never for access decisions).
ATTRIBUTE_HEADERS = (
    ("x-kaixu-app", "app"),
    ("x-kaixu-build", "build"),
    ("x-kaixu-install-id", "install_id"),
    ("x-kaixu-customer", "customer"),
    ("x-kaixu-user", "user"),
    ("x-kaixu-team", "team"),
    ("x-kaixu-project", "project"),
    ("x-kaixu-client", "client"),
)


@dataclass(slots=True, eq=False)
class Caller:
    """Who is calling, decided by the auth step and what the client says about itself: what governance
    (keys, teams, budgets, limits) and the ledger's attribution read."""

    key: VirtualKey | None = None
    client_key: str | None = None
    """The credential the client sent, kept only on bring-your-own-key routes (it is forwarded)."""
    byok: bool = False
    proxy_key: str | None = field(default=None, repr=False)
    """What a forward listener's client sent as its proxy credential (`Proxy-Authorization`, on its CONNECT or
    its request): read by the auth step, never forwarded, logged or recorded."""
    via_forward: bool = False
    """Came through a forward listener (`HTTPS_PROXY`): the `forward:` credential rules apply."""
    attributes: dict[str, str] = field(default_factory=dict)
    """What the client says about itself (app, build, install id, customer, user, team and project ids), for
    the ledger; never for access decisions but `policies[].match.app/project`, which are tags the client chooses.
    The policy step adds `policy_shadow` (the names in `shadow_refusals`) so the ledger shows them."""
    shadow_refusals: list[str] = field(default_factory=list)
    """Policies in shadow mode (`enforce: false`) that would have refused or clamped this request."""

    def owner(self) -> str:
        """Whose the state a request leaves is (its background jobs, its sessions): the key's name (policy and
        store keys share one namespace), the hash of a client's own key on bring-your-own-key routes (never the
        key), "" for an anonymous caller."""
        if self.key is not None:
            return self.key.name
        if self.client_key is not None:
            return "byok:" + hashlib.sha256(self.client_key.encode("utf-8", "surrogateescape")).hexdigest()
        return ""

    def say(self, name: str, value: str, source: str, *, replace: bool = True) -> str | None:
        """Record what the client says about itself: `attributes[name]`, cut to `MAX_ATTRIBUTE_CHARS` (kept
        as it was when ``replace`` is false and the name is taken). Every attribution header (kaixu/addons/
        dialect.py) and body field (kaixu/addons/body.py) comes through here, so one rule holds for all: a
        value with a control character or one that is not text is refused, never stored nor escaped, since
        it would reach the ledger, `/api/costs?group_by=` and whatever reads them. Returns the 400's message,
        naming ``source`` (the header or the body field), or None once recorded."""
        found = _NOT_TEXT.search(value)
        if found is not None:
            return (f"{source}: must be text without control characters (found U+{ord(found.group()):04X} at "
                    f"character {found.start() + 1})")  # fmt: skip
        if replace or name not in self.attributes:
            self.attributes[name] = value[:MAX_ATTRIBUTE_CHARS]
        return None


@dataclass(slots=True)
class Turn:
    """A Responses API request whose answer kaixu keeps (`store` not false; kaixu/store/responses.py): whose it
    is, what it said itself, and, once complete, the response object its client got."""

    scope: str
    """The hash of the caller's key: only that key reads it back."""
    input: list[dict[str, Any]]
    """The request's own input items (a string input as one user message)."""
    previous_id: str | None = None
    answer: dict[str, Any] | None = None
    """The response object the client got: from the JSON answer, or a stream's terminal event."""


class ParentRun(Protocol):
    """The agent run an inner model call was made by (kaixu/agents/grants.py `AgentRun`)."""

    outer: Call

    def ended(self, cost_micros: int | None, usage: Usage | None) -> None: ...


@dataclass(frozen=True, slots=True)
class AgentAsk:
    """What a request asks of an agent provider (`kind: claude-cli`, docs/claude-cli.md): the folder it works in
    and the tools it may use, by name (the Intelligent AI Gateway's `working_directory`, `tools: ["Read"]`)."""

    working_directory: str | None
    tools: tuple[str, ...]


@dataclass(slots=True, eq=False, weakref_slot=True)
class Call:
    """One request's decisions, in four typed sub-records (`route`, `caller`, `bill`, `governance`) plus the
    request facts the dialect and body steps read."""

    request_id: str
    policy: Policy
    started: float = field(default_factory=time.monotonic)
    front: str = "openai"
    """The front door's wire format: decides the shape of every answer, errors included."""
    operation: str = ""
    """chat | embeddings | count_tokens | models | local"""
    endpoint: Endpoint | None = None
    """The endpoint the request came in by (set from the request head by the dialect step)."""
    body: dict[str, Any] | None = None
    decoded: ChatRequest | None = None
    """The chat body in canonical form, decoded once however many steps ask (`request_facts.decode_chat`);
    cleared by the one function that edits the body (`request_facts.clamp_output`). Read, never changed."""
    input_tokens: int | None = None
    """The request's input size in tokens, estimated once (`estimates.input_tokens`): what a `policies[]` token
    cap compares, what a budget reserves for, what a cut answer is billed for."""
    model: str | None = None
    stream: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    """Each deployment the call was aimed at, in order (a refusal while aiming adds none); the last one serves it."""
    route: Route = field(default_factory=Route)
    delivery: Delivery = field(default_factory=Delivery)
    """How the answer got back: relayed, recovered, a stream broken and how it ends (kaixu/reliability/relay.py,
    kaixu/addons/stream.py)."""
    caller: Caller = field(default_factory=Caller)
    bill: Bill = field(default_factory=Bill)
    """Usage and cost (kaixu/pricing)."""
    governance: Governance = field(default_factory=Governance)
    """Holds on the budget and rate-limit counters, and what the rate-limit headers show (kaixu/limits)."""
    verdicts: list[dict[str, str]] = field(default_factory=list)
    """What each governing step decided about this request, in order (`verdict`): the ledger's `verdicts`."""
    timed_out: bool = False
    backend: str | None = None
    """An explicit backend (Intelligent AI Gateway): a provider name or a model name."""
    provider_hint: str | None = None
    """Kaixu Gateway 13's `provider` field: narrows the route to that provider kind."""
    agent: AgentAsk | None = None
    """The body's agent fields: the request goes to an agent provider (`kind: claude-cli`), or degraded to an
    API without them."""
    parent: ParentRun | None = None
    """An agent's own model call: the run (and so the outer request) whose short-lived credential it presented
    (kaixu/agents/grants.py)."""
    session: Session | None = None
    """The conversation the call continues or starts under `sessions:` (kaixu/addons/sessions.py)."""
    json_array_stream: bool = False
    """Gemini `:streamGenerateContent` without `alt=sse`: the client reads one JSON array, not SSE."""
    forwarded: bool = False
    """Sent to a provider and not settled yet (`Gateway.pool`)."""
    outcome_counted: bool = False
    """The served deployment was told its outcome already (the executor: the failure that stands after the
    attempts that followed it refused, or kaixu's own refusal that never reached it): the settle step does not."""

    resource: str | None = None
    """An id the path names: a stored response's (`/v1/responses/{id}`)."""
    turn: Turn | None = None
    """A Responses API answer to keep (kaixu/addons/responses_recall.py, kaixu/addons/responses_keeper.py)."""

    cors_origin: str | None = None
    """The caller's Origin when the policy allows it (answers then carry the CORS headers)."""
    failed: bool = False
    """A kaixu step raised: the caller got a JSON 500 (kaixu/chain.py)."""
    client_disconnected: bool = False
    """The client went away before its answer was complete (recorded as 499)."""

    def verdict(self, step: str, name: str, outcome: str, detail: str = "") -> None:
        """Note what a step decided (`step`: policy, rate limit, budget...; `name`: the rule or level; `outcome`:
        allowed, counted, reserved, clamped, refused, shadow), for the ledger and the console's request page."""
        self.verdicts.append({"step": step, "name": name, "outcome": outcome, "detail": detail[:300]})

    @property
    def served(self) -> Attempt | None:
        """The attempt that serves the call (the last one aimed at): None before routing, or when none was."""
        attempts = self.attempts
        return attempts[-1] if attempts else None

    @property
    def price(self) -> Price | None:
        """What the served attempt's tokens cost (None: unpriced, or not routed)."""
        served = self.served
        return None if served is None else served.price

    @property
    def canonical(self) -> ChatRequest | None:
        served = self.served
        return None if served is None else served.canonical

    @property
    def dropped(self) -> tuple[str, ...]:
        served = self.served
        return () if served is None else served.dropped

    @property
    def seed_context(self) -> SeedContext | None:
        served = self.served
        return None if served is None else served.seed_context

    @property
    def translating(self) -> bool:
        return self.canonical is not None


def attach(flow: http.HTTPFlow, call: Call) -> None:
    flow.metadata[METADATA_KEY] = call
    _calls_by_request[flow.request] = call


def get_call(flow: http.HTTPFlow) -> Call | None:
    call = flow.metadata.get(METADATA_KEY)
    return call if isinstance(call, Call) else None


def call_for_request(request: http.Request | None) -> Call | None:
    return _calls_by_request.get(request) if request is not None else None
