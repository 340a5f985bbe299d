from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.provider import FakeProvider
from tests.harness import Kaixu, policy_for


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
