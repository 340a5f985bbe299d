"""A real Prometheus for the tests: Debian's `prometheus` package, installed on first use, started by the test
itself on a free port with its own config and storage (never the system service), and queried through its HTTP
API (`/api/v1/query`), as Grafana queries it.

Installing: `apt-get install -y --no-install-recommends prometheus` (about 6 s on this machine, 12 small
packages), when the binary is missing and the tests run as root. A systemd that the package would have started
the service on is told to stop and disable it: the tests start their own server and leave nothing running.
Under `CI=true` a Prometheus that cannot be had fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.harness import apt_lock, unavailable, wait_for

PACKAGE = "prometheus"


def _install() -> str | None:
    """Install Debian's package; None when it worked, else why not."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "installing it needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=300"]  # and an apt-get of something other than the tests: wait for it
    install = ["apt-get", *wait, "install", "-y", "--no-install-recommends", PACKAGE]
    result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:  # a fresh container has no package lists yet
        subprocess.run(["apt-get", *wait, "update"], capture_output=True, env=env, timeout=600)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        return f"apt-get install {PACKAGE} failed: {result.stderr.strip()[-500:]}"
    if shutil.which("systemctl") is not None and Path("/run/systemd/system").exists():
        subprocess.run(["systemctl", "disable", "--now", "prometheus"], capture_output=True, timeout=60)
    return None


def binary() -> str:
    """The prometheus binary, installed if need be; fails under CI=true, skips elsewhere, when there is none."""
    found = shutil.which(PACKAGE)
    if found is None:
        with apt_lock():  # another worker may be installing it, or Chromium, right now
            found = shutil.which(PACKAGE)
            problem = _install() if found is None else None
        found = shutil.which(PACKAGE)
        if found is None:
            unavailable(f"no prometheus binary: {problem or 'not on PATH after installing'}")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """One Prometheus server scraping one target every second."""

    def __init__(self, workdir: Path, target: str, bearer: str | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        scrape: dict[str, Any] = {"job_name": "kaixu", "static_configs": [{"targets": [target]}]}
        if bearer is not None:
            (workdir / "bearer").write_text(bearer)
            scrape["authorization"] = {"type": "Bearer", "credentials_file": str(workdir / "bearer")}
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [scrape],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(json.dumps(config))  # JSON is YAML
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, binary: str, timeout: float = 30) -> Prometheus:
        log = (self.workdir / "prometheus.log").open("wb")
        command = [
            binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{self.log()}")
            try:
                return httpx.get(self.url + "/-/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout, "prometheus to be ready")
        return self

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (or matrix/scalar, as the API returns it)."""
        response = httpx.get(self.url + "/api/v1/query", params={"query": expr, "time": time.time()}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"prometheus refused {expr!r}: {body.get('errorType')}: {body.get('error')}")
        result = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    def target_health(self) -> list[dict[str, Any]]:
        response = httpx.get(self.url + "/api/v1/targets", timeout=10)
        return list(response.json()["data"]["activeTargets"])
