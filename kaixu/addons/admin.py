"""The admin API: the ledger read back (`/api/costs`, `/api/costs/{key_name}`, `/api/prompt-log`,
`/api/requests`) and the store keys managed (`/api/keys`: list, create, revoke), for admin keys only
(`admin_keys:` in the policy). docs/admin-api.md describes every endpoint.

It runs on the request head, right after ingress: an admin request is answered before client auth and
before any body is read or parsed, and is marked `local` (no ledger record, no access log line, and the
auth step never takes an admin key for a client key). Only these paths are claimed: Pulse's `/api/ai/request`
and any other path go on down the chain. The queries run in worker threads (kaixu/store/queries.py): the
hook is a coroutine only for the requests it answers: any other request costs one prefix check here.

`POST /api/keys` needs its body: it is checked (method, admin key) on the head like the rest, marked `local`
(so the front door and client auth steps leave it alone), and answered in the `request` hook, once mitmproxy
read the body (bounded by `limits.max_body_bytes`, decompressed within the same bound: kaixu/request_body.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from mitmproxy import http

from kaixu.call import Call, get_call
from kaixu.config.policy import usd_micros
from kaixu.console import CSRF_HEADER, SAFE_METHODS
from kaixu.credentials import admin_refusal
from kaixu.exceptions import KaixuError
from kaixu.formats import json_type
from kaixu.gateway import Gateway
from kaixu.log import safe
from kaixu.overview import budgets_json, models_json, policy_json
from kaixu.request_body import BodyRefused, decompress, parse_json_object
from kaixu.respond import error_json, error_response, json_response
from kaixu.store.keys import (
    KEY_NAME,
    KEY_NAME_RULE,
    AsyncKeyStore,
    KeyExists,
    PepperMissing,
    StoredKey,
    digest,
    expires_at,
    new_secret,
    pepper,
)
from kaixu.store.ledger import describe
from kaixu.store.queries import (
    DIMENSIONS,
    MAX_LIMIT,
    BadCursor,
    Filters,
    LedgerQueries,
    LedgerUnavailable,
    costs_json,
    parse_time,
    prompt_entry_json,
    record_json,
    scope_json,
)
from kaixu.store.seats import seat_json
from kaixu.store.stores import Stores

log = logging.getLogger("kaixu.admin")

PREFIX = "/api/"
CONSOLE_PREFIX = "/ui/api/"
"""The same API under the console's cookie path (kaixu/console.py), while `ui.enabled`: its session cookie is
sent there and nowhere else."""
COSTS = "/api/costs"
KEYS = "/api/keys"
DEFAULT_LIMIT = 100
MAX_OFFSET = 1_000_000
_MAX_KEY_NAME = 200

#: Filter parameters -> dimensions: the dimension's own name, Pulse's ids, and `key_name` for the key
#: (a bare `key=` is the credential parameter Gemini clients use: see `credentials.presented_key`).
FILTER_PARAMS: dict[str, str] = {
    **{name: name for name in DIMENSIONS if name != "key"},
    "key_name": "key",
    "teamId": "team",
    "projectId": "project",
    "userId": "user",
    "appId": "app",
    "clientId": "client",
}
_TIME_PARAMS = ("from", "to")
_CREDENTIAL_PARAM = "key"


class BadParameter(KaixuError, ValueError):
    status, type, code = 400, "invalid_request_error", "invalid_parameter"

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name


class Params:
    """A query string read strictly: every parameter at most once, none the endpoint does not take."""

    def __init__(self, request: http.Request, allowed: set[str]) -> None:
        self.values: dict[str, str] = {}
        for name, value in request.query.items(multi=True):
            if name == _CREDENTIAL_PARAM:
                continue
            if name not in allowed:
                accepted = ", ".join(sorted(allowed)) or "none"
                raise BadParameter(safe(name, 60), f"unknown parameter (this endpoint takes: {accepted})")
            if name in self.values:
                raise BadParameter(name, "given more than once")
            self.values[name] = value

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        text = self.values.get(name)
        if text is None:
            return default
        if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
            raise BadParameter(name, f"expected an integer from {low} to {high}")
        return int(text)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.values.get(name, default)
        if value not in choices:
            raise BadParameter(name, f"expected one of {', '.join(choices)}")
        return value

    def filters(self, *, status: bool = False) -> Filters:
        bounds: dict[str, float] = {}
        for name in _TIME_PARAMS:
            text = self.values.get(name)
            if text is not None:
                try:
                    bounds[name] = parse_time(text, end=name == "to")
                except ValueError as exc:
                    raise BadParameter(name, str(exc)) from None
        if "from" in bounds and "to" in bounds and bounds["from"] >= bounds["to"]:
            raise BadParameter("to", "must be later than from")
        equals: dict[str, str] = {}
        for name, dimension in FILTER_PARAMS.items():
            value = self.values.get(name)
            if value is None:
                continue
            if dimension in equals and equals[dimension] != value:
                raise BadParameter(name, f"conflicts with another {dimension} filter")
            equals[dimension] = value
        code = self.integer("status", 0, 100, 599) if status and "status" in self.values else None
        return Filters(bounds.get("from"), bounds.get("to"), tuple(equals.items()), code)


_FILTERS = {*FILTER_PARAMS, *_TIME_PARAMS}
_ALLOWED = {
    "costs": {*_FILTERS, "group_by", "limit"},
    "key_cost": set(_FILTERS),
    "prompt_log": {"limit"},
    "requests": {*_FILTERS, "status", "limit", "cursor", "offset", "order"},
    "keys": set(),
    "key": set(),
    "request": set(_TIME_PARAMS),
    "models": set(),
    "policy": set(),
    "budgets": set(),
    "seats": set(),
}
_METHODS = {"keys": ("GET", "POST"), "key": ("DELETE",)}
_KEY_FIELDS = ("name", "team", "customer", "models", "expires", "budget", "limits", "seats")
_PERIODS = ("day", "week", "month", "total")
_LIMIT_FIELDS = ("rpm", "tpm", "max_parallel")
_MAX_COUNT = 2**62
_MAX_LABEL = 200
_MAX_MODELS = 100


class Admin:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        path = flow.request.path.partition("?")[0]
        if not path.startswith((PREFIX, CONSOLE_PREFIX)) or flow.response is not None:
            return None
        call = get_call(flow)
        if call is None:
            return None
        if path.startswith(CONSOLE_PREFIX):
            if not call.policy.ui.enabled:
                return None  # the console is off: the 404 of any unknown path
            path = path[len("/ui") :]
        endpoint = self._endpoint(path)
        if endpoint is None:
            return None
        call.operation = "local"
        methods = _METHODS.get(endpoint[0], ("GET",))
        if flow.request.method not in methods:
            allow = ", ".join(methods)
            flow.response = error_response(call, 405, f"method {safe(flow.request.method, 20)} is not allowed on "
                                           f"{safe(path)}; use {' or '.join(methods)}", "invalid_request_error",
                                           "method_not_allowed", {"allow": allow})  # fmt: skip
            return None
        refusal = self._refusal(call, flow.request)
        if refusal is not None:
            flow.response = refusal
            return None
        if flow.request.method == "POST":
            return None  # answered in `request`, once the body is read
        return self._answer(flow, call, *endpoint)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """`POST /api/keys`, checked on its head already (see requestheaders), now that its body is here."""
        call = get_call(flow)
        if call is None or flow.response is not None or call.operation != "local" or flow.request.method != "POST":
            return None
        if flow.request.path.partition("?")[0].removeprefix("/ui") not in (KEYS, KEYS + "/"):
            return None
        return self._answer(flow, call, "keys", self.key_create, None, status=201)

    def _endpoint(self, path: str) -> tuple[str, Callable[..., Awaitable[Any]], str | None] | None:
        if path in (COSTS, COSTS + "/"):
            return ("costs", self.costs, None)
        if path.startswith(COSTS + "/"):
            return ("key_cost", self.key_cost, path[len(COSTS) + 1 :])
        if path == "/api/prompt-log":
            return ("prompt_log", self.prompt_log, None)
        if path == "/api/requests":
            return ("requests", self.requests, None)
        if path.startswith("/api/requests/"):
            return ("request", self.request_one, path[len("/api/requests/") :])
        if path == "/api/models":
            return ("models", self.models, None)
        if path == "/api/policy":
            return ("policy", self.policy, None)
        if path == "/api/budgets":
            return ("budgets", self.budgets, None)
        if path == "/api/seats":
            return ("seats", self.seats, None)
        if path in (KEYS, KEYS + "/"):
            return ("keys", self.keys_list, None)
        if path.startswith(KEYS + "/"):
            return ("key", self.key_revoke, path[len(KEYS) + 1 :])
        return None

    def _refusal(self, call: Call, request: http.Request) -> http.Response | None:
        """An admin key, or a console session (kaixu/console.py) whose state-changing requests carry its CSRF
        token; otherwise the one refusal of admin-only endpoints."""
        session = self.gateway.sessions.of(call.policy, request)
        if session is None:
            return admin_refusal(call, request, "the admin API")
        if request.method not in SAFE_METHODS and not session.csrf_ok(request):
            message = f"a console session's {request.method} needs its CSRF token in the {CSRF_HEADER} header"
            return error_response(call, 403, message, "permission_error", "csrf_token_invalid")
        return None

    async def _answer(
        self,
        flow: http.HTTPFlow,
        call: Call,
        name: str,
        handler: Callable[..., Awaitable[Any]],
        rest: str | None,
        *,
        status: int = 200,
    ) -> None:
        try:
            params = Params(flow.request, _ALLOWED[name])
            reader = self._reader(call)
            if handler == self.key_create:
                body = await self.key_create(call, flow.request)
            else:
                body = await (handler(call, reader, params) if rest is None else handler(call, reader, params, rest))
        except BodyRefused as refused:
            flow.response = error_response(call, refused.status, refused.message, refused.type, refused.code)
            return
        except _Refused as refused:
            flow.response = error_response(call, refused.status, refused.message, refused.type, refused.code)
            return
        except BadParameter as exc:
            error = error_json(call.front, call.request_id, exc.status, str(exc), exc.type, exc.code)
            error["error"]["param"] = exc.name
            flow.response = json_response(call, exc.status, error)
            return
        except LedgerUnavailable as exc:
            log.warning("request %s: admin API: %s", call.request_id, exc)
            flow.response = error_response(call, 503, str(exc), "api_error", "ledger_unavailable")
            return
        except _NotFound as exc:
            flow.response = error_response(call, exc.status, str(exc), exc.type, exc.code)
            return
        flow.response = json_response(call, status, body, {"cache-control": "no-store"})

    def _stores(self) -> Stores:
        """The stores of the policy in force, chosen when it loaded (kaixu/addons/store_choice.py)."""
        stores = self.gateway.stores
        if stores is None:
            raise RuntimeError("the admin API runs before the stores are chosen")
        return stores

    def _reader(self, call: Call) -> LedgerQueries:
        """The reader of the ledger the writer opened: `store.postgres` when set, else `store.sqlite`."""
        return self._stores().queries

    # -- endpoints ---------------------------------------------------------------------------------------

    async def costs(self, call: Call, reader: LedgerQueries, params: Params) -> dict[str, Any]:
        group_by = params.choice("group_by", "key", tuple(DIMENSIONS))
        limit = params.integer("limit", MAX_LIMIT, 1, MAX_LIMIT)
        filters = params.filters()
        return costs_json(group_by, filters, await reader.costs(group_by, filters, limit=limit))

    async def key_cost(self, call: Call, reader: LedgerQueries, params: Params, raw: str) -> dict[str, Any]:
        name = _path_name(raw)
        if "key_name" in params.values and params.values["key_name"] != name:
            raise BadParameter("key_name", "conflicts with the key name in the path")
        filters = params.filters()
        row = await reader.key_cost(name, filters)
        known = call.policy.key_named(name) is not None
        if row.requests == 0 and not known:
            raise _NotFound(f"no key named {safe(name, 80)!r} in the policy or the ledger")
        return {"object": "key_cost", "key_name": name, **scope_json(filters), "currency": "USD", **row.to_json()}

    async def prompt_log(self, call: Call, reader: LedgerQueries, params: Params) -> dict[str, Any]:
        limit = params.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        entries = await reader.prompt_log(limit)
        return {"object": "prompt_log", "limit": limit, "entries": [prompt_entry_json(e) for e in entries]}

    async def requests(self, call: Call, reader: LedgerQueries, params: Params) -> dict[str, Any]:
        limit = params.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = params.integer("offset", 0, 0, MAX_OFFSET)
        order = params.choice("order", "desc", ("desc", "asc"))
        cursor = params.get("cursor")
        if cursor is not None and "offset" in params.values:
            raise BadParameter("offset", "use cursor or offset, not both")
        filters = params.filters(status=True)
        try:
            page = await reader.requests(filters, limit=limit, cursor=cursor, offset=offset,
                                         order="asc" if order == "asc" else "desc")  # fmt: skip
        except BadCursor as exc:
            raise BadParameter("cursor", str(exc)) from None
        return {
            "object": "requests",
            "order": order,
            "limit": limit,
            **({"offset": offset} if cursor is None else {}),
            **scope_json(filters),
            "records": [record_json(r) for r in page.records],
            "next_cursor": page.next_cursor,
        }

    async def request_one(self, call: Call, reader: LedgerQueries, params: Params, raw: str) -> dict[str, Any]:
        """One record, its prompt and answer included (stored only under `ledger.content`), `attempts` and
        `verdicts` as the JSON lists they hold. No index holds request ids: `from`/`to` narrow the search."""
        request_id = _path_name(raw, "request_id")
        found = params.filters()
        filters = Filters(found.since, found.until, request_id=request_id)
        page = await reader.requests(filters, limit=1, content=True)
        if not page.records:
            raise _NotFound(f"no request {safe(request_id, 80)!r} in the ledger", code="unknown_request")
        record = record_json(page.records[0])
        for name in ("attempts", "verdicts"):
            if isinstance(record.get(name), str):
                with contextlib.suppress(ValueError):
                    record[name] = json.loads(record[name])
        return {"object": "request", "content_stored": call.policy.ledger.content.enabled, **record}

    async def models(self, call: Call, reader: LedgerQueries, params: Params) -> dict[str, Any]:
        return {"object": "models", **models_json(call.policy, self.gateway)}

    async def policy(self, call: Call, reader: LedgerQueries, params: Params) -> dict[str, Any]:
        return {"object": "policy", **policy_json(call.policy, self.gateway)}

    async def budgets(self, call: Call, reader: LedgerQueries, params: Params) -> dict[str, Any]:
        return {"object": "budgets", **await budgets_json(call.policy, self.gateway)}

    async def seats(self, call: Call, reader: LedgerQueries, params: Params) -> dict[str, Any]:
        """The installs each key or customer with `seats: N` was used from (`kaixu seats list`)."""
        store = self._stores().seats
        if store is None:
            raise _Refused(503, "the policy keeps no seat store (store.sqlite is :memory:)", "api_error",
                           "seat_store_unavailable")  # fmt: skip
        try:
            seats = await self._in_store(call, store.seats)
        except FileNotFoundError:
            seats = []
        return {"object": "seats", "seats": [seat_json(seat) for seat in seats]}

    # -- store keys (docs/keys.md): SQLite in worker threads, PostgreSQL awaited (kaixu/store/keys.py) --------

    def _key_store(self, call: Call) -> AsyncKeyStore:
        """The policy's key store (one per `store:`, kept while the policy names the same one)."""
        keys = self._stores().keys
        if keys is None:
            raise _Refused(503, "the policy keeps no store file (store.sqlite): store keys need one",
                           "api_error", "key_store_unavailable")  # fmt: skip
        return keys

    @staticmethod
    async def _in_store(call: Call, function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        try:
            return await function(*args)
        except (sqlite3.Error, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            log.warning("request %s: admin API: cannot use the key store: %s", call.request_id, describe(exc))
            raise _Refused(503, "kaixu cannot use its key store right now; retry shortly", "api_error",
                           "key_store_unavailable") from None  # fmt: skip

    async def keys_list(self, call: Call, reader: LedgerQueries, params: Params) -> dict[str, Any]:
        store = self._key_store(call)
        try:
            keys: list[StoredKey] = await self._in_store(call, store.all)
        except FileNotFoundError:
            keys = []
        return {"object": "keys", "keys": [key.public_json() for key in keys]}

    async def key_revoke(self, call: Call, reader: LedgerQueries, params: Params, raw: str) -> dict[str, Any]:
        name = _path_name(raw)
        store = self._key_store(call)
        found = await self._in_store(call, store.revoke, name, time.time())
        key = await self._in_store(call, store.get, name) if found else None
        if key is None:
            raise _NotFound(f"no store key named {safe(name, 80)!r}")
        return {"object": "key", **key.public_json()}

    async def key_create(self, call: Call, request: http.Request) -> dict[str, Any]:
        raw = request.raw_content or b""
        encoding = request.headers.get("content-encoding", "")
        fields = parse_json_object(decompress(raw, encoding, call.policy.max_body_bytes) if encoding else raw)
        try:
            secret = pepper()
        except PepperMissing as exc:
            raise _Refused(503, f"{exc} in kaixu's environment: store keys cannot be made (docs/keys.md)",
                           "api_error", "key_pepper_missing") from None  # fmt: skip
        now = time.time()
        name, team, customer, models, expires = _key_fields(fields, now)
        governance = _governance_fields(fields)
        if call.policy.key_named(name) is not None:
            message = f"the policy has a key named {name!r} (keys:): a store key may not take its name, or the ledger "
            raise _Refused(409, message + "could not tell the two apart", "invalid_request_error", "key_exists")
        store = self._key_store(call)
        key = new_secret()
        stored = StoredKey(name, digest(secret, key), team, customer, models, now, expires, None, **governance)
        try:
            await self._in_store(call, store.create, stored)
        except KeyExists:
            raise _Refused(409, f"a store key named {name!r} exists already (revoked keys keep their name)",
                           "invalid_request_error", "key_exists") from None  # fmt: skip
        log.info("request %s: admin API: store key %r created", call.request_id, name)
        return {"object": "key", **stored.public_json(), "key": key}


def _path_name(raw: str, what: str = "key_name") -> str:
    """The name in an admin path (`/api/costs/{key_name}`, `/api/keys/{name}`, `/api/requests/{id}`),
    percent-decoded."""
    try:
        name = urllib.parse.unquote(raw, errors="strict") if "%" in raw else raw
    except UnicodeDecodeError:
        raise BadParameter(what, f"the {what} in the path is not UTF-8") from None
    if not name or len(name) > _MAX_KEY_NAME or not name.isprintable():
        raise BadParameter(what, f"a {what} of 1 to {_MAX_KEY_NAME} printable characters")
    return name


def _key_fields(body: dict[str, Any], now: float) -> tuple[str, str | None, str | None, tuple[str, ...], float | None]:
    """`POST /api/keys`'s body read strictly (the fields of `kaixu keys create`); BadParameter names a field."""
    for field in body:
        if field not in _KEY_FIELDS:
            raise BadParameter(safe(field, 60), f"unknown field (a key takes: {', '.join(_KEY_FIELDS)})")
    name = body.get("name")
    if not isinstance(name, str) or not KEY_NAME.fullmatch(name):
        raise BadParameter("name", f"required: {KEY_NAME_RULE}")
    labels: list[str | None] = []
    for field in ("team", "customer"):
        value = body.get(field)
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= _MAX_LABEL
                                  or not value.isprintable()):  # fmt: skip
            raise BadParameter(field, f"a string of 1 to {_MAX_LABEL} printable characters, or null")
        labels.append(value)
    models = body.get("models")
    if models is None:
        models = []
    if (
        not isinstance(models, list)
        or len(models) > _MAX_MODELS
        or not all(isinstance(m, str) and 0 < len(m) <= _MAX_LABEL and m.isprintable() for m in models)
    ):
        raise BadParameter("models", f"a list of up to {_MAX_MODELS} model names or globs, got {json_type(models)}")
    text = body.get("expires")
    expires = None
    if text is not None:
        if not isinstance(text, str):
            raise BadParameter("expires", f"a duration (30d, 12h) or a date, got {json_type(text)}")
        try:
            expires = expires_at(text, now)
        except ValueError as exc:
            raise BadParameter("expires", str(exc)) from None
        if expires <= now:
            raise BadParameter("expires", "that is in the past")
    return name, labels[0], labels[1], tuple(models), expires


def _count(body: dict[str, Any], field: str, shown: str) -> int | None:
    value = body.get(field)
    if value is not None and (type(value) is not int or not 1 <= value <= _MAX_COUNT):
        raise BadParameter(shown, f"a whole number from 1, or null, got {json_type(value)}")
    return value


def _governance_fields(body: dict[str, Any]) -> dict[str, Any]:
    """`budget: {usd, period}`, `limits: {rpm, tpm, max_parallel}` and `seats` of `POST /api/keys` (the
    `--budget-usd --period --rpm --tpm --max-parallel --seats` of `kaixu keys create`), as `StoredKey` fields."""
    found: dict[str, Any] = {"seats": _count(body, "seats", "seats")}
    budget = body.get("budget")
    if budget is not None:
        if not isinstance(budget, dict) or set(budget) - {"usd", "period"}:
            raise BadParameter("budget", "an object {usd, period}, or null")
        usd = budget.get("usd")
        if not isinstance(usd, (int, float)) or isinstance(usd, bool) or not 0 < usd < 1e12:
            raise BadParameter("budget.usd", f"a positive number of USD, got {json_type(usd)}")
        period = budget.get("period", "month")
        if period not in _PERIODS:
            raise BadParameter("budget.period", f"one of {', '.join(_PERIODS)}")
        try:
            found["budget_usd_micros"] = usd_micros(usd)
        except ValueError as exc:
            raise BadParameter("budget.usd", str(exc)) from None
        found["budget_period"] = period
    limits = body.get("limits")
    if limits is not None:
        if not isinstance(limits, dict) or set(limits) - set(_LIMIT_FIELDS):
            raise BadParameter("limits", f"an object with {', '.join(_LIMIT_FIELDS)}, or null")
        found.update({name: _count(limits, name, f"limits.{name}") for name in _LIMIT_FIELDS})
    return found


class _NotFound(KaixuError):
    status, type, code = 404, "not_found_error", "unknown_key"

    def __init__(self, message: str, *, code: str = "unknown_key") -> None:
        super().__init__(message, code=code)


class _Refused(KaixuError):
    def __init__(self, status: int, message: str, type: str, code: str) -> None:
        super().__init__(message, status=status, type=type, code=code)
        self.message = message
