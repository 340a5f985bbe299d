"""Runs kaixu's loopback server for as long as the proxy runs: the built-in mock provider
(providers/mock.py) and the stream relay (reliability/relay.py)."""

from __future__ import annotations

from kaixu.gateway import Gateway
from kaixu.providers.mock import MOCK_ROUTE, LoopbackServer


class Loopback:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.server = LoopbackServer([gateway.reliability.relay.route(), MOCK_ROUTE])

    def running(self) -> None:
        url = self.server.start()
        self.gateway.mock_url = url
        self.gateway.loopback_url = url
        self.gateway.reliability.loopback_url = url

    async def done(self) -> None:
        await self.server.stop()
        await self.gateway.reliability.close()
