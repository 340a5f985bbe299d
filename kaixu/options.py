"""Every mitmproxy option kaixu adds, declared in one place (set with `--set name=value`), and the `mode` the
policy's listeners become."""

from __future__ import annotations

from collections.abc import Iterable

from mitmproxy.addonmanager import Loader

from kaixu import mitm

POLICY = "kaixu_policy"
RELOAD_MS = "kaixu_reload_ms"
LISTEN_FROM_POLICY = "kaixu_listen_from_policy"
PORT_FILE = "kaixu_port_file"


def declare(loader: Loader) -> None:
    loader.add_option(POLICY, str, "proxy.yaml", "Path to the kaixu policy file (proxy.yaml).")
    loader.add_option(
        RELOAD_MS,
        int,
        1000,
        "Milliseconds between checks of the policy file for changes (0 disables hot reload).",
    )
    loader.add_option(
        LISTEN_FROM_POLICY,
        bool,
        False,
        "Open the listeners named in the policy's `listen:` (kaixu run does; with mitmdump -s use --mode).",
    )
    loader.add_option(PORT_FILE, str, "", "Write the bound listen addresses as JSON to this file once running.")


def listener_modes(reverse: Iterable[tuple[str, int]], forward: Iterable[tuple[str, int]] = ()) -> list[str]:
    """mitmproxy's `mode` for the policy's `listen:`: plain-HTTP reverse listeners (the router rewrites every
    flow's destination, so the target is inert), then the forward listeners (mitmproxy's regular mode: an
    HTTP proxy, CONNECT included; kaixu/addons/forward.py decides what is intercepted), claimed as kaixu's."""
    modes = [f"reverse:{mitm.INERT_UPSTREAM}@{host}:{port}" for host, port in reverse]
    return mitm.claim_forward_listeners(modes + [f"regular@{host}:{port}" for host, port in forward])
