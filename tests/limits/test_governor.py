"""`eagerly` (kaixu/limits/governor.py): a step on the in-process counters finishes inside the hook call, and
one that must wait (the counters still opening) resumes correctly in the task that awaits it."""

from __future__ import annotations

import asyncio

import pytest

from kaixu.limits.governor import Governor, eagerly
from kaixu.limits.memory_counters import MemoryCounters


async def test_a_step_that_never_waits_is_done_before_the_hook_returns() -> None:
    governor = Governor(await MemoryCounters(None).open(), kind="memory")
    done: list[str] = []

    async def step() -> None:
        await governor.counters.hit("key:e:rpm", 60, 5)
        done.append("counted")

    assert eagerly(governor, step()) is None
    assert done == ["counted"]


async def test_a_step_that_waits_resumes_in_the_awaiting_task_with_results_and_errors() -> None:
    governor = Governor(await MemoryCounters(None).open(), kind="memory")
    seen: list[int] = []

    async def step(opened: asyncio.Future[int], fail: bool) -> None:
        seen.append(await opened)
        if fail:
            raise ValueError("after the wait")

    for fail in (False, True):
        opened: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        pending = eagerly(governor, step(opened, fail))
        assert pending is not None
        asyncio.get_running_loop().call_soon(opened.set_result, 7)
        if fail:
            with pytest.raises(ValueError, match="after the wait"):
                await asyncio.create_task(_await(pending))
        else:
            await asyncio.create_task(_await(pending))
    assert seen == [7, 7]


async def test_other_backends_get_the_coroutine_as_it_is() -> None:
    governor = Governor(await MemoryCounters(None).open(), kind="redis")

    async def step() -> None:
        return None

    coroutine = step()
    assert eagerly(governor, coroutine) is coroutine
    await coroutine


async def _await(awaitable: object) -> None:
    await awaitable  # type: ignore[misc]
