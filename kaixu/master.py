"""The embedded mitmproxy Master: the few core addons a reverse proxy needs, plus kaixu's chain.

mitmdump loads ~30 addons, and every flow event is dispatched to each of them; the minimal set roughly
halves the CPU per request. kaixu's own chain is one addon (kaixu/chain.py), here and under `mitmdump -s`, where
kaixu's connections meet the same few addons (kaixu/mitm.py `PluginAddonManager`).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from mitmproxy import options
from mitmproxy.master import Master

from kaixu import ca, mitm
from kaixu.addons import build_addons
from kaixu.config import Policy
from kaixu.gateway import Gateway
from kaixu.options import listener_modes
from kaixu.workers import Worker, reuse_port_socket

log = logging.getLogger("kaixu")

DRAIN_SECONDS = 30.0


def build_master(
    policy_path: str,
    policy: Policy,
    *,
    listen: list[tuple[str, int]] | None = None,
    port_file: str = "",
    reload_ms: int = 1000,
    confdir: str | None = None,
    worker: Worker | None = None,
) -> tuple[Master, Gateway]:
    ca_dir = confdir or policy.ca_dir
    cert, made = ca.init(ca_dir)  # kaixu's own CA, before mitmproxy's TLS addon would make one of its own
    if policy.forward_listen:
        log.info("forward listeners sign with the CA %s (%s%s)", ca.fingerprint(cert), ca.cert_path(ca_dir),
                 ", made now" if made else "")  # fmt: skip
    opts = options.Options()
    master = Master(opts, with_termlog=False)
    master.addons = mitm.CachedAddonManager(master)  # why: kaixu/mitm.py
    master.addons.add(*(addon() for addon in mitm.CORE_ADDONS))
    gateway = Gateway(worker=worker)
    if worker is not None:  # every (re)load says which policy this worker has in force (/health `workers`)
        gateway.installed.append(lambda p: worker.note_policy(p.digest, gateway.generation))
    master.addons.add(*build_addons(gateway))
    # `--listen` replaces the policy's reverse listeners; its forward listeners are opened either way (not by a
    # worker of `--workers N`, which has only its own SO_REUSEPORT sockets: the CLI refuses that combination)
    modes = listener_modes(policy.listen if listen is None else listen, policy.forward_listen if worker is None else ())
    opts.update(
        confdir=ca_dir,  # kaixu's CA (kaixu/ca.py): mitmproxy's TLS addon loads it from here
        connection_strategy="lazy",
        keep_host_header=False,
        body_size_limit=str(policy.max_body_bytes),
        ssl_verify_upstream_trusted_ca=policy.ca_file,
        kaixu_listen_from_policy=listen is None,
        kaixu_port_file=port_file,
        kaixu_reload_ms=reload_ms,
        kaixu_policy=policy_path,
        mode=modes,
    )
    return master, gateway


async def drain_and_stop(master: Master, gateway: Gateway, own: list[asyncio.Server] | None = None) -> None:
    """Stop accepting, let in-flight requests finish (bounded), then shut the Master down.

    Idle keep-alive connections do not hold the stop up; addons' `done` hooks run during shutdown,
    which is where queued records are flushed. `own`: the listeners of a worker (`listen_reuse_port`)."""
    ps = master.addons.get("proxyserver")
    master.options.update(mode=[])  # stop listening, through mitmproxy's public option
    for server in own or ():
        server.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while ps.listen_addrs() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    deadline = loop.time() + DRAIN_SECONDS
    while gateway.inflight and loop.time() < deadline:
        await asyncio.sleep(0.02)
    master.shutdown()


async def listen_reuse_port(addresses: list[tuple[str, int]]) -> list[asyncio.Server]:
    """A worker's listeners (`kaixu run --workers N`): kaixu's own sockets, bound with SO_REUSEPORT to the
    addresses every worker shares, each accepted connection served by mitmproxy (kaixu/mitm.py
    `connection_handler`). Call once the Master runs."""
    servers = []
    for host, port in addresses:
        sock = reuse_port_socket(host, port)
        servers.append(await asyncio.start_server(mitm.connection_handler(host, port), sock=sock, backlog=1024))
    return servers


async def serve(master: Master, gateway: Gateway, own: list[asyncio.Server] | None = None) -> None:
    """Run the Master until a stop: the first SIGTERM/SIGINT drains, a second stops at once. `own`: a
    worker's listeners, filled in once they are open."""
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        if not stopping:
            log.info("shutting down: finishing in-flight requests (at most %.0f s)", DRAIN_SECONDS)
            stopping.append(loop.create_task(drain_and_stop(master, gateway, own)))
        else:
            master.shutdown()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await master.run()
