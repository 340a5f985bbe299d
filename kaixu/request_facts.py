"""What a request says, read the same way by every step that asks: whether a model name may be used at all,
the chat request in canonical form, the output it asks for, and who it is counted against (attribution, the end
customer). What `policies[].match` compares, and which models a caller may call, is kaixu/permission.py.

Each is a function of the call: the steps ask, nothing here changes what a call says (but `clamp_output`, which
edits its body). What is costly to read (the canonical chat request) is read once and kept on the call."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kaixu.call import AgentAsk, Call
from kaixu.formats import FormatError, fronts, json_type
from kaixu.formats.canonical import ChatRequest
from kaixu.formats.doors import front_door
from kaixu.log import safe

#: Model names: printable, no whitespace, no URL syntax a provider path could be steered with. `/` is allowed
#: (OpenAI-compatible servers name models `org/model`); it is percent-encoded wherever a name enters a URL.
MAX_MODEL_CHARS = 256
_MODEL_FORBIDDEN = re.compile(r"[\s?#%\\]|\.\.|^/|/$")

#: Body fields that only steer the gateway; a provider would reject them.
GATEWAY_FIELDS = ("backend", "session_id")
#: The Intelligent AI Gateway's agent fields (docs/claude-cli.md): `working_directory`, and `tools` given as
#: tool *names* (["Read", "Glob"]) rather than function schemas. Only an agent provider reads them.
MAX_AGENT_TOOLS = 64


def agent_ask(body: dict[str, Any]) -> AgentAsk | None:
    """The agent the body asks for (a working directory, tools by name), or None; raises FormatError for a
    field of the wrong shape (a 400 naming it)."""
    directory = body.get("working_directory")
    tools = body.get("tools")
    named = isinstance(tools, list) and bool(tools) and all(isinstance(t, str) for t in tools)
    if directory is None and not named:
        return None
    if directory is not None and (not isinstance(directory, str) or not directory or "\x00" in directory):
        raise FormatError("working_directory", f"must be a folder path (string), got {json_type(directory)}")
    names: tuple[str, ...] = ()
    if named:
        assert isinstance(tools, list)
        if len(tools) > MAX_AGENT_TOOLS or any(not t.isidentifier() for t in tools):
            raise FormatError("tools", f'agent tools are up to {MAX_AGENT_TOOLS} names such as "Read"')
        names = tuple(dict.fromkeys(tools))
    return AgentAsk(directory, names)


def stripped_fields(call: Call) -> tuple[str, ...]:
    """The body fields only kaixu reads, which no provider gets: the routing hints, and the agent's fields (an
    agent provider reads them from the call: kaixu/agents/claude_cli.py)."""
    if call.agent is None:
        return GATEWAY_FIELDS
    return (*GATEWAY_FIELDS, "working_directory", *(("tools",) if call.agent.tools else ()))


def model_name_problem(name: str) -> str | None:
    """What is wrong with a client's model name, or None: checked before any routing."""
    if not name:
        return "model: a model name is required"
    if len(name) > MAX_MODEL_CHARS:
        return f"model: a model name has at most {MAX_MODEL_CHARS} characters"
    if not name.isprintable() or _MODEL_FORBIDDEN.search(name):
        return (
            f"model: {safe(name, 80)!r} is not a valid model name "
            "(no spaces, control characters, '?', '#', '%', '\\' or '..')"
        )
    return None


def decode_chat(call: Call) -> ChatRequest:
    """The client's chat request, canonical (raises FormatError): what translation encodes, and what a request's
    size is estimated from. Decoded once per call (`Call.decoded`), however many steps and attempts ask: a
    caller that needs it changed makes a copy (`dataclasses.replace`)."""
    decoded = call.decoded
    if decoded is None:
        assert call.body is not None
        dropped = stripped_fields(call)
        body = {k: v for k, v in call.body.items() if k not in dropped}
        decoded = call.decoded = fronts.decode_request(
            call.front,
            body,
            model=call.model,
            stream=call.stream,
            default_model=call.policy.default_model,
            global_system=call.policy.front_settings(call.front).get("system"),
        )
    return decoded


# -- the output a request asks for ---------------------------------------------------------------------------


def _field(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = body
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    return value


def _ints(body: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> list[int]:
    return [v for path in paths if isinstance(v := _field(body, path), int) and not isinstance(v, bool)]


def requested_output(front: str, body: dict[str, Any]) -> int | None:
    """The most output tokens the body asks for, per answer (the largest, if it spells the limit twice), in its
    door's own fields (`FrontDoor.output_fields`)."""
    return max(_ints(body, front_door(front).output_fields), default=None)


def requested_answers(front: str, body: dict[str, Any]) -> int:
    """How many answers the body asks for (1 unless it says `n`, `candidateCount`...: `FrontDoor.answer_fields`):
    each costs its output."""
    return max(_ints(body, front_door(front).answer_fields), default=1)


def output_limit_problem(front: str, body: dict[str, Any]) -> str | None:
    """What is wrong with a chat body's output limits and answer counts, naming the field, or None: each must
    be a positive integer. Why refused, not forwarded: OpenAI-compatible servers (llama.cpp, Ollama) read a
    `max_tokens` of -1 as no limit at all, and a count kaixu cannot read is a cost it cannot bound."""
    door = front_door(front)
    for path in (*door.output_fields, *door.answer_fields):
        value = _field(body, path)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            small = isinstance(value, int) and not isinstance(value, bool) and value > -(10**9)
            shown = str(value) if small else json_type(value)
            return f"{'.'.join(path)}: must be a positive integer, got {shown}"
    return None


def clamp_output(call: Call, limit: int) -> None:
    """Lower every output-token field the call's body sets above `limit` to `limit`; a body that sets none gets
    the door's own field (under a parent object it already has, so no other setting moves). The canonical
    request decoded before is dropped (`Call.decoded`): the next `decode_chat` reads the clamped body."""
    body = call.body
    assert body is not None
    call.decoded = None
    paths = front_door(call.front).output_fields
    present = [path for path in paths if _field(body, path) is not None]
    if not present:
        chosen = next((p for p in paths if len(p) == 1 or isinstance(body.get(p[0]), dict)), paths[0])
        present = [chosen]
    for path in present:
        parent = body
        for name in path[:-1]:
            if not isinstance(parent.get(name), dict):
                parent[name] = {}
            parent = parent[name]
        value = parent.get(path[-1])
        if not isinstance(value, int) or isinstance(value, bool) or value > limit:
            parent[path[-1]] = limit


# -- who it is counted against -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who a request is counted against, beyond its key: the dimensions of `/api/costs?group_by=`."""

    team: str | None
    customer: str | None
    user: str | None
    app: str | None
    project: str | None
    client: str | None


def attribution(call: Call) -> Attribution:
    """The key's team (and a store key's customer) wins over the one a client names; the rest is what the
    client says about itself (`x-kaixu-*` headers, the body's `user`, Pulse's `teamId`/`projectId`/`appId`/
    `clientId`/`userId`)."""
    said = call.caller.attributes.get
    return Attribution(
        team=(call.caller.key.team if call.caller.key else None) or said("teamId") or said("team"),
        customer=(call.caller.key.customer if call.caller.key else None) or said("customer"),
        user=said("userId") or said("user"),
        app=said("appId") or said("app"),
        project=said("projectId") or said("project"),
        client=said("clientId") or said("client"),
    )


def end_customer(call: Call) -> str | None:
    """The end customer budgets, limits and seats count: the key's (or `x-kaixu-customer`), else the user the
    client names (OpenAI's `user` field, Pulse's `userId`)."""
    who = attribution(call)
    return who.customer or who.user
