"""What kaixu estimates where nobody counted: a request's size before it leaves (what a `policies[]` token cap
compares and a budget reserves for), and the usage of an answer whose provider never sent its final count (what
is billed then: docs/pricing.md, "What is billed"). One estimate of a request's input, made once per call
(`input_tokens`), by `kaixu.formats.estimate_tokens`."""

from __future__ import annotations

import json

from kaixu.call import Call
from kaixu.formats import embeddings, estimate_tokens
from kaixu.request_facts import decode_chat, requested_output


def input_tokens(call: Call, raw: bytes | None = None) -> int:
    """The request's input size in tokens, estimated once per call (kept as `Call.input_tokens`) however many
    ask: the policy step's token caps, the budget's reservation, the local token count, the bill of an answer
    cut midway. By `kaixu.formats.estimate_tokens` of the canonical request (decoded once: `decode_chat`), the
    texts of an embeddings request, or, when the body cannot be read so, its bytes / 4 (``raw``: the request's
    bytes as sent; else the parsed body re-serialised)."""
    if call.input_tokens is None:
        call.input_tokens = _estimate_input(call, raw)
    return call.input_tokens


def _estimate_input(call: Call, raw: bytes | None) -> int:
    body = call.body or {}
    try:
        if call.operation in ("embeddings", "batch_embeddings"):
            served = call.served
            request = (served.embedding_request if served else None) or embeddings.decode_request(
                call.front, body, model=served.model if served else "", single=call.operation == "embeddings"
            )
            return sum((len(text) + 3) // 4 for text in request.inputs)
        return estimate_tokens(call.canonical or decode_chat(call))
    except Exception:  # whatever the client sent is forwarded as is: size it by its bytes
        size = len(raw) if raw is not None else len(json.dumps(body, separators=(",", ":"), default=str))
        return (size + 3) // 4


class Size:
    """A request's size in tokens, as the policy step's token caps compare it: the input (`input_tokens`, the one
    estimate) and the output the client asked for."""

    def __init__(self, call: Call, raw: bytes) -> None:
        assert call.body is not None
        self.input = input_tokens(call, raw)
        decoded = call.decoded  # read by `input_tokens` when the body is a chat request kaixu can read
        self.output = decoded.max_tokens if decoded is not None else None
        if self.output is None:
            self.output = requested_output(call.front, call.body)

    @property
    def total(self) -> int:
        return self.input + (self.output or 0)


BILLED_OPERATIONS = frozenset({"chat", "embeddings", "batch_embeddings"})


def estimate_usage(call: Call, output_chars: int | None = None) -> None:
    """The provider's answer began but its final usage never came (a stream cut or left midway, an answer
    without usage): bill what was produced (`Bill.estimate`), from the prompt and ``output_chars`` (by
    default the characters the stream sent the client, `Bill.streamed_chars`)."""
    if call.operation not in BILLED_OPERATIONS:
        return
    produced = call.bill.streamed_chars if output_chars is None else output_chars
    call.bill.estimate(input_tokens(call), produced)
