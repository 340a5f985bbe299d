"""`kaixu env CLIENT`: the exact lines a person pastes to send a client through a forward listener
(docs/forward-proxy.md). Each client's own way to be told of a proxy and of a CA:

* Node (Claude Code, Gemini CLI, the Node SDKs) adds `NODE_EXTRA_CA_CERTS` to its built-in roots; Claude Code and
  Gemini CLI read `HTTPS_PROXY` themselves, Node's own `fetch`/`http` only with `NODE_USE_ENV_PROXY=1`
  (Node 22.21+ / 24.5+).
* Python (httpx under the OpenAI, Anthropic and Google SDKs; requests) reads `HTTPS_PROXY`, and `SSL_CERT_FILE` /
  `REQUESTS_CA_BUNDLE`, which *replace* the default roots: they get a bundle of certifi's roots plus kaixu's CA,
  so that the hosts kaixu tunnels still verify.
* Codex (Rust) reads `CODEX_CA_CERTIFICATE` (then `SSL_CERT_FILE`), also a replacement: the bundle too.
* curl takes `-x` and `--cacert`, or `HTTPS_PROXY` and `CURL_CA_BUNDLE`.

The kaixu key goes in the proxy URL's password (every call of the tool is then billed to it, whatever provider
key the tool sends) and, where the tool needs a key to start, in its usual variable too."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True, slots=True)
class ClientEnv:
    title: str
    lines: tuple[str, ...]
    """Shell lines with {proxy}, {ca} (kaixu's CA certificate), {bundle} (certifi's roots + kaixu's CA), {key}."""
    note: str = ""


_PROXY = "export HTTPS_PROXY={proxy}"
CLIENTS: dict[str, ClientEnv] = {
    "claude-code": ClientEnv(
        "Claude Code",
        (_PROXY, "export NODE_EXTRA_CA_CERTS={ca}", "export ANTHROPIC_API_KEY={key}", "unset ANTHROPIC_BASE_URL"),
        "no base URL: it calls api.anthropic.com, which kaixu intercepts",
    ),
    "codex": ClientEnv(
        "Codex CLI",
        (_PROXY, "export CODEX_CA_CERTIFICATE={bundle}", "export OPENAI_API_KEY={key}"),
        "no base URL: it calls api.openai.com's Responses API (/v1/responses), kaixu's Responses door",
    ),
    "gemini-cli": ClientEnv(
        "Gemini CLI",
        (_PROXY, "export NODE_EXTRA_CA_CERTS={ca}", "export GEMINI_API_KEY={key}", "unset GOOGLE_GEMINI_BASE_URL"),
        'with an API key: ~/.gemini/settings.json says {"security": {"auth": {"selectedType": "gemini-api-key"}}}',
    ),
    "python": ClientEnv(
        "Python SDKs (openai, anthropic, google-genai; httpx, requests)",
        (_PROXY, "export SSL_CERT_FILE={bundle}", "export REQUESTS_CA_BUNDLE={bundle}"),
        "an SDK's own key variable (OPENAI_API_KEY...) may stay as it is: the proxy password names the caller",
    ),
    "node": ClientEnv(
        "Node SDKs (openai, @anthropic-ai/sdk, @google/genai)",
        (_PROXY, "export NODE_USE_ENV_PROXY=1", "export NODE_EXTRA_CA_CERTS={ca}"),
        "NODE_USE_ENV_PROXY needs Node 22.21+ or 24.5+ (older: pass a proxy agent to the SDK's client)",
    ),
    "curl": ClientEnv(
        "curl",
        (_PROXY, "export CURL_CA_BUNDLE={bundle}"),
        "or per call: curl -x {proxy} --cacert {ca} https://api.openai.com/v1/models",
    ),
}


def proxy_url(host: str, port: int, key: str) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://app:{quote(key, safe='')}@{shown}:{port}"


def render(client: str, *, proxy: str, ca: str, bundle: str, key: str) -> str:
    """The lines to paste for `client` (a key of CLIENTS), with a comment saying what they are for."""
    spec = CLIENTS[client]
    values = {
        "proxy": shlex.quote(proxy),
        "ca": shlex.quote(ca),
        "bundle": shlex.quote(bundle),
        "key": shlex.quote(key),
    }
    out = [f"# {spec.title} through kaixu's forward proxy (docs/forward-proxy.md)"]
    out += [_fill(line, values) for line in spec.lines]
    if spec.note:
        out.append("# " + _fill(spec.note, values))
    return "\n".join(out)


def _fill(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text
