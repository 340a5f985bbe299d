"""kaixu's addons, one concern each, in the order a request meets them (see DESIGN.md)."""

from __future__ import annotations

from kaixu.addons.auth import Auth
from kaixu.addons.config import PolicyFile
from kaixu.addons.dialect import Dialect
from kaixu.addons.errors import Errors
from kaixu.addons.ingress import Ingress
from kaixu.addons.ledger import LedgerWriter
from kaixu.addons.local import Local
from kaixu.addons.loopback import Loopback
from kaixu.addons.router import Router
from kaixu.addons.settle import Settle
from kaixu.addons.stream import Stream
from kaixu.gateway import Gateway


def build_addons(gateway: Gateway) -> list[object]:
    """The chain `kaixu run` and the `mitmdump -s` plugin both load."""
    return [
        PolicyFile(gateway),
        Loopback(gateway),  # the mock provider and the stream relay
        LedgerWriter(gateway),
        Ingress(gateway),  # 1 request id, CORS, /health, /metrics
        Dialect(),  # 2 which front door
        Auth(),  # 3 who is calling
        Local(gateway),  # model lists and token checks for the authenticated caller
        Router(gateway),  # 6 where it goes (policy and limits, steps 4-5, arrive with their issues)
        Errors(),  # 9 upstream timeout + JSON error pages
        Stream(),  # 7 SSE pass-through meter or translator
        Settle(gateway),  # 8 usage, translation of buffered answers, metrics
    ]
