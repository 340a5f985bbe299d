"""Shared fixtures, and the rule that lets `make test` run the suite on several xdist workers at once.

Each worker is its own process with its own session fixtures (the fake provider, the shared gateway), its own
temporary directory and ephemeral ports; PostgreSQL tests make a schema each (tests/pg.py), Redis tests a key
prefix each. What workers do share is the machine: a test that measures something against the clock or loads
the machine on purpose (200 requests at once) does that part `alone` (the fixture): no other test of the run
runs meanwhile (`Turns`)."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.fakes.provider import FakeProvider
from tests.harness import Kaixu, policy_for

FILE_SECONDS = "kaixu/file-seconds"
"""The pytest cache's entry (.pytest_cache) with the seconds each test file took when it last ran."""
_seconds: collections.Counter[str] = collections.Counter()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On xdist workers (they collect, the controller does not), the files that took longest last time come
    first: `--dist loadfile` hands files out in this order, so a slow file no longer starts last and holds up
    the end of the run while the other workers are done. Unknown files go first; a file's tests keep their
    order. Every worker reads the same cache, so all collect the same order, as xdist requires."""
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    if "PYTEST_XDIST_WORKER" not in os.environ or cache is None:
        return
    last: dict[str, float] = cache.get(FILE_SECONDS, {})
    files = list(dict.fromkeys(_file(item) for item in items))
    rank = {path: index for index, path in enumerate(sorted(files, key=lambda p: -last.get(p, math.inf)))}
    items.sort(key=lambda item: rank[_file(item)])  # stable: a file's tests keep their order


def _file(item: pytest.Item | pytest.TestReport) -> str:
    return item.nodeid.split("::")[0]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """The controller (or a lone pytest) adds up each file's seconds, setup and teardown included."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        _seconds[_file(report)] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    cache = getattr(session.config, "cache", None)
    if "PYTEST_XDIST_WORKER" not in os.environ and cache is not None and _seconds:
        known: dict[str, float] = cache.get(FILE_SECONDS, {})
        cache.set(FILE_SECONDS, {**known, **{path: round(seconds, 1) for path, seconds in _seconds.items()}})


class Turns:
    """A readers-writer lock over the run's workers, on two files in the run's own temporary directory: every
    test holds `tests` shared, the part of a test that runs `alone` holds it exclusively. A worker waiting for
    the exclusive hold holds `door`, which every test passes through first, so workers that keep starting
    tests cannot keep it waiting for ever."""

    def __init__(self, folder: Path) -> None:
        self.door: IO[bytes] = (folder / "turns.door").open("ab")
        self.tests: IO[bytes] = (folder / "turns.tests").open("ab")

    def take(self, exclusive: bool) -> None:
        fcntl.flock(self.door, fcntl.LOCK_EX)
        try:
            fcntl.flock(self.tests, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(self.door, fcntl.LOCK_UN)

    def give_back(self) -> None:
        fcntl.flock(self.tests, fcntl.LOCK_UN)


_turns: Turns | None = None
"""This worker's; None outside xdist (a lone pytest needs no turns)."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """Setup, call and teardown of each test hold the run's turns shared."""
    global _turns
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return (yield)
    if _turns is None:
        # the run's base directory, shared by its workers (each has its own popen-gwN below it)
        _turns = Turns(item.config._tmp_path_factory.getbasetemp().parent)  # type: ignore[attr-defined]
    _turns.take(exclusive=False)
    try:
        return (yield)
    finally:
        _turns.give_back()


Alone = Callable[[], contextlib.AbstractContextManager[None]]


@pytest.fixture
def alone() -> Alone:
    """`with alone(): ...` runs its block while no other test of the run runs: for a burst of requests or a
    wall-clock budget, whose bounds were set for a machine the rest of the suite is not also loading. Keep the
    block to the measured part (start gateways before it): the other workers wait while it runs."""

    @contextlib.contextmanager
    def block() -> Iterator[None]:
        turns = _turns
        if turns is None:
            yield
            return
        turns.give_back()  # never wait for the exclusive hold while holding the shared one
        turns.take(exclusive=True)
        try:
            yield
        finally:
            turns.give_back()
            turns.take(exclusive=False)

    return block


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture(autouse=True)
def _clean_fake(request: pytest.FixtureRequest) -> None:
    if "fake" in request.fixturenames:
        provider = request.getfixturevalue("fake")
        provider.clear()
        provider.clear_faults()
        provider.default_fault = None


@pytest.fixture(scope="session")
def kaixu(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    """One gateway for the whole session, routing to the fake provider in every wire format."""
    gateway = Kaixu(tmp_path_factory.mktemp("kaixu"), policy_for(fake.base_url)).start()
    yield gateway
    gateway.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
