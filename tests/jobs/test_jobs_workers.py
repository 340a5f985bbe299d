"""Jobs under `kaixu run --workers 2`: the workers listen on kaixu's own SO_REUSEPORT sockets (not mitmproxy's
listeners) and a job's request may land on either worker, so every worker must know where it listens and accept
the internal credential another worker signed."""

from __future__ import annotations

from pathlib import Path

from tests.fakes.provider import FakeProvider
from tests.harness import Kaixu, policy_for
from tests.jobs.test_gateway13_jobs import LIMITS, finished, result, submit


def test_jobs_run_under_two_workers(fake: FakeProvider, tmp_path: Path) -> None:
    policy = policy_for(fake.base_url, store={"sqlite": "ledger.db"}, limits=LIMITS, jobs={"poll_s": 0.2})
    kaixu = Kaixu(tmp_path, policy, args=("--workers", "2")).start()
    try:
        jobs = [submit(kaixu).json()["job_id"] for _ in range(8)]
        for job in jobs:
            assert finished(kaixu, job)["status"] == "succeeded"
            assert result(kaixu, job).json()["output_text"] == "echo: Write a long story"
    finally:
        kaixu.stop()
