"""The `claude-cli` provider, driven end to end: the real Claude Code (pinned, from the npm registry) run by kaixu
in a working directory, its own model calls coming back through kaixu to the built-in mock, whose `mock:tool`
directive makes the "model" use the agent's tools. One kaixu for the module."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from kaixu.pricing import usd
from tests.harness import TEST_KEY, Kaixu, key_hash, ledger_row, wait_for

BASH_KEY = "sk-agent-bash"
ADMIN_KEY = "sk-agent-admin"
ONLY_HERE = "only-here-5e1c9.txt"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("projects")).resolve()


@pytest.fixture(scope="module")
def project(root: Path) -> Path:
    folder = root / "demo"
    folder.mkdir()
    (folder / "CONTEXT.md").write_text("# Demo project\nThe notes live in notes.md.\n")
    (folder / "notes.md").write_text("line one\nsecret-line-42\n")
    (folder / ONLY_HERE).write_text("x\n")
    # the folder's own Claude settings, which kaixu must not trust: a hook and an MCP server that leave a trace
    hook = {"hooks": {"SessionStart": [{"hooks": [{"type": "command", "command": f"touch {root}/hook-ran"}]}]}}
    (folder / ".claude").mkdir()
    (folder / ".claude" / "settings.json").write_text(json.dumps(hook))
    mcp = {"mcpServers": {"trap": {"command": "/bin/sh", "args": ["-c", f"touch {root}/mcp-ran; sleep 5"]}}}
    (folder / ".mcp.json").write_text(json.dumps(mcp))
    return folder


@pytest.fixture(scope="module")
def kaixu(tmp_path_factory: pytest.TempPathFactory, claude_bin: Path, root: Path) -> Iterator[Kaixu]:
    agent = {
        "kind": "claude-cli", "command": str(claude_bin), "max_concurrent": 1, "queue_size": 1,
        "allowed_roots": [str(root)], "tools": ["Read", "Glob", "Grep", "Bash"], "model": "claude-sonnet-4-5",
    }  # fmt: skip
    policy = {
        "version": 1,
        "listen": [{"host": "127.0.0.1", "port": 0}],
        "store": {"sqlite": "ledger.db"},
        "ledger": {"content": {"enabled": True, "max_chars": 200_000}},
        "sessions": {},  # the Intelligent AI Gateway's session_id: a CLI conversation continues (docs/jobs.md)
        "limits": {"upstream_timeout_s": 2},
        "providers": {
            "mock": {"kind": "mock"},
            "agent": {**agent, "timeout_s": 60},
            "agent-quick": {**agent, "timeout_s": 8},
            "agent-loop": {**agent, "timeout_s": 30, "model": "quick-model"},  # asks for a model only an agent serves
            "agent-false": {**agent, "command": "/bin/false"},
            "agent-missing": {**agent, "command": "/no/such/claude"},
        },
        "models": {
            "claude-sonnet-4-5": {"route": [{"provider": "mock"}]},  # the agent's own model calls
            "mock-model": {"route": [{"provider": "mock"}]},
            "agent-model": {"route": [{"provider": "agent"}], "fallbacks": ["mock-model"]},
            "quick-model": {"route": [{"provider": "agent-quick"}]},
            "loop-model": {"route": [{"provider": "agent-loop"}]},
            "false-model": {"route": [{"provider": "agent-false"}]},
            "missing-model": {"route": [{"provider": "agent-missing"}]},
        },
        "default_model": "agent-model",
        "pricing": {"models": {"mock/claude-sonnet-4-5": {"input": 3, "output": 15}}},
        "admin_keys": [{"name": "ops", "hash": key_hash(ADMIN_KEY)}],
        "keys": [
            {"name": "test", "hash": key_hash(TEST_KEY)},
            {"name": "bash", "hash": key_hash(BASH_KEY), "tools": ["Read", "Glob", "Grep", "Bash"]},
        ],
    }
    secrets = {"OPENAI_API_KEY": "sk-must-not-leak-1", "KAIXU_KEY_PEPPER": "pepper-must-not-leak-2"}
    gateway = Kaixu(Path(tmp_path_factory.mktemp("kaixu")), policy, env=secrets).start()
    yield gateway
    gateway.stop()


def client(kaixu: Kaixu, key: str = TEST_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=kaixu.url + "/v1", api_key=key, max_retries=0, timeout=90)


def agent_body(project: Path, directive: str, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": f"Which files are here?\n{directive}"}],
        "working_directory": str(project),
        "tools": ["Read", "Glob"],
        **extra,
    }


def inner_rows(kaixu: Kaixu, parent: str) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{kaixu.workdir / 'ledger.db'}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM requests WHERE parent_request_id = ?", (parent,)).fetchall()
    return [dict(r) for r in rows]


def processes_with(marker: str) -> list[str]:
    """Command lines of the live processes that contain ``marker`` (the process table)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and "pytest" not in cmdline:
                found.append(f"{entry}: {cmdline}")
    return found


def test_glob_answer_names_a_file_only_that_folder_holds(kaixu: Kaixu, project: Path) -> None:
    raw = client(kaixu).chat.completions.with_raw_response.create(
        model="agent-model", messages=[], extra_body=agent_body(project, 'mock:tool Glob {"pattern": "*.txt"}')
    )
    answer = raw.parse()
    text = answer.choices[0].message.content or ""
    assert ONLY_HERE in text, text
    request_id = raw.headers["x-request-id"]
    outer = ledger_row(kaixu, request_id)
    wait_for(lambda: len(inner_rows(kaixu, request_id)) >= 2, 10, "the inner calls' records")
    inner = inner_rows(kaixu, request_id)
    assert len(inner) == 2  # the tool call, then the answer to its result
    assert {r["key_name"] for r in inner} == {"test"} and outer["key_name"] == "test"
    assert {r["model"] for r in inner} == {"claude-sonnet-4-5"} and {r["provider"] for r in inner} == {"mock"}
    assert all(r["status"] == 200 and r["cost_micros"] > 0 for r in inner)
    assert outer["provider"] == "agent" and outer["parent_request_id"] is None
    assert outer["cost_micros"] == sum(r["cost_micros"] for r in inner)
    assert outer["input_tokens"] == sum(r["input_tokens"] for r in inner)
    assert raw.headers["x-kaixu-cost-usd"] == usd(outer["cost_micros"])  # the answer carries the sum
    # CONTEXT.md is in what the agent sent its model (the ledger's content, on in this policy)
    assert all("The notes live in notes.md." in r["prompt"] for r in inner)
    assert TEST_KEY not in json.dumps(inner)
    # reports count each inner call's cost once: in the request that ran the agent
    costs = httpx.get(kaixu.url + "/api/costs/test", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
    with sqlite3.connect(f"file:{kaixu.workdir / 'ledger.db'}?mode=ro", uri=True) as db:
        (top,) = db.execute(
            "SELECT SUM(cost_micros) FROM requests WHERE key_name = 'test' AND parent_request_id IS NULL"
        )
    assert costs["cost_micros"] == top[0]


def test_a_session_id_continues_the_agents_conversation(kaixu: Kaixu, project: Path) -> None:
    """`session_id` with a CLI request: the earlier turns (the agent's own answer among them) are the start of what
    the next run is given, so its model sees the whole conversation."""
    first = client(kaixu).chat.completions.with_raw_response.create(
        model="agent-model", messages=[], extra_body=agent_body(project, 'mock:tool Glob {"pattern": "*.txt"}')
    )
    assert ONLY_HERE in (first.parse().choices[0].message.content or "")
    session = first.headers["x-session-id"]
    follow_up = {"working_directory": str(project), "tools": ["Read", "Glob"], "session_id": session}
    second = client(kaixu).chat.completions.with_raw_response.create(
        model="agent-model", messages=[{"role": "user", "content": "Which of them did you list?"}], extra_body=follow_up
    )
    assert second.headers["x-session-id"] == session
    request_id = second.headers["x-request-id"]
    wait_for(lambda: inner_rows(kaixu, request_id), 10, "the follow-up's inner call")
    for row in inner_rows(kaixu, request_id):
        assert "Which files are here?" in row["prompt"] and ONLY_HERE in row["prompt"], row["prompt"][-2000:]
        assert "Which of them did you list?" in row["prompt"]


def test_read_streams(kaixu: Kaixu, project: Path) -> None:
    path = project / "notes.md"
    raw = client(kaixu).chat.completions.with_raw_response.create(
        model="agent-model", messages=[], stream=True, reasoning_effort="low",  # tool activity shown as reasoning
        extra_body=agent_body(project, f'mock:tool Read {{"file_path": "{path}"}}'),
    )  # fmt: skip
    stream = raw.parse()
    chunks, text, reasoning = 0, "", ""
    for chunk in stream:
        chunks += 1
        if chunk.choices:
            delta: Any = chunk.choices[0].delta
            text += delta.content or ""
            reasoning += getattr(delta, "reasoning_content", None) or ""
    assert "secret-line-42" in text
    assert "[tool Read" in reasoning  # the agent's tool activity, as reasoning
    assert chunks > 3
    request_id = raw.headers["x-request-id"]
    outer = ledger_row(kaixu, request_id)
    wait_for(lambda: len(inner_rows(kaixu, request_id)) >= 2, 10, "the inner calls' records")
    assert outer["stream"] == 1 and outer["cost_micros"] == sum(r["cost_micros"] for r in inner_rows(kaixu, request_id))


def test_sandbox_environment_and_untrusted_project_settings(kaixu: Kaixu, project: Path, root: Path) -> None:
    """What the agent's own commands see: no key or secret of kaixu's, a HOME of its own; the working
    directory's hooks and MCP servers never ran."""
    body = {**agent_body(project, 'mock:tool Bash {"command": "env"}'), "tools": ["Bash"]}
    answer = client(kaixu, BASH_KEY).chat.completions.create(model="agent-model", messages=[], extra_body=body)
    env = answer.choices[0].message.content or ""
    assert "HOME=" + str(kaixu.workdir / ".kaixu" / "agents" / "agent") in env, env
    assert "ANTHROPIC_API_KEY=kxa-" in env  # the run's own credential, never the caller's key
    for secret in ("sk-must-not-leak-1", "pepper-must-not-leak-2", BASH_KEY, TEST_KEY):
        assert secret not in env
    assert not (root / "hook-ran").exists() and not (root / "mcp-ran").exists()


def test_outside_allowed_roots_is_400(kaixu: Kaixu, project: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    link = project.parent / "sneaky-link"
    link.symlink_to(outside)
    for folder in (outside, link, project / ".." / ".."):
        with pytest.raises(openai.BadRequestError) as refused:
            client(kaixu).chat.completions.create(
                model="agent-model",
                messages=[],
                extra_body={**agent_body(project, "x"), "working_directory": str(folder)},
            )
        assert "working_directory" in str(refused.value)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"working_directory": "relative/path"}, "working_directory"),
        ({"working_directory": "/definitely/not/here"}, "working_directory"),
        ({"working_directory": 42}, "working_directory"),
        ({"model": "mock-model"}, "runs an agent"),  # a model with no claude-cli deployment
    ],
)
def test_agent_requests_it_cannot_run_are_400(kaixu: Kaixu, project: Path, change: dict[str, Any], field: str) -> None:
    body = {"model": "agent-model", **agent_body(project, "x"), **change}
    if change.get("working_directory") == "/definitely/not/here":
        body["working_directory"] = str(project / "missing")  # inside the root, but no such folder
    response = httpx.post(kaixu.url + "/v1/chat/completions", json=body,
                          headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=30)  # fmt: skip
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("model", "says"), [("false-model", "exited with 1 before its answer"), ("missing-model", "could not start")]
)
def test_a_command_that_fails_is_a_502(kaixu: Kaixu, project: Path, model: str, says: str) -> None:
    response = httpx.post(kaixu.url + "/v1/chat/completions", json={"model": model, **agent_body(project, "x")},
                          headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=30)  # fmt: skip
    assert response.status_code == 502, response.text
    assert says in response.json()["error"]["message"]


def test_forbidden_tool_is_400_naming_it(kaixu: Kaixu, project: Path) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(kaixu).chat.completions.create(
            model="agent-model", messages=[], extra_body={**agent_body(project, "x"), "tools": ["Read", "Bash"]}
        )
    assert "Bash" in str(refused.value)
    with pytest.raises(openai.BadRequestError) as refused:
        client(kaixu).chat.completions.create(
            model="agent-model", messages=[], extra_body={**agent_body(project, "x"), "tools": ["Read", "WebFetch"]}
        )
    assert "WebFetch" in str(refused.value)


def test_timeout_kills_the_whole_process_group(kaixu: Kaixu, project: Path) -> None:
    marker = "sleep 47.25"
    body = {**agent_body(project, f'mock:tool Bash {{"command": "{marker}"}}'), "tools": ["Bash"]}
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(httpx.post(kaixu.url + "/v1/chat/completions", json={"model": "quick-model", **body},
                                  headers={"authorization": f"Bearer {BASH_KEY}"}, timeout=60))  # fmt: skip

    sender = threading.Thread(target=send)
    sender.start()
    wait_for(lambda: bool(processes_with(marker)), 8, "the tool command to run")  # before the run's timeout_s
    sender.join(30)
    assert answers and answers[0].status_code == 504, answers
    assert "did not finish within 8 s" in answers[0].text
    wait_for(lambda: not processes_with(marker), 5, f"no process left running {marker!r}")


def test_client_leaving_kills_its_process(kaixu: Kaixu, project: Path) -> None:
    marker = "sleep 48.75"
    body = {**agent_body(project, f'mock:tool Bash {{"command": "{marker}"}}'), "tools": ["Bash"], "stream": True,
            "reasoning_effort": "low"}  # fmt: skip
    with httpx.stream("POST", kaixu.url + "/v1/chat/completions", json={"model": "agent-model", **body},
                      headers={"authorization": f"Bearer {BASH_KEY}"}, timeout=60) as response:  # fmt: skip
        assert response.status_code == 200
        lines = response.iter_lines()  # kept: a generator closed early closes the connection
        for line in lines:
            if "[tool Bash" in line:
                break
        wait_for(lambda: bool(processes_with(marker)), 10, "the tool command to run")
    wait_for(lambda: not processes_with(marker), 10, f"no process left running {marker!r}")
    wait_for(lambda: not processes_with("claude.exe") and not processes_with(str(project)), 10, "the CLI to stop")


def test_burst_one_answered_one_queued_one_degraded(kaixu: Kaixu, project: Path) -> None:
    def status() -> dict[str, Any]:
        return httpx.get(kaixu.url + "/queue/status").json()["processPool"]

    slow = {**agent_body(project, 'mock:tool Bash {"command": "sleep 2.5"}'), "tools": ["Bash"]}
    results: dict[str, httpx.Response] = {}

    def send(name: str, body: dict[str, Any], key: str) -> None:
        results[name] = httpx.post(kaixu.url + "/v1/chat/completions", json={"model": "agent-model", **body},
                                   headers={"authorization": f"Bearer {key}"}, timeout=90)  # fmt: skip

    before = status()
    first = threading.Thread(target=send, args=("first", slow, BASH_KEY))
    first.start()
    wait_for(lambda: status()["active"] >= 1, 10, "the first run to hold the only slot")
    second = threading.Thread(target=send, args=("second", agent_body(project, "second"), TEST_KEY))
    second.start()
    wait_for(lambda: status()["queued"] == 1, 10, "the second request to wait in the queue")
    send("third", agent_body(project, "third"), TEST_KEY)
    third = results["third"]
    assert third.status_code == 200 and third.json()["degraded"] is True
    assert third.headers["x-kaixu-degraded"] == "true"
    assert "third" in third.json()["choices"][0]["message"]["content"]  # the mock's echo, without the agent
    first.join(60)
    second.join(60)
    assert results["first"].status_code == 200 and "degraded" not in results["first"].json()
    assert results["second"].status_code == 200 and "degraded" not in results["second"].json()
    after = status()
    assert after["totalQueued"] == before["totalQueued"] + 1
    assert after["active"] == 0 and after["queued"] == 0
    health = httpx.get(kaixu.url + "/health").json()["routing"]
    assert health["backends"]["tool"] == 5  # the claude-cli providers


def test_an_agents_model_call_never_starts_another_agent(kaixu: Kaixu, project: Path) -> None:
    response = httpx.post(kaixu.url + "/v1/chat/completions", json={"model": "loop-model", **agent_body(project, "x")},
                          headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=60)  # fmt: skip
    assert response.status_code == 502, response.text
    request_id = response.headers["x-request-id"]
    wait_for(lambda: bool(inner_rows(kaixu, request_id)), 10, "the inner call's record")
    inner = inner_rows(kaixu, request_id)
    assert [(r["model"], r["status"]) for r in inner] == [("quick-model", 400)]


def test_anthropic_door_gets_the_agents_answer(kaixu: Kaixu, project: Path) -> None:
    messages: Any = [{"role": "user", "content": 'x\nmock:tool Glob {"pattern": "*"}'}]
    answer = anthropic.Anthropic(base_url=kaixu.url, api_key=TEST_KEY, max_retries=0).messages.create(
        model="agent-model", max_tokens=1000, messages=messages,
        extra_body={"working_directory": str(project), "tools": ["Glob"]},
    )  # fmt: skip
    assert ONLY_HERE in "".join(b.text for b in answer.content if b.type == "text")


def test_backend_in_path_names_the_agent(kaixu: Kaixu, project: Path) -> None:
    """`/v1/{backend}/chat/completions` (the seed's explicit backend): a plain request runs the agent."""
    response = httpx.post(kaixu.url + "/v1/agent/chat/completions",
                          json={"model": "agent-model", "messages": [{"role": "user", "content": "hi there"}]},
                          headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    assert "hi there" in response.json()["choices"][0]["message"]["content"]
    assert response.headers["x-kaixu-served-by"].startswith("agent")


def test_agent_request_json_curl(kaixu: Kaixu, project: Path) -> None:
    """The seed's own curl example, with a kaixu key and no model: the default model runs the agent."""
    body = json.dumps(agent_body(project, 'mock:tool Glob {"pattern": "*.txt"}'))
    done = subprocess.run(
        ["curl", "-sS", "-X", "POST", kaixu.url + "/v1/chat/completions", "-H", "Content-Type: application/json",
         "-H", f"Authorization: Bearer {TEST_KEY}", "-d", body],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ONLY_HERE in json.loads(done.stdout)["choices"][0]["message"]["content"]
