"""What kaixu estimates where nobody counted: a request's size before it leaves (what a `policies[]` token cap
compares), and the usage of an answer whose provider never sent its final count (what is billed then:
docs/pricing.md, "What is billed"). Both size text by `kaixu.formats.estimate_tokens`."""

from __future__ import annotations

import json

from kaixu.call import Call
from kaixu.formats import FormatError, embeddings, estimate_tokens
from kaixu.request_facts import decode_chat, requested_output


class Size:
    """A request's size in tokens, estimated once however many rules ask: the input (the canonical request's
    `estimate_tokens`, or bytes / 4 when it cannot be decoded) and the output the client asked for."""

    def __init__(self, call: Call, raw: bytes) -> None:
        assert call.body is not None
        try:
            request = decode_chat(call)
        except FormatError:  # the router refuses it with the reason; the size is only an upper bound here
            self.input, self.output = (len(raw) + 3) // 4, requested_output(call.front, call.body)
        else:
            self.input, self.output = estimate_tokens(request), request.max_tokens
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
    call.bill.estimate(prompt_tokens(call), produced)


def prompt_tokens(call: Call) -> int:
    """The prompt's size by `kaixu.formats.estimate_tokens`. A pass-through call has no canonical request:
    its body is decoded only now, on this rare path, as the router would have (`decode_chat`); characters / 4
    of the body if even that fails."""
    body = call.body or {}
    try:
        if call.operation in ("embeddings", "batch_embeddings"):
            served = call.served
            request = (served.embedding_request if served else None) or embeddings.decode_request(
                call.front, body, model=served.model if served else "", single=call.operation == "embeddings"
            )
            return sum((len(text) + 3) // 4 for text in request.inputs)
        return estimate_tokens(call.canonical or decode_chat(call))
    except Exception:  # whatever the client sent was forwarded as is: size it by its bytes
        return (len(json.dumps(body, separators=(",", ":"), default=str)) + 3) // 4
