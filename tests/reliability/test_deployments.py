"""Choosing among a model's deployments and taking a failing one out (kaixu/reliability/health.py): the breaker
and the strategies on an injected clock, then through a real kaixu with one deployment that refuses
connections beside a healthy one."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import httpx
import pytest

from kaixu.config.policy import RouteTarget, RoutingPolicy
from kaixu.reliability.health import Deployments
from tests import scrape
from tests.fakes.provider import FakeProvider
from tests.harness import TEST_KEY, Kaixu, policy_for

A, B = RouteTarget("a", "m"), RouteTarget("b", "m")
ROUTING = RoutingPolicy(breaker_failures=2, window_s=10, cooldown_s=30)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(deployments: Deployments, target: RouteTarget) -> None:
    deployments.started(target)
    deployments.finished(target, True, 0.1, ROUTING)


def test_the_breaker_opens_probes_once_and_closes_on_success() -> None:
    clock = Clock()
    deployments = Deployments(clock)
    fail(deployments, A)
    assert deployments.get(A).state == "closed", "one failure is not enough"
    fail(deployments, A)
    assert deployments.get(A).state == "open"
    assert {deployments.pick((A, B), ROUTING) for _ in range(50)} == {B}, "traffic goes around it"
    clock.now += 30
    assert deployments.pick((A,), ROUTING) == A and deployments.get(A).state == "half_open"
    assert {deployments.pick((A, B), ROUTING) for _ in range(20)} == {B}, "one probe at a time"
    deployments.finished(A, False, 0.05, ROUTING)
    assert deployments.get(A).state == "closed" and len(deployments.get(A).failures) == 0


def test_a_failed_probe_opens_it_again_and_old_failures_leave_the_window() -> None:
    clock = Clock()
    deployments = Deployments(clock)
    fail(deployments, A)
    clock.now += 11
    fail(deployments, A)
    assert deployments.get(A).state == "closed", "the first failure left the 10 s window"
    fail(deployments, A)
    clock.now += 30
    assert deployments.pick((A,), ROUTING) == A
    fail(deployments, A)
    assert deployments.get(A).state == "open" and deployments.get(A).opened_at == clock.now


def test_when_every_deployment_is_out_one_is_still_tried() -> None:
    deployments = Deployments(Clock())
    for target in (A, B):
        fail(deployments, target)
        fail(deployments, target)
    assert deployments.pick((A, B), ROUTING) in (A, B)


@pytest.mark.parametrize("strategy", ["least_busy", "lowest_latency", "cheapest"])
def test_each_strategy_picks_what_it_says(strategy: str) -> None:
    routing = RoutingPolicy(strategy=strategy)  # type: ignore[arg-type]
    deployments = Deployments(Clock())
    cheap, dear = RouteTarget("a", "m", cost_rank=Fraction(1)), RouteTarget("b", "m", cost_rank=Fraction(9))
    deployments.started(dear)
    deployments.finished(dear, False, 0.5, routing)  # measured slow
    deployments.started(cheap)
    deployments.finished(cheap, False, 0.01, routing)
    deployments.started(cheap)  # and busy
    expected = {"least_busy": dear, "lowest_latency": cheap, "cheapest": cheap}[strategy]
    assert {deployments.pick((cheap, dear), routing) for _ in range(20)} == {expected}


def test_a_deployment_that_refuses_connections_is_taken_out(tmp_path: Path, fake: FakeProvider) -> None:
    policy = policy_for(fake.base_url, routing={"breaker": {"failures": 2, "window_s": 60, "cooldown_s": 600}})
    policy["models"]["pair"] = {"route": [{"provider": "dead", "model": "gpt-4o-mini"},
                                          {"provider": "oai", "model": "gpt-4o-mini"}]}  # fmt: skip
    kaixu = Kaixu(tmp_path, policy).start()
    try:
        body = {"model": "pair", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}

        def status() -> int:
            headers = {"authorization": f"Bearer {TEST_KEY}"}
            return httpx.post(kaixu.url + "/v1/chat/completions", json=body, headers=headers, timeout=10).status_code

        # until the weighted choice has sent the dead deployment its two failures (a fixed count of 20 requests
        # left that to chance: about one run in a hundred sent it only one in the first ten)
        statuses: list[int] = []
        while statuses.count(502) < 2 and len(statuses) < 60:
            statuses.append(status())
        assert statuses.count(502) == 2 and set(statuses) <= {200, 502}, statuses
        assert [status() for _ in range(10)] == [200] * 10, "once out, no request goes there"
        states = {(d["provider"], d["state"]) for d in kaixu.health()["deployments"]}
        assert ("dead", "open") in states and ("oai", "closed") in states
        samples = scrape.samples(kaixu)
        assert scrape.total(samples, "kaixu_deployment_state", provider="dead") == 2
        assert scrape.total(samples, "kaixu_deployment_state", provider="oai") == 0
    finally:
        kaixu.stop()
