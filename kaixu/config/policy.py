"""The typed, immutable snapshot of a validated policy that the addons read on every request.

A new snapshot is built on each (re)load and swapped in atomically; a flow keeps the snapshot it
started with, so a reload never changes the rules half-way through a request.
"""

from __future__ import annotations

import datetime
import fnmatch
import ipaddress
import re
import zoneinfo
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from kaixu import pricing
from kaixu.redact import ContentRedactor, Redactor

ProviderKind = Literal["openai", "anthropic", "gemini", "mock", "claude-cli"]
AGENT_KIND = "claude-cli"
"""The provider kind that runs a coding agent (Claude Code, headless) instead of calling a model API."""
AGENT_WRITE_TOOLS = frozenset({"Bash", "Write", "Edit", "MultiEdit", "NotebookEdit"})
"""Agent tools that change the machine: on only where both the provider's and the key's `tools` name them."""
WireFormat = Literal["openai", "anthropic", "gemini", "responses"]

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """A `kind: claude-cli` provider's agent (docs/claude-cli.md): the command, where it may run, its tools."""

    command: str = "claude"
    config_dir: str | None = None
    """`CLAUDE_CONFIG_DIR` of the runs (None: a folder of its own under kaixu's state folder)."""
    timeout_s: float = 120.0
    allowed_roots: tuple[str, ...] = ()
    """A request's `working_directory` must resolve (symlinks followed) inside one of these."""
    tools: tuple[str, ...] = ("Read", "Glob", "Grep")
    model: str | None = None
    """What the CLI is told to ask for (`--model`); kaixu routes that name like any other."""


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """An upstream. `wire_format` is None for the mock, which answers in whatever format it is asked."""

    name: str
    kind: ProviderKind
    base_url: str
    api_key: str | None
    headers: dict[str, str]
    wire_format: WireFormat | None
    max_concurrent: int | None = None
    """Requests in flight to it at once (None: no cap); more wait in a queue of `queue_size`."""
    queue_size: int = 50
    supports_tools: bool = True
    """False: a request with tools never goes here (the Intelligent AI Gateway's `supportsTools`)."""
    keeps_responses: bool = False
    """A Responses API provider (OpenAI itself) that keeps its own responses: a `previous_response_id` is
    forwarded to it, not expanded from kaixu's store (kaixu/addons/responses_recall.py)."""
    agent: AgentConfig | None = None
    """Set for `kind: claude-cli` only."""

    @property
    def has_key(self) -> bool:
        """Whether kaixu can call it without the client's own key: it has an `api_key`, or it is the mock, which
        needs none (the health answers' `key_configured`, `kaixu check`'s warning)."""
        return self.kind in ("mock", AGENT_KIND) or bool(self.api_key)


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """One deployment of a model: a provider and the model name it knows it by (None = as requested)."""

    provider: str
    model: str | None
    weight: int = 1
    cost_rank: Fraction = Fraction(0)
    """Input + output USD per 1M tokens of what it serves (no price: infinitely dear), for `routing.strategy:
    cheapest`; set when the policy loads."""


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """`routing:`: the choice among a model's deployments and the circuit breaker (kaixu/reliability/health.py)."""

    strategy: Literal["weighted", "least_busy", "lowest_latency", "cheapest"] = "weighted"
    breaker_failures: int | None = 5
    window_s: float = 30.0
    cooldown_s: float = 30.0


UNPRICED_RANK = Fraction(10**12)
RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`retries:` (global, or a model's own): how often one model is tried and how long kaixu waits between
    tries (kaixu/reliability/plan.py). Without a `retries:` section a model is tried once."""

    attempts: int = 1
    base_ms: int = 1000
    max_ms: int = 30_000
    jitter: bool = True
    on_status: frozenset[int] = RETRIED_STATUSES


@dataclass(frozen=True, slots=True)
class Timeouts:
    """`models.X.timeouts`, per attempt, in seconds (None: not bounded apart from `total_s`)."""

    connect_s: float | None = None
    ttfb_s: float | None = None
    idle_s: float | None = None
    total_s: float | None = None


FallbackReason = Literal["context_window", "content_policy"]


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """What a client-facing model name (or glob) maps to."""

    name: str
    targets: tuple[RouteTarget, ...]
    fallbacks: tuple[str, ...] = ()
    retries: RetryPolicy = RetryPolicy()
    fallback_on: frozenset[FallbackReason] = frozenset()
    timeouts: Timeouts | None = None
    """None: the model has no timeouts of its own (`limits.upstream_timeout_s` bounds its attempts)."""
    guarded: bool = False
    """A request for it needs the attempt executor (kaixu/reliability/): more than one try, a bound the plain
    forwarding path cannot keep, or a deployment on a provider with a queue. Decided when the policy loads."""


Period = Literal["day", "week", "month", "total"]
MICROS_PER_USD = 1_000_000


def usd_micros(value: int | float) -> int:
    """A policy's USD amount as integer micro-dollars, exactly: the YAML number's decimal text, not the float
    (0.1 is 100000, never 99999). ValueError for a fraction of a micro-dollar, which no counter can hold."""
    micros = Fraction(str(value)) * MICROS_PER_USD
    if micros.denominator != 1:
        raise ValueError(f"{value} USD is not a whole number of micro-dollars (at most 6 decimals)")
    return int(micros)


@dataclass(frozen=True, slots=True)
class Budget:
    """A spend cap (`budget: {usd, period, timezone}`) over a window: day, week and month start at midnight in
    `timezone` (weeks start on Monday); `total` never resets."""

    usd_micros: int
    period: Period
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class RateLimits:
    """`limits: {rpm, tpm, max_parallel}`; None: that limit is not set at this level."""

    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None


def _budget(spec: dict[str, Any] | None) -> Budget | None:
    if spec is None:
        return None
    return Budget(usd_micros(spec["usd"]), spec["period"], spec.get("timezone", "UTC"))


def _rate_limits(spec: dict[str, Any] | None) -> RateLimits | None:
    if spec is None:
        return None
    return RateLimits(spec.get("rpm"), spec.get("tpm"), spec.get("max_parallel"))


@dataclass(frozen=True, slots=True)
class Org:
    """`orgs.NAME`: the top of the hierarchy org -> team -> key."""

    name: str
    budget: Budget | None = None


@dataclass(frozen=True, slots=True)
class Team:
    """`teams.NAME`: what a team's keys share."""

    name: str
    org: str | None = None
    budget: Budget | None = None
    limits: RateLimits | None = None
    models: tuple[str, ...] = ()

    def may_use(self, model: str) -> bool:
        """The team's keys may call `model` (an empty list: any model), as `VirtualKey.may_use`."""
        return not self.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


@dataclass(frozen=True, slots=True)
class Customer:
    """`customers.NAME` (or `default`: every end customer not named)."""

    name: str
    budget: Budget | None = None
    limits: RateLimits | None = None
    seats: int | None = None
    """Installs (`x-kaixu-install-id`) each such customer may call from."""


DEFAULT_CUSTOMER = "default"


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """A client credential issued by the gateway. Only its SHA-256 (policy keys) or its peppered HMAC (store
    keys, kaixu/store/keys.py: `sha256` then holds `hmac:<digest>`) is ever stored."""

    name: str
    sha256: str
    team: str | None = None
    models: tuple[str, ...] = ()
    customer: str | None = None
    """The end customer the key is issued for (`keys[].customer`, `kaixu keys create --customer`): the ledger's
    customer."""
    budget: Budget | None = None
    limits: RateLimits | None = None
    seats: int | None = None
    """Installs (`x-kaixu-install-id`) the key may be used from."""
    expires: datetime.date | None = None
    """The last day a policy key is valid (a store key's expiry is its row's, `StoredKey.state`)."""
    tools: tuple[str, ...] | None = None
    """The agent tools (`kind: claude-cli`) the key may use; None: the provider's, less `AGENT_WRITE_TOOLS`."""

    def may_use(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


@dataclass(frozen=True, slots=True)
class ForwardClient:
    """`forward.clients[]`: an app calling from `network` is billed to `key` when it sends no kaixu key."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    key: VirtualKey


@dataclass(frozen=True, slots=True)
class ForwardPolicy:
    """`forward:`, what the forward listeners (`listen[].mode: forward`) do (docs/forward-proxy.md). The providers'
    public hosts are intercepted whatever this says (kaixu/forward.py adds them)."""

    intercept_hosts: frozenset[str] = frozenset()
    """Hosts intercepted besides the providers' public ones, lower case."""
    others: Literal["tunnel", "deny"] = "tunnel"
    credentials: Literal["keep", "replace"] = "keep"
    byok: bool = False
    clients: tuple[ForwardClient, ...] = ()

    def client_key(self, address: str) -> VirtualKey | None:
        """The key `forward.clients` bills an app at `address` to (first match), else None."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for client in self.clients:
            if ip.version == client.network.version and ip in client.network:
                return client.key
        return None


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What a client connection may cost kaixu (`limits:` in the policy; addons/connections.py)."""

    client_header_timeout_s: float = 10.0
    client_idle_timeout_s: float = 60.0
    client_body_timeout_s: float = 60.0
    max_client_connections: int = 4096


@dataclass(frozen=True, slots=True)
class ResponsesPolicy:
    """`responses:`: the Responses API's stored responses (kaixu/store/responses.py)."""

    retention_days: float = 30.0
    """How long a stored response can be continued (`previous_response_id`) and read back."""


@dataclass(frozen=True, slots=True)
class TranslationPolicy:
    """`translation:`: what happens to a client field the provider's format cannot carry.

    Only fields that tune the client's vendor's own machinery (prompt caching, context editing, capacity tiers...,
    `kaixu/formats/droppable.py`) are ever dropped; a field that would change the answer is refused either way.
    """

    unsupported: Literal["drop", "reject"] = "drop"
    """`drop`: forward without them, listed in `x-kaixu-dropped` and the ledger; `reject`: refuse with a 400."""


@dataclass(frozen=True, slots=True)
class PricingPolicy:
    """`pricing:`: the price table in force (built-in list plus the policy's entries) and what an unpriced
    model gets. Built once per load, so a request only looks a price up."""

    table: pricing.PriceTable = field(default_factory=pricing.table)
    require: bool = False
    """Refuse a model without a price before forwarding (409 `UNPRICED_MODEL`)."""
    eur_per_usd: Fraction = Fraction("0.92")


@dataclass(frozen=True, slots=True)
class AlertsPolicy:
    """`alerts:`: soft budget alerts (kaixu/limits/governor.py)."""

    budget_percent: Fraction | None = None
    webhook: str | None = None


@dataclass(frozen=True, slots=True)
class MetricsPolicy:
    """`metrics:`: who may scrape `/metrics` and which opt-in labels of high cardinality are on."""

    auth: Literal["off", "admin"] = "off"
    label_key: bool = False
    label_customer: bool = False


@dataclass(frozen=True, slots=True)
class UiPolicy:
    """`ui:`: the web console at `/ui` (kaixu/addons/ui.py, docs/console.md); off unless turned on."""

    enabled: bool = False
    session_minutes: int = 480
    """How long a console session lasts from sign-in (its cookie's Max-Age and the server's expiry)."""


@dataclass(frozen=True, slots=True)
class ContentPolicy:
    """`ledger.content:`: whether prompt and answer text are stored, cut and redacted how."""

    enabled: bool = False
    max_chars: int = 4000
    builtin_redactions: bool = True
    redact: tuple[str, ...] = ()
    redactor: ContentRedactor | None = None
    """The rules above compiled once per load (kaixu/content.py); None when content logging is off."""


@dataclass(frozen=True, slots=True)
class LedgerPolicy:
    """`ledger:`: how long records are kept and whether they hold text."""

    retention_days: float | None = None
    content: ContentPolicy = field(default_factory=ContentPolicy)


@dataclass(frozen=True, slots=True)
class JobsPolicy:
    """`jobs:`: the background job runner (kaixu/jobs/runner.py, docs/jobs.md)."""

    concurrency: int = 4
    """Jobs one process runs at once per provider."""
    lease_s: float = 30.0
    """A running job's claim lasts this long and is renewed while it runs: a job whose process died is taken
    again once its lease has run out."""
    poll_s: float = 1.0
    """How often a process looks for jobs it was not told about (another replica's, a lease run out)."""
    timeout_s: float = 600.0
    """The longest a job's request may take."""
    max_attempts: int = 3
    """A job is claimed at most this many times (a worker that died, kaixu unreachable, 429/503 waits)."""
    keep_s: float = 86400.0
    """Finished jobs (and their results) are deleted this long after they finished."""
    max_pending: int = 100
    """Jobs one key may have queued or running at once: a submit past it is a 429."""


@dataclass(frozen=True, slots=True)
class SessionsPolicy:
    """`sessions:`: the Intelligent AI Gateway's session continuity on the OpenAI chat door (docs/jobs.md)."""

    enabled: bool = False
    ttl_s: float = 3600.0
    """A session not used for this long is forgotten."""
    max_turns: int = 100
    """At most this many earlier messages are prepended (the most recent ones)."""


DEFAULT_POOL_SIZE = 10
"""Connections each replica keeps to PostgreSQL at most (`store.postgres.pool_size`)."""


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """`store.postgres:`: keys, seats and the ledger in PostgreSQL, shared by every replica."""

    dsn: str
    pool_size: int = DEFAULT_POOL_SIZE


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """`store.redis:`: budgets and rate limits counted in Redis, shared by every replica."""

    url: str
    prefix: str = "kaixu:"
    timeout_s: float = 0.5
    fail: str = "closed"
    """`open`: while Redis is down, requests pass uncounted; `closed`: they are refused."""


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """`store:` parsed once as the policy loads: where state lives. The addon that builds the `Stores`
    (kaixu/store/stores.py) reads this, and nothing reads the raw mapping after load."""

    sqlite: str = ":memory:"
    """The SQLite file (absolute once loaded), `:memory:` to keep nothing."""
    counters: str = "memory"
    """`memory` (per process, spend saved to `sqlite`) or `shared` (in the SQLite file, for several processes)."""
    postgres: PostgresConfig | None = None
    redis: RedisConfig | None = None

    def folder(self, base_dir: Path) -> Path:
        """The store's folder: the SQLite file's, else the policy's (kaixu keeps its CA there)."""
        return Path(self.sqlite).parent if self.sqlite != ":memory:" else base_dir

    @classmethod
    def parse(cls, raw: dict[str, Any] | None, base_dir: Path) -> StoreConfig:
        """The `store:` mapping of a validated policy; a relative `sqlite` is relative to the policy's folder."""
        store = dict(raw or {"sqlite": "kaixu.db"})
        sqlite = str(store.get("sqlite", "kaixu.db"))
        if sqlite != ":memory:":
            sqlite = str((base_dir / sqlite).resolve())
        pg = store.get("postgres")
        redis = store.get("redis")
        return cls(
            sqlite=sqlite,
            counters=str(store.get("counters", "memory")),
            postgres=PostgresConfig(str(pg["dsn"]), int(pg.get("pool_size", DEFAULT_POOL_SIZE))) if pg else None,
            redis=None
            if redis is None
            else RedisConfig(
                str(redis["url"]),
                prefix=redis.get("prefix", "kaixu:"),
                timeout_s=float(redis.get("timeout_s", 0.5)),
                fail=str(redis.get("fail", "closed")),
            ),
        )


@dataclass(frozen=True, slots=True)
class ModelGlobs:
    """A `policies[]` model list, compiled once per load into one regular expression (fnmatch's syntax,
    case-sensitive, like `keys[].models`): a request pays one `match`, whatever the list's length."""

    globs: tuple[str, ...]
    pattern: re.Pattern[str]

    @classmethod
    def compile(cls, globs: list[str] | tuple[str, ...]) -> ModelGlobs:
        return cls(tuple(globs), re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs) or r"(?!)"))

    def matches(self, model: str) -> bool:
        return self.pattern.match(model) is not None


@dataclass(frozen=True, slots=True)
class CallerPolicy:
    """One `policies[]` rule (the caller_rules step, kaixu/addons/caller_rules.py), its strategies chosen at load."""

    name: str
    team: str | None = None
    """The caller's key's team (`keys[].team`); None: any caller."""
    key: str | None = None
    """A key's name (`keys[].name`)."""
    app: str | None = None
    """The app the client says it is (`x-kaixu-app`, Pulse's `appId`)."""
    project: str | None = None
    """The project the client names (`x-kaixu-project`, Pulse's `projectId`)."""
    allow_models: ModelGlobs | None = None
    deny_models: ModelGlobs | None = None
    max_tokens_per_request: int | None = None
    on_max_tokens: Literal["reject", "clamp"] = "reject"
    enforce: bool = True
    """False: shadow mode, what the rule would refuse or clamp is logged, counted and marked, not done."""
    max_cost_per_day: Budget | None = None
    """`max_cost_per_day` as a day budget in USD (EUR converted at `pricing.eur_per_usd` when the policy
    loads), shared by every request the rule matches (kaixu/limits/levels.py)."""

    def applies(self, team: str | None, key: str | None, app: str | None, project: str | None) -> bool:
        """Every match field given must equal the caller's; a rule without a match applies to everyone."""
        return (
            (self.team is None or self.team == team)
            and (self.key is None or self.key == key)
            and (self.app is None or self.app == app)
            and (self.project is None or self.project == project)
        )


CA_FOLDER = "kaixu-ca"
"""The folder, in the store's, that holds kaixu's CA (docs/forward-proxy.md)."""


def _forward_policy(spec: dict[str, Any], keys: dict[str, VirtualKey]) -> ForwardPolicy:
    by_name = {key.name: key for key in keys.values()}
    return ForwardPolicy(
        intercept_hosts=frozenset(host.lower() for host in spec.get("intercept_hosts") or ()),
        others=spec.get("others", "tunnel"),
        credentials=spec.get("credentials", "keep"),
        byok=bool(spec.get("byok", False)),
        clients=tuple(
            ForwardClient(ipaddress.ip_network(client["address"], strict=False), by_name[client["key"]])
            for client in spec.get("clients") or ()
        ),
    )


def _caller_policy(spec: dict[str, Any], eur_per_usd: Fraction) -> CallerPolicy:
    match = spec.get("match") or {}
    cost = spec.get("max_cost_per_day") or {}
    day: Budget | None = None
    if "usd" in cost:
        day = Budget(usd_micros(cost["usd"]), "day")
    elif "eur" in cost:
        day = Budget(int(Fraction(str(cost["eur"])) * MICROS_PER_USD / eur_per_usd), "day")
    allow, deny = spec.get("allow_models"), spec.get("deny_models")
    return CallerPolicy(
        name=spec["name"],
        team=match.get("team"),
        key=match.get("key"),
        app=match.get("app"),
        project=match.get("project"),
        allow_models=None if allow is None else ModelGlobs.compile(allow),
        deny_models=ModelGlobs.compile(deny) if deny else None,
        max_tokens_per_request=spec.get("max_tokens_per_request"),
        on_max_tokens=spec.get("on_max_tokens", "reject"),
        enforce=bool(spec.get("enforce", True)),
        max_cost_per_day=day,
    )


@dataclass(frozen=True, slots=True)
class Policy:
    digest: str
    raw: dict[str, Any]
    listen: tuple[tuple[str, int], ...]
    """The reverse listeners (`listen[]` without `mode: forward`)."""
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelRoute]
    model_patterns: tuple[ModelRoute, ...]
    keys: dict[str, VirtualKey]
    byok: bool
    anonymous: bool
    cors_origins: tuple[str, ...]
    max_body_bytes: int
    upstream_timeout_s: float
    default_model: str | None
    store: StoreConfig = field(default_factory=StoreConfig)
    fronts: dict[str, dict[str, Any]] = field(default_factory=dict)
    ca_file: str | None = None
    """CA bundle that verifies providers' certificates (None: certifi's roots)."""
    forward_listen: tuple[tuple[str, int], ...] = ()
    """The forward listeners (`listen[].mode: forward`)."""
    forward: ForwardPolicy = field(default_factory=ForwardPolicy)
    ca_dir: str = ""
    """Where kaixu's own CA lives (the forward listeners' interception CA): `kaixu-ca/` in the store's folder."""
    limits: ClientLimits = field(default_factory=ClientLimits)
    translation: TranslationPolicy = field(default_factory=TranslationPolicy)
    responses: ResponsesPolicy = field(default_factory=ResponsesPolicy)
    redactor: Redactor = field(default_factory=Redactor)
    """Scrubs every configured provider key (and credential-shaped text) from what kaixu passes on."""
    pricing: PricingPolicy = field(default_factory=PricingPolicy)
    routing: RoutingPolicy = field(default_factory=RoutingPolicy)
    admin_keys: dict[str, str] = field(default_factory=dict)
    """Admin key names by the SHA-256 (hex) of the key: who may read `/api/*` (and `/metrics` when guarded)."""
    metrics: MetricsPolicy = field(default_factory=MetricsPolicy)
    ui: UiPolicy = field(default_factory=UiPolicy)
    alerts: AlertsPolicy = field(default_factory=AlertsPolicy)
    ledger: LedgerPolicy = field(default_factory=LedgerPolicy)
    jobs: JobsPolicy = field(default_factory=JobsPolicy)
    sessions: SessionsPolicy = field(default_factory=SessionsPolicy)
    policies: tuple[CallerPolicy, ...] = ()
    """`policies[]`, in file order (kaixu/addons/caller_rules.py)."""
    teams: dict[str, Team] = field(default_factory=dict)
    orgs: dict[str, Org] = field(default_factory=dict)
    customers: dict[str, Customer] = field(default_factory=dict)
    """By name; `default` (DEFAULT_CUSTOMER) applies to every customer not named."""
    clients: RateLimits | None = None
    """`clients.limits`: per client IP, for requests without a key."""
    warnings: tuple[str, ...] = ()
    """Valid but probably not meant (a provider no request can use), as `line N: path: message`."""

    def front_settings(self, front: str) -> dict[str, Any]:
        """Per-front-door settings (`fronts:` by door name: a door's `system`, `ping_interval_s`); empty when none."""
        return self.fronts.get(front) or {}

    def resolve_model(self, name: str) -> ModelRoute | None:
        """The route for a client-facing model name: exact names first, then globs in file order."""
        route = self.models.get(name)
        if route is not None:
            return route
        for pattern in self.model_patterns:
            if fnmatch.fnmatchcase(name, pattern.name):
                return pattern
        return None

    def listed_models(self) -> list[str]:
        """Concrete model names to advertise (globs cannot be listed)."""
        return list(self.models)

    def key_named(self, name: str) -> VirtualKey | None:
        """The policy's key (`keys:`) of that name: the ledger and `/api/costs/NAME` know a key by its name, so
        a store key may not take one (`POST /api/keys`, `kaixu keys create`: refused)."""
        return next((key for key in self.keys.values() if key.name == name), None)


NOT_ENFORCED = "accepted but not enforced yet by this version"


def is_glob(name: str) -> bool:
    """A `models:` name with glob characters matches a family of names instead of one."""
    return any(ch in name for ch in "*?[")


def _mapping(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _sequence(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _ca_path(value: str, base_dir: Path) -> str:
    return str((base_dir / value).resolve())


def _budgets(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], dict[Any, Any]]]:
    """Every `budget:` mapping of the file with its path, read defensively (wrong types are skipped)."""
    found: list[tuple[tuple[Any, ...], Any]] = []
    for index, spec in enumerate(_sequence(data.get("keys"))):
        found.append((("keys", index, "budget"), _mapping(spec).get("budget")))
    for section in ("teams", "orgs", "customers"):
        for name, spec in _mapping(data.get(section)).items():
            found.append(((section, name, "budget"), _mapping(spec).get("budget")))
    return [(path, spec) for path, spec in found if isinstance(spec, dict)]


def _limits(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], dict[Any, Any]]]:
    """Every rate `limits:` mapping (not the top-level connection `limits:`) with its path."""
    found: list[tuple[tuple[Any, ...], Any]] = []
    for index, spec in enumerate(_sequence(data.get("keys"))):
        found.append((("keys", index, "limits"), _mapping(spec).get("limits")))
    for section in ("teams", "customers"):
        for name, spec in _mapping(data.get(section)).items():
            found.append(((section, name, "limits"), _mapping(spec).get("limits")))
    found.append((("clients", "limits"), _mapping(data.get("clients")).get("limits")))
    return [(path, spec) for path, spec in found if isinstance(spec, dict)]


def renamed_fields(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """Fields an earlier version accepted under another spelling, each with the spelling to write instead.

    They are problems, not aliases: nothing ever enforced them, so a file is better fixed than silently read.
    """
    found: list[tuple[tuple[Any, ...], str]] = []
    for path, spec in _budgets(data):
        if "monthly_usd" in spec:
            usd = spec["monthly_usd"]
            found.append(((*path, "monthly_usd"), f"renamed: write budget: {{usd: {usd}, period: month}}"))
    for path, spec in _limits(data):
        if "concurrency" in spec:
            found.append(((*path, "concurrency"), f"renamed: write max_parallel: {spec['concurrency']}"))
    return found


_CLI_ONLY_FIELDS = frozenset({"command", "config_dir", "timeout_s", "allowed_roots", "tools", "model"})


def reference_problems(data: dict[str, Any], *, base_dir: Path) -> list[tuple[tuple[Any, ...], str]]:
    """What a schema cannot see: names that must exist elsewhere in the file, a key listed twice, a missing file,
    a store this version does not have.

    Runs on data the schema may have rejected, so that one `kaixu check` lists both kinds of problem: it reads
    defensively and skips any value of the wrong type (the schema reports that one already).
    """
    problems: list[tuple[tuple[Any, ...], str]] = []
    providers = _mapping(data.get("providers"))
    models = _mapping(data.get("models"))
    concrete = {name for name in models if isinstance(name, str) and not is_glob(name)}
    for name, spec in providers.items():  # the agent's fields go with `kind: claude-cli`, and only they
        spec = _mapping(spec)
        agent = spec.get("kind") == AGENT_KIND
        wrong = "a claude-cli provider takes none" if agent else "only a claude-cli provider takes it"
        for field_name in sorted(set(spec) & ({"base_url", "api_key"} if agent else _CLI_ONLY_FIELDS)):
            problems.append((("providers", name, field_name), wrong))
    for name, spec in models.items():
        for index, target in enumerate(_sequence(_mapping(spec).get("route"))):
            provider = _mapping(target).get("provider")
            if isinstance(provider, str) and provider not in providers:
                problems.append((("models", name, "route", index, "provider"), f"unknown provider {provider!r}"))
        for index, fallback in enumerate(_sequence(_mapping(spec).get("fallbacks"))):
            if isinstance(fallback, str) and fallback not in concrete:
                problems.append((("models", name, "fallbacks", index), f"unknown model {fallback!r}"))

    teams = _mapping(data.get("teams"))
    names: dict[str, str] = {}
    key_names: set[str] = set()
    for index, spec in enumerate(_sequence(data.get("keys"))):
        spec = _mapping(spec)
        if isinstance(spec.get("name"), str):
            key_names.add(spec["name"])
        team = spec.get("team")
        if isinstance(team, str) and team not in teams:
            problems.append((("keys", index, "team"), f"unknown team {team!r}"))
        if spec.get("customer") == DEFAULT_CUSTOMER:
            problems.append(
                (("keys", index, "customer"), f"{DEFAULT_CUSTOMER!r} means every customer not named: name one")
            )
        expires = spec.get("expires")
        if isinstance(expires, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", expires):
            try:
                datetime.date.fromisoformat(expires)
            except ValueError:
                problems.append((("keys", index, "expires"), f"{expires!r} is not a date"))
        digest = spec.get("hash")
        if isinstance(digest, str):
            digest = digest.removeprefix("sha256:").lower()
            if digest in names:
                problems.append((("keys", index, "hash"), f"the same key is also listed as {names[digest]!r}"))
            else:
                names[digest] = str(spec.get("name"))

    orgs = _mapping(data.get("orgs"))
    for name, spec in teams.items():
        org = _mapping(spec).get("org")
        if isinstance(org, str) and org not in orgs:
            problems.append((("teams", name, "org"), f"unknown org {org!r}"))
    for path, spec in _budgets(data):
        usd = spec.get("usd")
        if isinstance(usd, int | float) and not isinstance(usd, bool) and usd >= 0:
            try:
                usd_micros(usd)
            except ValueError as exc:
                problems.append(((*path, "usd"), str(exc)))
        zone = spec.get("timezone")
        if isinstance(zone, str) and zone:
            try:
                zoneinfo.ZoneInfo(zone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                problems.append(((*path, "timezone"), f"unknown time zone {zone!r} (an IANA name: Europe/Paris)"))

    for index, spec in enumerate(_sequence(data.get("admin_keys"))):
        digest = _mapping(spec).get("hash")
        if isinstance(digest, str):
            digest = digest.removeprefix("sha256:").lower()
            if digest in names:
                problems.append((("admin_keys", index, "hash"), f"the same key is also listed as {names[digest]!r}"))
            else:
                names[digest] = str(_mapping(spec).get("name"))

    prices = _mapping(_mapping(data.get("pricing")).get("models"))
    try:
        pricing.parse_models(prices, source=pricing.POLICY_OVERRIDE)
    except (pricing.PricingError, TypeError) as exc:
        problems.append((("pricing", "models"), str(exc)))
    for index, pattern in enumerate(_sequence(_mapping(_mapping(data.get("ledger")).get("content")).get("redact"))):
        if isinstance(pattern, str):
            try:
                re.compile(pattern)
            except re.error as exc:
                problems.append((("ledger", "content", "redact", index), f"not a regular expression: {exc}"))

    for index, entry in enumerate(_sequence(data.get("policies"))):
        match = _mapping(_mapping(entry).get("match"))
        if isinstance(match.get("team"), str) and match["team"] not in teams:
            problems.append((("policies", index, "match", "team"), f"unknown team {match['team']!r}"))
        if isinstance(match.get("key"), str) and match["key"] not in key_names:
            problems.append((("policies", index, "match", "key"), f"unknown key name {match['key']!r}"))

    for index, client in enumerate(_sequence(_mapping(data.get("forward")).get("clients"))):
        client = _mapping(client)
        if isinstance(client.get("key"), str) and client["key"] not in key_names:
            problems.append((("forward", "clients", index, "key"), f"unknown key name {client['key']!r}"))
        if isinstance(client.get("address"), str):
            try:
                ipaddress.ip_network(client["address"], strict=False)
            except ValueError:
                problems.append((("forward", "clients", index, "address"), f"not an address: {client['address']!r}"))

    default_model = data.get("default_model")
    if isinstance(default_model, str) and default_model not in concrete:
        problems.append((("default_model",), f"unknown model {default_model!r}"))
    store = _mapping(data.get("store"))
    if "redis" in store and "counters" in store:
        problems.append((("store", "counters"), "with redis the counters are Redis's: leave counters out"))
    ca_file = _mapping(data.get("tls")).get("ca_file")
    if isinstance(ca_file, str) and not Path(_ca_path(ca_file, base_dir)).is_file():
        problems.append((("tls", "ca_file"), f"no such file: {_ca_path(ca_file, base_dir)}"))
    return problems


def unenforced_fields(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """Fields the schema accepts (so files written for the next version load) that no code reads yet.

    An operator who sets a budget must not believe it holds: each one is a warning naming its line. Every
    field of this version is enforced; the hook stays for the next one.
    """
    return []


def _retry_policy(spec: dict[str, Any] | None, base: RetryPolicy | None) -> RetryPolicy:
    """A `retries:` mapping over `base` (a model's over the global one), field by field; a section that is
    present means the node gateway's default of 3 attempts."""
    if spec is None:
        return base or RetryPolicy()
    start = base if base is not None else RetryPolicy(attempts=3)
    backoff = spec.get("backoff") or {}
    statuses = spec.get("on_status")
    return RetryPolicy(
        attempts=int(spec.get("attempts", start.attempts)),
        base_ms=int(backoff.get("base_ms", start.base_ms)),
        max_ms=int(backoff.get("max_ms", start.max_ms)),
        jitter=bool(backoff.get("jitter", start.jitter)),
        on_status=start.on_status if statuses is None else frozenset(int(s) for s in statuses),
    )


def _timeouts(spec: dict[str, Any] | None) -> Timeouts | None:
    if not spec:
        return None
    return Timeouts(
        *(None if spec.get(k) is None else float(spec[k]) for k in ("connect_s", "ttfb_s", "idle_s", "total_s"))
    )


def _agent(spec: dict[str, Any], base_dir: Path) -> AgentConfig:
    """A `kind: claude-cli` provider's agent; relative paths are the policy file's folder's."""
    config_dir = spec.get("config_dir")
    return AgentConfig(
        command=spec.get("command", "claude"),
        config_dir=None if config_dir is None else str((base_dir / Path(config_dir).expanduser()).resolve()),
        timeout_s=float(spec.get("timeout_s", 120)),
        allowed_roots=tuple(str((base_dir / Path(root).expanduser()).resolve()) for root in spec["allowed_roots"]),
        tools=tuple(spec.get("tools", ("Read", "Glob", "Grep"))),
        model=spec.get("model"),
    )


def build_policy(
    data: dict[str, Any], *, digest: str, base_dir: Path
) -> tuple[Policy, list[tuple[tuple[Any, ...], str]]]:
    """Turn valid data (schema and `reference_problems` both clean) into a Policy, plus warnings about what is
    valid but probably not meant."""
    providers: dict[str, ProviderConfig] = {}
    for name, spec in (data.get("providers") or {}).items():
        kind: ProviderKind = spec["kind"]
        base_url = spec.get("base_url") or DEFAULT_BASE_URLS.get(kind, "")
        wire: WireFormat | None = None if kind == "mock" else "openai" if kind == AGENT_KIND else kind  # type: ignore[assignment]
        if kind == "openai" and spec.get("api") == "responses":  # models OpenAI serves only by its Responses API
            wire = "responses"
        providers[name] = ProviderConfig(
            name=name,
            kind=kind,
            base_url=base_url.rstrip("/"),
            api_key=spec.get("api_key") or None,
            headers=dict(spec.get("headers") or {}),
            wire_format=wire,
            max_concurrent=spec.get("max_concurrent", 10 if kind == AGENT_KIND else None),
            queue_size=int(spec.get("queue_size", 50)),
            supports_tools=bool(spec.get("supports_tools", True)),
            keeps_responses=bool(spec.get("keeps_responses", False)),
            agent=_agent(spec, base_dir) if kind == AGENT_KIND else None,
        )

    models: dict[str, ModelRoute] = {}
    patterns: list[ModelRoute] = []
    global_spec = data.get("retries")
    global_retries = None if global_spec is None else _retry_policy(global_spec, None)
    for name, spec in (data.get("models") or {}).items():
        targets = tuple(
            RouteTarget(target["provider"], target.get("model"), int(target.get("weight", 1)))
            for target in spec["route"]
        )
        route = ModelRoute(
            name,
            targets,
            tuple(spec.get("fallbacks") or ()),
            retries=_retry_policy(spec.get("retries"), global_retries),
            fallback_on=frozenset(spec.get("fallback_on") or ()),
            timeouts=_timeouts(spec.get("timeouts")),
        )
        if is_glob(name):
            patterns.append(route)
        else:
            models[name] = route

    keys: dict[str, VirtualKey] = {}
    for spec in data.get("keys") or ():
        digest_hex = spec["hash"].removeprefix("sha256:").lower()
        expires = spec.get("expires")
        keys[digest_hex] = VirtualKey(
            spec["name"],
            digest_hex,
            spec.get("team"),
            tuple(spec.get("models") or ()),
            customer=spec.get("customer"),
            budget=_budget(spec.get("budget")),
            limits=_rate_limits(spec.get("limits")),
            seats=spec.get("seats"),
            expires=None if expires is None else datetime.date.fromisoformat(expires),
            tools=None if spec.get("tools") is None else tuple(spec["tools"]),
        )
    teams = {
        name: Team(
            name,
            org=spec.get("org"),
            budget=_budget(spec.get("budget")),
            limits=_rate_limits(spec.get("limits")),
            models=tuple(spec.get("models") or ()),
        )
        for name, spec in (data.get("teams") or {}).items()
    }
    orgs = {name: Org(name, _budget(spec.get("budget"))) for name, spec in (data.get("orgs") or {}).items()}
    customers = {
        name: Customer(name, _budget(spec.get("budget")), _rate_limits(spec.get("limits")), spec.get("seats"))
        for name, spec in (data.get("customers") or {}).items()
    }

    admin_keys = {spec["hash"].removeprefix("sha256:").lower(): spec["name"] for spec in data.get("admin_keys") or ()}
    prices = data.get("pricing") or {}
    metrics = data.get("metrics") or {}
    ui = data.get("ui") or {}
    alerts = data.get("alerts") or {}
    labels = metrics.get("labels") or {}
    ledger = data.get("ledger") or {}
    content = ledger.get("content") or {}

    auth = data.get("auth") or {}
    limits = data.get("limits") or {}
    listeners = [(item.get("host", "127.0.0.1"), int(item["port"]), item.get("mode", "reverse"))
                 for item in data.get("listen") or ()]  # fmt: skip
    listen = tuple((host, port) for host, port, mode in listeners if mode == "reverse")
    forward_listen = tuple((host, port) for host, port, mode in listeners if mode == "forward")
    store = StoreConfig.parse(data.get("store"), base_dir)
    forward = _forward_policy(data.get("forward") or {}, keys)
    ca_file = (data.get("tls") or {}).get("ca_file")

    byok = bool(auth.get("byok", False))
    eur_per_usd = Fraction(str(prices.get("eur_per_usd", "0.92")))
    secrets = Redactor(p.api_key for p in providers.values())
    max_chars = int(content.get("max_chars", 4000))
    builtin_redactions = bool(content.get("builtin_redactions", True))
    redact = tuple(content.get("redact") or ())
    content_redactor = (
        ContentRedactor(secrets, builtin=builtin_redactions, patterns=redact, max_chars=max_chars)
        if content.get("enabled", False)
        else None
    )
    warnings: list[tuple[tuple[Any, ...], str]] = []
    for name, provider in providers.items():
        if not provider.has_key and not byok:
            warnings.append(
                (("providers", name), "no api_key and auth.byok is off: requests routed here are answered 500")
            )
    used = {t.provider for route in [*models.values(), *patterns] for t in route.targets}
    for name in providers.keys() - used:
        warnings.append((("providers", name), "no model routes to this provider"))
    if data.get("forward") and not forward_listen:
        warnings.append((("forward",), "no listener has mode: forward: this section has nothing to act on"))
    if forward.clients and forward.credentials != "replace":
        warnings.append((("forward", "clients"), "read only under forward.credentials: replace"))
    for name, provider in providers.items():
        agent_model = provider.agent.model if provider.agent is not None else None
        if (
            agent_model is not None
            and agent_model not in models
            and not any(fnmatch.fnmatchcase(agent_model, route.name) for route in patterns)
        ):
            warnings.append(
                (("providers", name, "model"), f"the agent asks for {agent_model!r}, which no model routes")
            )
    if store.postgres is not None and store.redis is None:
        warnings.append(
            (("store", "postgres"), "postgres without redis: each replica counts budgets and limits on its own")
        )
    if ui.get("enabled", False) and not data.get("admin_keys"):
        warnings.append((("ui", "enabled"), "the console is on but admin_keys is empty: nobody can sign in"))
    warnings.extend(unenforced_fields(data))

    price_table = pricing.table(prices)

    def ranked(route: ModelRoute) -> ModelRoute:
        def rank(target: RouteTarget) -> Fraction:
            provider = providers[target.provider]
            price = price_table.lookup(provider.kind, target.model or route.name)
            if price is None or price.rates.output is None:
                return UNPRICED_RANK
            return price.rates.input + price.rates.output

        guarded = route.retries.attempts > 1 or bool(route.fallbacks) or route.timeouts is not None
        guarded = guarded or any(providers[t.provider].max_concurrent is not None for t in route.targets)
        targets = tuple(replace(t, cost_rank=rank(t)) for t in route.targets)
        return replace(route, targets=targets, guarded=guarded)

    models = {name: ranked(route) for name, route in models.items()}
    patterns = [ranked(route) for route in patterns]
    routing = data.get("routing") or {}
    breaker = routing.get("breaker") or {}

    policy = Policy(
        digest=digest,
        raw=data,
        listen=listen if listeners else (("127.0.0.1", 4000),),
        forward_listen=forward_listen,
        forward=forward,
        ca_dir=str(store.folder(base_dir) / CA_FOLDER),
        providers=providers,
        models=models,
        model_patterns=tuple(patterns),
        keys=keys,
        byok=byok,
        anonymous=bool(auth.get("anonymous", False)),
        cors_origins=tuple((data.get("cors") or {}).get("allowed_origins") or ()),
        max_body_bytes=int(limits.get("max_body_bytes", 5 * 1024 * 1024)),
        upstream_timeout_s=float(limits.get("upstream_timeout_s", 600)),
        default_model=data.get("default_model"),
        store=store,
        fronts=dict(data.get("fronts") or {}),
        ca_file=None if ca_file is None else _ca_path(ca_file, base_dir),
        redactor=secrets,
        translation=TranslationPolicy(unsupported=(data.get("translation") or {}).get("unsupported", "drop")),
        responses=ResponsesPolicy(retention_days=float((data.get("responses") or {}).get("retention_days", 30))),
        pricing=PricingPolicy(
            table=price_table,
            require=bool(prices.get("require", False)),
            eur_per_usd=eur_per_usd,
        ),
        admin_keys=admin_keys,
        routing=RoutingPolicy(
            strategy=routing.get("strategy", "weighted"),
            breaker_failures=int(breaker.get("failures", 5)),
            window_s=float(breaker.get("window_s", 30)),
            cooldown_s=float(breaker.get("cooldown_s", 30)),
        ),
        policies=tuple(_caller_policy(spec, eur_per_usd) for spec in data.get("policies") or ()),
        teams=teams,
        orgs=orgs,
        customers=customers,
        clients=_rate_limits((data.get("clients") or {}).get("limits")),
        alerts=AlertsPolicy(
            budget_percent=None if alerts.get("budget_percent") is None else Fraction(str(alerts["budget_percent"])),
            webhook=alerts.get("webhook"),
        ),
        metrics=MetricsPolicy(
            auth=metrics.get("auth", "off"),
            label_key=bool(labels.get("key", False)),
            label_customer=bool(labels.get("customer", False)),
        ),
        ui=UiPolicy(enabled=bool(ui.get("enabled", False)), session_minutes=int(ui.get("session_minutes", 480))),
        ledger=LedgerPolicy(
            retention_days=ledger.get("retention_days"),
            content=ContentPolicy(
                enabled=content_redactor is not None,
                max_chars=max_chars,
                builtin_redactions=builtin_redactions,
                redact=redact,
                redactor=content_redactor,
            ),
        ),
        jobs=JobsPolicy(**(data.get("jobs") or {})),
        sessions=SessionsPolicy(**{"enabled": data.get("sessions") is not None, **(data.get("sessions") or {})}),
        limits=ClientLimits(
            client_header_timeout_s=float(limits.get("client_header_timeout_s", 10)),
            client_idle_timeout_s=float(limits.get("client_idle_timeout_s", 60)),
            client_body_timeout_s=float(limits.get("client_body_timeout_s", 60)),
            max_client_connections=int(limits.get("max_client_connections", 4096)),
        ),
    )
    return policy, warnings
