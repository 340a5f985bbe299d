"""The plugin path's dispatch (kaixu/mitm.py `PluginAddonManager`): under `mitmdump -s kaixu/plugin.py`, kaixu's
connections meet the addons `kaixu run` has plus the scripts, every other connection all of mitmdump's.

Driven on mitmdump's own Master (`DumpMaster`, its default addons and the dumper) with mitmproxy's test flows;
what is observed is mitmproxy's dumper (whether it printed a flow) and an addon of the test's own standing where a
script's addons stand (under the script loader)."""

from __future__ import annotations

import io
import logging

from mitmproxy import hooks, http, options
from mitmproxy.addons import dumper, termlog
from mitmproxy.proxy.layers.http import HttpResponseHook
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow
from mitmproxy.tools.dump import DumpMaster

from kaixu import mitm
from kaixu.log import TermlogLevel


class Seen:
    """A script's addon: the flows whose `response` it saw, and the `update` events."""

    def __init__(self, name: str = "seen") -> None:
        self.name = name
        self.responses: list[str] = []
        self.updates = 0

    def response(self, flow: http.HTTPFlow) -> None:
        self.responses.append(flow.request.path)

    def update(self, flows: object) -> None:
        self.updates += 1


def flow_on(mode: str, path: str) -> http.HTTPFlow:
    flow = tflow.tflow(resp=True)
    flow.client_conn.proxy_mode = ProxyMode.parse(mode)
    flow.request.path = path
    return flow


async def mitmdump_with_plugin() -> tuple[DumpMaster, io.StringIO, Seen, mitm.PluginDispatch]:
    master = DumpMaster(options.Options(), with_termlog=False, with_dumper=False)
    printed = io.StringIO()
    master.addons.add(dumper.Dumper(printed))
    seen, dispatch = Seen(), mitm.PluginDispatch()
    scripts = master.addons.get("scriptloader")  # a script's addons are the script loader's children
    for addon in (dispatch, seen):
        master.addons.register(addon)
        scripts.addons.append(addon)
    return master, printed, seen, dispatch


async def test_kaixus_flows_meet_only_kaixu_runs_addons_and_the_scripts() -> None:
    master, printed, seen, _ = await mitmdump_with_plugin()
    assert type(master.addons) is mitm.PluginAddonManager
    kaixu_flow = flow_on(f"reverse:{mitm.INERT_UPSTREAM}@4000", "/kaixu-flow")
    other_flow = flow_on("regular@8080", "/other-flow")
    await master.addons.handle_lifecycle(HttpResponseHook(kaixu_flow))
    await master.addons.handle_lifecycle(HttpResponseHook(other_flow))
    assert seen.responses == ["/kaixu-flow", "/other-flow"]  # scripts see both
    assert seen.updates == 2  # and mitmproxy's `update` after each flow hook
    assert "/other-flow" in printed.getvalue()  # another listener's flow meets every default addon
    assert "/kaixu-flow" not in printed.getvalue()  # mitmdump's dumper never sees kaixu's
    hook = HttpResponseHook(kaixu_flow)
    kept = {type(func.__self__) for func in master.addons.kaixu_hooks(hook) if hasattr(func, "__self__")}
    assert kept <= {*mitm.PLUGIN_ADDONS, Seen}


async def test_a_script_loaded_later_is_reached_and_unloading_the_plugin_restores_mitmproxys_dispatch() -> None:
    master, printed, _, dispatch = await mitmdump_with_plugin()
    kaixu_flow = flow_on(f"reverse:{mitm.INERT_UPSTREAM}@4000", "/kaixu-flow")
    await master.addons.handle_lifecycle(HttpResponseHook(kaixu_flow))  # the hook lists are resolved now
    later = Seen("later")
    master.addons.register(later)
    master.addons.get("scriptloader").addons.append(later)
    await master.addons.handle_lifecycle(HttpResponseHook(kaixu_flow))
    assert later.responses == ["/kaixu-flow"]
    dispatch.done()
    assert type(master.addons) is not mitm.PluginAddonManager
    await master.addons.handle_lifecycle(HttpResponseHook(kaixu_flow))
    assert "/kaixu-flow" in printed.getvalue()


async def test_lifecycle_events_reach_every_addon() -> None:
    master, _, seen, _ = await mitmdump_with_plugin()
    await master.addons.trigger_event(hooks.UpdateHook([]))
    assert seen.updates == 1


async def test_kaixus_loggers_make_no_record_mitmdumps_terminal_would_not_print() -> None:
    """mitmdump sets the root logger to DEBUG and filters in its terminal handler: kaixu's loggers take the level
    of `termlog_verbosity`, so the access line of every request is not even made at `warn`."""
    kaixu_logger, root = logging.getLogger("kaixu"), logging.getLogger()
    before, root_before = kaixu_logger.level, root.level
    root.setLevel(logging.DEBUG)  # as mitmdump does (mitmproxy/tools/main.py)
    master = DumpMaster(options.Options(), with_termlog=False, with_dumper=False)
    terminal = termlog.TermLog(io.StringIO())
    try:
        master.addons.add(terminal, TermlogLevel())
        master.options.update(termlog_verbosity="warn")
        assert not logging.getLogger("kaixu.access").isEnabledFor(logging.INFO)
        master.options.update(termlog_verbosity="info")
        assert logging.getLogger("kaixu.access").isEnabledFor(logging.INFO)
    finally:
        terminal.uninstall()
        kaixu_logger.setLevel(before)
        root.setLevel(root_before)
