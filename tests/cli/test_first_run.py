"""A new user's path: `make run`'s hint, a port already taken, and the README's commands and code as written."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.harness import ROOT, Kaixu, wait_for

DEMO_KEY = "sk-kaixu-demo"


def shipped_policy(workdir: Path) -> dict[str, Any]:
    """proxy.yaml as shipped, on a free port, its database in the test's directory."""
    policy: dict[str, Any] = yaml.safe_load((ROOT / "proxy.yaml").read_text())
    policy["listen"] = [{"host": "127.0.0.1", "port": 0}]
    return policy


def hint_line(gateway: Kaixu) -> str:
    wait_for(lambda: "try: " in gateway.log(), 10, "the hint")
    return next(line for line in gateway.log().splitlines() if line.startswith("try: "))


def replay_curl(line: str) -> httpx.Response:
    """Send what a pasted `curl URL -H ... -d ...` line sends (the hint's own words, parsed as a shell would)."""
    argv = shlex.split(line.removeprefix("try: "))
    assert argv[0] == "curl", argv
    url, headers, data = "", {}, None
    words = iter(argv[1:])
    for word in words:
        if word == "-H":
            name, _, value = next(words).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-d":
            data = next(words)
        elif not word.startswith("-"):  # -s, -i, -N only change what curl prints
            url = word
    return httpx.post(url, headers=headers, content=data, timeout=10)


def test_make_run_passes_the_demo_key_as_the_hint_key() -> None:
    assert f"--hint-key {DEMO_KEY}" in (ROOT / "Makefile").read_text()


def test_run_prints_a_curl_hint_that_works_as_pasted(workdir: Path) -> None:
    gateway = Kaixu(workdir, shipped_policy(workdir), args=("--hint-key", DEMO_KEY)).start()
    try:
        line = hint_line(gateway)
        lines = gateway.log().splitlines()
        listening = next(i for i, text in enumerate(lines) if " listening on " in text)
        assert lines[listening + 1] == line  # right after the "listening on" line
        assert line.startswith(f"try: curl {gateway.url}/v1/chat/completions ")
        assert f"Bearer {DEMO_KEY}" in line
        response = replay_curl(line)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "echo: Hello"
    finally:
        gateway.stop()


def test_a_hint_key_the_policy_does_not_know_gives_no_hint(workdir: Path) -> None:
    gateway = Kaixu(workdir, shipped_policy(workdir), args=("--hint-key", "sk-not-in-the-policy")).start()
    try:
        wait_for(lambda: "no hint" in gateway.log(), 10, "the refusal")
        assert "try: " not in gateway.log()
        assert "sk-not-in-the-policy" not in gateway.log()
    finally:
        gateway.stop()


def test_a_port_in_use_is_named_and_kaixu_exits(workdir: Path) -> None:
    (workdir / "proxy.yaml").write_text((ROOT / "proxy.yaml").read_text())
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "kaixu", "run", "proxy.yaml", "--listen", f"127.0.0.1:{port}", "--reload-ms", "0"],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert f"kaixu cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr, result.stderr
    assert not re.search(r"127\.0\.0\.1:9(?!\d)", result.stderr), result.stderr  # the router's inert placeholder
    assert "reverse proxy to" not in result.stderr


# --- the README's commands and code, as written ------------------------------------------------------------------

README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_URL = "http://127.0.0.1:4000"


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def shell_commands(block: str) -> list[str]:
    """The commands of a ```sh block, continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]


def test_docs_never_point_outside_the_repository() -> None:
    for page in DOCS:
        text = page.read_text()
        assert "../shared" not in text and "/work/" not in text, page
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"https?://|mailto:|#", target):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), f"{page.name}: link to {target}"
        for token in re.findall(r"`((?:kaixu|tests|bench|docs)/[^`\s]*)`", text):
            if "<" not in token:  # bench/results/overhead-<timestamp>.json is made by a run
                assert (ROOT / token).exists(), f"{page.name}: `{token}` is not in the repository"


def test_readme_python_snippets_run_as_written(workdir: Path) -> None:
    snippets = code_blocks(README, "python")
    assert [s.split("\n")[0] for s in snippets] == [
        "from openai import OpenAI",
        "from anthropic import Anthropic",
        "from google import genai",
    ]
    gateway = Kaixu(workdir, shipped_policy(workdir)).start()
    try:
        for snippet in snippets:
            assert README_URL in snippet
            code = snippet.replace(README_URL, gateway.url)
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert result.stdout == "echo: Hi\n", (snippet, result.stdout)
    finally:
        gateway.stop()


def test_readme_curl_commands_answer_as_described(workdir: Path) -> None:
    commands = [c for block in code_blocks(README, "sh") for c in shell_commands(block) if c.startswith("curl ")]
    gateway = Kaixu(workdir, shipped_policy(workdir)).start()
    try:
        statuses = []
        for command in commands:
            response = replay_curl(command.replace(" -N ", " ").replace(README_URL, gateway.url))
            assert response.headers["x-request-id"], command
            statuses.append(response.status_code)
            if "-si" in command:  # the one that shows the cost headers
                assert response.headers["x-kaixu-cost-usd"] == response.headers["x-cost-usd"]
                assert float(response.headers["x-cost-usd"]) > 0
        # two completions (JSON, then a stream), one showing its cost, a bad key, a truncated body, a provider down
        assert statuses == [200, 200, 200, 401, 400, 502]
    finally:
        gateway.stop()


def test_readme_lists_the_models_the_shipped_policy_serves() -> None:
    section = README[README.index("| model | what it is |") :].split("\n\n")[0]
    listed = re.findall(r"^\| `([^`]+)` \|", section, re.M)
    assert listed == list(yaml.safe_load((ROOT / "proxy.yaml").read_text())["models"])


def test_readme_commands_exist_as_written() -> None:
    """Each command of the table: the program is where the README says, and it takes every option shown."""
    from kaixu.cli import build_parser

    rows = re.findall(r"^\| `(\.venv/bin/[^`]+)` \|", README, re.M)
    assert len(rows) == 17, rows
    for row in rows:
        program, *words = row.split()
        assert (ROOT / program).is_file(), f"{program} (make test and make run create it)"
        if not program.endswith("/kaixu"):
            continue
        parser = build_parser()
        path = [w for w in words if re.fullmatch(r"[a-z]+", w)]
        for name in path:
            parser = next(a for a in parser._actions if a.dest.endswith("command")).choices[name]
        options = {opt for action in parser._actions for opt in action.option_strings}
        for flag in re.findall(r"--[a-z-]+", row):
            assert flag in options, f"{row}: {flag}"


def test_readme_kaixu_commands_run() -> None:
    kaixu = str(ROOT / ".venv/bin/kaixu")
    checked = subprocess.run([kaixu, "check", "proxy.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "ok" in checked.stdout, checked.stderr
    hashed = subprocess.run([kaixu, "keys", "hash", DEMO_KEY], capture_output=True, text=True, timeout=60)
    assert hashed.stdout.strip() in (ROOT / "proxy.yaml").read_text()
