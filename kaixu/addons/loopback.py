"""Runs kaixu's loopback server for as long as the proxy runs: the built-in mock provider
(providers/mock.py), the stream relay (reliability/relay.py) and the agent providers (agents/endpoint.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kaixu import mitm
from kaixu.agents.endpoint import Agents
from kaixu.gateway import Gateway
from kaixu.providers.mock import MOCK_ROUTE, LoopbackServer


class Loopback:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._private: asyncio.Future[asyncio.Server] | None = None
        self.agents = Agents(self._listen_url, self._agent_state)
        gateway.agents = self.agents
        gateway.private_url = self._listen_url
        self.server = LoopbackServer([gateway.reliability.relay.route(), self.agents.route(), MOCK_ROUTE])

    async def _listen_url(self) -> str | None:
        """Where an agent's model calls (and a background job's request) go: a listener of this process's own,
        on 127.0.0.1 and a free port (opened on first use), served by the same chain as the policy's listeners.
        Not one of those: they may be forward proxies, or (`kaixu run --workers N`) sockets every worker shares,
        while a run credential (a job's internal credential) is known only to the process that made it."""
        if self._private is None:
            self._private = asyncio.ensure_future(mitm.serve_on_loopback())
        host, port = (await self._private).sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def _agent_state(self) -> Path:
        """The agents' HOME folders: in kaixu's state folder beside the policy (`.kaixu/`, as mitmproxy's)."""
        return Path(self.gateway.policy_path or ".").resolve().parent / ".kaixu" / "agents"

    def running(self) -> None:
        url = self.server.start()
        self.gateway.mock_url = url
        self.gateway.loopback_url = url
        self.gateway.reliability.loopback_url = url

    async def done(self) -> None:
        if self._private is not None and self._private.done() and not self._private.exception():
            self._private.result().close()
        await self.server.stop()
        await self.gateway.reliability.close()
