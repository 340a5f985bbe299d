"""A conversation session (the Intelligent AI Gateway's `session_id`, `sessions:`): what the call carries from
its request (the earlier turns prepended, kaixu/addons/sessions.py) to its answer (the new turns kept in the
store, kaixu/store/sessions.py)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any


def new_session_id() -> str:
    """Unguessable (128 random bits): an id is all a request needs to name a session of its key."""
    return "sess_" + secrets.token_urlsafe(16)


@dataclass(slots=True)
class Session:
    """A conversation: its messages (OpenAI chat messages: role, content, tool calls) in order, and whose it
    is. The call carries it from the request (history prepended) to the answer (the new turns kept)."""

    id: str
    owner: str
    """The name of the key that made it ("" for an anonymous caller)."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The turns before this request."""
    asked: list[dict[str, Any]] = field(default_factory=list)
    """This request's own messages, kept with the answer once it succeeded."""
