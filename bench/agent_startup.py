"""What a `claude-cli` request costs in time against a short model request: does a warm process pool pay?

Starts kaixu (tests/harness.py `Kaixu`) with the built-in mock and a `claude-cli` provider running the pinned
Claude Code (installed by tests/agents/test_claude_cli.py's fixture into `.pytest_cache/`, or `--claude PATH`),
then times, sequentially, each `--runs` times: `claude --version` (the process alone), a short chat request to
the mock through kaixu, an agent request without tools (one model call), and an agent request with a Glob tool
turn (two model calls). Prints medians (seconds) as a markdown table; docs/claude-cli.md quotes a run.

    .venv/bin/python bench/agent_startup.py [--runs 5] [--claude PATH]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import ROOT, Kaixu, key_hash

KEY = "sk-bench-agent"


def timed(runs: int, action: Callable[[], None]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--claude", type=Path, default=ROOT / ".pytest_cache/claude-code-2.1.197/node_modules/.bin/claude"
    )
    options = parser.parse_args()
    if not options.claude.exists():
        print(f"no Claude Code at {options.claude}: run tests/agents/test_claude_cli.py once", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work, project = Path(tmp) / "kaixu", Path(tmp) / "projects" / "demo"
        work.mkdir()
        project.mkdir(parents=True)
        (project / "a.txt").write_text("a\n")
        agent = {"kind": "claude-cli", "command": str(options.claude), "allowed_roots": [str(project.parent)],
                 "model": "claude-sonnet-4-5"}  # fmt: skip
        policy = {
            "version": 1, "listen": [{"host": "127.0.0.1", "port": 0}], "store": {"sqlite": ":memory:"},
            "providers": {"mock": {"kind": "mock"}, "agent": agent},
            "models": {
                "claude-sonnet-4-5": {"route": [{"provider": "mock"}]},
                "mock-model": {"route": [{"provider": "mock"}]},
                "agent-model": {"route": [{"provider": "agent"}]},
            },
            "keys": [{"name": "bench", "hash": key_hash(KEY)}],
        }  # fmt: skip
        gateway = Kaixu(work, policy).start()
        try:
            headers = {"authorization": f"Bearer {KEY}"}

            def ask(model: str, text: str, **extra: object) -> None:
                body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
                answer = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=120)
                answer.raise_for_status()

            rows = [
                ("`claude --version` (the process alone)",
                 timed(options.runs, lambda: subprocess.run([str(options.claude), "--version"], check=True,
                                                            capture_output=True))),
                ("short chat request, mock, through kaixu", timed(options.runs, lambda: ask("mock-model", "hi"))),
                ("agent request, no tools (1 model call)", timed(options.runs, lambda: ask("agent-model", "hi"))),
                ("agent request, Glob tool turn (2 model calls)",
                 timed(options.runs, lambda: ask("agent-model", 'mock:tool Glob {"pattern": "*.txt"}',
                                                 working_directory=str(project), tools=["Glob"]))),
            ]  # fmt: skip
        finally:
            gateway.stop()
    print(f"| what ({options.runs} runs, median) | seconds |\n|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
