"""The Responses API's `background: true` on the job runner, with the official openai SDK: the create answers a
`queued` response at once, `responses.retrieve` follows it to `completed` (the answer of its run, under the
id it was given), `responses.cancel` stops one; another key finds none."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import openai
import pytest

from tests.fakes.provider import FakeProvider, Fault
from tests.harness import LIMITED_KEY, TEST_KEY, Kaixu, ledger_row, policy_for, wait_for
from tests.jobs.test_gateway13_jobs import LIMITS


@pytest.fixture(scope="module")
def gateway(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"}, limits=LIMITS, jobs={"poll_s": 0.2})
    kaixu = Kaixu(tmp_path_factory.mktemp("background"), policy).start()
    yield kaixu
    kaixu.stop()


def client(kaixu: Kaixu, key: str = TEST_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=kaixu.url + "/v1", api_key=key, max_retries=0)


def test_a_background_response_is_queued_then_completed(gateway: Kaixu, fake: FakeProvider) -> None:
    release = threading.Event()
    fake.add_fault(Fault(latency_ms=10_000, until=release))
    sdk = client(gateway)
    queued = sdk.responses.create(model="claude-test", input="Write a long story", background=True)
    assert queued.status == "queued" and queued.background is True and queued.id.startswith("resp_")
    wait_for(lambda: sdk.responses.retrieve(queued.id).status == "in_progress", 10, "the response to run")
    release.set()
    wait_for(lambda: sdk.responses.retrieve(queued.id).status == "completed", 15, "the response to complete")
    done = sdk.responses.retrieve(queued.id)
    assert done.id == queued.id and done.background is True
    assert done.output_text == "echo: Write a long story" and done.usage is not None and done.usage.output_tokens > 0
    assert "/v1/messages" in fake.requests[-1].path  # run as an ordinary request, translated to Anthropic
    assert ledger_row(gateway, queued.id)["key_name"] == "test"  # recorded under the response's id
    with pytest.raises(openai.NotFoundError):
        client(gateway, LIMITED_KEY).responses.retrieve(queued.id)


def test_a_background_response_can_be_cancelled(gateway: Kaixu, fake: FakeProvider) -> None:
    release = threading.Event()
    fake.add_fault(Fault(latency_ms=10_000, until=release))
    sdk = client(gateway)
    try:
        queued = sdk.responses.create(model="gpt-4o-mini", input="Write forever", background=True)
        wait_for(lambda: sdk.responses.retrieve(queued.id).status == "in_progress", 10, "the response to run")
        with pytest.raises(openai.NotFoundError):
            client(gateway, LIMITED_KEY).responses.cancel(queued.id)
        cancelled = sdk.responses.cancel(queued.id)
        assert cancelled.status == "cancelled"
    finally:
        release.set()
    assert sdk.responses.retrieve(queued.id).status == "cancelled"


def test_background_with_stream_is_refused(gateway: Kaixu) -> None:
    with pytest.raises(openai.BadRequestError):
        client(gateway).responses.create(model="gpt-4o-mini", input="hi", background=True, stream=True)
