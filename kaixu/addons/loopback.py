"""Runs kaixu's loopback server for as long as the proxy runs: the built-in mock provider
(providers/mock.py), the stream relay (reliability/relay.py) and the agent providers (agents/endpoint.py)."""

from __future__ import annotations

from pathlib import Path

from mitmproxy import ctx

from kaixu.agents.endpoint import Agents
from kaixu.gateway import Gateway
from kaixu.providers.mock import MOCK_ROUTE, LoopbackServer


class Loopback:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.agents = Agents(self._listen_url, self._agent_state)
        gateway.agents = self.agents
        self.server = LoopbackServer([gateway.reliability.relay.route(), self.agents.route(), MOCK_ROUTE])

    def _listen_url(self) -> str | None:
        """kaixu's own listener, where an agent's model calls go: its first address (a wildcard one reached
        on the loopback interface). A worker of `kaixu run --workers N` has its own sockets on the policy's
        addresses, which every worker shares, instead of mitmproxy's."""
        addrs = list(ctx.master.addons.get("proxyserver").listen_addrs())
        if not addrs and self.gateway.policy is not None:
            addrs = [address for address in self.gateway.policy.listen if address[1]]
        if not addrs:
            return None
        host, port = addrs[0][:2]
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _agent_state(self) -> Path:
        """The agents' HOME folders: in kaixu's state folder beside the policy (`.kaixu/`, as mitmproxy's)."""
        return Path(self.gateway.policy_path or ".").resolve().parent / ".kaixu" / "agents"

    def running(self) -> None:
        url = self.server.start()
        self.gateway.mock_url = url
        self.gateway.loopback_url = url
        self.gateway.reliability.loopback_url = url

    async def done(self) -> None:
        await self.server.stop()
        await self.gateway.reliability.close()
