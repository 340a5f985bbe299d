"""bench/sidebyside.py's validating wrk script: a run counts as clean only when every answer is the expected one
(a wrong body with a 200 must fail the run, or a gateway answering errors in 200s would look fast)."""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import overhead
import sidebyside


@pytest.fixture(scope="module")
def bench_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.fail("wrk is not installed (apt-get install wrk)")
    with contextlib.ExitStack() as stack:
        yield overhead.start_fake(tmp_path_factory.mktemp("fake"), stack), wrk


def direct(port: int) -> sidebyside.Gateway:
    return sidebyside.Gateway("direct", port, None, overhead.UPSTREAM_KEY)


@pytest.mark.parametrize("stream", [False, True])
def test_expected_answers_are_clean(bench_fake: tuple[int, str], tmp_path: Path, stream: bool) -> None:
    port, wrk = bench_fake
    lua = sidebyside.validating_lua(tmp_path / "ok.lua", direct(port), stream)
    run = overhead.run_wrk(wrk, f"http://{overhead.HOST}:{port}{overhead.PATH}", lua, 2, 1)
    overhead.check_clean("direct", run)
    assert run.requests > 0 and run.invalid == 0


def test_a_short_stream_fails_the_run(bench_fake: tuple[int, str], tmp_path: Path) -> None:
    port, wrk = bench_fake
    lua = sidebyside.validating_lua(tmp_path / "short.lua", direct(port), True)
    lua.write_text(lua.read_text().replace(f"MIN_EVENTS = {overhead.SSE_EVENTS}", "MIN_EVENTS = 500"))
    run = overhead.run_wrk(wrk, f"http://{overhead.HOST}:{port}{overhead.PATH}", lua, 2, 1)
    assert run.invalid == run.requests > 0
    with pytest.raises(overhead.BenchError, match="invalid bodies"):
        overhead.check_clean("direct", run)


def test_a_200_that_is_not_a_completion_fails_the_run(bench_fake: tuple[int, str], tmp_path: Path) -> None:
    port, wrk = bench_fake
    lua = sidebyside.validating_lua(tmp_path / "health.lua", direct(port), False)
    lua.write_text(lua.read_text() + 'wrk.method = "GET"\nwrk.body = nil\n')  # the fake's 200 JSON health
    run = overhead.run_wrk(wrk, f"http://{overhead.HOST}:{port}/_fake/health", lua, 1, 1)
    assert run.non_2xx == 0 and run.invalid == run.requests > 0
    with pytest.raises(overhead.BenchError):
        overhead.check_clean("direct", run)


def test_pacing_is_set_and_cleared(bench_fake: tuple[int, str]) -> None:
    port, _wrk = bench_fake
    gateway = direct(port)
    sidebyside.set_pacing(port, 10)
    try:
        paced = overhead.measure_sse("direct", port, gateway.key, 1)
    finally:
        sidebyside.set_pacing(port, 0)
    unpaced = overhead.measure_sse("direct", port, gateway.key, 1)
    assert paced.total_ms_median >= 49 * 10
    assert unpaced.total_ms_median < paced.total_ms_median


def test_the_soak_slope_is_megabytes_per_minute_after_the_first_slice() -> None:
    # 1 MB more every 30 s slice after a first slice 50 MB higher (the warm-up): +2 MB/min, the first left out.
    slices = [
        sidebyside.Slice("kaixu", 30 * i, 3.0, 100 + i + (50 if i == 1 else 0), 80, 300, 5, 50, 120)
        for i in range(1, 7)
    ]
    row = sidebyside.soak_report(slices, 180, 30).splitlines()[-1]
    assert "| +2.00 | 80.0 / 80.0 | +0.00 |" in row
