"""docs/clients.md as written: every block marked `<!-- tested -->` runs against a kaixu on the shipped proxy.yaml
(with the routes the page tells agents' users to add), through real SDKs, a real shell and real curl."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import ROOT, Kaixu

PAGE = (ROOT / "docs" / "clients.md").read_text()
PAGE_URL = "http://127.0.0.1:4000"
TESTED = re.compile(r"<!-- tested -->\n```(\w+)\n(.*?)```", re.S)
ANSWER = "echo: Hi"  # the mock's answer to "Hi"


def marked_blocks(language: str) -> list[str]:
    return [block for lang, block in TESTED.findall(PAGE) if lang == language]


def clean_env(home: Path) -> dict[str, str]:
    """Nothing of the caller's keys, base URLs or proxies; `python` is the test's own."""
    return {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(home), "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kaixu]:
    policy: dict[str, Any] = yaml.safe_load((ROOT / "proxy.yaml").read_text())
    policy["listen"] = [{"host": "127.0.0.1", "port": 0}]
    policy["store"] = {"sqlite": ":memory:"}
    for block in marked_blocks("yaml"):
        policy["models"].update(yaml.safe_load(block)["models"])
    gateway = Kaixu(tmp_path_factory.mktemp("clients-doc"), policy).start()
    yield gateway
    gateway.stop()


def test_the_page_marks_the_blocks_this_file_runs() -> None:
    languages = [lang for lang, _ in TESTED.findall(PAGE)]
    assert (languages.count("yaml"), languages.count("python"), languages.count("sh")) == (1, 3, 5), languages
    assert all(PAGE_URL in block for lang, block in TESTED.findall(PAGE) if lang != "yaml")


def test_python_blocks_run_as_written(gateway: Kaixu, tmp_path: Path) -> None:
    for code in marked_blocks("python"):
        result = subprocess.run(
            [sys.executable, "-c", code.replace(PAGE_URL, gateway.url)],
            env=clean_env(tmp_path), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, (code, result.stderr)
        assert result.stdout == ANSWER + "\n", (code, result.stdout)


def test_sh_blocks_run_as_written(gateway: Kaixu, tmp_path: Path) -> None:
    assert shutil.which("curl") and shutil.which("bash"), "the page's shell examples need bash and curl"
    for block in marked_blocks("sh"):
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.replace(PAGE_URL, gateway.url)],
            env=clean_env(tmp_path), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, (block, result.stderr)
        assert "error" not in result.stdout, (block, result.stdout)  # every kaixu error body says "error"
        if "stream" in block:  # the events split the answer: each stream must have come
            assert result.stdout.count("data:") >= 2 * block.count("curl "), (block, result.stdout)
        else:  # one answer per request
            requests = len(re.findall(r"^(?:curl|python) ", block, re.M))
            assert result.stdout.count(ANSWER) == requests, (block, result.stdout)
