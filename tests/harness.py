"""Start kaixu the way users do (`python -m kaixu run`), on ephemeral ports, and stop it with SIGTERM."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEST_KEY = "sk-test"
LIMITED_KEY = "sk-limited"
UPSTREAM_KEYS = {"openai": "sk-up-openai", "anthropic": "sk-up-anthropic", "gemini": "sk-up-gemini"}


def key_hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def unavailable(message: str) -> NoReturn:
    """A server or program a test needs is not here: under CI (`CI=true`) that fails the test, elsewhere it
    skips it with the reason, so a missing service never passes silently in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def apt_lock() -> Iterator[None]:
    """Held around every apt-get the tests run: xdist workers installing at once (Chromium for one test,
    Prometheus for another) would fail on apt's own locks, whose timeout option does not cover `apt-get
    update`. The holder after the first finds the package installed."""
    with open(os.path.join(tempfile.gettempdir(), "kaixu-tests-apt.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll a condition (bounded): the condition, not the clock, is what the test waits on."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def policy_for(fake_url: str, **overrides: Any) -> dict[str, Any]:
    """A policy routing to the fake provider in each wire format, plus the mock and a dead upstream."""
    policy: dict[str, Any] = {
        "version": 1,
        "listen": [{"host": "127.0.0.1", "port": 0}],
        "store": {"sqlite": ":memory:"},
        "limits": {"upstream_timeout_s": 2, "max_body_bytes": 1_000_000},
        "providers": {
            "oai": {"kind": "openai", "base_url": fake_url + "/v1", "api_key": UPSTREAM_KEYS["openai"]},
            "ant": {"kind": "anthropic", "base_url": fake_url, "api_key": UPSTREAM_KEYS["anthropic"]},
            "gem": {"kind": "gemini", "base_url": fake_url, "api_key": UPSTREAM_KEYS["gemini"]},
            "mock": {"kind": "mock"},
            "dead": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-dead"},
            "nokey": {"kind": "gemini", "base_url": fake_url},
            "nxdomain": {"kind": "openai", "base_url": "http://no-such-host.invalid/v1", "api_key": "sk-dead"},
        },
        "models": {
            "gpt-4o-mini": {"route": [{"provider": "oai"}]},
            "text-embedding-3-small": {"route": [{"provider": "oai"}]},
            "alias": {"route": [{"provider": "oai", "model": "gpt-4o-mini-2024-07-18"}]},
            "claude-test": {"route": [{"provider": "ant", "model": "claude-3-5-haiku-latest"}]},
            "gemini-test": {"route": [{"provider": "gem", "model": "gemini-2.5-flash"}]},
            "mock-model": {"route": [{"provider": "mock"}]},
            "dead-model": {"route": [{"provider": "dead"}]},
            "nokey-model": {"route": [{"provider": "nokey"}]},
            "nxdomain-model": {"route": [{"provider": "nxdomain"}]},
        },
        "default_model": "gemini-test",
        "fronts": {"gateway13": {"ping_interval_s": 0.2}},
        "keys": [
            {"name": "test", "hash": key_hash(TEST_KEY)},
            {"name": "limited", "hash": key_hash(LIMITED_KEY), "models": ["gpt-4o-mini"]},
        ],
    }
    policy.update(overrides)
    return policy


class Kaixu:
    """A `kaixu run` subprocess."""

    def __init__(
        self,
        workdir: Path,
        policy: dict[str, Any] | str,
        *,
        plugin: bool = False,
        quiet: bool = True,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = args
        self.env = env
        """Variables set for the kaixu process, over the test's own environment (None: the test's as it is)."""
        self.workdir = workdir
        self.policy_path = workdir / "proxy.yaml"
        self.port_file = workdir / "ports.json"
        self.log_path = workdir / "kaixu.log"
        self.plugin = plugin
        self.quiet = quiet
        """The plugin's mitmdump with `-q` (False: mitmdump prints a line per flow its dumper sees)."""
        self.write_policy(policy)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.host, self.port = "", 0
        self.proxy_urls: list[str] = []
        """The forward listeners' URLs (`HTTPS_PROXY`), in the policy's order."""

    def write_policy(self, policy: dict[str, Any] | str) -> None:
        text = policy if isinstance(policy, str) else yaml.safe_dump(policy, sort_keys=False)
        tmp = self.policy_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.policy_path)

    def command(self) -> list[str]:
        if self.plugin:
            mitmdump = str(Path(sys.executable).parent / "mitmdump")
            return [
                mitmdump, *(["-q"] if self.quiet else []), "-s", str(ROOT / "kaixu" / "plugin.py"),
                "--mode", "reverse:http://127.0.0.1:9@127.0.0.1:0",
                "--set", f"kaixu_policy={self.policy_path}", "--set", "connection_strategy=lazy",
                "--set", f"kaixu_port_file={self.port_file}", "--set", "kaixu_reload_ms=100",
                "--set", f"confdir={self.workdir / '.mitmproxy'}", *self.args,
            ]  # fmt: skip
        return [
            sys.executable, "-m", "kaixu", "run", str(self.policy_path), "--listen", "127.0.0.1:0",
            "--port-file", str(self.port_file), "--reload-ms", "100", *self.args,
        ]  # fmt: skip

    def start(self, timeout: float = 30) -> Kaixu:
        log = self.log_path.open("wb")
        env = None if self.env is None else {**os.environ, **self.env}
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"kaixu exited with {proc.returncode}:\n{self.log()}")
            return self.port_file.exists()

        wait_for(ready, timeout, "kaixu to listen")
        addresses = json.loads(self.port_file.read_text())
        host, port = addresses[0]
        self.host, self.port = host, int(port)
        self.url = f"http://{host}:{port}"
        # the policy's forward listeners follow the reverse one (`--listen`): kaixu/options.py listener_modes
        self.proxy_urls = [f"http://{h}:{p}" for h, p in addresses[1:]]
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def health(self) -> dict[str, Any]:
        return httpx.get(self.url + "/health").json()


def ledger(gateway: Kaixu, request_id: str, file: str = "ledger.db") -> dict[str, Any] | None:
    """The ledger row of a request, read from the gateway's SQLite file (`store: {sqlite: ledger.db}`)."""
    path = gateway.workdir / file
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM requests WHERE request_id = ?", (request_id,)).fetchone()
    except sqlite3.OperationalError:
        return None
    return dict(row) if row is not None else None


def ledger_row(gateway: Kaixu, request_id: str) -> dict[str, Any]:
    """The ledger row of a request, once the batched writer has stored it."""
    wait_for(lambda: ledger(gateway, request_id) is not None, 10, f"ledger record {request_id}")
    row = ledger(gateway, request_id)
    assert row is not None
    return row


def ledger_rows_of(gateway: Kaixu, request_id: str, file: str = "ledger.db") -> int:
    with sqlite3.connect(f"file:{gateway.workdir / file}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM requests WHERE request_id = ?", (request_id,)).fetchone()[0])


def only_record(gateway: Kaixu, request_id: str) -> dict[str, Any]:
    """The one ledger record of a client's request (the gateway's ledger file is `ledger.db`, the policy has
    `mock-model`): records are written in order, so once a later request's record is stored, a second record
    of this one would be too."""
    row = ledger_row(gateway, request_id)
    sentinel = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "mock-model", "messages": [{"role": "user", "content": "sentinel"}]},
        headers={"authorization": f"Bearer {TEST_KEY}"},
    )
    ledger_row(gateway, sentinel.headers["x-request-id"])
    assert ledger_rows_of(gateway, request_id) == 1
    return row
