"""Hostile HTTP traffic for kaixu's front doors: a request generator, a raw-socket HTTP/1.1 client, and the
checks every answer (and every request kaixu forwards) must pass.

Why one module: the unit fuzz test (tests/test_fuzz.py, driven by hypothesis) and the probe benchmark
(bench/probe.py, driven by a seeded ``random.Random``) must throw the same things and judge them by the
same rules. The generator asks a ``Chooser`` for every decision, so either driver can feed it.

Why raw sockets: httpx and http.client refuse to send most of what matters here (duplicate or invalid
headers, bad Content-Length, NUL bytes in the request line); a client that writes bytes and parses the
answer itself is the only way to see what the gateway does with them. One request per connection.

The oracle is deliberately small and written from the documented behaviour (docs/compatibility.md, the
front doors' error shapes); only the tables of front-door paths and attribution headers are read from kaixu,
so the generator follows new doors and headers without being edited.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gzip
import json
import random
import re
import socket
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from kaixu.call import ATTRIBUTE_HEADERS
from kaixu.formats.doors import PATHS
from tests.harness import LIMITED_KEY, TEST_KEY, UPSTREAM_KEYS

T = TypeVar("T")

ANSWER_TIMEOUT_S = 10.0
"""A complete answer must arrive within this; more is a hang."""

# --------------------------------------------------------------------------------------------------
# What the policy routes (tests/harness.py policy_for, plus GLOB_ROUTE)
# --------------------------------------------------------------------------------------------------

GLOB_ROUTE = {"glob-*": {"route": [{"provider": "gem"}]}}
"""Added to the fuzz policy: a glob passes any client-chosen name to the provider, so hostile model names
reach the upstream URL (Gemini puts the model in the path)."""
LIVE_MODELS = ("gpt-4o-mini", "alias", "claude-test", "gemini-test", "mock-model", "glob-ok")
DEAD_MODELS = ("dead-model", "nxdomain-model", "nokey-model")
"""Routed to a provider kaixu cannot use: a 5xx is the honest answer to a correct request for them."""
UPSTREAM_MODELS = ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "claude-3-5-haiku-latest", "gemini-2.5-flash")
CLIENT_SECRETS = (TEST_KEY, LIMITED_KEY, "sk-wrong-key", "sk-smuggled-client-key")
"""Credentials a client sent: none may reach a provider."""
SMUGGLED_HEADERS = (
    ("cookie", "session=s3cret"),
    ("proxy-authorization", "Basic c2s6c2s="),
    ("api-key", CLIENT_SECRETS[3]),
)
"""Client headers that carry credentials of their own and must never be forwarded."""
ATTRIBUTION_HEADERS = tuple(header for header, _ in ATTRIBUTE_HEADERS)
"""What a client says about itself (`x-kaixu-user`, `x-kaixu-team`...): it reaches the ledger."""
CONTROL_CHARACTERS = ("\x1b[31m", "\x00", "\r", "\x7f", "\x07", "\x08", "\x9b", "\udcff")
"""Never text in the ledger: ESC (a terminal escape), NUL, a bare CR, DEL, BEL, BS, a C1 control (its UTF-8
bytes), a byte that is not UTF-8 (sent raw)."""

# --------------------------------------------------------------------------------------------------
# Choosers: where the generator's decisions come from
# --------------------------------------------------------------------------------------------------


class Chooser(Protocol):
    def pick(self, options: Sequence[T]) -> T: ...

    def integer(self, low: int, high: int) -> int: ...

    def blob(self, max_size: int) -> bytes: ...

    def chance(self, percent: int) -> bool: ...


class RandomChooser:
    """Decisions from a seeded ``random.Random``: reproducible streams of any length (the benchmark)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def blob(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))

    def chance(self, percent: int) -> bool:
        return self.rng.randrange(100) < percent


class HypothesisChooser:
    """Decisions drawn from hypothesis' ``st.data()`` (the unit test): deterministic with ``derandomize``."""

    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def pick(self, options: Sequence[T]) -> T:
        return self.data.draw(self.st.sampled_from(options))

    def integer(self, low: int, high: int) -> int:
        return int(self.data.draw(self.st.integers(low, high)))

    def blob(self, max_size: int) -> bytes:
        return bytes(self.data.draw(self.st.binary(max_size=max_size)))

    def chance(self, percent: int) -> bool:
        return int(self.data.draw(self.st.integers(0, 99))) < percent


# --------------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """One request, as bytes on the wire, plus what the oracle needs to judge its answer."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    labels: list[str] = field(default_factory=list)
    """What is hostile about it (``body:deep-array``, ``header:bad-content-length``...), for reports."""
    malformed: bool = False
    """The client is at fault: the answer must be a 4xx, never a 5xx."""
    dead_upstream: bool = False
    """Routed to a provider kaixu cannot use: a well-formed request may get a 5xx."""
    raw: bytes | None = None
    """Sent verbatim instead of being assembled (a broken request line or header block)."""
    version: str = "HTTP/1.1"
    refused: bool = False
    """What kaixu must refuse whatever else the request says, a 4xx, and nothing of it reaches a provider: broken
    HTTP (an unknown version, a bare CR), an output limit that is not a positive number (docs/compatibility.md)."""

    @property
    def is_head(self) -> bool:
        return (self.raw or f"{self.method} ".encode()).startswith(b"HEAD ")

    @property
    def asks_close(self) -> bool:
        """The request says `Connection: close`: its answer must say so too, and nothing may follow it."""
        values = ",".join(v for k, v in self.headers if k.lower() == "connection")
        return self.raw is None and "close" in {token.strip().lower() for token in values.split(",")}

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        lines = [f"{self.method} {self.target} {self.version}".encode("utf-8", "surrogatepass")]
        lines += [f"{name}: {value}".encode("utf-8", "surrogatepass") for name, value in self.headers]
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body

    def describe(self, limit: int = 160) -> str:
        def cut(value: object) -> str:
            text = repr(value)
            return text if len(text) <= limit else text[: limit - 20] + f"...<{len(text)} chars>"

        if self.raw is not None:
            return f"[{', '.join(self.labels)}] raw {cut(self.raw)}"
        names = [name for name, _ in self.headers if name.lower() not in ("host", "connection")]
        version = "" if self.version == "HTTP/1.1" else f" {self.version}"
        return (
            f"[{', '.join(self.labels)}] {cut(self.method)} {cut(self.target)}{version} headers={cut(names)} "
            f"body={cut(self.body)}"
        )


@dataclass(frozen=True)
class Door:
    """A front door: a path template, its front (error shape), the operation and the method it serves."""

    path: str
    front: str
    operation: str
    method: str


def _doors() -> list[Door]:
    doors = [Door(path, d.front, d.operation, d.methods[0]) for path, d in PATHS.items()]
    for version in ("v1", "v1beta", "v1alpha"):
        for action, operation in (
            ("generateContent", "chat"),
            ("streamGenerateContent", "chat"),
            ("countTokens", "count_tokens"),
            ("embedContent", "embeddings"),
            ("batchEmbedContents", "batch_embeddings"),
        ):
            doors.append(Door(f"/{version}/models/{{model}}:{action}", "gemini", operation, "POST"))
    doors.append(Door("/v1/models/{model}", "openai", "model", "GET"))
    doors.append(Door("/v1beta/models/{model}", "gemini", "model", "GET"))
    doors.append(Door("/v1/{backend}/chat/completions", "openai", "chat", "POST"))
    return doors


DOORS = _doors()
BODY_DOORS = [d for d in DOORS if d.method == "POST"]
CHAT_DOORS = [d for d in BODY_DOORS if d.operation == "chat"]
BACKENDS = ("oai", "ant", "gem", "mock", "dead", "nokey", "gpt-4o-mini", "glob-x", "nope", "..", "a.b@c")

HOSTILE_NAMES = (
    "../../../etc/passwd",
    "/../../v1/chat/completions",
    "..",
    "a/b",
    "a?x=1",
    "a?key=" + TEST_KEY,
    "a#frag",
    "a\nX-Injected: 1",
    "a\r\nX-Injected: 1\r\n",
    "a\x00b",
    "%2e%2e%2f%2e%2e%2fx",
    "a%2Fb",
    "a b",
    "\ud800",
    "\u202eevil",
    "x" * 10_000,
)


def hostile_model(chooser: Chooser) -> str:
    """A model name built to break URLs, headers or logs; usually behind the glob, so kaixu routes it."""
    name = chooser.pick(HOSTILE_NAMES)
    return "glob-" + name if chooser.chance(75) else name


def valid_body(door: Door, model: str) -> dict[str, Any]:
    """A correct body for the door (the model goes in the body; Gemini doors carry it in the path)."""
    chat = [{"role": "user", "content": "hi"}]
    if door.front == "gemini":
        if door.operation == "embeddings":
            return {"content": {"parts": [{"text": "hi"}]}}
        if door.operation == "batch_embeddings":
            return {"requests": [{"model": f"models/{model}", "content": {"parts": [{"text": "hi"}]}}]}
        return {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    if door.front == "anthropic":
        body: dict[str, Any] = {"model": model, "messages": chat}
        if door.operation == "chat":
            body["max_tokens"] = 16
        return body
    if door.front == "kaixu_gate":
        return {"model": model, "input": {"type": "text", "content": "hi"}}
    if door.front == "pulse":
        return {"model": model, "prompt": "hi"}
    if door.operation == "embeddings":
        return {"model": model, "input": "hi"}
    if door.front == "responses":
        return {"model": model, "input": chat}
    return {"model": model, "messages": chat}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


OUTPUT_LIMITS: dict[str, tuple[tuple[str, ...], ...]] = {
    "openai": (("max_tokens",), ("max_completion_tokens",), ("n",)),
    "anthropic": (("max_tokens",),),
    "gemini": (("generationConfig", "maxOutputTokens"), ("generation_config", "max_output_tokens"),
               ("generationConfig", "candidateCount")),
    "kaixu_gate": (("generationConfig", "maxOutputTokens"), ("config", "maxOutputTokens")),
    "gateway13": (("max_tokens",),),
    "pulse": (("maxTokens",),),
    "responses": (("max_output_tokens",),),
}  # fmt: skip
"""Each chat door's fields that bound what a request produces (its output tokens, its number of answers), in
the vendors' spellings: a value that is not a positive number must be refused, never forwarded (llama.cpp and
Ollama read a max_tokens of -1 as no limit)."""
BAD_LIMITS: tuple[Any, ...] = (0, -1, -100_000, "-1", 1.5, True, [16])


def _with_bad_limit(chooser: Chooser, door: Door, body: dict[str, Any], probe: Probe) -> bytes:
    path = chooser.pick(OUTPUT_LIMITS[door.front])
    value = chooser.pick(BAD_LIMITS)
    probe.labels.append(f"{'.'.join(path)}={json.dumps(value)}")
    parent = body
    for name in path[:-1]:
        parent = parent.setdefault(name, {})
    parent[path[-1]] = value
    return _dumps(body)


def _deep(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def _with_field(body: dict[str, Any], key: str, raw: bytes) -> bytes:
    """``body`` as JSON with ``key`` set to raw JSON text (which may be invalid or enormous)."""
    rest = {k: v for k, v in body.items() if k != key}
    inner = _dumps(rest)[1:-1]
    return b"{" + _dumps(key) + b":" + raw + (b"," + inner if inner else b"") + b"}"


def hostile_body(chooser: Chooser, door: Door, model: str, probe: Probe, *, limits: bool = False) -> bytes:
    """The body: correct, or one of the documented kinds of garbage. Marks the probe malformed when it is.
    ``limits``: a correct chat body but for one output limit that is not a positive number (``OUTPUT_LIMITS``)."""
    body = valid_body(door, model)
    kind = "bad-output-limit" if limits else chooser.pick(
        (
            "valid", "random-bytes", "truncated-json", "deep", "deep-field", "surrogate-escape",
            "surrogate-bytes", "huge-number", "wrong-type", "not-an-object", "empty", "duplicate-keys",
            "bom", "utf16", "nan",
        )
    )  # fmt: skip
    probe.labels.append(f"body:{kind}")
    probe.malformed = probe.malformed or kind not in ("valid", "duplicate-keys", "bom", "utf16")
    if kind == "valid":
        return _dumps(body)
    if kind == "bad-output-limit":
        return _with_bad_limit(chooser, door, body, probe)
    if kind == "random-bytes":
        return chooser.blob(2048)
    if kind == "truncated-json":
        text = _dumps(body)
        return text[: chooser.integer(1, len(text) - 1)]
    if kind == "deep":
        return _deep(chooser.pick((100, 1000, 10_000)), chooser.pick(("array", "object")))
    if kind == "deep-field":
        key = "contents" if door.front == "gemini" else chooser.pick(("messages", "model", "input", "stream"))
        return _with_field(body, key, _deep(chooser.pick((1000, 10_000)), chooser.pick(("array", "object"))))
    if kind == "surrogate-escape":  # valid JSON syntax, but no valid Unicode text
        key = "contents" if door.front == "gemini" else chooser.pick(("model", "messages"))
        value = b'"\\ud800"' if key == "model" else b'[{"role":"user","content":"\\udfff\\ud800"}]'
        if key == "contents":
            value = b'[{"role":"user","parts":[{"text":"\\udfff\\ud800"}]}]'
        if key == "messages" and door.front == "openai":  # no draw of its own: the other probes stay the same
            body["stream"] = True  # the fake echoes the text: a provider's stream with lone surrogates
            probe.labels.append("stream")
        return _with_field(body, key, value)
    if kind == "surrogate-bytes":  # a UTF-8-encoded lone surrogate: not UTF-8 at all
        return _dumps(body).replace(b'"hi"', b'"\xed\xa0\x80"')
    if kind == "huge-number":
        number = chooser.pick((b"1" + b"0" * 10_000, b"1e999999", b"-1e999999", b"123456789" * 500))
        key = chooser.pick(("max_tokens", "temperature", "model", "stream"))
        return _with_field(body, key, number)
    if kind == "wrong-type":
        key = chooser.pick(("model", "messages", "stream", "contents", "input", "prompt", "max_tokens"))
        wrong = chooser.pick((b"5", b"[]", b"{}", b"null", b"true", b'""', b'"yes"', b"[1]", b"[[]]", b'{"role":1}'))
        probe.labels.append(f"{key}={wrong.decode()}")
        return _with_field(body, key, wrong)
    if kind == "not-an-object":
        return chooser.pick((b"[]", b'"text"', b"null", b"1", b"true", b"[{}]"))
    if kind == "empty":
        return chooser.pick((b"", b" ", b"\r\n\t"))
    if kind == "duplicate-keys":
        return _dumps(body)[:-1] + b',"model":' + _dumps(chooser.pick(DEAD_MODELS + LIVE_MODELS)) + b"}"
    if kind == "bom":
        return b"\xef\xbb\xbf" + _dumps(body)
    if kind == "utf16":
        return json.dumps(body).encode("utf-16")
    return _with_field(body, chooser.pick(("temperature", "max_tokens")), chooser.pick((b"NaN", b"Infinity")))


# --- headers ---------------------------------------------------------------------------------------

_AUTH_CHOICES = (
    "none",
    "bearer",
    "bearer",
    "bearer-wrong",
    "bearer-empty",
    "basic",
    "lowercase-bearer",
    "x-api-key",
    "x-api-key-wrong",
    "x-goog-api-key",
    "query-key",
    "x-kaixu-token",
    "limited",
    "duplicate-valid-first",
    "duplicate-wrong-first",
    "huge",
)


def add_auth(chooser: Chooser, probe: Probe) -> bool:
    """A credential in one of the SDKs' conventions, valid or not; True when it is a valid kaixu key."""
    kind = chooser.pick(_AUTH_CHOICES)
    probe.labels.append(f"auth:{kind}")
    h = probe.headers
    valid = kind in (
        "bearer",
        "lowercase-bearer",
        "x-api-key",
        "x-goog-api-key",
        "query-key",
        "x-kaixu-token",
        "limited",
    )
    if kind in ("bearer", "duplicate-valid-first"):
        h.append(("Authorization", f"Bearer {TEST_KEY}"))
    if kind in ("bearer-wrong", "duplicate-valid-first", "duplicate-wrong-first"):
        h.append(("Authorization", "Bearer sk-wrong-key"))
    if kind == "duplicate-wrong-first":
        h.append(("Authorization", f"Bearer {TEST_KEY}"))
    if kind == "bearer-empty":
        h.append(("Authorization", "Bearer "))
    if kind == "basic":
        h.append(("Authorization", "Basic c2stdGVzdDo="))
    if kind == "lowercase-bearer":
        h.append(("authorization", f"bearer {TEST_KEY}"))
    if kind == "x-api-key":
        h.append(("x-api-key", TEST_KEY))
    if kind == "x-api-key-wrong":
        h.append(("x-api-key", "sk-wrong-key"))
    if kind == "x-goog-api-key":
        h.append(("x-goog-api-key", TEST_KEY))
    if kind == "x-kaixu-token":
        h.append(("x-kaixu-token", TEST_KEY))
    if kind == "limited":
        h.append(("Authorization", f"Bearer {LIMITED_KEY}"))
    if kind == "huge":
        h.append(("Authorization", "Bearer " + "k" * 100_000))
    if kind == "query-key":
        probe.target += ("&" if "?" in probe.target else "?") + f"key={TEST_KEY}"
    return valid


_HEADER_MUTATIONS = (
    "smuggle-credentials",
    "bad-content-length",
    "duplicate-content-length",
    "short-content-length",
    "no-content-length",
    "chunked-garbage",
    "chunked-and-length",
    "chunked-valid",
    "gzip-garbage",
    "gzip-valid",
    "unknown-encoding",
    "content-type",
    "random-header",
    "oversized-value",
    "many-headers",
    "duplicate-host",
    "request-id",
    "expect-continue",
    "upgrade",
    "origin",
    "sdk-hints",
    "attribution-control",
)
BARE_CR_HEADERS = (
    ("X-Bare-Cr", "a\rb"),
    ("X-Kaixu-User", "user\rX-Injected: 1"),
    ("X-Bare\rCr", "v"),
    ("User-Agent", "sdk/1.0\r\x00"),
)
"""Header fields with a CR not followed by LF, which another server may read as a line break (RFC 9112 2.2)."""
HTTP_VERSIONS = ("HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "HTTP/3.0", "HTTP/0.9", "HTTP/9.9")
"""Request-line versions besides HTTP/1.1: HTTP/1.0 is served, every other one refused (HTTP/2 is served only
as HTTP/2, from its connection preface)."""


def mutate_headers(chooser: Chooser, probe: Probe) -> None:
    """Zero to three header mutations; those that break HTTP or the body's framing mark the probe malformed."""
    for _ in range(chooser.integer(0, 3)):
        kind = chooser.pick(_HEADER_MUTATIONS)
        probe.labels.append(f"header:{kind}")
        h = probe.headers
        if kind == "smuggle-credentials":
            h.extend(SMUGGLED_HEADERS)
        elif kind == "bad-content-length":
            _set(h, "Content-Length", chooser.pick(("-1", "abc", "1e3", "+5", "0x10", "99999999999999999999999")))
            probe.malformed = True
        elif kind == "duplicate-content-length":
            h.append(("Content-Length", str(len(probe.body) + 1)))
            probe.malformed = True
        elif kind == "short-content-length" and probe.body:
            _set(h, "Content-Length", str(chooser.integer(0, len(probe.body) - 1)))
            probe.malformed = True  # the rest of the body is read as the next request
        elif kind == "no-content-length":
            _drop(h, "Content-Length")
            probe.malformed = probe.malformed or bool(probe.body)
        elif kind == "chunked-garbage":
            _drop(h, "Content-Length")
            h.append(("Transfer-Encoding", "chunked"))
            probe.body = b"zz\r\n" + probe.body + b"\r\n0\r\n\r\n"
            probe.malformed = True
        elif kind == "chunked-and-length":
            h.append(("Transfer-Encoding", "chunked"))
            probe.malformed = True
        elif kind == "chunked-valid" and not _has(h, "Transfer-Encoding"):
            _drop(h, "Content-Length")
            h.append(("Transfer-Encoding", "chunked"))
            probe.body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(probe.body), probe.body) if probe.body else b"0\r\n\r\n"
        elif kind == "gzip-garbage":
            h.append(("Content-Encoding", chooser.pick(("gzip", "deflate", "br", "gzip, gzip"))))
            probe.malformed = True
        elif kind == "gzip-valid" and not _has(h, "Content-Encoding") and not _has(h, "Transfer-Encoding"):
            probe.body = gzip.compress(probe.body, mtime=0)
            _set(h, "Content-Length", str(len(probe.body)))
            h.append(("Content-Encoding", "gzip"))
        elif kind == "unknown-encoding":
            h.append(("Content-Encoding", chooser.pick(("x-unknown", "identity", "zstd", "compress"))))
            probe.malformed = True
        elif kind == "content-type":
            _drop(h, "Content-Type")
            value = chooser.pick(("text/plain", "application/json; charset=utf-16", "\x01\x02", "a" * 10_000, ""))
            h.append(("Content-Type", value))
        elif kind == "random-header":
            name = chooser.pick(("X-Foo", "x-Ünicode", "bad name", "\x7f", "x-empty", "X-" + "n" * 300, "TE"))
            value = chooser.blob(64).decode("latin-1").replace("\r", "").replace("\n", "")
            h.append((name, value))
            probe.malformed = probe.malformed or name in ("bad name", "\x7f", "x-Ünicode")
        elif kind == "oversized-value":
            h.append(("X-Big", "v" * chooser.pick((8_192, 65_536, 300_000))))
        elif kind == "many-headers":
            h.extend((f"X-Many-{i}", "v") for i in range(chooser.pick((100, 1000))))
        elif kind == "duplicate-host":
            h.append(("Host", "evil.invalid"))
            probe.malformed = True
        elif kind == "request-id":
            h.append(("X-Request-Id", chooser.pick(("", "a" * 500, "id\x01", "ü", "dup"))))
            h.append(("X-Request-Id", "second"))
        elif kind == "expect-continue":
            h.append(("Expect", "100-continue"))
        elif kind == "upgrade":
            _set(h, "Connection", "Upgrade, HTTP2-Settings")
            h.append(("Upgrade", chooser.pick(("h2c", "websocket"))))
            h.append(("HTTP2-Settings", "AAMAAABkAAQAAP__"))
        elif kind == "origin":
            h.append(("Origin", chooser.pick(("https://evil.invalid", "null", "http://127.0.0.1"))))
        elif kind == "sdk-hints":
            h.append(chooser.pick((("anthropic-version", "2023-06-01"), ("x-goog-api-client", "genai-py/1"))))
        elif kind == "attribution-control":  # refused (400): never in a ledger row (`ledger_findings`)
            h.append((chooser.pick(ATTRIBUTION_HEADERS), "v" + chooser.pick(CONTROL_CHARACTERS) + "x"))
            probe.malformed = True


def mutate_wire(chooser: Chooser, probe: Probe, door: Door, often: bool) -> None:
    """HTTP/1 framing: a request-line version (HTTP/1.0 is served, every other is refused), a bare CR in a
    header field (refused), HEAD (its answer is a head only). Drawn only for the ``wire`` and ``any`` focuses,
    so the other focuses keep the probes they always drew."""
    if chooser.chance(50 if often else 10):
        probe.version = chooser.pick(HTTP_VERSIONS)
        probe.labels.append(f"version:{probe.version}")
        if probe.version != "HTTP/1.0":
            probe.malformed = probe.refused = True
    if chooser.chance(30 if often else 5):
        probe.headers.append(chooser.pick(BARE_CR_HEADERS))
        probe.labels.append("header:bare-cr")
        probe.malformed = probe.refused = True
    if often and chooser.chance(40):
        probe.method = "HEAD"
        probe.labels.append("method:HEAD")
        probe.malformed = probe.malformed or door.method != "HEAD"


def _has(headers: list[tuple[str, str]], name: str) -> bool:
    return any(k.lower() == name.lower() for k, _ in headers)


def _drop(headers: list[tuple[str, str]], name: str) -> None:
    headers[:] = [(k, v) for k, v in headers if k.lower() != name.lower()]


def _set(headers: list[tuple[str, str]], name: str, value: str) -> None:
    _drop(headers, name)
    headers.append((name, value))


# --- paths and methods -----------------------------------------------------------------------------

RANDOM_PATHS = (
    "/",
    "*",
    "/../../etc/passwd",
    "/v1/../v1/chat/completions",
    "/v1/chat/completions/",
    "//v1/chat/completions",
    "/v1/chat/completions?x=1&key=" + TEST_KEY,
    "/v1/chat/completions?%zz",
    "/v1/chat/completions#frag",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/v1/%2e%2e/v1/chat/completions",
    "/v1/chat%2Fcompletions",
    "/v1beta/models/..%2f..%2fx:generateContent",
    "/v1beta/models/gemini-test:generateContent?key=" + TEST_KEY + "&alt=sse",
    "/v1beta/models/gemini-test:nope",
    "/v1beta/models/:generateContent",
    "/v1/messages/../chat/completions",
    "/.netlify/functions/gateway-stream/../gateway-chat",
    "/.netlify/functions/",
    "/api/ai/",
    "/_kaixu/relay/00000000000000000000000000000000",
    "/_fake/requests",
    "/v1/ché",
    "/health?x=1",
    "/" + "a" * 10_000,
    "/v1/chat/completions?" + "q" * 60_000,
    "http://127.0.0.1:9/v1/chat/completions",
    "http://127.0.0.2:1/v1/chat/completions",
)
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "post", "FOO", "PRI")


def fill_door(chooser: Chooser, door: Door, model: str) -> str:
    path = door.path
    if "{backend}" in path:
        path = path.replace("{backend}", chooser.pick(BACKENDS))
    if "{model}" in path:
        path = path.replace("{model}", model)
    if path.endswith(":streamGenerateContent") and chooser.chance(70):
        path += "?alt=sse"
    return path


def probe(chooser: Chooser, focus: str = "any") -> Probe:
    """One hostile request. ``focus`` weights the generator: ``body``, ``headers``, ``target``, ``wire`` (HTTP/1
    framing: versions, bare CRs, HEAD) or ``any``; ``limits`` sends chat bodies whose one fault is an output limit
    kaixu must refuse (``OUTPUT_LIMITS``)."""
    doors = BODY_DOORS if focus == "body" else CHAT_DOORS if focus == "limits" else DOORS
    door = chooser.pick(doors)
    hostile_name = chooser.chance(30 if focus == "target" else 15)
    model = hostile_model(chooser) if hostile_name else chooser.pick(LIVE_MODELS + DEAD_MODELS)
    if door.front == "gemini" and hostile_name:
        model = model.replace(" ", "%20")  # a raw space would only break the request line
    target = fill_door(chooser, door, model)
    method = door.method
    result = Probe(method, target, [("Host", "127.0.0.1")], b"")
    if hostile_name:
        result.labels.append("model:hostile")
        result.malformed = True
    if focus == "target" and chooser.chance(50):
        result.target = chooser.pick(RANDOM_PATHS)
        result.labels.append("target:random")
        result.malformed = True
    if focus in ("target", "any") and chooser.chance(25):
        result.method = chooser.pick(METHODS)
        result.labels.append(f"method:{result.method}")
        result.malformed = result.malformed or result.method != door.method
    if focus in ("wire", "any"):
        mutate_wire(chooser, result, door, often=focus == "wire")
    authenticated = add_auth(chooser, result)
    if door.method == "POST" or chooser.chance(20):
        result.body = (
            hostile_body(chooser, door, model, result, limits=focus == "limits")
            if focus != "headers" or chooser.chance(30)
            else b""
        )
        if focus == "headers" and not result.body:
            result.body = _dumps(valid_body(door, model))
        result.headers.append(("Content-Type", "application/json"))
        result.headers.append(("Content-Length", str(len(result.body))))
    routable = _routable(result.body)  # judged on the body as meant, before any change to its framing
    if focus in ("headers", "any") or chooser.chance(30):
        mutate_headers(chooser, result)
    if not _has(result.headers, "Connection"):
        result.headers.append(("Connection", "close"))
    dead = model in DEAD_MODELS or any(result.target.startswith(f"/v1/{b}/") for b in ("dead", "nokey"))
    dead = dead or _body_model(result.body) in DEAD_MODELS  # a duplicate `model` key: JSON's last one wins
    result.dead_upstream = authenticated and dead and routable
    # the door's own request (not another method or path) with a bad output limit: whatever else, kaixu refuses it
    bad_limit = "body:bad-output-limit" in result.labels and result.method == door.method
    result.refused = result.refused or (bad_limit and "target:random" not in result.labels)
    return result


def _body_model(body: bytes) -> object:
    """The model a body names as kaixu reads it (the last of duplicate keys), or None."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # bodies nested past Python's stack are among the probes
        return None
    return parsed.get("model") if isinstance(parsed, dict) else None


def _routable(body: bytes) -> bool:
    """Whether a gateway could read this body as a request at all (a JSON object), however wrong its fields."""
    try:
        return isinstance(json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body), dict)
    except (ValueError, RecursionError, OSError, EOFError):
        return False


def raw_probes() -> list[Probe]:
    """Requests no generator assembles: broken request lines and header blocks, sent verbatim."""
    refused = [  # served by mitmproxy as they came, before kaixu refused them
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.2\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/3.0\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/0.9\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\rX-Injected: 1\r\n\r\n",
        b"HEAD /health HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    ]
    blobs = [
        b"\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nno-colon-here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n : empty-name\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  folded\r\n\r\n",
        b"G\x00ET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32),  # a TLS ClientHello on the plain port
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 1_000_000 + b"\r\n\r\n",
    ]
    return [
        Probe("", "", [], b"", [f"raw:{i}"], malformed=True, raw=blob, refused=blob in refused)
        for i, blob in enumerate(refused + blobs)
    ]


def text_probes() -> list[Probe]:
    """Well-formed requests whose text no UTF-8 can hold: a lone surrogate, as the JSON escape `\\ud800` (which
    JSON allows), at every chat door, streamed or not, on a model of each provider format. The fake echoes the
    text, so each provider's answer carries it back to kaixu, which translates it to the door's format or
    forwards it. Too few of the generator's probes combine all that to find what goes wrong there."""
    probes = []
    for door in BODY_DOORS:
        if door.operation != "chat" or "{backend}" in door.path:
            continue
        # each way of asking for a stream: a body flag, Gemini's SSE and JSON-array framings (the path's action)
        streams: tuple[tuple[bool, str], ...] = ((False, ""),)
        if door.front in ("openai", "anthropic", "responses"):
            streams = ((False, ""), (True, ""))
        elif door.path.endswith(":streamGenerateContent"):
            streams = ((False, ""), (False, "?alt=sse"))
        for model in ("gpt-4o-mini", "claude-test", "gemini-test"):
            for stream, query in streams:
                body = valid_body(door, model) | ({"stream": True} if stream else {})
                raw = _dumps(body).replace(b'"hi"', b'"hi \\ud800 there \\udfff"')
                headers = [("Host", "127.0.0.1"), ("Authorization", f"Bearer {TEST_KEY}"),
                           ("Content-Type", "application/json"), ("Content-Length", str(len(raw))),
                           ("Connection", "close")]  # fmt: skip
                labels = ["text:lone-surrogate", f"model:{model}"] + (["stream"] if stream else [])
                probes.append(Probe("POST", door.path.replace("{model}", model) + query, headers, raw, labels))
    return probes


# --------------------------------------------------------------------------------------------------
# The raw client
# --------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes
    seconds: float
    trailing: bytes | None = b""
    """What the server sent after the answer until it closed (read when the request asked to close; None: it did
    not close within the timeout)."""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class NoAnswer(Exception):
    """No complete HTTP response: ``kind`` is ``hang`` (nothing within the timeout) or ``closed``."""

    def __init__(self, kind: str, detail: str, received: bytes = b"") -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.received = kind, detail, received


def exchange(host: str, port: int, data: bytes, head_only: bool = False, timeout: float = ANSWER_TIMEOUT_S) -> Answer:
    """Send ``data`` on a new connection and read one complete response (interim 1xx answers skipped)."""
    with RawConnection(host, port, timeout) as conn:
        conn.send(data)
        return conn.answer(head_only)


class RawConnection:
    """One client connection, raw: bytes out, answers read one at a time, so a test can see what a kept-alive
    connection carries after an answer (a HEAD's head and nothing more, the next answer, the server's close)."""

    def __init__(self, host: str, port: int, timeout: float = ANSWER_TIMEOUT_S) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.reader = _Reader(self.sock, time.monotonic() + timeout, timeout)

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        # The server may answer (and close) before reading everything: then read what it said.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            try:
                self.sock.sendall(data)
            except TimeoutError:
                raise NoAnswer("hang", f"the request was not read within {self.timeout:g} s") from None

    def answer(self, head_only: bool = False) -> Answer:
        """The next complete response on the connection, within the timeout; ``head_only`` for an answer to
        HEAD (its body, if the server wrongly sent one, stays unread: the next answer then starts with it)."""
        started = time.monotonic()
        reads = self.reader
        reads.deadline = started + self.timeout
        while True:
            head = reads.until(b"\r\n\r\n")
            status, reason, headers = _parse_head(head)
            if 100 <= status < 200 and status != 101:
                continue
            break
        lengths = [v for k, v in headers if k.lower() == "content-length"]
        chunked = any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers)
        if head_only or status in (101, 204, 304):
            body = b""
        elif chunked:
            body = reads.chunked()
        elif lengths:
            body = reads.exactly(int(lengths[0]))
        else:
            body = reads.to_eof()
        return Answer(status, reason, headers, body, head + body, time.monotonic() - started)

    def rest(self) -> bytes:
        """Everything the server still sends until it closes the connection: NoAnswer("hang") if it has not
        closed within the timeout."""
        self.reader.deadline = time.monotonic() + self.timeout
        return self.reader.to_eof()


def send(host: str, port: int, probe: Probe) -> Answer | NoAnswer:
    """One probe on a new connection: its answer, or why there was none; for a probe that asked to close, also
    what came after the answer (nothing, and then the close, is right: an answer to HEAD is its head only)."""
    try:
        with RawConnection(host, port) as conn:
            conn.send(probe.encode())
            answer = conn.answer(head_only=probe.is_head)
            if probe.asks_close:
                try:
                    answer.trailing = conn.rest()
                except NoAnswer:
                    answer.trailing = None
            return answer
    except NoAnswer as exc:
        return exc
    except OSError as exc:
        return NoAnswer("refused", repr(exc))


class _Reader:
    """Reads a response from a socket against one deadline for the whole answer."""

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        self.sock, self.deadline, self.timeout = sock, deadline, timeout
        self.buffer = bytearray()

    def _more(self) -> bool:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise NoAnswer("hang", f"no complete answer within {self.timeout:g} s", bytes(self.buffer))
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise NoAnswer("hang", f"no complete answer within {self.timeout:g} s", bytes(self.buffer)) from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not self._more():
                raise NoAnswer("closed", "connection closed before a complete response head", bytes(self.buffer))
        index = self.buffer.index(marker) + len(marker)
        head = bytes(self.buffer[:index])
        del self.buffer[:index]
        return head

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._more():
                raise NoAnswer("closed", f"body cut at {len(self.buffer)} of {size} bytes", bytes(self.buffer))
        body = bytes(self.buffer[:size])
        del self.buffer[:size]
        return body

    def to_eof(self) -> bytes:
        while self._more():
            pass
        body = bytes(self.buffer)
        self.buffer.clear()
        return body

    def chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_line = self.until(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
            except ValueError:
                raise NoAnswer("closed", f"bad chunk size {size_line[:40]!r}", bytes(body)) from None
            if size == 0:
                self.until(b"\r\n")  # no trailers expected
                return bytes(body)
            body += self.exactly(size)
            self.exactly(2)


def _parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise NoAnswer("closed", f"not an HTTP response: {lines[0][:80]!r}", head)
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


# --------------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One broken rule: ``rule`` groups findings in reports, ``detail`` says what was seen."""

    rule: str
    detail: str
    probe: str


_GEMINI_ACTION = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/[^/:]+:[A-Za-z]+$")
_MODELS_PATH = re.compile(r"^/v1/models(?:/[^/:]+)?$")


def request_path(target: str) -> str:
    if target.startswith(("http://", "https://")):
        return urlsplit(target).path or "/"
    return target.partition("?")[0].partition("#")[0]


def expected_fronts(probe: Probe) -> set[str]:
    """The error shapes an answer to this probe may have (documented in docs/compatibility.md)."""
    if probe.raw is not None:
        text = probe.raw.decode("latin-1")
        return fronts_for_path(request_path(text.split(" ")[1]) if text.count(" ") >= 2 else "") | {"openai"}
    path = request_path(probe.target)
    broken = re.search(r"[\r\n\x00 ]", path)
    if broken is not None:  # the request line breaks there: a server may not know the path at all
        return fronts_for_path(path[: broken.start()]) | {"openai"}
    return fronts_for_path(path)


def fronts_for_path(path: str) -> set[str]:
    door = PATHS.get(path)
    if _MODELS_PATH.match(path):  # shared by three SDKs: answered in the shape of the one asking
        return {"openai", "anthropic", "gemini"}
    if door is not None:
        return {door.front}
    if path.startswith(("/v1beta/", "/v1alpha/")) or _GEMINI_ACTION.match(path):
        return {"gemini"}
    if path.startswith("/v1/messages"):
        return {"anthropic"}
    if path.startswith("/.netlify/functions/"):
        return {"gateway13"}
    if path.startswith("/api/ai/"):
        return {"pulse"}
    return {"openai"}


def shape_problem(front: str, status: int, body: Any) -> str | None:
    """What is wrong with an error body for this front door, or None."""
    if not isinstance(body, dict):
        return f"not an object: {type(body).__name__}"
    error = body.get("error")
    if front in ("openai", "responses"):  # the Responses API answers errors in OpenAI's shape
        ok = isinstance(error, dict) and isinstance(error.get("message"), str)
        return None if ok else 'expected {"error": {"message": ...}}'
    if front == "anthropic":
        ok = body.get("type") == "error" and isinstance(error, dict) and isinstance(error.get("message"), str)
        return None if ok else 'expected {"type": "error", "error": {"type", "message"}}'
    if front == "gemini":
        fields = (error.get("code"), error.get("message"), error.get("status")) if isinstance(error, dict) else ()
        ok = len(fields) == 3 and fields[0] == status and isinstance(fields[1], str) and isinstance(fields[2], str)
        return None if ok else 'expected {"error": {"code", "message", "status"}}'
    if front == "kaixu_gate":
        return None if body.get("ok") is False and isinstance(error, str) else 'expected {"ok": false, "error": "..."}'
    if front == "pulse":
        ok = body.get("success") is False and isinstance(error, str)
        return None if ok else 'expected {"success": false, "error": "..."}'
    return None if isinstance(error, str) else 'expected {"error": "..."}'  # gateway13


def closing_is_an_answer(probe: Probe) -> bool:
    """Requests a server may answer by closing the connection: bytes that are not HTTP/1 (TLS, an HTTP/2
    preface), no request line at all, and a body announced and never sent in full (kaixu's client body
    timeout closes those; a chunk of 2^72 bytes included)."""
    raw = probe.raw or b""
    if raw[:3] in (b"\x16\x03\x01", b"PRI", b"\r\n\r") or b"\r\n\r\nffffffffffffffffff" in raw:
        return True
    chunked = any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in probe.headers)
    if chunked and not probe.body.endswith(b"0\r\n\r\n"):
        return True  # a chunked body without its last chunk never ends
    lengths = {v.strip() for k, v in probe.headers if k.lower() == "content-length"}
    if not chunked and len(lengths) == 1 and (length := lengths.pop()).isdigit() and int(length) > len(probe.body):
        return True  # fewer bytes than announced: the rest never comes
    return "header:long-content-length" in probe.labels


def judge(probe: Probe, answer: Answer | NoAnswer) -> list[Finding]:
    """Every rule an answer to a hostile request must keep."""
    where = probe.describe()
    if isinstance(answer, NoAnswer) and answer.kind == "closed" and closing_is_an_answer(probe):
        return []
    if isinstance(answer, NoAnswer):
        return [Finding(f"no answer ({answer.kind})", f"{answer.detail}; got {answer.received[:120]!r}", where)]
    found: list[Finding] = []

    def fail(rule: str, detail: str) -> None:
        found.append(Finding(rule, f"HTTP {answer.status}: {detail}", where))

    status = answer.status
    if not 100 <= status < 600:
        fail("status outside 100-599", answer.reason)
    # A JSON object with wrong fields routed to a dead provider may be a 502: pass-through bodies are judged by
    # the provider (kaixu checks only what it reads: model, stream), and that provider could not be reached.
    if status >= 500 and not probe.dead_upstream:
        fail("5xx for a client fault" if probe.malformed else "5xx without a dead provider", _snippet(answer.body))
    if answer.header("x-request-id") is None:
        fail("no x-request-id header", _snippet(answer.raw))
    if probe.refused and not 400 <= status < 500:
        fail("a request kaixu must refuse (broken HTTP, a bad output limit) was not a 4xx", _snippet(answer.raw))
    if probe.asks_close and "close" not in (answer.header("connection") or "").lower():
        fail("asked to close: the answer does not say connection: close", _snippet(answer.raw))
    if answer.trailing is None:
        fail("asked to close: the connection stayed open", _snippet(answer.raw))
    elif answer.trailing:
        rule = "an answer to HEAD carries a body" if probe.is_head else "bytes after a complete answer"
        fail(rule, _snippet(answer.trailing))
    if probe.is_head or (status == 204 and probe.method == "OPTIONS"):
        return found
    content_type = (answer.header("content-type") or "").lower()
    if status == 200 and content_type.startswith("text/event-stream"):
        try:
            events = answer.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            fail("stream is not UTF-8", f"{exc}: {_snippet(answer.body)}")
            return found
        if "could not translate the stream" in events:  # kaixu's own terminal event (docs/reliability.md)
            fail("a stream kaixu could not translate", _snippet(answer.body[-400:], 400))
        return found
    if not content_type.startswith("application/json"):
        fail("not application/json", f"content-type {content_type!r}: {_snippet(answer.body)}")
        return found
    try:
        body = json.loads(answer.body)
    except ValueError as exc:
        fail("body is not JSON", f"{exc}: {_snippet(answer.body)}")
        return found
    if status >= 400:
        fronts = expected_fronts(probe)
        problems = {front: shape_problem(front, status, body) for front in fronts}
        if all(problems.values()):
            fail(
                "wrong error shape",
                f"{'/'.join(sorted(fronts))}: {next(iter(problems.values()))}: {_snippet(answer.body)}",
            )
    return found


def _snippet(data: bytes, limit: int = 200) -> str:
    text = data[:limit].decode("utf-8", "replace")
    return text + (f"...<{len(data)} bytes>" if len(data) > limit else "")


_UPSTREAM_PATHS = {
    "/v1/chat/completions": "openai",
    "/v1/embeddings": "openai",
    "/v1/messages": "anthropic",
    "/v1/messages/count_tokens": "anthropic",
}
_UPSTREAM_GEMINI = re.compile(
    r"^/v1beta/models/(?P<model>(?:[A-Za-z0-9._-]|%2F)+):(?:(?:generateContent|countTokens|embedContent|batchEmbedContents)"
    r"|streamGenerateContent\?alt=sse)$"
)
_CREDENTIAL_HEADERS = {"openai": "authorization", "anthropic": "x-api-key", "gemini": "x-goog-api-key"}
_EXPECTED_CREDENTIAL = {
    "openai": f"Bearer {UPSTREAM_KEYS['openai']}",
    "anthropic": UPSTREAM_KEYS["anthropic"],
    "gemini": UPSTREAM_KEYS["gemini"],
}


def judge_forwarded(path: str, headers: dict[str, str], where: str) -> list[Finding]:
    """What reached the provider: a real endpoint of a routed model, the provider's key and nothing of the
    client's credentials."""
    found: list[Finding] = []
    wire = _UPSTREAM_PATHS.get(path)
    match = _UPSTREAM_GEMINI.match(path)
    if match is not None:
        model = match["model"]
        if ".." in model or not (model in UPSTREAM_MODELS or fnmatch.fnmatchcase(model, "glob-*")):
            found.append(Finding("provider got an unrouted model path", repr(path[:200]), where))
        wire = "gemini"
    if wire is None:
        found.append(Finding("provider got a path that is no endpoint", repr(path[:200]), where))
    for name, _ in SMUGGLED_HEADERS:
        if name in headers:
            found.append(Finding(f"provider got the client's {name} header", repr(headers[name][:80]), where))
    for name, value in headers.items():
        for secret in CLIENT_SECRETS:
            if secret in value or secret in name:
                found.append(Finding("provider got a client credential", f"{name}: {value[:80]!r}", where))
    if any(secret in path for secret in CLIENT_SECRETS):
        found.append(Finding("provider got a client credential", f"in the path {path[:200]!r}", where))
    if wire is not None:
        expected = _CREDENTIAL_HEADERS[wire]
        if headers.get(expected) != _EXPECTED_CREDENTIAL[wire]:
            found.append(Finding("provider got the wrong credential", f"{expected}: {headers.get(expected)!r}", where))
        extra = [h for h in _CREDENTIAL_HEADERS.values() if h != expected and h in headers]
        if extra:
            found.append(Finding("provider got extra credential headers", repr(extra), where))
    return found


LEDGER_CLIENT_TEXT = ("team", "customer", "user_id", "app", "project", "client", "attributes")
"""The ledger's columns that hold what a client says about itself (`attributes` as JSON)."""
_NOT_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def ledger_findings(ledger: Path) -> list[Finding]:
    """What the ledger file holds that no client may put there: a control character (or a byte that was not
    UTF-8) in what a client says about itself, raw or inside the `attributes` JSON."""
    if not ledger.exists():
        return []
    columns = ", ".join(LEDGER_CLIENT_TEXT)
    with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10)) as db:
        rows = db.execute(f"SELECT request_id, {columns} FROM requests").fetchall()
    found = []
    for request_id, *values in rows:
        for column, value in zip(LEDGER_CLIENT_TEXT, values, strict=True):
            if not isinstance(value, str):
                continue
            texts = [value]
            if column == "attributes":
                with contextlib.suppress(ValueError):
                    texts += [str(v) for v in json.loads(value).values()]
            if any(_NOT_TEXT.search(text) for text in texts):
                found.append(Finding("a control character in the ledger", f"{column}: {value[:120]!r}", request_id))
    return found


def summarize(findings: Sequence[Finding], examples: int = 3) -> str:
    """Findings grouped by rule, with counts and a few examples each: the report a failing test prints."""
    rules: dict[str, list[Finding]] = {}
    for item in findings:
        rules.setdefault(item.rule, []).append(item)
    lines = []
    for rule, items in sorted(rules.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"{rule}: {len(items)}")
        seen: set[str] = set()
        for item in items:
            if item.detail[:60] in seen:
                continue
            seen.add(item.detail[:60])
            lines.append(f"    {item.detail[:300]}\n      <- {item.probe[:400]}")
            if len(seen) >= examples:
                break
    return "\n".join(lines)
