"""Runs kaixu's loopback servers for as long as the proxy runs: the built-in mock provider
(providers/mock.py, on tornado) and the stream relay (providers/relay.py, its own small HTTP/1.1 server)."""

from __future__ import annotations

from kaixu.gateway import Gateway
from kaixu.providers.mock import MOCK_ROUTE, LoopbackServer
from kaixu.providers.relay import Relay, RelayServer


class Loopback:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.relay = Relay()
        self.server = LoopbackServer([MOCK_ROUTE])
        self.relay_server = RelayServer(self.relay)

    def running(self) -> None:
        url = self.server.start()
        self.gateway.mock_url = url
        self.gateway.relay_url = self.relay_server.start()
        self.gateway.relay = self.relay
        self.relay.executor = self.gateway.executor

    async def done(self) -> None:
        await self.server.stop()
        await self.relay_server.stop()
        if self.gateway.executor is not None:
            await self.gateway.executor.close()
