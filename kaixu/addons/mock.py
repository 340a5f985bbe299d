"""Runs the built-in mock provider (kaixu/providers/mock.py) for as long as the proxy runs."""

from __future__ import annotations

from kaixu.gateway import Gateway
from kaixu.providers.mock import MockServer


class MockProvider:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.server = MockServer()

    def running(self) -> None:
        self.gateway.mock_url = self.server.start()

    async def done(self) -> None:
        await self.server.stop()
