"""The Chain (kaixu/chain.py): kaixu's steps in order, only for kaixu's flows, failing closed.

Steps here are small test steps (any object with hook methods, as mitmproxy addons are), driven with
mitmproxy's own test flows: what is under test is the Chain's dispatch, not the steps."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from kaixu import mitm
from kaixu.call import Call, attach, get_call
from kaixu.chain import Chain
from kaixu.config import parse_policy

POLICY = parse_policy("providers: {m: {kind: mock}}\nmodels: {x: {route: [{provider: m}]}}\n")


def kaixu_flow(front: str = "anthropic") -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9@4000")
    return flow


class Attach:
    def __init__(self, front: str = "anthropic") -> None:
        self.front = front

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        attach(flow, Call(request_id="rid-1", policy=POLICY, front=self.front))


class Boom:
    def __init__(self, hook: str) -> None:
        setattr(self, hook, self._boom)

    def _boom(self, flow: http.HTTPFlow) -> None:
        raise RuntimeError("a bug in a step")


class Route:
    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is not None and flow.response is None:
            call.route.routed = True


class Seen:
    def __init__(self) -> None:
        self.events: list[str] = []

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.events.append("requestheaders")

    def request(self, flow: http.HTTPFlow) -> None:
        self.events.append("request" if flow.response is None else "request-after-failure")


def run(chain: Chain, hook: str, flow: http.HTTPFlow) -> None:
    result: Any = getattr(chain, hook)(flow)
    if result is not None:
        asyncio.run(result)


def test_mitmproxy_is_one_kaixu_knows() -> None:
    mitm.self_test()


def test_a_failing_step_answers_a_json_500_in_the_callers_shape_and_the_flow_goes_nowhere() -> None:
    seen = Seen()
    chain = Chain([Attach("anthropic"), Boom("request"), Route(), seen])
    flow = kaixu_flow()
    run(chain, "requestheaders", flow)
    run(chain, "request", flow)
    assert flow.response is not None and flow.response.status_code == 500
    body = json.loads(flow.response.content or b"")
    assert body["type"] == "error" and body["error"]["type"] == "api_error"  # Anthropic's shape
    assert flow.response.headers["x-request-id"] == "rid-1"
    call = get_call(flow)
    assert call is not None and call.failed and not call.route.routed
    assert seen.events == ["requestheaders", "request-after-failure"]


def test_a_step_failing_before_the_call_exists_still_answers_json() -> None:
    chain = Chain([Boom("requestheaders"), Attach()])
    flow = kaixu_flow()
    run(chain, "requestheaders", flow)
    assert flow.response is not None and flow.response.status_code == 500
    assert "error" in json.loads(flow.response.content or b"")


def test_a_flow_no_step_routed_is_refused() -> None:
    chain = Chain([Attach("openai")])
    flow = kaixu_flow()
    run(chain, "requestheaders", flow)
    run(chain, "request", flow)
    assert flow.response is not None and flow.response.status_code == 500
    assert json.loads(flow.response.content or b"")["error"]["code"] == "internal_error"


def test_a_failure_on_the_response_head_replaces_the_providers_answer() -> None:
    chain = Chain([Attach("openai"), Route(), Boom("responseheaders")])
    flow = kaixu_flow()
    run(chain, "requestheaders", flow)
    run(chain, "request", flow)
    assert flow.response is None
    flow.response = tflow.tresp()
    run(chain, "responseheaders", flow)
    assert flow.response.status_code == 500 and flow.response.headers["content-type"] == "application/json"
    stream = flow.response.stream
    assert callable(stream)
    assert stream(b"the provider's bytes") == []
    assert json.loads(stream(b""))["error"]["code"] == "internal_error"


def test_async_steps_are_awaited_in_order() -> None:
    order: list[str] = []

    class Slow:
        async def request(self, flow: http.HTTPFlow) -> None:
            await asyncio.sleep(0)
            order.append("slow")

    class After:
        def request(self, flow: http.HTTPFlow) -> None:
            order.append("after")

    chain = Chain([Attach(), Slow(), After(), Route()])
    flow = kaixu_flow()
    run(chain, "requestheaders", flow)
    run(chain, "request", flow)
    assert order == ["slow", "after"] and flow.response is None


def test_flows_that_are_not_kaixus_are_left_alone() -> None:
    seen = Seen()
    chain = Chain([Attach(), seen, Boom("request")])
    flow = tflow.tflow()  # a regular-proxy flow in the same mitmproxy
    flow.client_conn.proxy_mode = ProxyMode.parse("regular")
    run(chain, "requestheaders", flow)
    run(chain, "request", flow)
    assert seen.events == [] and flow.response is None and get_call(flow) is None


def test_an_unknown_mitmproxy_version_is_refused_at_start_up(tmp_path: Path) -> None:
    """The patches in kaixu/mitm.py rely on one mitmproxy's internals: any other version must fail loudly."""
    script = (
        "import mitmproxy.version as v; v.VERSION = '99.0.0'\n"
        "import sys; from kaixu import cli; sys.exit(cli.main(['run', sys.argv[1]]))\n"
    )
    policy = tmp_path / "proxy.yaml"
    policy.write_text("providers: {m: {kind: mock}}\nmodels: {x: {route: [{provider: m}]}}\n")
    done = subprocess.run([sys.executable, "-c", script, str(policy)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "not starting" in done.stderr and "99.0.0" in done.stderr and "12.3.1" in done.stderr
