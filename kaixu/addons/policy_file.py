"""The policy_file step: load the policy, keep it current (hot reload), and open the listeners it names."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from mitmproxy import ctx, exceptions

from kaixu import options
from kaixu.config import Policy, PolicyError, load_policy
from kaixu.gateway import Gateway
from kaixu.metrics import POLICY_GENERATION, POLICY_RELOAD_FAILURES

log = logging.getLogger("kaixu.config")


class PolicyFile:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._mtime_ns: int | None = None
        self._task: asyncio.Task[None] | None = None

    def load(self, loader: Any) -> None:
        options.declare(loader)

    def configure(self, updated: set[str]) -> None:
        if options.POLICY in updated or options.LISTEN_FROM_POLICY in updated:
            path = ctx.options.kaixu_policy
            try:
                policy = load_policy(path)
            except PolicyError as exc:
                raise exceptions.OptionsError(
                    "invalid policy " + exc.source + ":\n" + "\n".join(f"  {p}" for p in exc.problems)
                ) from exc
            self._mtime_ns = _mtime_ns(path)
            self.gateway.policy_path = path
            self._install(policy)

    def running(self) -> None:
        # Sync on purpose: mitmproxy's script reloader silently keeps the old instance after an async running.
        if ctx.options.kaixu_reload_ms > 0:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="kaixu-policy-watch")
        if ctx.options.kaixu_port_file:
            addrs = ctx.master.addons.get("proxyserver").listen_addrs()
            tmp = ctx.options.kaixu_port_file + ".tmp"
            with open(tmp, "w") as fh:
                json.dump([list(addr[:2]) for addr in addrs], fh)
            os.replace(tmp, ctx.options.kaixu_port_file)

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _install(self, policy: Policy) -> None:
        previous = self.gateway.policy
        self.gateway.install(policy)
        POLICY_GENERATION.set(self.gateway.generation)
        ctx.options.update(**self._proxy_options(policy, previous))
        for warning in policy.warnings:
            log.warning("policy: %s", warning)
        log.info(
            "policy %s loaded (generation %d, %s)",
            policy.digest,
            self.gateway.generation,
            ctx.options.kaixu_policy,
        )

    @staticmethod
    def _proxy_options(policy: Policy, previous: Policy | None) -> dict[str, Any]:
        """mitmproxy options that follow the policy, where they differ from what is set (so `kaixu run`,
        which sets them when it builds the Master, and `mitmdump -s` get the same proxy)."""
        wanted: dict[str, Any] = {
            "body_size_limit": str(policy.max_body_bytes),
            "ssl_verify_upstream_trusted_ca": policy.ca_file,
        }
        listeners = (policy.listen, policy.forward_listen)
        if (
            ctx.options.kaixu_listen_from_policy
            and previous is not None
            and (previous.listen, previous.forward_listen) != listeners
        ):
            wanted["mode"] = options.listener_modes(policy.listen, policy.forward_listen)
        return {k: v for k, v in wanted.items() if k in ctx.options and getattr(ctx.options, k) != v}

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(ctx.options.kaixu_reload_ms / 1000)
            path = ctx.options.kaixu_policy
            try:
                mtime = await asyncio.to_thread(_mtime_ns, path)
                if mtime == self._mtime_ns:
                    continue
                self._mtime_ns = mtime
                policy = await asyncio.to_thread(load_policy, path)
            except PolicyError as exc:
                message = "; ".join(str(p) for p in exc.problems)
                self.gateway.last_reload_error = message
                POLICY_RELOAD_FAILURES.inc()
                log.error("policy reload rejected, keeping generation %d: %s", self.gateway.generation, message)
                continue
            except Exception as exc:  # the watcher must survive anything a file system can do
                log.error("policy reload failed, keeping the current policy: %r", exc)
                continue
            if self.gateway.policy is not None and policy.digest == self.gateway.policy.digest:
                continue
            self._install(policy)


def _mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None
