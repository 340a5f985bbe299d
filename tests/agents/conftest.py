"""The pinned Claude Code the agent tests drive, installed once from the npm registry into the pytest cache."""

from __future__ import annotations

import fcntl
import subprocess
from pathlib import Path

import pytest

from tests.harness import ROOT, unavailable

PACKAGE, VERSION = "@anthropic-ai/claude-code", "2.1.197"  # as bench/real_clients.py pins it


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    """The pinned CLI, installed once into the pytest cache (`npm install --prefix`), under a file lock."""
    prefix = ROOT / ".pytest_cache" / f"claude-code-{VERSION}"
    binary = prefix / "node_modules" / ".bin" / "claude"
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            try:
                done = subprocess.run(
                    ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel", "error",
                     f"{PACKAGE}@{VERSION}"],
                    capture_output=True, text=True, timeout=900,
                )  # fmt: skip
            except (OSError, subprocess.TimeoutExpired) as exc:
                unavailable(f"npm install {PACKAGE}@{VERSION} failed: {exc}")
            if done.returncode != 0 or not binary.exists():
                unavailable(f"npm install {PACKAGE}@{VERSION} failed: {done.stderr[-2000:]}")
    return binary
