"""The typed, immutable snapshot of a validated policy that the addons read on every request.

A new snapshot is built on each (re)load and swapped in atomically; a flow keeps the snapshot it
started with, so a reload never changes the rules half-way through a request.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kaixu.redact import Redactor

ProviderKind = Literal["openai", "anthropic", "gemini", "mock"]
WireFormat = Literal["openai", "anthropic", "gemini"]

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """An upstream. `wire_format` is None for the mock, which answers in whatever format it is asked."""

    name: str
    kind: ProviderKind
    base_url: str
    api_key: str | None
    headers: dict[str, str]
    wire_format: WireFormat | None


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """One deployment of a model: a provider and the model name it knows it by (None = as requested)."""

    provider: str
    model: str | None
    weight: int = 1


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """What a client-facing model name (or glob) maps to."""

    name: str
    targets: tuple[RouteTarget, ...]
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """A client credential issued by the gateway. Only its SHA-256 is ever stored."""

    name: str
    sha256: str
    team: str | None = None
    models: tuple[str, ...] = ()

    def may_use(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What a client connection may cost kaixu (`limits:` in the policy; addons/connections.py)."""

    client_header_timeout_s: float = 10.0
    client_idle_timeout_s: float = 60.0
    max_client_connections: int = 4096


@dataclass(frozen=True, slots=True)
class Policy:
    digest: str
    raw: dict[str, Any]
    listen: tuple[tuple[str, int], ...]
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
    store: dict[str, Any] = field(default_factory=dict)
    fronts: dict[str, dict[str, Any]] = field(default_factory=dict)
    ca_file: str | None = None
    """CA bundle that verifies providers' certificates (None: certifi's roots)."""
    limits: ClientLimits = field(default_factory=ClientLimits)
    redactor: Redactor = field(default_factory=Redactor)
    """Scrubs every configured provider key (and credential-shaped text) from what kaixu passes on."""
    warnings: tuple[str, ...] = ()
    """Valid but probably not meant (a provider no request can use), as `line N: path: message`."""

    def front_settings(self, front: str) -> dict[str, Any]:
        """Per-front-door settings (`fronts.kaixu_gate.system`, ...); empty when none are set."""
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


def build_policy(
    data: dict[str, Any], *, digest: str, base_dir: Path
) -> tuple[Policy, list[tuple[tuple[Any, ...], str]], list[tuple[tuple[Any, ...], str]]]:
    """Turn schema-valid data into a Policy, with the cross-reference problems a schema cannot see."""
    problems: list[tuple[tuple[Any, ...], str]] = []

    providers: dict[str, ProviderConfig] = {}
    for name, spec in (data.get("providers") or {}).items():
        kind: ProviderKind = spec["kind"]
        base_url = spec.get("base_url") or DEFAULT_BASE_URLS.get(kind, "")
        wire: WireFormat | None = None if kind == "mock" else kind
        providers[name] = ProviderConfig(
            name=name,
            kind=kind,
            base_url=base_url.rstrip("/"),
            api_key=spec.get("api_key") or None,
            headers=dict(spec.get("headers") or {}),
            wire_format=wire,
        )

    models: dict[str, ModelRoute] = {}
    patterns: list[ModelRoute] = []
    for name, spec in (data.get("models") or {}).items():
        targets = []
        for index, target in enumerate(spec["route"]):
            if target["provider"] not in providers:
                problems.append(
                    (("models", name, "route", index, "provider"), f"unknown provider {target['provider']!r}")
                )
            targets.append(RouteTarget(target["provider"], target.get("model"), int(target.get("weight", 1))))
        route = ModelRoute(name, tuple(targets), tuple(spec.get("fallbacks") or ()))
        if any(ch in name for ch in "*?["):
            patterns.append(route)
        else:
            models[name] = route
    for name, spec in (data.get("models") or {}).items():
        for index, fallback in enumerate(spec.get("fallbacks") or ()):
            if fallback not in models:
                problems.append((("models", name, "fallbacks", index), f"unknown model {fallback!r}"))

    teams = data.get("teams") or {}
    keys: dict[str, VirtualKey] = {}
    for index, spec in enumerate(data.get("keys") or ()):
        digest_hex = spec["hash"].removeprefix("sha256:").lower()
        team = spec.get("team")
        if team is not None and team not in teams:
            problems.append((("keys", index, "team"), f"unknown team {team!r}"))
        if digest_hex in keys:
            problems.append((("keys", index, "hash"), f"the same key is also listed as {keys[digest_hex].name!r}"))
        keys[digest_hex] = VirtualKey(spec["name"], digest_hex, team, tuple(spec.get("models") or ()))

    auth = data.get("auth") or {}
    limits = data.get("limits") or {}
    default_model = data.get("default_model")
    if default_model is not None and default_model not in models:
        problems.append((("default_model",), f"unknown model {default_model!r}"))
    listen = tuple((item.get("host", "127.0.0.1"), int(item["port"])) for item in data.get("listen") or ())
    store = dict(data.get("store") or {"sqlite": "kaixu.db"})
    for shared in ("postgres", "redis"):
        if shared in store:
            problems.append((("store", shared), f"{shared} is not supported by this version yet; use sqlite"))
    store.setdefault("sqlite", "kaixu.db")
    if "sqlite" in store and store["sqlite"] != ":memory:":
        store["sqlite"] = str((base_dir / store["sqlite"]).resolve())

    ca_file = (data.get("tls") or {}).get("ca_file")
    if ca_file is not None:
        ca_file = str((base_dir / ca_file).resolve())
        if not Path(ca_file).is_file():
            problems.append((("tls", "ca_file"), f"no such file: {ca_file}"))

    warnings: list[tuple[tuple[Any, ...], str]] = []
    byok = bool((data.get("auth") or {}).get("byok", False))
    for name, provider in providers.items():
        if provider.kind != "mock" and not provider.api_key and not byok:
            warnings.append(
                (("providers", name), "no api_key and auth.byok is off: requests routed here are answered 500")
            )
    used = {t.provider for route in [*models.values(), *patterns] for t in route.targets}
    for name in providers.keys() - used:
        warnings.append((("providers", name), "no model routes to this provider"))

    policy = Policy(
        digest=digest,
        raw=data,
        listen=listen or (("127.0.0.1", 4000),),
        providers=providers,
        models=models,
        model_patterns=tuple(patterns),
        keys=keys,
        byok=bool(auth.get("byok", False)),
        anonymous=bool(auth.get("anonymous", False)),
        cors_origins=tuple((data.get("cors") or {}).get("allowed_origins") or ()),
        max_body_bytes=int(limits.get("max_body_bytes", 5 * 1024 * 1024)),
        upstream_timeout_s=float(limits.get("upstream_timeout_s", 600)),
        default_model=default_model,
        store=store,
        fronts=dict(data.get("fronts") or {}),
        ca_file=ca_file,
        redactor=Redactor(p.api_key for p in providers.values()),
        limits=ClientLimits(
            client_header_timeout_s=float(limits.get("client_header_timeout_s", 10)),
            client_idle_timeout_s=float(limits.get("client_idle_timeout_s", 60)),
            max_client_connections=int(limits.get("max_client_connections", 4096)),
        ),
    )
    return policy, problems, warnings
