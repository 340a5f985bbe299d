"""A newcomer with only the wheel: `kaixu init` writes the demo policy (the repository's proxy.yaml, shipped in the
package), `kaixu run` without a policy file says what to do, and the demo's console is where `kaixu run` says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.harness import ROOT, Kaixu, wait_for

DEMO_ADMIN_KEY = "sk-kaixu-admin-demo"


def kaixu(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kaixu", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_run_without_a_policy_file_says_to_init(tmp_path: Path) -> None:
    done = kaixu("run", cwd=tmp_path)
    assert done.returncode == 1
    assert "no policy file at proxy.yaml" in done.stderr and "kaixu init" in done.stderr
    assert "cannot read the policy file" not in done.stderr


def test_init_writes_the_shipped_demo_policy_and_never_overwrites(tmp_path: Path) -> None:
    done = kaixu("init", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = tmp_path / "proxy.yaml"
    assert written.read_text() == (ROOT / "proxy.yaml").read_text()  # the package's copy is the repository's
    assert "kaixu run" in done.stdout
    written.write_text("# mine\n")
    again = kaixu("init", cwd=tmp_path)
    assert again.returncode == 1 and "exists already" in again.stderr
    assert written.read_text() == "# mine\n"
    assert kaixu("init", "--force", cwd=tmp_path).returncode == 0
    assert written.read_text() == (ROOT / "proxy.yaml").read_text()


def test_the_demo_policy_turns_the_console_on_and_run_prints_its_address(tmp_path: Path) -> None:
    assert kaixu("init", cwd=tmp_path).returncode == 0
    policy = (tmp_path / "proxy.yaml").read_text()
    gateway = Kaixu(tmp_path, policy, args=("--hint-admin-key", DEMO_ADMIN_KEY)).start()
    try:
        wait_for(lambda: "console: " in gateway.log(), 10, "the console's address")
        line = next(text for text in gateway.log().splitlines() if text.startswith("console: "))
        assert line == f"console: {gateway.url}/ui (sign in with the admin key {DEMO_ADMIN_KEY})"
        url = re.search(r"http://\S+/ui", line)
        assert url is not None and httpx.get(url.group()).status_code == 200
        signed = httpx.post(gateway.url + "/ui/session", json={"key": DEMO_ADMIN_KEY})
        assert signed.status_code == 200 and signed.json()["admin"] == "admin"
    finally:
        gateway.stop()
