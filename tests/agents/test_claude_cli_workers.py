"""`claude-cli` under `kaixu run --workers 2`: the shared port hands connections to either worker, but a run
credential is known only to the worker whose agent holds it, so an agent's model calls come back to a listener of
that worker's own. Without it about half of them would reach the other worker and be refused (401)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import TEST_KEY, Kaixu, key_hash

ONLY_HERE = "only-in-workers-7d2e.txt"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(tmp_path_factory.mktemp("projects")).resolve() / "demo"
    folder.mkdir()
    (folder / ONLY_HERE).write_text("x\n")
    return folder


@pytest.fixture(scope="module")
def kaixu(tmp_path_factory: pytest.TempPathFactory, claude_bin: Path, project: Path) -> Iterator[Kaixu]:
    agent = {"kind": "claude-cli", "command": str(claude_bin), "allowed_roots": [str(project.parent)],
             "tools": ["Glob"], "model": "claude-sonnet-4-5", "timeout_s": 60}  # fmt: skip
    policy = {
        "version": 1,
        "listen": [{"host": "127.0.0.1", "port": 0}],
        "store": {"sqlite": "ledger.db"},
        "providers": {"mock": {"kind": "mock"}, "agent": agent},
        "models": {
            "claude-sonnet-4-5": {"route": [{"provider": "mock"}]},
            "agent-model": {"route": [{"provider": "agent"}]},
        },
        "keys": [{"name": "test", "hash": key_hash(TEST_KEY)}],
    }
    gateway = Kaixu(Path(tmp_path_factory.mktemp("kaixu")), policy, args=("--workers", "2")).start()
    yield gateway
    gateway.stop()


def test_every_run_is_answered_whichever_worker_takes_its_model_calls(kaixu: Kaixu, project: Path) -> None:
    body = {
        "model": "agent-model",
        "messages": [{"role": "user", "content": 'x\nmock:tool Glob {"pattern": "*.txt"}'}],
        "working_directory": str(project),
        "tools": ["Glob"],
    }
    for _ in range(4):  # a new connection each: the kernel spreads them over both workers
        answer = httpx.post(kaixu.url + "/v1/chat/completions", json=body,
                            headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=90)  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert ONLY_HERE in answer.json()["choices"][0]["message"]["content"]
