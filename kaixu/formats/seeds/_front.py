"""Plumbing shared by the seed front doors: simple chat turns and the provider-side stubs.

The seed APIs all take chat history as ``[{role, content}]`` with string content,
the lowest common denominator of their clients; ``chat_turns`` validates that once
(field paths in every error) so each codec only maps turns to its target shape.
"""

from __future__ import annotations

from typing import Any, Literal, NoReturn

from .._common import JSON, expect_dict, expect_list
from ..canonical import ChatRequest, ChatResponse, Message, TextPart, Usage
from ..errors import FormatError

TurnRole = Literal["system", "user", "assistant"]
_ROLES: dict[str, TurnRole] = {"system": "system", "user": "user", "assistant": "assistant"}


def chat_turns(raw: Any, field: str, aliases: dict[str, TurnRole] | None = None) -> list[tuple[TurnRole, str]]:
    """``[{role, content: str}]`` -> ``[(role, text)]``.

    Roles are matched case-insensitively (the seeds lower-case them). Turns whose
    text is blank are skipped, as the seeds do: Anthropic and Gemini reject empty
    text blocks, so forwarding them would only turn a harmless gap into a 400.
    """
    roles = {**_ROLES, **(aliases or {})}
    turns: list[tuple[TurnRole, str]] = []
    for i, item in enumerate(expect_list(raw, field)):
        path = f"{field}[{i}]"
        msg = expect_dict(item, path)
        role = msg.get("role")
        mapped = roles.get(role.lower()) if isinstance(role, str) else None
        if mapped is None:
            raise FormatError(f"{path}.role", f"must be one of {', '.join(roles)}")
        content = msg.get("content")
        if not isinstance(content, str):
            raise FormatError(f"{path}.content", "is required" if content is None else "must be a string")
        if content.strip():
            turns.append((mapped, content))
    return turns


def canonical_turns(turns: list[tuple[TurnRole, str]], field: str) -> tuple[str | None, list[Message]]:
    """Split turns into the system prompt (system turns joined by a blank line) and messages.

    A conversation without a single user/assistant turn has nothing to answer, so
    it is refused here rather than by the provider.
    """
    system = "\n\n".join(text for role, text in turns if role == "system")
    messages = [
        Message("user" if role == "user" else "assistant", [TextPart(text)]) for role, text in turns if role != "system"
    ]
    if not messages:
        raise FormatError(field, "must contain at least one user or assistant message with text")
    return system or None, messages


def join_system(*parts: str | None) -> str | None:
    """Non-empty system prompt layers, in order, separated by a blank line."""
    text = "\n\n".join(p for p in parts if p)
    return text or None


def positive_int(value: int | None, field: str) -> int | None:
    if value is not None and value < 1:
        raise FormatError(field, "must be a positive integer")
    return value


class FrontDoorOnly:
    """The provider half of ``Codec``: the seed APIs are only ever spoken by clients.

    Nothing routes *to* a seed API, so these exist to satisfy the protocol and
    fail loudly if a configuration ever tries.
    """

    name: str

    def _not_a_provider(self) -> NoReturn:
        raise NotImplementedError(f"{self.name} is a front door only; it cannot be a provider")

    def encode_request(self, req: ChatRequest) -> JSON:
        self._not_a_provider()

    def dropped_fields(self, req: ChatRequest) -> list[str]:
        self._not_a_provider()

    def decode_response(self, body: JSON) -> ChatResponse:
        self._not_a_provider()

    def stream_decoder(self) -> NoReturn:
        self._not_a_provider()

    def usage_from_response(self, body: JSON) -> Usage:
        self._not_a_provider()

    def decode_error(self, status: int, body: bytes) -> tuple[str, str]:
        self._not_a_provider()
