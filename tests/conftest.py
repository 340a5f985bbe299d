"""Shared fixtures, and the rule that lets `make test` run the suite on several xdist workers at once.

Each worker is its own process with its own session fixtures (the fake provider, the shared gateway), its own
temporary directory and ephemeral ports; PostgreSQL tests make a schema each (tests/pg.py), Redis tests a key
prefix each. What workers do share is the machine: a test marked `alone` measures something against the clock
or loads the machine on purpose (200 requests at once), so while it runs no other test of the run does
(`Turns`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.fakes.provider import FakeProvider
from tests.harness import Kaixu, policy_for


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "alone: under xdist, no other test of the run runs at the same time (a burst of requests, a wall-clock "
        "budget): its bounds were set for a machine the suite does not also load",
    )


class Turns:
    """A readers-writer lock over the run's workers, on two files in the run's own temporary directory: every
    test holds `tests` shared, an `alone` test holds it exclusively. A waiting `alone` test holds `door`, which
    every test passes through first, so workers that keep starting tests cannot keep it waiting for ever.
    Consecutive `alone` tests of a worker keep the exclusive hold, rather than each waiting for the others'
    current tests to end."""

    def __init__(self, folder: Path) -> None:
        self.door: IO[bytes] = (folder / "turns.door").open("ab")
        self.tests: IO[bytes] = (folder / "turns.tests").open("ab")
        self.alone = False
        """This worker holds `tests` exclusively."""

    @contextlib.contextmanager
    def turn(self, alone: bool, next_alone: bool) -> Iterator[None]:
        if not (alone and self.alone):
            fcntl.flock(self.door, fcntl.LOCK_EX)
            try:
                fcntl.flock(self.tests, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
            finally:
                fcntl.flock(self.door, fcntl.LOCK_UN)
            self.alone = alone
        try:
            yield
        finally:
            if not (alone and next_alone):
                fcntl.flock(self.tests, fcntl.LOCK_UN)
                self.alone = False


_turns: Turns | None = None


def _alone(item: pytest.Item | None) -> bool:
    return item is not None and item.get_closest_marker("alone") is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """Setup, call and teardown of each test inside its turn (only on xdist workers: a lone pytest needs none)."""
    global _turns
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return (yield)
    if _turns is None:
        # the run's base directory, shared by its workers (each has its own popen-gwN below it)
        _turns = Turns(item.config._tmp_path_factory.getbasetemp().parent)  # type: ignore[attr-defined]
    with _turns.turn(_alone(item), _alone(nextitem)):
        return (yield)


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
