"""Periods of budgets (kaixu/limits/levels.py): keys and ends in the budget's time zone, and the cache that
spares a request the calendar must turn exactly at a period's end."""

from __future__ import annotations

import datetime
import zoneinfo

from kaixu.config.policy import Budget
from kaixu.limits.levels import period, scope_name


def ts(text: str, zone: str = "UTC") -> float:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=zoneinfo.ZoneInfo(zone)).timestamp()


def test_day_week_month_and_total_in_utc() -> None:
    now = ts("2026-12-01T10:00:00")
    assert period(Budget(1, "day"), now) == ("2026-12-01", ts("2026-12-02T00:00:00"))
    assert period(Budget(1, "week"), now) == ("2026-W49", ts("2026-12-07T00:00:00"))
    assert period(Budget(1, "month"), now) == ("2026-12", ts("2027-01-01T00:00:00"))
    assert period(Budget(1, "total"), now) == ("total", None)


def test_a_period_turns_exactly_at_its_end_cached_or_not() -> None:
    budget = Budget(1, "day", "Europe/Paris")
    end = ts("2026-12-02T00:00:00", "Europe/Paris")
    assert period(budget, end - 0.001) == ("2026-12-01", end)
    assert period(budget, end) == ("2026-12-02", ts("2026-12-03T00:00:00", "Europe/Paris"))
    assert period(budget, end - 0.001) == ("2026-12-01", end), "an earlier instant is not served from the cache"


def test_names_a_client_chooses_are_bounded() -> None:
    assert scope_name("acme") == "acme"
    long = scope_name("x" * 500)
    assert long.startswith("h-") and len(long) == 34
    assert scope_name("a:b") != "a:b" and ":" not in scope_name("a:b")
