"""`kaixu run --workers N`: one supervisor and N worker processes, each a full kaixu, on the same port.

Why processes: one kaixu is one event loop on one core (mitmproxy's layers are pure Python); a machine's other
cores serve only through more processes. Why SO_REUSEPORT: each worker listens on its own socket bound to
the same address, and the kernel spreads new connections over them, so no process hands connections on and
a worker that dies takes only its own connections with it. The supervisor reserves each address first (a
bound socket that never listens, so it gets no connections): `--listen 127.0.0.1:0` picks one free port that
every worker then binds, and nothing else can take it between two worker restarts.

The workers share what replicas share (docs/operations.md#workers): counters in the SQLite file (or Redis),
one ledger (SQLite in WAL, each worker's writer batching; or PostgreSQL), metrics through prometheus_client's
multiprocess files in the run's folder (kaixu/metrics.py `share`), and each reloads the policy file on its own.
The supervisor forwards SIGTERM (every worker drains), restarts a worker that exits on its own, and logs it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("kaixu.workers")

READY_TIMEOUT_S = 60.0
"""How long the supervisor waits for every worker to listen at start."""
RESTART_BACKOFF_MAX_S = 30.0
STABLE_S = 10.0
"""A worker that ran this long before it exited is restarted at once; one that keeps dying, with a backoff."""


def worker_count(text: str) -> int:
    """`--workers`: a number from 1, or `auto`: the cores this process may run on (its CPU affinity, so a
    kaixu pinned with `taskset` starts as many workers as it has cores)."""
    if text == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    count = int(text)
    if count < 1:
        raise ValueError("at least 1")
    return count


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT, not listening yet."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True, slots=True)
class Worker:
    """What a worker process knows of its place: its id (1..count) and the run's folder, shared with the others."""

    id: int
    count: int
    run_dir: str

    @property
    def metrics_dir(self) -> str:
        return os.path.join(self.run_dir, "metrics")

    def ready_file(self) -> str:
        return os.path.join(self.run_dir, f"ready-{self.id}")

    def note_policy(self, digest: str, generation: int) -> None:
        """Say which policy this worker has in force (read by every worker's /health: `workers`)."""
        path = os.path.join(self.run_dir, f"policy-{self.id}.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"pid": os.getpid(), "hash": digest, "generation": generation}, fh)
        os.replace(tmp, path)

    def fleet(self) -> dict[str, Any]:
        """/health's `workers`: this worker's id and pid, and the policy every worker has in force (by id)."""
        policies: dict[str, Any] = {}
        for n in range(1, self.count + 1):
            try:
                with open(os.path.join(self.run_dir, f"policy-{n}.json")) as fh:
                    policies[str(n)] = json.load(fh)
            except (OSError, ValueError):
                policies[str(n)] = None
        hashes = {p["hash"] for p in policies.values() if p is not None}
        return {
            "id": self.id,
            "pid": os.getpid(),
            "count": self.count,
            "policy_hash": hashes.pop() if len(hashes) == 1 and None not in policies.values() else None,
            "policies": policies,
        }


@dataclass(slots=True)
class _Child:
    id: int
    proc: subprocess.Popen[bytes]
    started: float
    failures: int = 0
    restart_at: float | None = None


@dataclass(slots=True)
class Supervisor:
    """Starts the workers, restarts those that exit on their own, and stops them all on SIGTERM/SIGINT."""

    count: int
    addresses: list[tuple[str, int]]
    worker_args: list[str]
    """`kaixu run` arguments every worker gets (the policy, --reload-ms, logging); `--listen` is added."""
    run_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="kaixu-run-"))
    children: dict[int, _Child] = field(default_factory=dict)
    _reserved: list[socket.socket] = field(default_factory=list)
    _stopping: int = 0

    def reserve(self) -> list[tuple[str, int]]:
        """Bind every address (port 0: a free port, the same for every worker); the bound addresses."""
        bound = []
        for host, port in self.addresses:
            sock = reuse_port_socket(host, port)
            self._reserved.append(sock)
            bound.append((host, sock.getsockname()[1]))
        self.addresses = bound
        os.makedirs(os.path.join(self.run_dir, "metrics"), exist_ok=True)
        return bound

    def command(self, worker_id: int) -> list[str]:
        listen = [arg for host, port in self.addresses for arg in ("--listen", f"{host}:{port}")]
        return [sys.executable, "-m", "kaixu", "run", *self.worker_args, *listen,
                "--worker-id", str(worker_id), "--workers", str(self.count), "--run-dir", self.run_dir]  # fmt: skip

    def spawn(self, worker_id: int, failures: int = 0) -> None:
        ready = Worker(worker_id, self.count, self.run_dir).ready_file()
        if os.path.exists(ready):
            os.remove(ready)
        # A session of its own: a terminal's Ctrl-C reaches the supervisor only, which forwards one SIGTERM.
        proc = subprocess.Popen(self.command(worker_id), stdin=subprocess.DEVNULL, start_new_session=True)
        self.children[worker_id] = _Child(worker_id, proc, time.monotonic(), failures)
        log.info("worker %d started (pid %d)", worker_id, proc.pid)

    def start(self) -> bool:
        """Start every worker and wait until each listens; False (all stopped) if one could not start."""
        for worker_id in range(1, self.count + 1):
            self.spawn(worker_id)
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = set(self.children)
        while waiting:
            for worker_id in list(waiting):
                child = self.children[worker_id]
                if os.path.exists(Worker(worker_id, self.count, self.run_dir).ready_file()):
                    waiting.discard(worker_id)
                elif child.proc.poll() is not None or time.monotonic() > deadline:
                    log.error("worker %d did not start (exit status %s)", worker_id, child.proc.returncode)
                    self.stop()
                    return False
            time.sleep(0.02)
        return True

    def on_signal(self, signum: int, frame: Any) -> None:
        self._stopping += 1
        if self._stopping == 1:
            log.info("shutting down: every worker finishes its in-flight requests")
        for child in self.children.values():
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)

    def watch(self) -> int:
        """Until a stop signal: restart every worker that exits. Then wait for all; 0 if they all stopped cleanly."""
        while not self._stopping:
            now = time.monotonic()
            for child in list(self.children.values()):
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        self.spawn(child.id, child.failures)
                    continue
                status = child.proc.poll()
                if status is None:
                    continue
                self._forget(child.proc.pid)
                lived = now - child.started
                failures = 0 if lived >= STABLE_S else child.failures + 1
                delay = 0.0 if failures == 0 else min(RESTART_BACKOFF_MAX_S, 0.5 * 2 ** (failures - 1))
                log.error("worker %d (pid %d) exited with status %s after %.1f s; restarting it in %.1f s",
                          child.id, child.proc.pid, status, lived, delay)  # fmt: skip
                child.failures, child.restart_at = failures, now + delay
            time.sleep(0.05)
        return self.stop()

    def stop(self) -> int:
        """SIGTERM every worker still running (unless a signal was forwarded already: a second SIGTERM would
        stop a worker without its drain), wait for each (a worker bounds its own drain), clean up."""
        for child in self.children.values():
            if not self._stopping and child.restart_at is None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        status = 0
        for child in self.children.values():
            if child.restart_at is not None:
                continue
            code = child.proc.wait()
            self._forget(child.proc.pid)
            status = status or (0 if code in (0, -signal.SIGTERM) else 1)
        for sock in self._reserved:
            sock.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return status

    def _forget(self, pid: int) -> None:
        """A worker is gone: its live gauges (in flight, queue depth) leave the sums; its counters stay."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, os.path.join(self.run_dir, "metrics"))


def write_port_file(path: str, addresses: list[tuple[str, int]]) -> None:
    tmp = path + ".tmp"
    Path(tmp).write_text(json.dumps([list(a) for a in addresses]))
    os.replace(tmp, path)
