"""Debian's Chromium for the console's browser tests, driven by Playwright for Python (pinned in pyproject's test
extras). Playwright cannot download a browser of its own here, so the tests launch `/usr/bin/chromium`, which
this module installs with apt-get (as root, or through sudo) when it is missing, like bench/real_clients.py
installs node. A failed install skips the tests, and fails them under `CI=true` (tests/harness.py `unavailable`)."""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.harness import apt_lock, unavailable

CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> str:
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    with apt_lock():
        return _install()


def _install() -> str:
    if os.access(CHROMIUM, os.X_OK):  # another worker installed it while this one waited
        return CHROMIUM
    sudo: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            unavailable(f"{CHROMIUM} is missing and installing it needs root (apt-get install -y chromium)")
        sudo = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run([*sudo, *command], env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            unavailable(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-500:]}")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"apt-get installed chromium but {CHROMIUM} is not there")
    return CHROMIUM
