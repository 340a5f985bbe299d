"""Claude Code headless as a provider (`kind: claude-cli`, docs/claude-cli.md): what one run is.

The run a request asks for (`plan_run`: its working directory resolved, symlinks followed, inside one of the
provider's `allowed_roots`; its tools by name, intersected with the provider's and the key's), the command line
(`argv`: stream-json both ways, the working directory's own Claude settings not loaded: `--setting-sources ""`,
no project hooks; `--strict-mcp-config`, no project `.mcp.json` servers), the scrubbed environment
(`environment`: its own HOME and config folder, kaixu's listener and the run credential, no provider key, no
kaixu secret), what it is told (`prompt_of`, `system_prompt` with `CONTEXT.md`), and its stream-json events as
canonical stream events (`Translation`: the text it writes, its tool activity as reasoning text).

kaixu/agents/endpoint.py runs it behind kaixu's loopback server; kaixu/agents/process.py stops it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaixu.config.policy import AGENT_WRITE_TOOLS
from kaixu.exceptions import KaixuError
from kaixu.formats.canonical import StreamEvent, TextDelta, ThinkingDelta

if TYPE_CHECKING:
    from kaixu.call import Call
    from kaixu.config import ProviderConfig, VirtualKey
    from kaixu.formats.canonical import ChatRequest

CONTEXT_FILE = "CONTEXT.md"
MAX_CONTEXT_BYTES = 32 * 1024
"""What of `CONTEXT.md` the agent is given (the rest is cut, and it is told so)."""
MAX_ACTIVITY_CHARS = 300
"""What a tool call or result shows of itself in the answer's reasoning text."""
PATH = "/usr/local/bin:/usr/bin:/bin"


class AgentRefused(KaixuError):
    """The request asks the agent for something the policy does not allow (a 400 naming it)."""

    status, type, code = 400, "invalid_request_error", "agent_refused"


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One run, as the policy and the request decide it."""

    provider: str
    command: str
    cwd: str | None
    """The resolved working directory (None: an empty folder of kaixu's)."""
    tools: tuple[str, ...]
    model: str | None
    config_dir: str | None
    timeout_s: float


def allowed_tools(key: VirtualKey | None, provider: ProviderConfig) -> tuple[str, ...]:
    """The tools a key may give the agent: the provider's, less those the key's `tools` leave out; Bash and
    the write tools only where the key names them."""
    assert provider.agent is not None
    tools = provider.agent.tools
    if key is None or key.tools is None:
        return tuple(t for t in tools if t not in AGENT_WRITE_TOOLS)
    return tuple(t for t in tools if t in key.tools)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def plan_run(call: Call, provider: ProviderConfig) -> RunSpec:
    """The run a request asks for, or AgentRefused: the working directory must resolve (symlinks followed)
    inside an allowed root, every tool asked for must be allowed."""
    agent = provider.agent
    assert agent is not None
    ask = call.agent
    cwd = None
    if ask is not None and ask.working_directory is not None:
        asked = ask.working_directory
        if not os.path.isabs(asked):
            raise AgentRefused(f"working_directory: must be an absolute path, got {asked[:200]!r}")
        real = os.path.realpath(asked)
        if not any(_inside(real, root) for root in agent.allowed_roots):
            raise AgentRefused(
                f"working_directory: {asked[:200]!r} is not inside a folder provider {provider.name!r} may work in"
            )
        if not os.path.isdir(real):
            raise AgentRefused(f"working_directory: {asked[:200]!r} is not a folder")
        cwd = real
    tools = ask.tools if ask is not None else ()
    allowed = allowed_tools(call.caller.key, provider)
    outside = [t for t in tools if t not in allowed]
    if outside:
        raise AgentRefused(
            f"tools: {', '.join(outside)} not allowed here (allowed: {', '.join(allowed) or 'none'})",
            code="tool_not_allowed",
        )
    return RunSpec(provider.name, agent.command, cwd, tools, agent.model, agent.config_dir, agent.timeout_s)


def read_context(cwd: str | None) -> str | None:
    """`CONTEXT.md` of the working directory, bounded (`MAX_CONTEXT_BYTES`); None when it has none. Blocking:
    run in a worker thread. A symlink is followed only to a file inside the working directory."""
    if cwd is None:
        return None
    path = os.path.join(cwd, CONTEXT_FILE)
    real = os.path.realpath(path)
    if not _inside(real, cwd) or not os.path.isfile(real):
        return None
    with open(real, "rb") as fh:
        data = fh.read(MAX_CONTEXT_BYTES + 1)
    text = data[:MAX_CONTEXT_BYTES].decode("utf-8", "replace")
    if len(data) > MAX_CONTEXT_BYTES:
        text += f"\n[{CONTEXT_FILE} was cut at {MAX_CONTEXT_BYTES} bytes]"
    return text


def system_prompt(request: ChatRequest, context: str | None) -> str | None:
    """What is appended to the CLI's system prompt: the request's own system text, then `CONTEXT.md`."""
    parts = []
    if request.system:
        parts.append(request.system)
    if context is not None:
        parts.append(f"# {CONTEXT_FILE} (project context from the working directory)\n\n{context}")
    return "\n\n".join(parts) or None


def prompt_of(request: ChatRequest) -> str:
    """The conversation as one user turn: a single user message as it is, else a transcript."""
    messages = [m for m in request.messages if m.role != "system" or m.text()]
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].text()
    lines = []
    for message in messages:
        if message.role == "tool":
            lines.append(f"[tool result]\n{message.text()}")
        else:
            calls = "".join(f"\n[called {c.name} {c.arguments}]" for c in message.tool_calls)
            lines.append(f"[{message.role}]\n{message.text()}{calls}")
    return "\n\n".join(lines)


def argv(spec: RunSpec, appended: str | None) -> list[str]:
    """`claude -p` in stream-json both ways (the turn on stdin: no argv size limit), locked down."""
    args = [
        spec.command, "-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose",
        "--tools", ",".join(spec.tools), "--setting-sources", "", "--strict-mcp-config",
        "--no-session-persistence",
        "--permission-mode", "acceptEdits" if AGENT_WRITE_TOOLS.intersection(spec.tools) - {"Bash"} else "default",
    ]  # fmt: skip
    if "Bash" in spec.tools:
        args += ["--allowedTools", "Bash"]
    if spec.model:
        args += ["--model", spec.model]
    if appended:
        args += ["--append-system-prompt", appended]
    return args


def environment(home: Path, config_dir: str | None, base_url: str, credential: str) -> dict[str, str]:
    """A scrubbed environment: nothing of kaixu's own (provider keys, peppers, proxies), its own HOME."""
    return {
        "PATH": PATH,
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "LANG": "C.UTF-8",
        "CLAUDE_CONFIG_DIR": config_dir or str(home / ".claude"),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": credential,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",  # kaixu retries and falls back itself; a refused call fails at once
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "no_proxy": "127.0.0.1,localhost,::1",
    }


def _brief(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= MAX_ACTIVITY_CHARS else text[:MAX_ACTIVITY_CHARS] + "…"


def _result_text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return content if isinstance(content, str) else ""


@dataclass(slots=True)
class Translation:
    """The CLI's stream-json lines as canonical stream events."""

    texts: int = 0
    error: str | None = None
    finished: bool = False

    def events(self, line: dict[str, Any]) -> list[StreamEvent]:
        kind = line.get("type")
        message = line.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        out: list[StreamEvent] = []
        if kind == "assistant" and isinstance(content, list):
            if line.get("error") is not None:  # a failed model call, as the CLI words it
                self.error = _result_text(content) or str(line["error"])
                return out
            for block in content:
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text" and block.get("text"):
                    out.append(TextDelta(("\n\n" if self.texts else "") + block["text"]))
                    self.texts += 1
                elif block.get("type") == "tool_use":
                    out.append(ThinkingDelta(f"[tool {block.get('name')} {_brief(block.get('input'))}]\n"))
        elif kind == "user" and isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    what = "tool error" if block.get("is_error") else "tool result"
                    out.append(ThinkingDelta(f"[{what}: {_brief(_result_text(block.get('content')))}]\n"))
        elif kind == "result":
            self.finished = True
            if line.get("is_error"):
                errors = line.get("errors")
                self.error = self.error or str(line.get("result") or errors or line.get("subtype"))
        return out
