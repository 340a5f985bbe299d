"""The front doors: which API a client speaks, and everything kaixu does differently for it, one entry per door
(`DOORS`). The steps ask `front_door(call.front)` for a fact and never branch on a door's name, so a new door is
a codec (this package) plus one entry here.

A door is found from the request head alone (its path, method and, for the paths several SDKs share, its
headers): the door step (kaixu/addons/dialect.py) finds it before the caller is authenticated, so nothing that
finds a door looks at a body.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import responses
from .seeds import gateway13, kaixu_gate, pulse
from .seeds.context import MonthRollup

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One path of a door: the operation it serves and how."""

    front: str
    operation: str
    methods: tuple[str, ...]
    needs_body: bool
    stream: bool | None = None
    """Fixed by the path (seed APIs, Gemini); None = the body's `stream` field decides."""


@dataclass(frozen=True, slots=True)
class JobDoor:
    """A door's background jobs (kaixu/jobs/runner.py): where a job's request runs and the shapes of the
    answers about it. Its endpoints' operations: `job_submit`, `job_status`, `job_result`, `job_cancel`; a chat
    whose body sets `background_field` is submitted too."""

    run_path: str
    """The door's own JSON endpoint a job's request is sent to when it runs: its answer is the job's result."""
    accepted: Callable[[str, str | None], tuple[int, JSON]]
    """The answer to a submit: (the job's id, its model) -> status and body."""
    state: Callable[[JSON, str | None, str], tuple[int, JSON]]
    """The answer about a job: (its public view, its result once it succeeded (the run's answer, JSON text),
    what was asked: `status` or `result`) -> status and body."""
    background_field: str | None = None
    """A chat body field that, when true, makes the chat a job (the Responses API's `background`)."""
    new_id: Callable[[], str] | None = None
    """The door's own job ids (None: a uuid4)."""


# -- the shapes of a model list (`GET /v1/models`, `GET /v1beta/models`, and one model) --------------------------


def _openai_model(name: str, created: int, owner: str) -> JSON:
    return {"id": name, "object": "model", "created": created, "owned_by": owner}


def _openai_models(entries: list[JSON], names: list[str], default_model: str | None) -> JSON:
    # OpenAI clients read `data`; kAIxu Gate clients, which share the path, read `models`.
    return {"object": "list", "data": entries, **kaixu_gate.models_body(names, default_model)}


def _anthropic_model(name: str, created: int, owner: str) -> JSON:
    return {"type": "model", "id": name, "display_name": name, "created_at": "1970-01-01T00:00:00Z"}


def _anthropic_models(entries: list[JSON], names: list[str], default_model: str | None) -> JSON:
    first, last = (names[0], names[-1]) if names else (None, None)
    return {"data": entries, "has_more": False, "first_id": first, "last_id": last}


def _gemini_model(name: str, created: int, owner: str) -> JSON:
    return {"name": f"models/{name}", "displayName": name, "supportedGenerationMethods": ["generateContent"]}


def _gemini_models(entries: list[JSON], names: list[str], default_model: str | None) -> JSON:
    return {"models": entries}


@dataclass(frozen=True, slots=True)
class FrontDoor:
    """Everything kaixu does differently for one front door. The defaults are OpenAI's, the de-facto shape."""

    name: str
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    """Its paths (exact ones; Gemini's model paths are matched by `door_for_path`)."""
    path_prefixes: tuple[str, ...] = ()
    """Where an endpoint kaixu does not serve still gets this door's error shape."""
    public_hosts: tuple[str, ...] = ()
    """The provider's own API hosts its SDKs call by default: a forward listener intercepts these (kaixu/forward.py),
    and a request to one of them is answered in this door's shape (docs/forward-proxy.md)."""
    health_path: str | None = None
    """Where its clients check that the gateway is up: answered as kaixu's own `/health` (the ingress step)."""
    key_headers: tuple[str, ...] = ("authorization",)
    """Where its clients send their key; `Authorization: Bearer` for OpenAI's."""
    key_query: str | None = None
    """A query parameter that may carry the key instead (Gemini's `?key=`)."""
    native_format: str | None = None
    """The provider wire format a seed door is closest to, used when the provider answers in any format (the
    mock); None: the door's own name, a provider format."""
    prompt_fields: tuple[str, ...] = ("messages", "tools", "functions", "input")
    """The body fields whose canonical JSON the ledger's prompt hash covers (kaixu/content.py)."""
    output_fields: tuple[tuple[str, ...], ...] = (("max_completion_tokens",), ("max_tokens",))
    """Where its body asks for a maximum of output tokens (every spelling a provider reads), in the order a clamp
    prefers them."""
    answer_fields: tuple[tuple[str, ...], ...] = (("n",), ("best_of",))
    """Where its body asks for several answers to one request, each generated and billed as output: OpenAI's `n`
    (and `best_of`, which OpenAI-compatible servers such as vLLM take), Gemini's `candidateCount`. Anthropic's
    and the other seeds' bodies have none (the seeds' requests are rebuilt, so nothing else reaches a
    provider)."""
    model_in_body: bool = True
    """The body names the model (Gemini's names it in the path): an alias is rewritten there."""
    stream_usage_option: bool = True
    """A stream to a provider of its own format is asked for the usage chunk (`stream_options.include_usage`)
    when the client did not ask: the stream step strips it again."""
    json_array_without_sse: bool = False
    """A stream path answers a JSON array unless the query asks `alt=sse` (Gemini's)."""
    sse_comments: bool = True
    """Its streams may end with kaixu's cost comment. Not Gemini's: google-genai parses every line that does
    not start with `data: ` as raw JSON (an SSE comment fails the whole stream)."""
    degraded_field: bool = True
    """A chat answer a fallback model served says `degraded: true` in its body (the Intelligent AI Gateway's,
    whose routes are OpenAI's); every door has the `x-kaixu-degraded` header."""
    count_tokens_field: str = "input_tokens"
    """The field of a token count kaixu estimates itself (a provider without the operation)."""
    quota_error_type: str = "insufficient_quota"
    """The error type of a 402 (a spent budget) in the door's error shape."""
    unknown_model: tuple[int, str, str] = (404, "invalid_request_error", "model_not_found")
    """Status, error type and code of a model the gateway does not serve."""
    keepalive_s: float | None = None
    """Seconds between keep-alive events while a stream waits for the provider's first byte
    (`fronts.NAME.ping_interval_s` overrides it). Such a stream is told 200 at once, so every stream of the
    door goes through the relay (kaixu/reliability/relay.py). None: no keep-alives."""
    month_rollup: bool = False
    """Its answers carry the month's spend against the key's and the customer's monthly budgets."""
    budget_body: Callable[[str, int, int, MonthRollup | None], JSON] | None = None
    """Its own 402 body (budget level, cap and spend in micro-dollars, the month): None: its error shape."""
    model_entry: Callable[[str, int, str], JSON] = _openai_model
    """A model as its model list shows it: (name, created, owner)."""
    model_list: Callable[[list[JSON], list[str], str | None], JSON] = _openai_models
    """Its model list: (entries, names, the policy's default model)."""
    health_body: Callable[[bool, bool, bool], JSON] | None = None
    """The answer of its `health` endpoint: (a provider key configured, keys configured, open gate)."""
    attribution: Callable[[JSON], dict[str, str | None]] | None = None
    """Who a request is for, read from its body (the ledger's attribution)."""
    provider_hint: Callable[[JSON], str | None] | None = None
    """The provider kind a body asks for (narrows the route; FormatError when it is not one)."""
    include_raw: Callable[[JSON], bool] | None = None
    """Whether a body asks for the provider's raw answer alongside the door's own."""
    stores_answers: bool = False
    """Its chat answers are kept (unless the body says `store: false`) and continued (`previous_response_id`)
    in kaixu's store, and read back by id (the Responses API's, kaixu/store/responses.py)."""
    jobs: JobDoor | None = None
    """Its background jobs (Gateway 13's `gateway-job-*`); None: it has none."""
    session_field: str | None = None
    """The chat body field (and answer field) naming a conversation session kaixu keeps under `sessions:` (the
    Intelligent AI Gateway's `session_id`, whose routes are OpenAI's); None: the door has no sessions."""


_POST = ("POST",)
_GET = ("GET",)


def _config(parents: tuple[str, ...], *names: str) -> tuple[tuple[str, str], ...]:
    """Each of `names` under each of `parents`: Gemini's REST API reads camelCase and snake_case alike."""
    return tuple((parent, name) for parent in parents for name in names)


_GEMINI_CONFIG = ("generationConfig", "generation_config")
_GATE_CONFIG = ("generationConfig", "config")  # kAIxu Gate's alias of generationConfig (its keys go to Gemini's codec)

OPENAI = FrontDoor(
    "openai",
    public_hosts=("api.openai.com",),
    endpoints={
        "/v1/chat/completions": Endpoint("openai", "chat", _POST, True),
        "/v1/embeddings": Endpoint("openai", "embeddings", _POST, True),
        "/v1/models": Endpoint("openai", "models", _GET, False),
    },
    session_field="session_id",
)
ANTHROPIC = FrontDoor(
    "anthropic",
    public_hosts=("api.anthropic.com",),
    endpoints={
        "/v1/messages": Endpoint("anthropic", "chat", _POST, True),
        "/v1/messages/count_tokens": Endpoint("anthropic", "count_tokens", _POST, True),
    },
    path_prefixes=("/v1/messages",),
    key_headers=("x-api-key",),
    prompt_fields=("system", "messages", "tools"),
    output_fields=(("max_tokens",),),
    answer_fields=(),
    stream_usage_option=False,
    degraded_field=False,
    quota_error_type="billing_error",
    model_entry=_anthropic_model,
    model_list=_anthropic_models,
)
GEMINI = FrontDoor(
    "gemini",
    public_hosts=("generativelanguage.googleapis.com",),
    endpoints={  # the model is in the path of the others: see _GEMINI_PATH
        "/v1beta/models": Endpoint("gemini", "models", _GET, False),
        "/v1alpha/models": Endpoint("gemini", "models", _GET, False),
    },
    path_prefixes=("/v1beta/", "/v1alpha/"),
    key_headers=("x-goog-api-key",),
    key_query="key",
    prompt_fields=("systemInstruction", "system_instruction", "contents", "tools", "content", "requests"),
    output_fields=_config(_GEMINI_CONFIG, "maxOutputTokens", "max_output_tokens"),
    answer_fields=_config(_GEMINI_CONFIG, "candidateCount", "candidate_count"),
    model_in_body=False,
    stream_usage_option=False,
    json_array_without_sse=True,
    sse_comments=False,
    degraded_field=False,
    count_tokens_field="totalTokens",
    model_entry=_gemini_model,
    model_list=_gemini_models,
)
RESPONSES = FrontDoor(  # OpenAI's Responses API (Codex CLI, the Agents SDK, `client.responses`)
    "responses",
    endpoints={
        "/v1/responses": Endpoint("responses", "chat", _POST, True),
        "/v1/responses/input_tokens": Endpoint("responses", "count_tokens", _POST, True),
    },
    path_prefixes=("/v1/responses",),
    prompt_fields=("instructions", "input", "tools"),
    output_fields=(("max_output_tokens",),),
    answer_fields=(),
    stream_usage_option=False,  # its streams always end with the usage (`response.completed`)
    degraded_field=False,
    stores_answers=True,
    jobs=JobDoor(
        "/v1/responses",
        responses.background_accepted,
        responses.background_state,
        background_field="background",
        new_id=responses.new_response_id,
    ),
)
KAIXU_GATE = FrontDoor(  # kAIxu Gate (seed 001)
    kaixu_gate.NAME,
    endpoints={
        "/v1/generate": Endpoint(kaixu_gate.NAME, "chat", _POST, True, stream=False),
        "/v1/stream": Endpoint(kaixu_gate.NAME, "chat", _POST, True, stream=True),
        "/v1/health": Endpoint(kaixu_gate.NAME, "health", _GET, False),
    },
    key_headers=("x-kaixu-token",),
    native_format="gemini",
    prompt_fields=("input", "messages", "contents", "systemInstruction", "tools"),
    output_fields=_config(_GATE_CONFIG, "maxOutputTokens", "max_output_tokens"),
    answer_fields=_config(_GATE_CONFIG, "candidateCount", "candidate_count"),
    stream_usage_option=False,
    degraded_field=False,
    health_body=kaixu_gate.health_body,
    include_raw=kaixu_gate.include_raw,
)
GATEWAY13 = FrontDoor(  # Kaixu Gateway 13 (seed 000)
    gateway13.NAME,
    endpoints={
        "/.netlify/functions/gateway-chat": Endpoint(gateway13.NAME, "chat", _POST, True, stream=False),
        "/.netlify/functions/gateway-stream": Endpoint(gateway13.NAME, "chat", _POST, True, stream=True),
        gateway13.JOB_PATHS["submit"]: Endpoint(gateway13.NAME, "job_submit", _POST, True, stream=False),
        gateway13.JOB_PATHS["status"]: Endpoint(gateway13.NAME, "job_status", _GET, False),
        gateway13.JOB_PATHS["result"]: Endpoint(gateway13.NAME, "job_result", _GET, False),
    },
    path_prefixes=("/.netlify/functions/",),
    health_path="/.netlify/functions/health",
    native_format="openai",
    prompt_fields=("messages",),
    output_fields=(("max_tokens",),),
    answer_fields=(),
    stream_usage_option=False,
    degraded_field=False,
    unknown_model=(403, "permission_error", "model_not_allowed"),  # the seed: "403 ... provider/model not allowed"
    keepalive_s=10.0,
    month_rollup=True,
    budget_body=gateway13.budget_refusal_body,
    provider_hint=gateway13.provider_hint,
    jobs=JobDoor(gateway13.JOB_RUN_PATH, gateway13.job_accepted, gateway13.job_state),
)
PULSE = FrontDoor(  # Pulse (seed 003)
    pulse.NAME,
    endpoints={"/api/ai/request": Endpoint(pulse.NAME, "chat", _POST, True, stream=False)},
    path_prefixes=("/api/ai/",),
    key_headers=("x-pulse-key",),
    native_format="openai",
    prompt_fields=("prompt", "input", "messages"),
    output_fields=(("maxTokens",),),
    answer_fields=(),
    stream_usage_option=False,
    degraded_field=False,
    attribution=pulse.attribution,
)

#: Every front door, by name.
DOORS: dict[str, FrontDoor] = {
    door.name: door for door in (OPENAI, ANTHROPIC, GEMINI, RESPONSES, KAIXU_GATE, GATEWAY13, PULSE)
}


def front_door(name: str) -> FrontDoor:
    """The door a call came in by (`Call.front`); OpenAI's for a name kaixu does not know (none reaches here)."""
    return DOORS.get(name, OPENAI)


#: The endpoints found by their exact path.
PATHS: dict[str, Endpoint] = {path: ep for door in DOORS.values() for path, ep in door.endpoints.items()}
#: Every header a supported client SDK may carry its credential in, `authorization` first (none is forwarded).
KEY_HEADERS: tuple[str, ...] = tuple(dict.fromkeys(h for door in DOORS.values() for h in door.key_headers))
#: Query parameters that may carry a credential.
KEY_QUERY: tuple[str, ...] = tuple(door.key_query for door in DOORS.values() if door.key_query)
#: The providers' public API hosts, by door name: what a forward listener always intercepts.
PUBLIC_HOSTS: dict[str, str] = {host: door.name for door in DOORS.values() for host in door.public_hosts}
#: The doors' own health paths (kaixu's is `/health`).
HEALTH_PATHS: tuple[str, ...] = tuple(door.health_path for door in DOORS.values() if door.health_path)

#: The Gemini API's actions (`/v1beta/models/{model}:{action}`) and kaixu's operation for each: the one table,
#: read inbound (a Gemini client's path, here), outbound (the upstream URL, kaixu/providers/__init__.py) and by
#: the mock provider.
GEMINI_ACTIONS = {
    "generateContent": "chat",
    "streamGenerateContent": "chat",
    "countTokens": "count_tokens",
    "embedContent": "embeddings",
    "batchEmbedContents": "batch_embeddings",
}
#: The action kaixu calls upstream for an operation (a streamed chat asks `streamGenerateContent` instead).
GEMINI_ACTION_FOR = {operation: action for action, operation in GEMINI_ACTIONS.items() if "stream" not in action}
# google-genai calls /v1beta/...; newer releases default to /v1/...; both are the same API.
_GEMINI_PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/(?P<model>[^/:]+):(?P<action>[A-Za-z]+)$")
# GET one model: /v1/models/{id} (OpenAI, Anthropic; Gemini under /v1beta too), answered by addons/local.py.
_MODEL_PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/(?P<model>[^/:]+)$")
# Intelligent AI Gateway (seed 002): an explicit backend (a provider, or a model alias) in the path.
_BACKEND_PATH = re.compile(r"^/v1/(?P<backend>[A-Za-z0-9_.@-]+)/chat/completions$")
# A stored response (GET, DELETE) and its input items (GET): kaixu's ids and a Responses provider's.
_RESPONSE_PATH = re.compile(r"^/v1/responses/(?P<id>resp_[A-Za-z0-9_-]{1,200})(?P<items>/input_items|/cancel)?$")
_STORED = Endpoint(RESPONSES.name, "stored_response", ("GET", "DELETE"), False)
_STORED_ITEMS = Endpoint(RESPONSES.name, "stored_input_items", _GET, False)
_CANCEL = Endpoint(RESPONSES.name, "job_cancel", _POST, False)  # a background response


class Found(NamedTuple):
    """The endpoint a path names, and what the path itself says: a model (Gemini, GET one model) or a backend."""

    endpoint: Endpoint
    model: str | None = None
    backend: str | None = None
    resource: str | None = None


def door_for_path(path: str) -> Found | None:
    """The endpoint of a path (without its query), or None when kaixu serves no such endpoint."""
    endpoint = PATHS.get(path)
    if endpoint is not None:
        return Found(endpoint)
    match = _GEMINI_PATH.match(path)
    if match and match["action"] in GEMINI_ACTIONS:
        stream = match["action"] == "streamGenerateContent"
        return Found(Endpoint(GEMINI.name, GEMINI_ACTIONS[match["action"]], _POST, True, stream), match["model"])
    match = _MODEL_PATH.match(path)
    if match:
        front = GEMINI.name if path.startswith(GEMINI.path_prefixes) else OPENAI.name
        return Found(Endpoint(front, "model", _GET, False), match["model"])
    match = _BACKEND_PATH.match(path)
    if match:
        return Found(PATHS["/v1/chat/completions"], backend=match["backend"])
    match = _RESPONSE_PATH.match(path)
    if match:
        found = {"/input_items": _STORED_ITEMS, "/cancel": _CANCEL}.get(match["items"] or "", _STORED)
        return Found(found, resource=match["id"])
    return None


def front_for_path(path: str, host: str | None = None) -> str:
    """The error shape to use for a path, even one kaixu does not serve; `host`: the provider's public host a
    forward listener's client called (decides when the path does not)."""
    endpoint = PATHS.get(path)
    if endpoint is not None:
        return endpoint.front
    if _GEMINI_PATH.match(path):
        return GEMINI.name
    for door in DOORS.values():
        if door.path_prefixes and path.startswith(door.path_prefixes):
            return door.name
    by_host = front_for_host(host) if host else None
    if by_host is not None:
        return by_host
    return OPENAI.name


def front_for_host(host: str) -> str | None:
    """The door whose provider's public host this is (a forward listener's intercepted request), else None."""
    return PUBLIC_HOSTS.get(host.lower().rstrip("."))


def models_front(headers: Container[str], path: str, host: str | None = None) -> str:
    """Whose model list a `/v1/models` request asks for (three SDKs share the path): answered in its shape.
    Through a forward listener the provider's host the SDK called says it."""
    by_host = front_for_host(host) if host else None
    if by_host is not None:
        return by_host
    if "x-goog-api-key" in headers or "x-goog-api-client" in headers or "key=" in path:
        return GEMINI.name
    if "anthropic-version" in headers:
        return ANTHROPIC.name
    return OPENAI.name
