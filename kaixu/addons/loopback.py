"""Runs kaixu's loopback server for as long as the proxy runs: the built-in mock provider
(providers/mock.py) and the stream relay (providers/relay.py)."""

from __future__ import annotations

from kaixu.gateway import Gateway
from kaixu.providers.mock import MOCK_ROUTE, LoopbackServer
from kaixu.providers.relay import Relay


class Loopback:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.relay = Relay()
        self.server = LoopbackServer([self.relay.route(), MOCK_ROUTE])

    def running(self) -> None:
        url = self.server.start()
        self.gateway.mock_url = url
        self.gateway.loopback_url = url
        self.gateway.relay = self.relay
        self.relay.executor = self.gateway.executor

    async def done(self) -> None:
        await self.server.stop()
        if self.gateway.executor is not None:
            await self.gateway.executor.close()
