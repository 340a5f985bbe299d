"""Pulse AI Gateway (seed 003): ``POST /api/ai/request``, JSON only.

Body ``{model, prompt | input | messages, teamId, projectId, appId?, maxTokens?,
temperature?, metadata?}``. ``prompt`` is the HTTP API's field, ``input`` the
server SDK's (a string or a ``[{role, content}]`` list); ``messages`` is accepted
as the list under its usual name. Exactly one of the three.

Decisions worth knowing:

* Attribution (team, project, app, client, user) never reaches the provider; the
  gateway reads it with ``attribution(body)`` for its ledger. Top-level fields
  win over the same names in ``metadata``.
* The seed has no streaming: ``stream=True`` is refused at decode time and
  ``stream_encoder`` raises ``NotImplementedError``, so the gateway must answer
  Pulse calls buffered.
* ``estimatedCostEur`` / ``requestId`` appear only when the gateway knows them
  (``SeedContext.cost_eur`` / ``request_id``).
* Tool calls cannot occur (the body has no tools); only the text is returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from .._common import JSON, expect_dict, opt_int, opt_num, opt_str
from ..canonical import ChatRequest, ChatResponse, Message, TextPart
from ..errors import FormatError
from ._front import FrontDoorOnly, canonical_turns, chat_turns, positive_int
from .context import SeedContext

NAME = "pulse"
ATTRIBUTION_FIELDS = ("teamId", "projectId", "appId", "clientId", "userId")
_INPUTS = ("prompt", "input", "messages")


# --- request -------------------------------------------------------------------------


def attribution(body: JSON) -> dict[str, str | None]:
    """Cost-attribution dimensions, every key present (``None`` when not given)."""
    body = expect_dict(body, "body")
    raw_meta = body.get("metadata")
    metadata = expect_dict(raw_meta, "metadata") if raw_meta is not None else {}
    return {
        key: opt_str(body, key) if body.get(key) is not None else opt_str(metadata, key, "metadata")
        for key in ATTRIBUTION_FIELDS
    }


def _which_input(body: JSON) -> str:
    present = [key for key in _INPUTS if body.get(key) is not None]
    if not present:
        raise FormatError("prompt", "one of prompt, input or messages is required")
    if len(present) > 1:
        raise FormatError(present[1], f"send only one of prompt, input or messages (got {', '.join(present)})")
    return present[0]


def _conversation(body: JSON) -> tuple[str | None, list[Message]]:
    key = _which_input(body)
    raw: Any = body[key]
    if isinstance(raw, str) and key != "messages":
        if not raw.strip():
            raise FormatError(key, "must not be empty")
        return None, [Message("user", [TextPart(raw)])]
    if key == "prompt":
        raise FormatError("prompt", "must be a string")
    if not isinstance(raw, list):
        raise FormatError(key, "must be a string or an array of messages" if key == "input" else "must be an array")
    return canonical_turns(chat_turns(raw, key), key)


def decode_request(body: JSON, *, model: str | None = None, stream: bool | None = None) -> ChatRequest:
    """A Pulse body -> canonical. ``model`` (from the gateway) beats ``body.model``."""
    body = expect_dict(body, "body")
    if stream:
        raise FormatError("stream", "the Pulse AI Gateway API does not stream")
    attribution(body)  # validate: bad attribution is the client's 400, not a ledger error later
    name = model or (opt_str(body, "model") or "").strip()
    if not name:
        raise FormatError("model", "is required")
    system, messages = _conversation(body)
    return ChatRequest(
        model=name,
        messages=messages,
        system=system,
        max_tokens=positive_int(opt_int(body, "maxTokens"), "maxTokens"),
        temperature=opt_num(body, "temperature"),
    )


# --- response ------------------------------------------------------------------------


def encode_response(resp: ChatResponse, context: SeedContext | None = None) -> JSON:
    """``{success, content, model, usage, estimatedCostEur?, requestId?}``."""
    ctx = context or SeedContext()
    usage = resp.usage
    out: JSON = {
        "success": True,
        "content": resp.message.text(),
        "model": ctx.model or resp.model,
        "usage": {
            "inputTokens": usage.input_tokens,
            "outputTokens": usage.output_tokens,
            "totalTokens": usage.total_tokens,
        },
    }
    if ctx.cost_eur is not None:
        out["estimatedCostEur"] = ctx.cost_eur
    if ctx.request_id is not None:
        out["requestId"] = ctx.request_id
    return out


def error_body(status: int, message: str, type: str, code: str | None = None) -> JSON:
    """``{success: false, error}``; policy refusals are 403 with the reason as the message."""
    return {"success": False, "error": message}


def policy_error(model: str, policy: str) -> str:
    """The seed's wording for a blocked model: ``Model gpt-4 is blocked by policy "Production Policy"``."""
    return f'Model {model} is blocked by policy "{policy}"'


# --- codec ---------------------------------------------------------------------------


class PulseCodec(FrontDoorOnly):
    name = NAME

    def decode_request(self, body: JSON, *, model: str | None = None, stream: bool | None = None) -> ChatRequest:
        return decode_request(body, model=model, stream=stream)

    def encode_response(self, resp: ChatResponse, context: SeedContext | None = None) -> JSON:
        return encode_response(resp, context)

    def stream_encoder(self, req: ChatRequest, context: SeedContext | None = None) -> NoReturn:
        """Pulse has no streaming API; ``decode_request`` already refuses ``stream=True``."""
        raise NotImplementedError("the Pulse AI Gateway API does not stream")

    def error_body(self, status: int, message: str, type: str, code: str | None = None) -> JSON:
        return error_body(status, message, type, code)


CODEC = PulseCodec()

if TYPE_CHECKING:
    from ..base import Codec

    _codec_check: Codec = CODEC
