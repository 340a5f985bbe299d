"""Gateway facts that seed front doors show but the canonical response does not carry.

The seed APIs report things only the gateway knows: what the call cost, how much
of the month's cap is spent, which device called, which provider answered, the
client's own options (``includeRaw``). The codecs stay pure translators: the
gateway builds one ``SeedContext`` per call and hands it to ``encode_response`` /
``stream_encoder``; every field has a neutral default (``None``/zero), so a codec
never needs the gateway to run.

Which codec reads what:

====================  ==============================================================
field                 read by
====================  ==============================================================
``model``             all three: the model name shown to the client (the seeds echo
                      the *requested* name); default: the response's model
``provider``          Gateway 13 ``provider``
``install_id``        Gateway 13 ``telemetry.install_id``
``month``             Gateway 13 ``month`` (state *before* this call; the codec adds
                      this call's cost, as the seed reports the post-call rollup)
``cost_cents``        Gateway 13 ``usage.cost_cents`` when already known
``price_cents``       Gateway 13, when ``cost_cents`` is ``None``: prices the final
                      usage (streams only learn the usage at their last event)
``cost_eur``          Pulse ``estimatedCostEur`` (omitted when ``None``)
``request_id``        Pulse ``requestId`` (omitted when ``None``)
``include_raw``       kAIxu Gate: add ``raw`` (the Gemini-format response);
                      fill it with ``kaixu_gate.include_raw(body)``
====================  ==============================================================
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..base import StreamEncoder
from ..canonical import ChatRequest, ChatResponse, Usage

log = logging.getLogger("kaixu.formats.seeds")


def month_key(at: float | None = None) -> str:
    """``YYYY-MM`` of a UTC instant (default: now), the key Gateway 13's caps reset on."""
    return time.strftime("%Y-%m", time.gmtime(at))


@dataclass(frozen=True, slots=True)
class MonthRollup:
    """One month of spend against the customer's and the virtual key's caps, in cents."""

    month: str = field(default_factory=month_key)
    customer_cap_cents: float = 0
    customer_spent_cents: float = 0
    key_cap_cents: float = 0
    key_spent_cents: float = 0

    def plus(self, cents: float) -> MonthRollup:
        """The rollup after one more call: it counts against the customer and the key alike."""
        return replace(
            self,
            customer_spent_cents=self.customer_spent_cents + cents,
            key_spent_cents=self.key_spent_cents + cents,
        )

    def to_json(self) -> dict[str, Any]:
        """Gateway 13's ``month`` object.

        The seed's code also sends ``cap_cents``/``spent_cents`` (the customer's
        figures, an older spelling its dashboards still read), so we do too.
        """
        return {
            "month": self.month,
            "cap_cents": self.customer_cap_cents,
            "spent_cents": self.customer_spent_cents,
            "customer_cap_cents": self.customer_cap_cents,
            "customer_spent_cents": self.customer_spent_cents,
            "key_cap_cents": self.key_cap_cents,
            "key_spent_cents": self.key_spent_cents,
        }


@dataclass(frozen=True, slots=True)
class SeedContext:
    """Per-call gateway facts for the seed codecs; see the module docstring for who reads what."""

    model: str | None = None
    provider: str | None = None
    install_id: str | None = None
    month: MonthRollup = field(default_factory=MonthRollup)
    cost_cents: float | None = None
    price_cents: Callable[[Usage], float] | None = None
    cost_eur: float | None = None
    request_id: str | None = None
    include_raw: bool = False

    def call_cost_cents(self, usage: Usage) -> float:
        """This call's cost: the known figure, else the pricer's, else 0.

        Runs inside stream encoders, which must never raise: a failing pricer is
        logged and reported as 0 rather than losing the client's final event.
        """
        if self.cost_cents is not None:
            return self.cost_cents
        if self.price_cents is None:
            return 0
        try:
            return self.price_cents(usage)
        except Exception:
            log.exception("pricing the answer failed; reporting cost_cents 0")
            return 0


class SeedCodec(Protocol):
    """The front-door half of ``base.Codec`` with the context argument the seeds add.

    Every seed codec also satisfies ``base.Codec`` (the context defaults to "all
    unknown"); type against this protocol to pass a context.
    """

    name: str

    def decode_request(
        self, body: dict[str, Any], *, model: str | None = None, stream: bool | None = None
    ) -> ChatRequest: ...

    def encode_response(self, resp: ChatResponse, context: SeedContext | None = None) -> dict[str, Any]: ...

    def stream_encoder(self, req: ChatRequest, context: SeedContext | None = None) -> StreamEncoder: ...

    def error_body(self, status: int, message: str, type: str, code: str | None = None) -> dict[str, Any]: ...
