"""The agent providers' endpoint on kaixu's loopback server (`AGENT_PATH`): an attempt aimed at a `claude-cli`
provider is an OpenAI chat completion request to it, authenticated by the outer request's call token
(kaixu/agents/grants.py). It runs one Claude Code process per request (kaixu/agents/claude_cli.py), with a run
credential for the agent's own model calls, streams the translated events back (or answers once, buffered),
waits for kaixu to settle those calls (their usage is the answer's), and stops the process with everything it
started when it is done, times out, or kaixu's attempt goes away (kaixu/agents/process.py).

The provider queue (`max_concurrent`, `queue_size`: kaixu/reliability/pools.py) bounds the processes, as it
bounds any provider's requests: the executor takes a slot before it sends the attempt here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tornado.iostream

from kaixu.agents.claude_cli import (
    AgentRefused,
    RunSpec,
    Translation,
    argv,
    environment,
    plan_run,
    prompt_of,
    read_context,
    system_prompt,
)
from kaixu.agents.grants import call_for_token, close_run, open_run
from kaixu.agents.process import stop
from kaixu.formats import FormatError, get_codec
from kaixu.formats.canonical import (
    ChatResponse,
    Message,
    MessageEnd,
    MessageStart,
    StreamError,
    StreamEvent,
    TextDelta,
    TextPart,
    ThinkingDelta,
    ThinkingPart,
    Usage,
)
from kaixu.providers import AGENT_PATH
from kaixu.providers.mock import LoopbackHandler

if TYPE_CHECKING:
    from kaixu.call import Call
    from kaixu.formats.canonical import ChatRequest

log = logging.getLogger("kaixu.agents")

MAX_LINE_BYTES = 16 * 1024 * 1024
"""The longest stream-json line read (a tool result carries whole files)."""
SETTLE_S = 5.0
"""How long a finished run waits for kaixu to settle its last model calls (their cost is the answer's)."""
CREDENTIAL_SLACK_S = 30.0
"""The run credential outlives the run's timeout by this much at most (it is revoked when the run ends)."""


@dataclass(slots=True)
class Agents:
    """What the agent endpoint needs of the running proxy: kaixu's own listener (where the agent's model
    calls go) and the folder its runs keep their HOME in."""

    listen_url: Callable[[], Awaitable[str | None]]
    state_dir: Callable[[], Path]

    def route(self) -> tuple[str, type[AgentHandler], dict[str, Any]]:
        return (AGENT_PATH + r"([A-Za-z0-9_.-]+)/v1/chat/completions", AgentHandler, {"agents": self})


class AgentHandler(LoopbackHandler):
    """kaixu's attempt being dropped (its client left, or its own timeout) cancels the run, which stops it."""

    def initialize(self, agents: Agents) -> None:
        self.agents = agents

    def _error(self, status: int, message: str, type: str = "api_error", code: str | None = None) -> None:
        self.set_status(status)
        self.set_header("content-type", "application/json")
        self.finish(json.dumps(get_codec("openai").error_body(status, message, type, code)))

    async def post(self, provider_name: str) -> None:
        scheme, _, token = (self.request.headers.get("authorization") or "").partition(" ")
        outer = call_for_token(token) if scheme.lower() == "bearer" and token else None
        if outer is None:
            self._error(401, "unknown agent call", "authentication_error")
            return
        provider = outer.policy.providers.get(provider_name)
        if provider is None or provider.agent is None:
            self._error(404, f"no agent provider {provider_name!r}", "not_found_error")
            return
        try:
            spec = plan_run(outer, provider)
            request = get_codec("openai").decode_request(json.loads(self.request.body or b"{}"))
        except (AgentRefused, FormatError) as exc:
            self._error(400, str(exc), "invalid_request_error")
            return
        except ValueError:
            self._error(400, "invalid JSON", "invalid_request_error")
            return
        base_url = await self.agents.listen_url()
        if base_url is None:
            self._error(503, "kaixu's listener is not known yet")
            return
        self._task = asyncio.current_task()
        try:
            await self._run(outer, spec, request, base_url)
        except (tornado.iostream.StreamClosedError, asyncio.CancelledError):
            return  # kaixu's attempt went away: the run was stopped in _run

    async def _run(self, outer: Call, spec: RunSpec, request: ChatRequest, base_url: str) -> None:
        home = self.agents.state_dir() / spec.provider
        context = await asyncio.to_thread(_prepare, home, spec.cwd)
        cwd = spec.cwd or str(home / "scratch")
        run = open_run(outer, spec.timeout_s + CREDENTIAL_SLACK_S)
        args = argv(spec, system_prompt(request, context))
        env = environment(home, spec.config_dir, base_url, run.credential)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, cwd=cwd, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=MAX_LINE_BYTES,
            )  # fmt: skip
        except OSError as exc:
            close_run(run)
            log.warning("agent %s could not start %s: %s", spec.provider, spec.command, exc)
            self._error(502, f"agent provider {spec.provider!r} could not start its command")
            return
        stderr = asyncio.ensure_future(_tail(proc.stderr))
        translation = Translation()
        encoder = get_codec("openai").stream_encoder(request) if request.stream else None
        collected: list[StreamEvent] = []
        timed_out = False
        try:
            assert proc.stdin is not None and proc.stdout is not None
            turn = {"type": "user", "message": {"role": "user", "content": prompt_of(request)}}
            try:
                proc.stdin.write(json.dumps(turn).encode() + b"\n")
                await proc.stdin.drain()
                proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass  # it exited at once: its stdout ends, and the answer says so
            start = MessageStart(id="chatcmpl-agent-" + uuid.uuid4().hex[:16], model=request.model)
            if encoder is not None:  # the client's stream starts now: kaixu's attempt has its first byte
                self.set_header("content-type", "text/event-stream")
                self.set_header("cache-control", "no-cache")
                self.write(encoder.encode(start))
                await self.flush()
            deadline = started + spec.timeout_s
            while not translation.finished:
                try:
                    raw = await asyncio.wait_for(proc.stdout.readline(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    timed_out = True
                    break
                if not raw:
                    break
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(line, dict):
                    continue
                events = translation.events(line)
                if encoder is not None:
                    for event in events:
                        self.write(encoder.encode(event))
                    if events:
                        await self.flush()
                else:
                    collected.extend(events)
        finally:
            await stop(proc)
            close_run(run)
        try:  # the process and its tree are gone: its stderr ends
            tail = (await asyncio.wait_for(stderr, 1.0)).decode("utf-8", "replace")
        except TimeoutError:
            tail = ""
        elapsed = loop.time() - started
        await run.settled(SETTLE_S)
        usage = run.usage
        error = None
        if timed_out:
            error = f"agent provider {spec.provider!r} did not finish within {spec.timeout_s:g} s"
        elif translation.error is not None:
            error = f"the agent failed: {translation.error[:500]}"
        elif not translation.finished:
            error = f"the agent exited with {proc.returncode} before its answer" + (f": {tail[-300:]}" if tail else "")
        log.info("agent %s run of request %s: %.2f s, %d model calls, %s", spec.provider, outer.request_id,
                 elapsed, run.calls, error or "ok")  # fmt: skip
        if encoder is not None:
            if error is not None:
                self.write(encoder.encode(StreamError(error, "timeout_error" if timed_out else "api_error")))
            else:
                self.write(encoder.encode(MessageEnd("stop", usage)))
            self.write(encoder.close())
            self.finish()
            return
        if error is not None:
            self._error(504 if timed_out else 502, error, "timeout_error" if timed_out else "api_error")
            return
        self.set_header("content-type", "application/json")
        self.finish(json.dumps(get_codec("openai").encode_response(_response(request, collected, usage))))


def _prepare(home: Path, cwd: str | None) -> str | None:
    """The run's own folders (HOME, its temp and scratch folders) and the working directory's `CONTEXT.md`."""
    for folder in (home, home / "tmp", home / "scratch"):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return read_context(cwd)


async def _tail(stream: asyncio.StreamReader | None, keep: int = 8192) -> bytes:
    """Read the CLI's stderr to its end (a full pipe would stall it), keeping its last bytes for the log."""
    if stream is None:
        return b""
    held = b""
    while chunk := await stream.read(65536):
        held = (held + chunk)[-keep:]
    return held


def _response(request: ChatRequest, events: list[StreamEvent], usage: Usage) -> ChatResponse:
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    shown = request.shows_thinking()  # tool activity is reasoning: only for a client that asked to see it
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta)) if shown else ""
    parts: list[Any] = ([ThinkingPart(thinking)] if thinking else []) + [TextPart(text)]
    return ChatResponse(
        id="chatcmpl-agent-" + uuid.uuid4().hex[:16],
        model=request.model,
        created=int(time.time()),
        message=Message(role="assistant", parts=parts),
        usage=usage,
    )
