"""Every use of a mitmproxy internal lives here: a version guard, a start-up self-test, and the few patches
kaixu cannot do with a public hook or option.

Why each patch exists (mitmproxy writes these answers itself, from its HTTP layers, where no addon hook can
reach):

* JSON error pages (HTTP/1 and HTTP/2): connect failures, upstream disconnects, timeouts, over-limit bodies,
  malformed requests and chunked bodies would otherwise be answered with an HTML page — or, for a malformed
  chunk size, with a closed connection and no answer at all.
* A 413 that every client can read: mitmproxy closes the connection right after its error page, while an
  SDK is still uploading (it reads the answer only after sending its body), so the client sees a reset or
  hangs. kaixu half-closes instead and keeps reading (discarding) until the client is done; the idle
  timeout (addons/connections.py) bounds how long.
* A request-header size cap (431): mitmproxy buffers request heads without a bound ("FIXME: protect against
  header size DoS" in its HTTP/1 server).
* `body_size_limit` limits requests only: mitmproxy applies it to responses too, which would cut off large
  provider answers (embedding batches).
* A terminal error event for a stream the provider breaks (HTTP/1): mitmproxy closes the client's connection
  in the middle of the chunked body, which some clients read as a clean end of a truncated answer. kaixu
  writes the event that ends the stream in the client's own format (an OpenAI error chunk, an Anthropic
  `error` event...) and the body's last chunk (`TerminalEvent`, from kaixu/stream_errors.py). The answer is then
  complete and framed, so the connection goes on serving its client (closing it now could not be announced:
  the head went out with the stream's first bytes, and a client pool would send its next request into it).
* HTTP/1 message rules mitmproxy leaves to its addons, which kaixu's request rewriting would break:
  - `Connection: close` (or HTTP/1.0 without keep-alive) is honoured after every answer: mitmproxy decides from
    the request object the router rewrites for the provider (which never gets the client's `connection`), so
    the client's own wish is noted as its head is read. Every answer after which kaixu closes says
    `connection: close` (RFC 9112 section 9.6).
  - An answer to HEAD is its head only (HTTP/1 and HTTP/2): mitmproxy sends whatever body an addon's answer
    has, and on a kept-alive connection a client (or a proxy in front that reuses connections) reads those
    bytes as the next answer. Its Content-Length stays the one a GET would have had.
  - A request line whose version is not HTTP/1.0 or HTTP/1.1 (mitmproxy takes any `HTTP/d.d`; HTTP/2 comes
    as a preface, addons/connections.py) and a bare CR in a header field (RFC 9112 section 2.2; another
    server may read it as a line break) are a 400 before any addon sees the request, then the connection
    closes.
* `connection_handler` (`kaixu run --workers N` only): each worker accepts on a socket of its own, bound with
  SO_REUSEPORT to the address every worker shares (kaixu/workers.py), and hands each accepted connection to a
  reverse-mode `ServerInstance` of mitmproxy's, as its own listeners do; mitmproxy's listeners take no socket
  option, and are not patched. The instance is made with `ServerInstance.make` (the documented way,
  mitmproxy/proxy/mode_servers.py) and never started; its `handle_stream` registers the connection with the
  proxyserver addon, so draining and `close_connection` see it like any other.
* `CachedAddonManager` (used by `kaixu run` only): mitmproxy's AddonManager walks every addon, and fires an
  `update` event after each flow hook, for every event; measured at about 150 µs per request with the six
  addons of `kaixu run`, against 20 µs with hook lists resolved once. kaixu's own steps are one addon
  (`kaixu/chain.py`) either way.
* `PluginAddonManager` (`mitmdump -s kaixu/plugin.py` only, installed by the plugin's `PluginDispatch`, which
  swaps the class of mitmdump's manager): the events of kaixu's connections reach `kaixu run`'s core addons,
  mitmproxy's `block` and the scripts, with hook lists resolved once; mitmdump's other ~25 default addons (the
  dumper among them) never see kaixu's flows. Every other connection's events, and lifecycle events, keep
  mitmproxy's own dispatch to every addon. The plugin cost 1.8-2x `kaixu run`'s CPU per request and per stream
  without it (docs/performance.md#plugin-path).
* One read, one `ResponseData`: a provider's body reaches mitmproxy's layers once per read from its socket
  (`_coalesced`), not once per HTTP chunk; every SSE event is a chunk, and each one otherwise travels the layer
  stack, the stream step's callable and a write to the client on its own.
* `skip_message_type_checks` (`kaixu run` only): mitmproxy's debug-mode type check of every request and
  response field.
* The forward listeners (kaixu/addons/forward.py): which regular-mode listeners are kaixu's
  (`claim_forward_listeners`), the host a CONNECT tunnel leads to, and a tunnel passed through untouched
  (mitmproxy's `ignore_hosts` does that, but it is global: it would also catch the reverse listeners, whose inert
  upstream matches no intercepted host). kaixu's CA is created and read here too (mitmproxy's `certs`).

Every patch acts only on kaixu's connections (a client that arrived on a reverse-mode listener or on one of
kaixu's forward listeners: all of them under `kaixu run`, the reverse listeners under `mitmdump -s
kaixu/plugin.py`); any other flow in the same mitmproxy keeps stock behaviour.
`self_test()` runs at start-up and refuses to run on a mitmproxy whose
internals moved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import inspect
import logging
import os
import re
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import mitmproxy
from cryptography import x509
from mitmproxy import addonmanager, certs, connection, exceptions, flow, hooks, http, optmanager, tls
from mitmproxy.addons import block, core, errorcheck, next_layer, proxyserver, script, tlsconfig
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http.http1 import assemble_response, connection_close
from mitmproxy.options import CONF_BASENAME
from mitmproxy.proxy import commands, events, mode_servers, mode_specs, server_hooks
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers import tcp as tcp_layers
from mitmproxy.proxy.layers.http import _http1, _http2
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import (
    ErrorCode,
    RequestHeaders,
    ResponseData,
    ResponseHeaders,
    ResponseProtocolError,
)
from mitmproxy.utils import asyncio_utils
from mitmproxy.version import VERSION

from kaixu.exceptions import KaixuError

log = logging.getLogger("kaixu.mitm")

#: The mitmproxy releases whose internals this module was written against and tested with.
SUPPORTED_VERSIONS = ("12.3.1",)
#: What kaixu's reverse listeners point at: nothing, on purpose. Every kaixu flow is rewritten by the router
#: or answered by kaixu; a flow that reached this address would be a bug, so the chain refuses it first.
INERT_UPSTREAM = "http://127.0.0.1:9"
#: The limit on a request head (request line + headers): 431 above it.
MAX_HEADER_BYTES = 64 * 1024
#: The versions an HTTP/1 request line may name (HTTP/2 arrives as a connection preface, not a request line).
HTTP1_VERSIONS = (b"HTTP/1.0", b"HTTP/1.1")
BODY_TOO_LARGE = "body exceeds mitmproxy's body_size_limit"
CLIENT_CLOSED = 499
"""What kaixu records for a request whose client went away before its answer was complete (nginx's code)."""

ErrorRenderer = Callable[[http.Request | None, int, str, ErrorCode, str], bytes]
TerminalEvent = Callable[[http.Request | None, str], bytes | None]
"""The event that ends a kaixu stream the provider broke after it began (None: none for this request)."""
"""Builds a complete HTTP/1 error response (status line, headers, JSON body) for a kaixu connection, from the
request (None before its head was parsed), status, message, mitmproxy's error code and the request path (as
far as it could be read: it picks the front door's error shape)."""

_renderer: ErrorRenderer | None = None
_terminal: TerminalEvent | None = None
_BARE_CR = re.compile(rb"\r(?!\n)")
_closing: weakref.WeakSet[http.Request] = weakref.WeakSet()
"""HTTP/1 requests whose client asked for the connection to close after their answer, noted as the head was read
(before the router rewrites the headers mitmproxy decides it from)."""
_installed = False
_tested = False


class IncompatibleMitmproxy(KaixuError, RuntimeError):
    """The installed mitmproxy is not one whose internals kaixu knows."""


_forward_specs: frozenset[str] = frozenset()
"""The mode specs of kaixu's forward listeners (`regular@HOST:PORT`): a regular-mode listener that is not one of
them (another `--mode regular` of a mitmdump running kaixu's plugin) keeps stock behaviour."""


def claim_forward_listeners(modes: list[str]) -> list[str]:
    """Note which of `modes` (what `mode` is set to) are kaixu's forward listeners; returns `modes`."""
    global _forward_specs
    _forward_specs = frozenset(m for m in modes if isinstance(mode_specs.ProxyMode.parse(m), mode_specs.RegularMode))
    return modes


def is_kaixu_client(client: connection.Client) -> bool:
    """Whether a client connection is kaixu's to answer: it arrived on a reverse-mode listener, or on one of
    kaixu's forward listeners (what kaixu does with each of their connections: kaixu/addons/forward.py)."""
    return isinstance(client.proxy_mode, mode_specs.ReverseMode) or is_forward_client(client)


def is_forward_client(client: connection.Client) -> bool:
    """Whether a client connection came through one of kaixu's forward listeners (`HTTPS_PROXY`)."""
    mode = client.proxy_mode
    return isinstance(mode, mode_specs.RegularMode) and mode.full_spec in _forward_specs


def bound_listeners(master: Any) -> list[tuple[bool, str, int]]:
    """(is a forward listener, host, port) of every address the proxy listens on, in the order of `mode`."""
    servers = master.addons.get("proxyserver").servers
    return [
        (isinstance(server.mode, mode_specs.RegularMode), str(addr[0]), int(addr[1]))
        for server in servers
        for addr in server.listen_addrs
    ]


def tunnel_destination(nextlayer: Any) -> str | None:
    """The host a forward client's CONNECT tunnel leads to, when mitmproxy asks what runs inside it (None for any
    other layer decision: the connection's first, before a CONNECT)."""
    address = nextlayer.context.server.address
    return None if address is None else str(address[0])


def pass_through(nextlayer: Any) -> None:
    """Relay the tunnel's bytes as they are: nothing decrypted, no flow recorded (what mitmproxy's
    `ignore_hosts` does; that option is global and would also catch the reverse listeners' inert upstream)."""
    nextlayer.layer = tcp_layers.TCPLayer(nextlayer.context, ignore=True)


# -- kaixu's CA (the forward listeners' interception CA), in mitmproxy's own layout --------------------------------

CA_KEY_FILES = (f"{CONF_BASENAME}-ca.pem", f"{CONF_BASENAME}-ca.p12")
"""The files holding the CA's private key (mode 0600)."""
CA_CERT_FILE = f"{CONF_BASENAME}-ca-cert.pem"
"""The CA certificate alone (public): what clients trust."""
_CA_FILES = (*CA_KEY_FILES, CA_CERT_FILE, f"{CONF_BASENAME}-ca-cert.cer", f"{CONF_BASENAME}-ca-cert.p12")


def ca_exists(folder: Path) -> bool:
    return (folder / CA_KEY_FILES[0]).is_file()


def create_ca(folder: Path) -> None:
    """A new CA in `folder`, where mitmproxy's TLS addon loads it from (kaixu runs with it as `confdir`); the
    key files are made 0600 (mitmproxy writes them under a 077 umask; said again in case the folder existed)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    certs.CertStore.create_store(folder, CONF_BASENAME, 2048, organization="kaixu", cn="kaixu forward-proxy CA")
    for name in CA_KEY_FILES:
        os.chmod(folder / name, 0o600)


def remove_ca(folder: Path) -> None:
    for name in _CA_FILES:
        (folder / name).unlink(missing_ok=True)


def ca_in_use() -> x509.Certificate | None:
    """The CA certificate this process's TLS addon signs intercepted hosts' certificates with (None: no TLS addon)."""
    from mitmproxy import ctx  # late: ctx.master exists only once a Master runs

    tls = ctx.master.addons.get("tlsconfig")
    store = getattr(tls, "certstore", None)
    return None if store is None else store.default_ca.to_cryptography()


def is_body_too_large(error: flow.Error | None) -> bool:
    return error is not None and BODY_TOO_LARGE in error.msg


def is_client_disconnect(error: flow.Error | None) -> bool:
    return error is not None and error.msg == "Client disconnected."


def client_fault_status(flw: http.HTTPFlow) -> int | None:
    """The status to record when a flow's error was the client's doing (None: an upstream failure).

    499 (nginx's "client closed request") when it went away, 413 over the body limit, 400 for a request
    mitmproxy could not read (malformed chunked body, early end)."""
    error = flw.error
    if error is None:
        return None
    if is_client_disconnect(error):
        return CLIENT_CLOSED
    if is_body_too_large(error):
        return 413
    if flw.request.timestamp_end is None and error.msg.startswith("HTTP/1 protocol error"):
        return 400
    return None


def close_connection(client: connection.Client, conn: connection.Connection | None = None) -> bool:
    """Close one of a client's connections (the client's own by default) from outside mitmproxy's layers.

    mitmproxy has no public call for it: the proxyserver addon keeps a handler per client connection."""
    from mitmproxy import ctx  # late: ctx.master exists only once a Master runs

    handler = ctx.master.addons.get("proxyserver").connections.get(client.id)
    target = conn or client
    if handler is None or target not in handler.transports:
        return False
    handler.close_connection(target)
    return True


def connection_handler(host: str, port: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """What serves a client connection kaixu accepted itself on (host, port): mitmproxy's reverse-mode
    connection handling, exactly as on one of its own listeners (needs a running Master: `ctx.master`)."""
    from mitmproxy import ctx

    manager = ctx.master.addons.get("proxyserver")
    instance: mode_servers.ServerInstance[mode_specs.ReverseMode] = mode_servers.ServerInstance.make(
        f"reverse:{INERT_UPSTREAM}@{host}:{port}", manager
    )
    return instance.handle_stream


async def serve_on_loopback() -> asyncio.Server:
    """A listener of this process only, on 127.0.0.1 and a free port, served as mitmproxy's reverse-mode
    listeners are (`connection_handler`): where an agent's own model calls come back to the worker of
    `kaixu run --workers N` that ran the agent (the shared port may hand them to another worker)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    return await asyncio.start_server(connection_handler("127.0.0.1", port), sock=sock)


class CachedAddonManager(addonmanager.AddonManager):
    """mitmproxy's AddonManager with each hook name's callables looked up once, not once per event.

    Semantics are kept: chain order, awaited async hooks, AddonHalt stops the chain, OptionsError
    propagates, any other exception is logged as an addon error. Adding or removing an addon resets it."""

    def __init__(self, master: Any) -> None:
        super().__init__(master)
        self._hooks: dict[str, list[Callable[..., Any]]] = {}

    def add(self, *addons: Any) -> None:
        self._hooks.clear()
        super().add(*addons)

    def remove(self, addon: Any) -> None:
        self._hooks.clear()
        super().remove(addon)

    def clear(self) -> None:
        self._hooks.clear()
        super().clear()

    async def trigger_event(self, event: hooks.Hook) -> None:
        funcs = self._hooks.get(event.name)
        if funcs is None:
            funcs = [func for addon in self.chain for _, func in self._iter_hooks(addon, event)]
            self._hooks[event.name] = funcs
        if funcs:
            await _call_hooks(funcs, event.args())


async def _call_hooks(funcs: list[Callable[..., Any]], args: list[Any]) -> None:
    """mitmproxy's semantics for one event: each callable in turn, async ones awaited, AddonHalt stops the
    chain, OptionsError propagates, any other exception is logged as an addon error."""
    for func in funcs:
        try:
            result = func(*args)
            if result is not None and inspect.isawaitable(result):
                await result
        except exceptions.AddonHalt:
            return
        except exceptions.OptionsError:
            raise
        except Exception as exc:
            logging.getLogger("mitmproxy.addonmanager").error(f"Addon error: {exc}", exc_info=True)


#: The mitmproxy addons `kaixu run`'s Master has besides kaixu's own (kaixu/master.py): what a reverse proxy needs.
CORE_ADDONS = (core.Core, proxyserver.Proxyserver, next_layer.NextLayer, tlsconfig.TlsConfig, errorcheck.ErrorCheck)
#: Under `mitmdump -s kaixu/plugin.py`, the addons of mitmdump's Master that kaixu's connections still meet:
#: `kaixu run`'s, mitmproxy's `block` (it refuses clients from public addresses unless `--set
#: block_global=false`: once per connection, kept so the plugin opens nothing it did not open before) and the
#: script loader, whose scripts (kaixu's, and any other `-s`) keep every event.
PLUGIN_ADDONS = (*CORE_ADDONS, block.Block, script.ScriptLoader)


class PluginAddonManager(addonmanager.AddonManager):
    """mitmdump's AddonManager, under `mitmdump -s kaixu/plugin.py`: the events of kaixu's connections (a client
    that `is_kaixu_client`) go to `PLUGIN_ADDONS` only, in chain order, their hook lists resolved once, as
    `CachedAddonManager` does for `kaixu run`; every other event (lifecycle events, and every event of another
    listener's connections) goes through mitmproxy's own dispatch to every addon, unchanged.

    mitmdump's ~30 default addons (the dumper printing each flow, map/modify options, playback, save...) are
    not `kaixu run`'s and never see kaixu's flows; walking them for every event (and again for the `update`
    event mitmproxy fires after each flow hook) was most of what the plugin cost beyond `kaixu run`.
    Installed on the running mitmdump's manager by `plugin_dispatch` (its class is swapped: mitmproxy has no
    public hook for how events are dispatched)."""

    _kaixu_hooks: dict[str, list[Callable[..., Any]]]

    def _forget(self) -> None:
        self._kaixu_hooks = {}

    def register(self, addon: Any) -> Any:
        self._forget()
        return super().register(addon)

    def remove(self, addon: Any) -> None:
        self._forget()
        super().remove(addon)

    def clear(self) -> None:
        self._forget()
        super().clear()

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        args = event.args()
        client = _client_of(args[0])
        if client is None or not is_kaixu_client(client):
            await super().handle_lifecycle(event)
            return
        funcs = self.kaixu_hooks(event)
        if funcs:
            await _call_hooks(funcs, args)
        if isinstance(args[0], flow.Flow):  # mitmproxy's `update` after each flow hook
            funcs = self.kaixu_hooks(_UPDATE)
            if funcs:
                await _call_hooks(funcs, [[args[0]]])

    def kaixu_hooks(self, event: hooks.Hook) -> list[Callable[..., Any]]:
        """The callables an event of a kaixu connection reaches, in chain order."""
        funcs = self._kaixu_hooks.get(event.name)
        if funcs is None:
            kept = [addon for addon in self.chain if isinstance(addon, PLUGIN_ADDONS)]
            funcs = [func for addon in kept for _, func in self._iter_hooks(addon, event)]
            self._kaixu_hooks[event.name] = funcs
        return funcs


_UPDATE = hooks.UpdateHook([])
"""The `update` event, as `_iter_hooks` looks its hooks up by name."""


def _client_of(data: object) -> connection.Client | None:
    """The client connection a hook's data belongs to (None: a lifecycle event, which every addon gets)."""
    if isinstance(data, flow.Flow):
        return data.client_conn
    if isinstance(data, connection.Client):
        return data
    context = getattr(data, "context", None)  # next_layer, TLS hooks
    if context is not None:
        return getattr(context, "client", None)
    client = getattr(data, "client", None)  # server connection hooks
    return client if isinstance(client, connection.Client) else None


def plugin_dispatch(master: Any) -> bool:
    """Give kaixu's connections the `kaixu run` dispatch on mitmdump's Master (`PluginAddonManager`); False
    when its manager is not mitmproxy's stock one (then nothing changes). Undone by `stock_dispatch`."""
    self_test()
    manager: Any = master.addons
    if type(manager) is addonmanager.AddonManager:
        manager.__class__ = PluginAddonManager
    if type(manager) is not PluginAddonManager:
        return False
    manager._forget()
    return True


def stock_dispatch(master: Any) -> None:
    """mitmproxy's own dispatch again (the plugin is unloaded)."""
    manager: Any = master.addons
    if type(manager) is PluginAddonManager:
        manager.__class__ = addonmanager.AddonManager  # type: ignore[assignment]


class PluginDispatch:
    """The addon kaixu/plugin.py loads before kaixu's chain: `plugin_dispatch` while the script is loaded."""

    def __init__(self) -> None:
        self.master: Any = None

    def load(self, loader: addonmanager.Loader) -> None:
        self.master = loader.master
        if not plugin_dispatch(self.master):
            log.warning("kaixu: mitmproxy's addon manager is not the stock one; kaixu's flows meet every addon")

    def done(self) -> None:
        if self.master is not None:
            stock_dispatch(self.master)


def self_test() -> None:
    """Fail loudly, at start-up, if this mitmproxy is not one whose internals the patches below rely on.
    Runs its checks once per process (`kaixu run` calls it for a clean message, `install` for the plugin)."""
    global _tested
    if _tested:
        return
    if VERSION not in SUPPORTED_VERSIONS:
        raise IncompatibleMitmproxy(
            f"kaixu supports mitmproxy {', '.join(SUPPORTED_VERSIONS)}; {VERSION} is installed "
            f"(from {mitmproxy.__file__}). Install the pinned version: pip install -e ."
        )
    checks: list[tuple[object, str, tuple[str, ...]]] = [
        (_http1.Http1Server, "send", ("self", "event")),
        (_http1.Http1Server, "read_headers", ("self", "event")),
        (_http1.Http1Server, "mark_done", ("self", "request", "response")),
        (_http1.Http1Connection, "read_body", ("self", "event")),
        (_http1.Http1Client, "read_headers", ("self", "event")),
        (_http2.Http2Connection, "_handle_event", ("self", "event")),
        (_http2.Http2Server, "_handle_event", ("self", "event")),
        (http_layers.HttpStream, "check_body_size", ("self", "request")),
        (addonmanager.AddonManager, "_iter_hooks", ("self", "addon", "event")),
        (addonmanager.AddonManager, "trigger_event", ("self", "event")),
        (addonmanager.AddonManager, "handle_lifecycle", ("self", "event")),
        (addonmanager.AddonManager, "register", ("self", "addon")),
        (addonmanager.AddonManager, "remove", ("self", "addon")),
        (addonmanager.AddonManager, "clear", ("self",)),
        (mode_servers.ServerInstance, "make", ("mode", "manager")),
        (mode_servers.ServerInstance, "handle_stream", ("self", "reader", "writer")),
        (proxyserver.Proxyserver, "register_connection", ("self", "connection_id", "handler")),
        (tcp_layers.TCPLayer, "__init__", ("self", "context", "ignore")),
        (mode_servers.ServerInstance, "__init__", ("self", "mode", "manager")),  # `.mode`: bound_listeners
        (certs.CertStore, "create_store", ("path", "basename", "key_size", "organization", "cn")),
        (hooks.Hook, "args", ("self",)),  # cached_hook_arguments
        (asyncio_utils, "set_task_debug_info", ("task", "name", "client")),  # plain_task_names
        (optmanager._Option, "current", ("self",)),  # cheaper_option_reads
    ]
    for owner, name, params in checks:
        func = getattr(owner, name, None)
        if func is None or tuple(inspect.signature(func).parameters) != params:
            raise IncompatibleMitmproxy(f"mitmproxy {VERSION}: {owner.__name__}.{name}{params} changed")  # type: ignore[attr-defined]
    attributes = (
        (_http1.Http1Connection, "buf"),
        (_http1.Http1Connection, "state"),
        (_http1.Http1Connection, "request"),
        (http_layers.HttpLayer, "streams"),
        (http_layers.HttpStream, "flow"),
        (ResponseHeaders, "end_stream"),
        (mode_servers.ServerInstance, "listen_addrs"),
        (server_hooks.ServerConnectionHookData, "client"),  # what `_client_of` reads from each hook's data
        (tls.TlsData, "context"),
        (tls.ClientHelloData, "context"),
    )
    for owner, attr in attributes:
        if attr not in getattr(owner, "__annotations__", {}) and not hasattr(owner, attr):
            raise IncompatibleMitmproxy(f"mitmproxy {VERSION}: {owner.__name__}.{attr} is gone")
    for code in ("CONNECT_FAILED", "REQUEST_TOO_LARGE", "CLIENT_DISCONNECTED", "GENERIC_CLIENT_ERROR"):
        if not hasattr(ErrorCode, code):
            raise IncompatibleMitmproxy(f"mitmproxy {VERSION}: ErrorCode.{code} is gone")

    if "connections" not in proxyserver.Proxyserver.__annotations__:
        raise IncompatibleMitmproxy(f"mitmproxy {VERSION}: Proxyserver.connections is gone")
    _tested = True


def kaixu_run_shortcuts() -> None:
    """What `kaixu run` (a process that is kaixu's alone) skips of mitmproxy's per-message bookkeeping; each
    below says why. Not under `mitmdump -s kaixu/plugin.py`, whose other addons keep mitmproxy as it is."""
    skip_message_type_checks()
    fast_header_lookups()
    cached_hook_arguments()
    plain_task_names()
    cheaper_option_reads()


def skip_message_type_checks() -> None:
    """`kaixu run` only (a process that is kaixu's alone): mitmproxy type-checks every field of every request
    and response it builds (`MessageData.__post_init__`, defined under `if __debug__`, i.e. unless Python runs
    with -O), about 7% of the CPU of a small JSON request. The check guards against an addon passing a wrong
    type; kaixu's calls are checked by mypy instead. Not under `mitmdump -s kaixu/plugin.py`, whose other
    addons keep mitmproxy's checks."""
    post_init = getattr(http.MessageData, "__post_init__", None)
    if post_init is not None and post_init is not _no_checks:
        http.MessageData.__post_init__ = _no_checks  # type: ignore[method-assign]


def _no_checks(self: http.MessageData) -> None:
    return None


def fast_header_lookups() -> None:
    """`kaixu run` only, as `skip_message_type_checks`: mitmproxy's `Headers` finds a name by calling its
    `_kconv` (a static method) once per field, and answers `get` and `in` through `collections.abc.Mapping`,
    which raises and catches a `KeyError` for a name that is absent (most of a proxy's lookups: is there a
    Transfer-Encoding?). These give the same answers from an index by lower-case name
    (tests/test_mitm_shortcuts.py holds them equal to mitmproxy's for any fields, names and changes); a name that
    is neither str nor bytes goes mitmproxy's way."""
    if http.Headers.get_all is not _headers_get_all:
        http.Headers.get_all = _headers_get_all  # type: ignore[method-assign]
        http.Headers.get = _headers_get  # type: ignore[method-assign,assignment]
        http.Headers.__contains__ = _headers_contains  # type: ignore[method-assign,assignment]


HEADERS_LOOKUPS = (http.Headers.get_all, http.Headers.get, http.Headers.__contains__)
"""mitmproxy's own `Headers` lookups, which `fast_header_lookups` replaces (the differential test calls them)."""


def _header_key(name: object) -> bytes | None:
    """A name as the index keys it (lower-case bytes), or None for one that is neither str nor bytes."""
    if isinstance(name, str):
        return name.encode("utf-8", "surrogateescape").lower()
    return name.lower() if isinstance(name, bytes) else None


def _headers_get_all(self: http.Headers, name: str | bytes) -> list[str]:
    key = _header_key(name)
    if key is None:
        return HEADERS_LOOKUPS[0](self, name)
    values = _headers_index(self).get(key)
    return [value.decode("utf-8", "surrogateescape") for value in values] if values else []


def _headers_get(self: http.Headers, name: str | bytes, default: Any = None) -> Any:
    values = _headers_get_all(self, name)
    return ", ".join(values) if values else default


def _headers_contains(self: http.Headers, name: object) -> bool:
    key = _header_key(name)
    return HEADERS_LOOKUPS[2](self, name) if key is None else key in _headers_index(self)


def _headers_index(self: http.Headers) -> dict[bytes, list[bytes]]:
    """The fields' values by lower-case name, kept on the object with the `fields` tuple they were read from:
    every change of a `Headers` replaces its (immutable) `fields` tuple, so a new tuple means a new index (a
    lookup asks `is`: the kept reference holds the old tuple alive, so no other can take its identity)."""
    fields = self.fields
    kept = self.__dict__.get("_kaixu_index")
    if kept is not None and kept[0] is fields:
        return kept[1]
    index: dict[bytes, list[bytes]] = {}
    for key, value in fields:
        index.setdefault(key.lower(), []).append(value)
    if type(fields) is tuple:  # (a list set by hand could change in place: not kept)
        self.__dict__["_kaixu_index"] = (fields, index)
    return index


def cheaper_option_reads() -> None:
    """`kaixu run` only: mitmproxy deep-copies an option's value, and its default, at every read
    (`_Option.current`), so that a caller cannot change a list in place; its layers read options about 14 times
    a request. A value of an immutable type is returned as it is, which is what `copy.deepcopy` returns for it;
    any other goes mitmproxy's way."""
    if optmanager._Option.current is not _option_current:
        optmanager._Option.current = _option_current  # type: ignore[method-assign]


OPTION_CURRENT = optmanager._Option.current
"""mitmproxy's own `_Option.current`, which `cheaper_option_reads` replaces (the differential test calls it)."""
_IMMUTABLE = frozenset({str, int, bool, float, bytes, type(None)})


def _option_current(self: optmanager._Option) -> Any:
    value = self._default if self.value is optmanager.unset else self.value
    return value if type(value) in _IMMUTABLE else OPTION_CURRENT(self)


def cached_hook_arguments() -> None:
    """`kaixu run` only: mitmproxy lists a hook's arguments (`Hook.args`) by reading its class's dataclass
    fields on every call, several times for every hook of every flow; here the names are read once per class
    (a dataclass's fields are fixed when its class is made)."""
    if hooks.Hook.args is not _hook_args:
        hooks.Hook.args = _hook_args  # type: ignore[method-assign]


HOOK_ARGS = hooks.Hook.args
"""mitmproxy's own `Hook.args`, which `cached_hook_arguments` replaces (the differential test calls it)."""
_HOOK_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _hook_args(self: hooks.Hook) -> list[Any]:
    names = _HOOK_FIELD_NAMES.get(type(self))
    if names is None:
        names = _HOOK_FIELD_NAMES[type(self)] = tuple(field.name for field in dataclasses.fields(self))  # type: ignore[arg-type]
    return [getattr(self, name) for name in names]


def plain_task_names() -> None:
    """`kaixu run` only: mitmproxy names every task it starts (a connection's, each hook's) and, unless Python
    runs with -O, reads the PYTEST_CURRENT_TEST environment variable for each one to add a test's name to it. A
    `kaixu run` process is no test: its tasks get their name alone, without a look at the environment."""
    if asyncio_utils.set_task_debug_info is not _task_debug_info:
        asyncio_utils.set_task_debug_info = _task_debug_info


def _task_debug_info(task: asyncio.Task[Any], *, name: str, client: tuple[Any, ...] | None = None) -> None:
    task.created = time.time()  # type: ignore[attr-defined]
    task.set_name(name)
    if client:
        task.client = client  # type: ignore[attr-defined]


def install(renderer: ErrorRenderer, terminal: TerminalEvent | None = None) -> None:
    """Apply the patches (once per process); `renderer` makes kaixu's JSON error responses, `terminal` the
    event that ends a broken stream."""
    global _renderer, _terminal, _installed
    _renderer, _terminal = renderer, terminal
    if _installed:
        return
    self_test()
    _installed = True
    _patch_http1_send()
    _patch_http1_read_headers()
    _patch_http1_read_body()
    _patch_http2_server()
    _patch_request_only_body_limit()


def _ours(layer: Any) -> bool:
    return _renderer is not None and is_kaixu_client(layer.context.client)


def _render(
    request: http.Request | None, status: int, message: str, code: ErrorCode, head: bytes | None = None
) -> bytes:
    assert _renderer is not None
    path = request.path if request is not None else _path_of(head or b"")
    raw = _renderer(request, status, message, code, path)
    if _is_head(request) or (request is None and (head or b"").startswith(b"HEAD ")):
        return raw.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"  # an answer to HEAD: its head only
    return raw


def _is_head(request: http.Request | None) -> bool:
    return request is not None and request.data.method == b"HEAD"


def _nothing() -> Generator[commands.Command, Any]:
    yield from ()


def _path_of(head: bytes) -> str:
    """The path of a request line that could not be parsed as a whole (for the error's shape only)."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    return parts[1].decode("latin-1") if len(parts) >= 2 else "/"  # whole: a Gemini path ends with its action


def _patch_http1_send() -> None:
    original = _http1.Http1Server.send

    def send(self: _http1.Http1Server, event: Any) -> Generator[commands.Command, Any]:
        # Called for every chunk of every answer: the common case hands back mitmproxy's own generator.
        kind = type(event)
        if kind is ResponseData:
            if _is_head(self.request) and _ours(self):
                return _nothing()  # an answer to HEAD is its head only
            return original(self, event)
        if kind is ResponseHeaders:
            if _ours(self):
                _say_close(self.request, event.response)
            return original(self, event)
        # (a `100 Continue` sent before is not the answer: mitmproxy itself then sends no error at all)
        answered = self.response is not None and self.response.status_code >= 200
        if kind is not ResponseProtocolError or not _ours(self):
            return original(self, event)
        if answered:
            return _end_stream(self, event) or original(self, event)
        if event.code.http_status_code() is None or not (self.conn.state & ConnectionState.CAN_WRITE):
            return original(self, event)
        return _send_error(self, event)

    _http1.Http1Server.send = send  # type: ignore[method-assign]


def _say_close(request: http.Request | None, response: http.Response) -> None:
    """`connection: close` on an answer after which the client's connection closes: the client asked for it
    (noted as its head was read), or mitmproxy's own rule on the request as it stands closes it. Said in lower
    case, mitmproxy then closes after the answer, whatever the request says now."""
    if request is None or response.status_code < 200:
        return  # an interim answer (`100 Continue`, `101 Switching Protocols`) is not the one after which it closes
    if request in _closing or connection_close(request.http_version, request.headers):
        response.headers["connection"] = "close"


def _send_error(self: _http1.Http1Server, event: ResponseProtocolError) -> Generator[commands.Command, Any]:
    status = event.code.http_status_code()
    assert status is not None
    yield commands.SendData(self.conn, _render(self.request, status, event.message, event.code))
    if event.code is ErrorCode.REQUEST_TOO_LARGE:
        # The client may still be uploading: stop writing, keep reading (and discarding) so it can finish
        # and read the 413. The idle timeout closes the connection if it never does.
        yield commands.CloseTcpConnection(self.conn, half_close=True)
    else:
        yield commands.CloseConnection(self.conn)


def _end_stream(self: _http1.Http1Server, event: ResponseProtocolError) -> Generator[commands.Command, Any] | None:
    """A chunked stream the provider broke: its terminal event and the last chunk, then close; None when this
    answer has no such event (not a stream, not chunked, nothing to say, the connection cannot be written)."""
    response = self.response
    if _terminal is None or response is None or response.stream is False:
        return None
    if response.headers.get("transfer-encoding", "").lower() != "chunked":
        return None
    if not (self.conn.state & ConnectionState.CAN_WRITE):
        return None
    tail = _terminal(self.request, event.message)
    if not tail:
        return None

    def commands_() -> Generator[commands.Command, Any]:
        yield commands.SendData(self.conn, b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))
        # The answer is complete: the connection serves the client's next request, as after any answer
        # (or closes, if this one said `connection: close`).
        yield from self.mark_done(response=True)

    return commands_()


def _patch_http1_read_headers() -> None:
    original = _http1.Http1Server.read_headers

    def read_headers(self: _http1.Http1Server, event: events.ConnectionEvent) -> Generator[commands.Command, Any]:
        if not _ours(self):
            yield from original(self, event)
            return
        if (
            isinstance(event, events.DataReceived)
            and len(self.buf) > MAX_HEADER_BYTES
            and b"\r\n\r\n" not in bytes(self.buf)[: MAX_HEADER_BYTES + 4]
        ):
            message = f"the request head is larger than {MAX_HEADER_BYTES} bytes"
            first = bytes(self.buf)[:MAX_HEADER_BYTES]  # the whole request line: its path picks the error's shape
            yield commands.SendData(self.conn, _render(None, 431, message, ErrorCode.GENERIC_CLIENT_ERROR, first))
            yield commands.CloseConnection(self.conn)
            self.state = self.done
            return
        answered = False  # mitmproxy refused the head itself (it then still reports it, to record the flow)
        # the head as it came (mitmproxy takes it out of the buffer before it refuses it): its path picks the
        # error's shape, its method whether the answer may have a body (a HEAD's may not)
        start = bytes(self.buf)[:4096] if self.request is None else None
        for command in original(self, event):
            if type(command) is ReceiveHttp and type(command.event) is RequestHeaders and not answered:
                request = command.event.request  # a request head mitmproxy has parsed, before any addon sees it
                problem = _head_problem(request)
                if problem is not None:
                    rendered = _render(
                        request, 400, f"malformed HTTP request: {problem}", ErrorCode.GENERIC_CLIENT_ERROR
                    )
                    yield commands.SendData(self.conn, rendered)
                    yield commands.CloseConnection(self.conn)
                    self.state = self.done
                    return
                if _asks_close(request):
                    _closing.add(request)
            elif (
                isinstance(command, commands.SendData)
                and command.data.startswith(b"HTTP/1.1 400 ")
                and b"text/html" in command.data[:300]
            ):
                # mitmproxy's HTML answer to a request head it cannot parse
                reason = command.data.partition(b"<p>")[2].partition(b"</p>")[0].decode("utf-8", "replace")
                message = f"malformed HTTP request: {html.unescape(reason) or 'unparseable request head'}"
                rendered = _render(self.request, 400, message, ErrorCode.GENERIC_CLIENT_ERROR, start)
                command = commands.SendData(self.conn, rendered)
            answered = answered or isinstance(command, commands.SendData)
            yield command

    _http1.Http1Server.read_headers = read_headers  # type: ignore[method-assign]


def _asks_close(request: http.Request) -> bool:
    """Whether an HTTP/1 client wants its connection closed after this request's answer: `close`, or HTTP/1.0
    without `keep-alive` (connection options are case-insensitive, RFC 9110 section 7.6.1: .NET sends `Close`;
    mitmproxy's own rule reads lower case only)."""
    tokens = {token.strip().lower() for token in request.headers.get("connection", "").split(",")}
    if "close" in tokens:
        return True
    return "keep-alive" not in tokens and request.data.http_version != b"HTTP/1.1"


def _head_problem(request: http.Request) -> str | None:
    """Why a request head mitmproxy parsed is refused all the same (None: it is not)."""
    version = request.data.http_version
    if version not in HTTP1_VERSIONS:
        return f"HTTP version {version.decode('latin-1')!r} is not served (HTTP/1.0, HTTP/1.1 and HTTP/2 are)"
    for name, value in request.headers.fields:
        if (b"\r" in name or b"\r" in value) and (_BARE_CR.search(name) or _BARE_CR.search(value)):
            return "a bare CR (not followed by LF) in a header field"
    return None


def _patch_http1_read_body() -> None:
    original = _http1.Http1Connection.read_body

    def read_body(self: _http1.Http1Connection, event: events.Event) -> Generator[commands.Command, Any]:
        if not _ours(self):
            yield from original(self, event)
            return
        if isinstance(self, _http1.Http1Client):
            yield from _coalesced(original(self, event))
            return
        for command in original(self, event):
            if (
                isinstance(command, commands.CloseConnection)
                and command.connection is self.conn
                and self.response is None
                and self.conn.state & ConnectionState.CAN_WRITE
            ):
                # a malformed request body (chunk size, early end): answer 400 before closing
                message = "malformed HTTP request body (invalid chunked encoding or a body shorter than announced)"
                yield commands.SendData(self.conn, _render(self.request, 400, message, ErrorCode.GENERIC_CLIENT_ERROR))
            yield command

    _http1.Http1Connection.read_body = read_body  # type: ignore[method-assign]


def _coalesced(produced: Generator[commands.Command, Any]) -> Generator[commands.Command, Any]:
    """A provider's body as one `ResponseData` per read from its socket, not one per HTTP chunk: mitmproxy
    passes every chunk through its layers, the stream step's callable and a write to the client on its own,
    and a provider that sends an SSE event per chunk (all of them) delivers several chunks per read as soon as
    the proxy is busy. Chunk boundaries carry no meaning (RFC 9112 section 7.1); nothing waits for more bytes
    than one read brought, so no byte is delayed."""
    pending: list[bytes] = []
    stream_id = 0
    for command in produced:
        if type(command) is ReceiveHttp and type(command.event) is ResponseData:
            pending.append(command.event.data)
            stream_id = command.event.stream_id
            continue
        if pending:
            yield ReceiveHttp(ResponseData(stream_id, pending[0] if len(pending) == 1 else b"".join(pending)))
            pending = []
        yield command
    if pending:
        yield ReceiveHttp(ResponseData(stream_id, pending[0] if len(pending) == 1 else b"".join(pending)))


def _patch_http2_server() -> None:
    """HTTP/2 clients get the same JSON errors (mitmproxy sends an HTML page on the stream), and an answer to HEAD
    ends with its headers (mitmproxy sends the body of an addon's answer on the stream)."""
    original_server = _http2.Http2Server._handle_event

    def server_event(self: _http2.Http2Server, event: events.Event) -> Generator[commands.Command, Any]:
        if (
            type(event) is ResponseHeaders
            and not event.end_stream
            and _ours(self)
            and _is_head(_h2_request(self, event.stream_id))
        ):
            # the stream ends here; mitmproxy then drops the body and end of this stream (closed for us)
            event = ResponseHeaders(event.stream_id, event.response, end_stream=True)
        return original_server(self, event)

    _http2.Http2Server._handle_event = server_event  # type: ignore[method-assign]
    original = _http2.Http2Connection._handle_event

    def _handle_event(self: _http2.Http2Connection, event: events.Event) -> Generator[commands.Command, Any]:
        status = event.code.http_status_code() if isinstance(event, ResponseProtocolError) else None
        if status is None or not isinstance(self, _http2.Http2Server) or not _ours(self):
            yield from original(self, event)
            return
        assert isinstance(event, ResponseProtocolError)
        stream = self.h2_conn.streams.get(event.stream_id)
        if self.is_closed(event.stream_id) or stream is None or stream.state_machine.headers_sent:
            yield from original(self, event)
            return
        if not self.is_open_for_us(event.stream_id):
            yield from original(self, event)
            return
        raw = _render(None, status, event.message, event.code)
        head, _, body = raw.partition(b"\r\n\r\n")
        headers = [(b":status", b"%d" % status)]
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() not in (b"connection", b"content-length"):
                headers.append((name.strip().lower(), value.strip()))
        if _is_head(_h2_request(self, event.stream_id)):
            self.h2_conn.send_headers(event.stream_id, headers, end_stream=True)
        else:
            self.h2_conn.send_headers(event.stream_id, headers)
            self.h2_conn.send_data(event.stream_id, body, end_stream=True)
        data_to_send = self.h2_conn.data_to_send()
        if data_to_send:
            yield commands.SendData(self.conn, data_to_send)

    _http2.Http2Connection._handle_event = _handle_event  # type: ignore[method-assign]


def _h2_request(self: _http2.Http2Connection, stream_id: int) -> http.Request | None:
    """The request of an HTTP/2 stream (mitmproxy's HTTP/2 layer keeps none): from the HTTP layer above it,
    which keeps a stream per request id, as mitmproxy's own `HttpStream.mode` finds its parent."""
    layers = self.context.layers
    parent = layers[layers.index(self) - 1]
    if not isinstance(parent, http_layers.HttpLayer):
        return None
    stream = parent.streams.get(stream_id)
    return stream.flow.request if stream is not None else None


def _patch_request_only_body_limit() -> None:
    """`body_size_limit` (mitmproxy's public option) bounds what clients send without buffering it: a
    Content-Length over the limit is refused before the body is read, a chunked body as it crosses the limit.
    Provider answers to kaixu flows are not limited (an embeddings batch easily passes 5 MB)."""
    original = http_layers.HttpStream.check_body_size

    def check_body_size(self: http_layers.HttpStream, request: bool) -> Generator[Any, Any, bool]:
        if not request and is_kaixu_client(self.context.client):
            return _not_too_large()
        return original(self, request)

    http_layers.HttpStream.check_body_size = check_body_size  # type: ignore[method-assign]


def _not_too_large() -> Generator[Any, Any, bool]:
    return False
    yield  # a generator that yields nothing: `yield from` it gives False


__all__ = [
    "BODY_TOO_LARGE",
    "CA_CERT_FILE",
    "CA_KEY_FILES",
    "CLIENT_CLOSED",
    "INERT_UPSTREAM",
    "CachedAddonManager",
    "ErrorCode",
    "IncompatibleMitmproxy",
    "assemble_response",
    "bound_listeners",
    "ca_exists",
    "ca_in_use",
    "claim_forward_listeners",
    "client_fault_status",
    "close_connection",
    "connection_handler",
    "create_ca",
    "install",
    "is_body_too_large",
    "is_client_disconnect",
    "is_forward_client",
    "is_kaixu_client",
    "pass_through",
    "remove_ca",
    "self_test",
    "skip_message_type_checks",
    "tunnel_destination",
]


def listen_address() -> tuple[str, int] | None:
    """Where mitmproxy's first listener is bound, or None while none listens (before start, during a graceful
    stop, and in a worker of `--workers N`, whose listeners are kaixu's own). The proxyserver addon's
    `listen_addrs` is not a documented API."""
    from mitmproxy import ctx  # late: ctx.master exists only once a Master runs

    server = ctx.master.addons.get("proxyserver")
    addrs = server.listen_addrs() if server is not None else []
    return (str(addrs[0][0]), int(addrs[0][1])) if addrs else None
