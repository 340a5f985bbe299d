"""Instructions per request: kaixu under valgrind's callgrind, this checkout against another (``--baseline-tree``).

Why: the CPU time per request that bench/overhead.py and bench/sidebyside.py measure moves 10-30% on this machine
when anything else runs (other sessions, helpers, a test suite), so a change of a few per cent cannot be seen
there without many interleaved rounds. callgrind counts the instructions the gateway's process executes, which
stay within a fraction of a per cent from run to run whatever else the machine does (docs/performance.md,
"Instructions per request"). It is the A/B to use while changing the hot path; the side-by-side run stays the
measure against other gateways (instructions are not time: a cache miss or a system call costs more than its
count says).

How: the fake provider and a governed kaixu (bench/sidebyside.py's policy: a key with a budget and an rpm limit,
ledger and counters in SQLite) start as the benchmarks start them, kaixu under ``valgrind --tool=callgrind
--instr-atstart=no`` (start-up is not counted). A warm-up of requests, then counting is switched on
(``callgrind_control -i on``), a fixed number of requests is sent on ``--connections`` keep-alive connections,
each answer checked, and counting is switched off. The total divided by the number of requests is the figure.

    .venv/bin/python bench/instructions.py                          # this checkout, JSON and 50-event streams
    .venv/bin/python bench/instructions.py --baseline-tree /tmp/base  # and a baseline checkout, with the ratio

(``git worktree add /tmp/base <commit>`` makes a baseline tree.) About a minute per tree and scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from overhead import (
    CLIENT_KEY,
    GATEWAY_CPU,
    HOST,
    LOAD_CPU,
    PATH,
    ROOT,
    SMALL_BODY,
    SSE_BODY,
    SSE_EVENTS,
    BenchError,
    can_pin,
    start_fake,
    tree_python,
)
from sidebyside import governed_policy

SCENARIOS = {"json": SMALL_BODY, "sse": SSE_BODY}


def count(tree: Path | None, scenario: str, requests: int, connections: int, work: Path, shared: bool = False) -> float:
    """Millions of instructions kaixu executes per request of ``scenario``, from ``tree`` (None: this checkout);
    ``shared``: the counters in the SQLite file, as ``--workers N`` keeps them (``store.counters: shared``)."""
    body = json.dumps(SCENARIOS[scenario])
    with contextlib.ExitStack() as stack:
        (work / "fake").mkdir(parents=True)
        fake_port = start_fake(work / "fake", stack)
        folder = work / "kaixu"
        folder.mkdir()
        policy = folder / "policy.yaml"
        policy.write_text(governed_policy(fake_port, folder, {"counters": "shared"} if shared else {}))
        python, cwd, env = tree_python(tree) if tree is not None else (sys.executable, ROOT, None)
        out, ports = folder / "callgrind.out", folder / "ports"
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", python, "-m"]
        cmd += ["kaixu", "run", str(policy), "--listen", f"{HOST}:0", "--port-file", str(ports), "--reload-ms", "0"]
        cmd += ["--log-level", "warning"]
        if can_pin():
            cmd = ["taskset", "-c", str(GATEWAY_CPU), *cmd]
        log = (folder / "kaixu.log").open("wb")
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        stack.callback(_stop, proc)
        deadline = time.monotonic() + 300
        while not ports.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"kaixu under valgrind did not start: {(folder / 'kaixu.log').read_text()[-2000:]}")
            time.sleep(0.2)
        port = int(json.loads(ports.read_text())[0][1])
        try:
            _load(port, body, scenario, connections * 10, connections)  # warm-up: imports, caches, connections
            _control("-i", "on", proc.pid)
            _load(port, body, scenario, requests, connections)
        except BenchError as exc:  # the gateway's own account goes with it (the folder is deleted)
            raise BenchError(f"{exc}\nkaixu's log:\n{(folder / 'kaixu.log').read_text()[-4000:]}") from exc
        _control("-i", "off", proc.pid)
        _control("-d", "", proc.pid)  # a dump of what was counted, written by valgrind as it gets to it
        deadline = time.monotonic() + 60
        while (counted := max((_total(path) for path in folder.glob("callgrind.out*")), default=0)) == 0:
            if time.monotonic() > deadline:
                raise BenchError(f"callgrind wrote no counts in {folder}")
            time.sleep(0.2)
        return counted / requests / 1e6


def _control(flag: str, value: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, *([value] if value else []), str(pid)], check=True, capture_output=True)


def _total(path: Path) -> int:
    """The instructions a dump counted (its `totals:` line, at the end of the file)."""
    lines = path.read_text(errors="replace").splitlines()
    return max((int(line.split()[1]) for line in lines if line.startswith(("summary:", "totals:"))), default=0)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _load(port: int, body: str, scenario: str, requests: int, connections: int) -> None:
    """``requests`` answers on ``connections`` keep-alive connections at once, every one checked."""
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=600)
            headers = {"Authorization": "Bearer " + CLIENT_KEY, "Content-Type": "application/json"}
            for _ in range(n):
                conn.request("POST", PATH, body, headers)
                response = conn.getresponse()
                data = response.read()
                if response.status != 200:
                    raise BenchError(f"HTTP {response.status}: {data[:300]!r}")
                if scenario == "sse" and data.count(b"data:") < SSE_EVENTS:
                    raise BenchError(f"a stream of {data.count(b'data:')} events: {data[-300:]!r}")
            conn.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(requests // connections,)) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-tree", type=Path, help="another checkout of kaixu to compare with")
    parser.add_argument("--only", default="json,sse", help="scenarios: json, sse")
    parser.add_argument("--requests", type=int, default=200, help="counted requests per scenario (streams: half)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--shared-counters", action="store_true", help="the counters in the SQLite file, as --workers N keeps them"
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is missing: apt-get install -y valgrind")
    if can_pin():
        os.sched_setaffinity(0, {LOAD_CPU})  # the clients, as the other benchmarks place the load
    trees: list[tuple[str, Path | None]] = [("this checkout", None)]
    if args.baseline_tree is not None:
        trees.append((f"baseline {args.baseline_tree}", args.baseline_tree))
    for scenario in args.only.split(","):
        requests = args.requests if scenario == "json" else max(args.requests // 2, args.connections)
        counted: list[float] = []
        for name, tree in trees:
            with tempfile.TemporaryDirectory(prefix="kaixu-instr-") as tmp:
                counted.append(count(tree, scenario, requests, args.connections, Path(tmp), args.shared_counters))
            print(f"{scenario}: {name}: {counted[-1]:.2f} M instructions per request ({requests} requests)")
        if len(counted) == 2:
            print(f"{scenario}: this checkout / baseline = {counted[0] / counted[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
