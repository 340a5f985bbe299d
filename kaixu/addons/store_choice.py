"""Chooses the stores when the policy loads and at every reload that changes `store:` — the way mitmproxy's
`proxyauth` picks its validator in `configure()` — and holds them as `Gateway.stores`; the steps read them from
there and never choose a store per request. It listens to `Gateway.install` rather than `configure`, because a
reload of the policy file (kaixu/addons/policy_file.py) does not always change a mitmproxy option."""

from __future__ import annotations

from kaixu.config import Policy
from kaixu.gateway import Gateway
from kaixu.store.stores import Stores


class StoreChoice:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._retired: list[Stores] = []
        """Stores a reload replaced: a request that began before it may still use them, so they are closed at
        shutdown, not at the reload."""
        gateway.installed.append(self.choose)
        if gateway.policy is not None:
            self.choose(gateway.policy)

    def choose(self, policy: Policy) -> None:
        current = self.gateway.stores
        if current is not None and current.config == policy.store:
            return
        if current is not None:
            self._retired.append(current)
        self.gateway.stores = Stores.build(policy.store)

    async def done(self) -> None:
        held, self.gateway.stores = self.gateway.stores, None
        for stores in [*self._retired, *([held] if held is not None else [])]:
            await stores.close()
        self._retired.clear()
