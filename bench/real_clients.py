"""Run real coding agents (Claude Code, Gemini CLI, Codex CLI) non-interactively against kaixu, and report what
works.

Why a script and not a test: the agents come from the npm registry (hundreds of MB, pinned versions), so this
is not part of ``make test``. It answers one question the unit suite cannot: does a real agent, sending all
the fields it really sends (thinking settings, mid-conversation system messages, two dozen tools, beta
headers), get through kaixu — on the mock, on a route translated to another wire format, and through a tool
turn?

What it does, all on 127.0.0.1:

* installs the pinned CLIs with ``npm install --prefix <tmp>`` (node >= 20 must be installed: it is installed
  with apt-get, as root or through sudo, when missing);
* starts the fake provider (tests/fakes/provider.py) once, and for each case a fresh ``python -m kaixu run``
  (bench/overhead.py's helpers) on a policy routing the CLI's models to that case's provider, with the access
  log on;
* runs the CLI once per case with a throwaway ``HOME`` (its settings files written there), telemetry and
  auto-update off, every base URL pointed at kaixu and ``HTTP(S)_PROXY`` pointed at a dead loopback port, so
  nothing can reach a real API; each run is bounded by ``--timeout`` (120 s).

Cases, per CLI: its default model on the built-in mock; a thinking model on a route translated to another
wire format (Claude Code -> an OpenAI-format provider, Gemini CLI -> an Anthropic-format one); and a tool
turn: the prompt carries the fake's ``<<call NAME {json}>>`` marker, so the "model" asks the CLI to read a
file of the workspace, and the case passes when the file's secret comes back in the CLI's answer. Claude Code
(and Gemini CLI) also run with no base URL at all, only ``HTTPS_PROXY`` (kaixu's forward listener,
``forward.others: deny``) and ``NODE_EXTRA_CA_CERTS`` (kaixu's CA): they call their provider's host, which kaixu
intercepts and routes to the mock; the case passes when kaixu logged their API requests under the key they sent
(docs/forward-proxy.md).

A case passes when the CLI exits 0, reports no error in its JSON output, and every request kaixu logged for
it was answered 2xx. Results: a markdown table on stdout, ``bench/results/real-clients-<timestamp>.json``
and the marked section of ``docs/clients.md``. Exit status: 0 all passed, 2 some case failed, 1 the bench
could not run.

    .venv/bin/python bench/real_clients.py [--only claude,gemini] [--keep] [--no-doc] [--timeout 120]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from overhead import HOST, RESULTS_DIR, ROOT, UPSTREAM_KEY, BenchError, start_fake, start_kaixu, update_doc

DOC_PATH = ROOT / "docs" / "clients.md"
DOC_BEGIN = "<!-- real-clients:begin -->"
DOC_END = "<!-- real-clients:end -->"
CLIENT_KEY = "sk-kaixu-real-clients"  # the virtual key the CLIs present to kaixu
DEAD_PROXY = "http://127.0.0.1:9"  # where any request that is not for kaixu goes: nothing listens there
NODE_MAJOR = 20  # Gemini CLI's engines field
INSTALL_TIMEOUT_S = 900
KAIXU_ARGS = ("--log-level", "info", "--access-log")
ACCESS = re.compile(r" kaixu\.access: (.*)$")
STATUS = re.compile(r"^\S+ \S+ \S+ \S+ \S+ (\d{3}) ")


@dataclass(frozen=True)
class Client:
    """A coding agent from the npm registry, pinned."""

    name: str
    title: str
    package: str
    version: str
    bin: str
    models: str  # the policy's model glob for every model this CLI asks for (its side requests included)


CLIENTS = {
    "claude": Client("claude", "Claude Code", "@anthropic-ai/claude-code", "2.1.197", "claude", "claude-*"),
    "gemini": Client("gemini", "Gemini CLI", "@google/gemini-cli", "0.61.0", "gemini", "gemini-*"),
    # Codex speaks only the Responses API (`wire_api = "responses"`); its side requests name other models too
    "codex": Client("codex", "Codex CLI", "@openai/codex", "0.171.0", "codex", "*"),
}

# The policy's providers: kaixu's mock, and the fake provider in each wire format.
PROVIDERS = {
    "mock": "mock (built in)",
    "fake-openai": "OpenAI format (fake provider)",
    "fake-anthropic": "Anthropic format (fake provider)",
    "fake-gemini": "Gemini format (fake provider)",
}


@dataclass(frozen=True)
class Case:
    """One CLI run: which provider the CLI's models are routed to, which model it is told to use, what it asks."""

    name: str
    client: str
    provider: str
    model: str | None  # None: the CLI's default
    tool: bool = False  # a tool turn: read a file of the workspace
    forward: bool = False  # no base URL: HTTPS_PROXY (kaixu's forward listener) and kaixu's CA


CASES = (
    Case("claude default model, mock", "claude", "mock", None),
    Case("claude thinking, translated to OpenAI", "claude", "fake-openai", "claude-opus-4-8"),
    Case("claude tool turn (Read)", "claude", "fake-anthropic", None, tool=True),
    Case("claude via HTTPS_PROXY, no base URL, mock", "claude", "mock", None, forward=True),
    Case("gemini default model, mock", "gemini", "mock", None),
    Case("gemini thinking, translated to Anthropic", "gemini", "fake-anthropic", "gemini-3.1-pro-preview"),
    Case("gemini tool turn (read_file)", "gemini", "fake-gemini", None, tool=True),
    Case("codex default model, mock", "codex", "mock", None),
    Case("codex, translated to Anthropic", "codex", "fake-anthropic", None),
    Case("codex, translated to Gemini", "codex", "fake-gemini", None),
    Case("codex, translated to OpenAI chat completions", "codex", "fake-openai", None),
    Case(
        "codex tool turn (exec, a free-form tool), translated to Anthropic", "codex", "fake-anthropic", None, tool=True
    ),
    Case("gemini via HTTPS_PROXY, no base URL, mock", "gemini", "mock", None, forward=True),
)
TOOL_NAMES = {"claude": "Read", "gemini": "read_file", "codex": "exec"}
FRONTS = {"claude": "Anthropic", "gemini": "Gemini", "codex": "OpenAI Responses"}
# a forward case's API calls, in the access log
API_PATHS = {"claude": " /v1/messages", "gemini": " /v1beta/models/", "codex": " /v1/responses"}
FORWARD_HOST = "127.0.0.2"  # the forward listener's (two port-0 listeners need two hosts)


@dataclass
class CaseResult:
    name: str
    client: str
    route: str
    model: str
    passed: bool
    exit_code: int | None  # None: killed at the timeout
    seconds: float
    answer: str  # what the CLI answered (or its own error message)
    why: str  # empty when passed
    access_log: list[str] = field(default_factory=list)
    cli_stderr_tail: str = ""
    kaixu_errors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# node and the CLIs
# --------------------------------------------------------------------------------------------------


def ensure_node() -> str:
    """node and npm are Debian packages: install them on first use (as root, or through sudo), like wrk."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        if sudo and shutil.which("sudo") is None:
            raise BenchError("node and npm are missing: install them with `apt-get install -y nodejs npm`")
        print("node/npm not found: installing them with apt-get (nodejs npm)", file=sys.stderr)
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "nodejs", "npm"], check=True)
        if shutil.which("node") is None or shutil.which("npm") is None:
            raise BenchError("apt-get install nodejs npm succeeded but node or npm is not on PATH")
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = int(version.lstrip("v").split(".")[0])
    if major < NODE_MAJOR:
        raise BenchError(f"node {version} is too old: Gemini CLI needs node >= {NODE_MAJOR}")
    return version


def install(clients: list[Client], prefix: Path) -> dict[str, Path]:
    """``npm install --prefix`` the pinned packages; returns each CLI's executable."""
    specs = [f"{c.package}@{c.version}" for c in clients]
    print(f"npm install {' '.join(specs)} (into {prefix})", file=sys.stderr)
    cmd = ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel", "error", *specs]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        raise BenchError(f"npm install failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    bins = {c.name: prefix / "node_modules" / ".bin" / c.bin for c in clients}
    for path in bins.values():
        if not path.exists():
            raise BenchError(f"npm installed no {path.name} executable at {path}")
    return bins


# --------------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------------


def policy(client: Client, provider: str, fake_port: int, forward: bool = False) -> str:
    """Every model the CLI asks for goes to the case's provider (the only one); one virtual key. `forward`: a
    forward listener too, that refuses every host but the providers' (nothing can leave)."""
    fake = f"http://{HOST}:{fake_port}"
    providers = {
        "mock": {"kind": "mock"},
        "fake-openai": {"kind": "openai", "base_url": fake + "/v1", "api_key": UPSTREAM_KEY},
        "fake-anthropic": {"kind": "anthropic", "base_url": fake, "api_key": UPSTREAM_KEY},
        "fake-gemini": {"kind": "gemini", "base_url": fake, "api_key": UPSTREAM_KEY},
    }
    doc = {
        "version": 1,
        "listen": [{"host": HOST, "port": 0}],
        "store": {"sqlite": ":memory:"},
        "limits": {"upstream_timeout_s": 60},
        "providers": {provider: providers[provider]},
        "models": {client.models: {"route": [{"provider": provider}]}},
        "keys": [{"name": "real-clients", "hash": "sha256:" + hashlib.sha256(CLIENT_KEY.encode()).hexdigest()}],
    }
    if forward:
        doc["listen"] = [{"host": HOST, "port": 0}, {"host": FORWARD_HOST, "port": 0, "mode": "forward"}]
        doc["forward"] = {"others": "deny"}
    return json.dumps(doc, indent=2)  # JSON is YAML


def base_env(home: Path) -> dict[str, str]:
    """A clean environment (nothing of the caller's keys or settings): node on PATH, a throwaway HOME, and
    every proxy variable pointed at a dead loopback port, loopback itself excepted."""
    node_dir = str(Path(shutil.which("node") or "/usr/bin/node").parent)
    env = {
        "PATH": f"{node_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "LANG": "C.UTF-8",
        "TERM": "xterm-256color",  # "dumb" makes Gemini CLI print warnings about the terminal
        "NO_COLOR": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env[name] = DEAD_PROXY
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    return env


def claude_run(exe: Path, url: str, home: Path, case: Case, prompt: str) -> tuple[list[str], dict[str, str]]:
    bases = {
        "ANTHROPIC_BASE_URL": url,
        # never used with an API key, pointed at kaixu anyway so no request can leave loopback
        "ANTHROPIC_BEDROCK_BASE_URL": url,
        "ANTHROPIC_VERTEX_BASE_URL": url,
        "ANTHROPIC_FOUNDRY_BASE_URL": url,
    }
    env = (
        base_env(home)
        | ({} if case.forward else bases)
        | {  # forward: `url` is the proxy (run_case)
            "ANTHROPIC_API_KEY": CLIENT_KEY,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_AUTOUPDATER": "1",
        }
    )
    (home / ".claude").mkdir(exist_ok=True)
    settings = {"env": {"DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1"}, "autoUpdates": False}
    (home / ".claude" / "settings.json").write_text(json.dumps(settings, indent=2))
    cmd = [str(exe), "-p", prompt, "--output-format", "json"]
    if case.model:
        cmd += ["--model", case.model]
    if case.tool:
        cmd += ["--allowedTools", TOOL_NAMES["claude"]]
    return cmd, env


def gemini_run(exe: Path, url: str, home: Path, case: Case, prompt: str) -> tuple[list[str], dict[str, str]]:
    bases = {"GOOGLE_GEMINI_BASE_URL": url, "GOOGLE_VERTEX_BASE_URL": url}
    env = (
        base_env(home)
        | ({} if case.forward else bases)
        | {  # forward: `url` is the proxy (run_case)
            "GEMINI_API_KEY": CLIENT_KEY,
            "GEMINI_CLI_TRUST_WORKSPACE": "true",
            "GEMINI_TELEMETRY_ENABLED": "false",
        }
    )
    # With a base URL, Gemini CLI picks an auth type it then rejects unless the settings name the API key.
    settings = {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "telemetry": {"enabled": False},
        "privacy": {"usageStatisticsEnabled": False},
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    }
    (home / ".gemini").mkdir(exist_ok=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps(settings, indent=2))
    cmd = [str(exe), "-p", prompt, "--output-format", "json"]
    if case.model:
        cmd += ["-m", case.model]
    return cmd, env


def codex_run(exe: Path, url: str, home: Path, case: Case, prompt: str) -> tuple[list[str], dict[str, str]]:
    """`codex exec` with a custom model provider whose base URL is kaixu (/work/shared/research/real-clients.md):
    plugins and apps off, else it reaches for the internet as it starts; no retries, so a refusal shows."""
    codex_home = home / ".codex"
    codex_home.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(
        'model_provider = "kaixu"\n'
        "[model_providers.kaixu]\n"
        'name = "kaixu"\n'
        f'base_url = "{url}/v1"\n'
        'env_key = "KAIXU_KEY"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
        "[features]\n"
        "plugins = false\n"
        "apps = false\n"
    )
    env = base_env(home) | {"CODEX_HOME": str(codex_home), "KAIXU_KEY": CLIENT_KEY}
    cmd = [str(exe), "exec", "--skip-git-repo-check", "--sandbox", "read-only", prompt]
    if case.model:
        cmd[2:2] = ["-m", case.model]
    return cmd, env


RUNNERS: dict[str, Callable[[Path, str, Path, Case, str], tuple[list[str], dict[str, str]]]] = {
    "claude": claude_run,
    "gemini": gemini_run,
    "codex": codex_run,
}


def run_bounded(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int | None, str, str]:
    """Run a CLI in its own process group; at the timeout, kill that group (the CLI and its children)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err + f"\n[killed after {timeout:g} s]"


def last_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object a CLI printed last (Gemini CLI prints its error document to stderr, after a trace)."""
    text = text.strip()
    starts = [0] + [m.end() - 1 for m in re.finditer(r"(?m)^\{", text)]
    for start in reversed(starts):
        with contextlib.suppress(ValueError):
            doc = json.loads(text[start:])
            if isinstance(doc, dict):
                return doc
    return None


def unwrap(message: str) -> str:
    """An API error the CLI quotes as JSON text (``{"error": {"message": ...}}``): its message."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return str(json.loads(message)["error"]["message"])
    return message


def read_answer(client: str, stdout: str, stderr: str) -> tuple[str, str]:
    """(the answer, the CLI's own error or ""), from its JSON output (Codex: its last message, on stdout; its
    errors on stderr)."""
    if client == "codex":
        errors = [line for line in stderr.splitlines() if line.startswith("ERROR") or "error" in line[:20].lower()]
        return stdout.strip()[-300:], errors[-1] if errors and not stdout.strip() else ""
    doc = last_json_object(stdout) or last_json_object(stderr)
    if doc is None:
        return stdout.strip()[-300:], "its output is not JSON"
    if client == "claude":
        answer = str(doc.get("result", ""))
        return answer, answer if doc.get("is_error") is not False else ""
    error = doc.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else error
        return str(doc.get("response") or ""), unwrap(str(message))
    return str(doc.get("response") or ""), ""


def kaixu_lines(log: Path) -> tuple[list[str], list[str]]:
    """The access log lines, and kaixu's warnings, errors and tracebacks (mitmproxy's included)."""
    access, errors = [], []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        match = ACCESS.search(line)
        if match:
            access.append(match[1])
            if " error=" in line:
                errors.append(match[1])
        elif " WARNING " in line or " ERROR " in line or line.startswith(("Traceback", "  File")):
            errors.append(line)
    return access, errors


def run_case(case: Case, exe: Path, fake_port: int, work: Path, timeout: float) -> CaseResult:
    client = CLIENTS[case.client]
    folder = work / re.sub(r"[^a-z0-9]+", "-", case.name.lower()).strip("-")
    home, workspace = folder / "home", folder / "workspace"
    home.mkdir(parents=True)
    workspace.mkdir()
    secret = f"kaixu-secret-{secrets.token_hex(4)}"
    note = workspace / "note.txt"
    note.write_text(secret + "\n")
    if case.tool:
        args = {"file_path": str(note)}
        if case.client == "codex":  # its exec tool runs JavaScript (no console, no fs), given as free-form text
            args = {"input": f"text(await tools.exec_command({{cmd: {json.dumps('cat ' + str(note))}}}))"}
        marker = f"<<call {TOOL_NAMES[case.client]} {json.dumps(args)}>>"
        prompt = f"Read the file {note} and tell me what it says. {marker}"
    else:
        prompt = "Say hello"
    with contextlib.ExitStack() as stack:
        text = policy(client, case.provider, fake_port, case.forward)
        port, _pid = start_kaixu(folder, fake_port, stack, text, args=KAIXU_ARGS)
        url = f"http://{HOST}:{port}"
        if case.forward:  # the forward listener follows the reverse one in the port file
            url = "http://{}:{}".format(*json.loads((folder / "kaixu.ports").read_text())[1])
        cmd, env = RUNNERS[case.client](exe, url, home, case, prompt)
        if case.forward:
            env |= {name: url for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")}
            env["NODE_EXTRA_CA_CERTS"] = str(folder / "kaixu-ca" / "mitmproxy-ca-cert.pem")
        print(f"  {case.name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        code, stdout, stderr = run_bounded(cmd, workspace, env, timeout)
        seconds = time.monotonic() - started
    (folder / "cli.stdout").write_text(stdout)  # with --keep, next to kaixu.log and policy.yaml
    (folder / "cli.stderr").write_text(stderr)
    # kaixu has stopped (SIGTERM drains it and flushes its log): every line of this case is in its log.
    access, errors = kaixu_lines(folder / "kaixu.log")
    answer, cli_error = read_answer(case.client, stdout, stderr)
    refused = [line for line in access if (m := STATUS.match(line)) and not m[1].startswith("2")]
    if case.forward:  # Claude Code also asks its provider's host for its own settings (not the API): a 404 is fine
        refused = [line for line in refused if not (" GET /api/claude_code/" in line and " 404 " in line)]
    why = ""
    if code != 0:
        why = f"exit {code}" if code is not None else f"timed out after {timeout:g} s"
        why += f": {cli_error}" if cli_error else ""
    elif cli_error:
        why = cli_error
    elif not access:
        why = "kaixu logged no request: the CLI did not call it"
    elif refused:
        why = f"kaixu answered {len(refused)} of {len(access)} requests with an error"
    elif case.tool and secret not in answer:
        why = "the file's content is not in the answer: the tool did not run"
    elif case.forward and not any(
        line.endswith(" key=real-clients") and API_PATHS[case.client] in line for line in access
    ):
        why = f"kaixu logged no{API_PATHS[case.client]} request under the key the CLI sent"
    route = f"{FRONTS[case.client]} -> {PROVIDERS[case.provider]}"
    result = CaseResult(
        name=case.name,
        client=f"{client.title} {client.version}",
        route=route,
        model=case.model or "(default)",
        passed=not why,
        exit_code=code,
        seconds=round(seconds, 1),
        answer=answer,
        why=why,
        access_log=access,
    )
    if why:
        result.cli_stderr_tail = "\n".join(stderr.strip().splitlines()[-15:])
        result.kaixu_errors = refused + [line for line in errors[-10:] if line not in refused]
    return result


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------


def cell(text: str, limit: int = 140) -> str:
    """Text for one markdown table cell: one line, no pipes, cut."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("`", "'")


def statuses(access: list[str]) -> str:
    """E.g. ``3: 200 200 400`` for the requests kaixu logged, in order."""
    codes = [m[1] for line in access if (m := STATUS.match(line))]
    return f"{len(codes)}: {' '.join(codes)}" if codes else "0"


def table(results: list[CaseResult]) -> str:
    head = (
        "| case | client | route | model | result | exit | s | kaixu requests: statuses | detail |\n"
        "|---|---|---|---|---|---:|---:|---|---|\n"
    )
    rows = []
    for r in results:
        detail = r.why if r.why else "answer: " + r.answer
        exit_code = "timeout" if r.exit_code is None else str(r.exit_code)
        rows.append(
            f"| {r.name} | {r.client} | {r.route} | {r.model} | {'pass' if r.passed else '**FAIL**'} | {exit_code} "
            f"| {r.seconds:.1f} | {statuses(r.access_log)} | {cell(detail)} |"
        )
    return head + "\n".join(rows) + "\n"


def failures(results: list[CaseResult]) -> str:
    """For each failed case: why (the CLI's own error when it gave one), and what kaixu logged."""
    lines = []
    for r in results:
        if r.passed:
            continue
        lines.append(f"- **{r.name}**: {cell(r.why, 300)}")
        for line in r.access_log:
            if (m := STATUS.match(line)) and not m[1].startswith("2"):
                lines.append(f"  - kaixu: `{cell(line, 300)}`")
        for line in r.kaixu_errors:
            if line not in r.access_log:
                lines.append(f"  - kaixu log: `{cell(line, 300)}`")
    return ("Failures:\n\n" + "\n".join(lines) + "\n") if lines else ""


def header(node: str, clients: list[Client]) -> str:
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    names = ", ".join(f"{c.title} {c.version}" for c in clients)
    return f"Run {date} with {names}, node {node}, by `bench/real_clients.py`."


def report(results: list[CaseResult], node: str, clients: list[Client]) -> str:
    text = f"{header(node, clients)}\n\n{table(results)}"
    extra = failures(results)
    return text + ("\n" + extra if extra else "")


def save_json(results: list[CaseResult], node: str, clients: list[Client]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"real-clients-{stamp}.json"
    payload = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "node": node,
        "clients": {c.name: {"package": c.package, "version": c.version} for c in clients},
        "cases": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def run_all(clients: list[Client], work: Path, timeout: float) -> list[CaseResult]:
    bins = install(clients, work / "npm")
    results: list[CaseResult] = []
    with contextlib.ExitStack() as stack:
        fake_port = start_fake(work, stack)
        for case in CASES:
            if case.client in bins:
                results.append(run_case(case, bins[case.client], fake_port, work, timeout))
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--only", default="claude,gemini,codex", help="comma-separated CLIs to run: claude, gemini, codex"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (CLIs, HOMEs, kaixu logs)")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the section of docs/clients.md")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds each CLI run may take")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - set(CLIENTS)
    if unknown or not args.only:
        parser.error(f"--only takes {', '.join(CLIENTS)}; got {args.only}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM (e.g. from a CI timeout) must unwind through the ExitStacks that stop kaixu and the fake.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    clients = [CLIENTS[name] for name in CLIENTS if name in args.only]
    work = Path(tempfile.mkdtemp(prefix="kaixu-real-clients-"))
    try:
        node = ensure_node()
        results = run_all(clients, work, args.timeout)
    except (BenchError, subprocess.SubprocessError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = report(results, node, clients)
    print(text)
    print(f"raw results: {save_json(results, node, clients).relative_to(ROOT)}")
    if not args.no_doc and len(clients) == len(CLIENTS):
        update_doc(text, DOC_BEGIN, DOC_END, path=DOC_PATH)
        print(f"updated {DOC_PATH.relative_to(ROOT)}")
    return 0 if all(r.passed for r in results) else 2


if __name__ == "__main__":
    raise SystemExit(main())
