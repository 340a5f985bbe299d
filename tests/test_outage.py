"""The log of a dependency's outage (`kaixu.log.Outage`): a few lines however many requests it costs. The
whole path (Redis killed under load, /health, the line when it is back) is tested through a real kaixu in
tests/limits/test_governance_shared.py; this pins the periodic line, which a real test would wait a minute for."""

from __future__ import annotations

import logging

import pytest

from kaixu.log import Outage


def test_one_line_when_it_goes_one_a_minute_while_away_and_one_when_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    outage = Outage("counters (redis)", logging.getLogger("test.outage"), clock=lambda: now[0])
    caplog.set_level(logging.INFO, "test.outage")
    for second in range(150):  # 10 requests a second for 150 s, each refused
        now[0] = 100.0 + second
        for _ in range(10):
            outage.failed("ConnectionError: refused\nX-Injected: no", "refused_requests")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "counters (redis) unavailable: ConnectionError: refused\\nX-Injected: no",
        "counters (redis) still unavailable after 60 s (meanwhile refused_requests=601): "
        "ConnectionError: refused\\nX-Injected: no",
        "counters (redis) still unavailable after 120 s (meanwhile refused_requests=1201): "
        "ConnectionError: refused\\nX-Injected: no",
    ]
    assert outage.status() == {
        "ok": False,
        "unavailable_for_s": 149.0,
        "last_error": "ConnectionError: refused\\nX-Injected: no",
        "meanwhile": {"refused_requests": 1500},
    }
    now[0] = 260.0
    outage.recovered()
    outage.recovered()
    assert caplog.records[-1].getMessage() == (
        "counters (redis) available again after 160.0 s (meanwhile refused_requests=1500)"
    )
    assert len(caplog.records) == 4
    assert outage.status() == {"ok": True, "unavailable_for_s": None, "last_error": None, "meanwhile": {}}
    outage.failed("again")  # a new outage starts from nothing
    assert caplog.records[-1].getMessage() == "counters (redis) unavailable: again"
    assert outage.status()["meanwhile"] == {}
