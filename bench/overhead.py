"""Measure what kaixu costs on top of a direct connection and a bare mitmdump, in one run on this machine.

Why one run with its own baselines: cloud VMs are noisy (±20 % between runs), so absolute numbers from
another day mean little. Each run measures these configurations back to back against the same fake
provider and reports kaixu relative to the baselines measured minutes earlier:

* ``direct``   wrk -> fake provider
* ``mitmdump`` wrk -> bare ``mitmdump -q --mode reverse:...`` (default addon set, no scripts) -> fake
* ``kaixu``    wrk -> ``python -m kaixu run policy.yaml`` -> fake
* ``kaixu-plugin``    wrk -> ``mitmdump -s kaixu/plugin.py`` (the same addon chain on mitmdump's own Master,
  with its default addon set) -> fake
* ``kaixu-2w``  wrk -> ``python -m kaixu run policy.yaml --workers 2`` -> fake: a supervisor and two workers on
  one port, allowed both CPUs (the load shares CPU 0 with one of them); CPU and RSS are the whole process tree's,
  and the load generator's own CPU (wrk and the fake) is reported beside it
* ``kaixu-2cpu`` (with ``--only``): one ``kaixu run`` process allowed both CPUs, as kaixu-2w is: what the second
  worker adds, rather than the second core
* ``kaixu-baseline``  with ``--baseline-tree DIR``: wrk -> another checkout's ``python -m kaixu run`` -> fake,
  so a change is measured before and after in one run (``git worktree add /tmp/base <commit>``; DIR's own
  ``.venv`` is used if it has one, else this venv's Python with DIR first on the import path)

The gateway is pinned to CPU 1, the fake provider, wrk and this script to CPU 0, so the gateway has a core
to itself and its CPU per request is measurable. ``make bench`` runs this file; results go to stdout, to
``bench/results/overhead-<timestamp>.json`` and to the marked section of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DOC_PATH = ROOT / "docs" / "performance.md"
DOC_BEGIN = "<!-- overhead:begin -->"
DOC_END = "<!-- overhead:end -->"

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
CLIENT_KEY = "sk-kaixu-bench"  # the virtual key callers present to kaixu
UPSTREAM_KEY = "sk-bench-upstream"  # what the fake provider demands; kaixu swaps the virtual key for it
GATEWAY_CPU = 1
LOAD_CPU = 0
CONCURRENCIES = (1, 32)
SSE_EVENTS = 50
WORKERS_2 = ("--log-level", "warning", "--workers", "2")
ALL_CPUS = f"{LOAD_CPU},{GATEWAY_CPU}"
"""kaixu-2w's workers may run on both CPUs: a second worker needs a second core, which it shares with the load."""

# Targets are reported, never tuned: PASS/FAIL is information for the reader, not a gate.
TARGET_THROUGHPUT_RATIO = 1.4  # kaixu req/s at c=32 vs bare mitmdump
TARGET_ADDED_P50_MS = 1.0  # kaixu p50 minus direct p50 at c=1
TARGET_RSS_MB = 150.0  # kaixu peak RSS under the c=32 load

SMALL_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}
# The fake splits "echo: <text>" into N pieces, so the text must be longer than N characters.
SSE_BODY = {
    "model": MODEL,
    "stream": True,
    "messages": [{"role": "user", "content": "Tell me a story about a proxy. " * 8}],
}


class BenchError(RuntimeError):
    """A configuration did not behave (wrong status, errors, no port): the numbers would be meaningless."""


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    """One wrk run, as parsed from ``wrk --latency``."""

    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int]
    gateway_cpu_ms_per_req: float | None = None
    load_cpu_share: float | None = None
    """CPU seconds the load generator (wrk) and the fake provider used per second of the run (1.0 = one core)."""
    invalid: int = 0
    """Answers a validating wrk script (`VALIDATE_LUA`) refused: a 200 whose body was not the expected one."""


@dataclass
class SseResult:
    """Sequential streamed requests: medians of the first-event and completion times."""

    requests: int
    events_per_response: int
    ttfb_ms_median: float
    total_ms_median: float
    ttfb_ms_p90: float
    total_ms_p90: float


@dataclass
class ConfigResult:
    """Everything measured for one configuration."""

    name: str
    load: dict[int, WrkResult] = field(default_factory=dict)
    sse: SseResult | None = None
    rss_idle_mb: float | None = None
    rss_peak_mb: float | None = None


@dataclass
class Target:
    """A stated goal and whether this run met it."""

    name: str
    goal: str
    measured: str
    passed: bool


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


def can_pin() -> bool:
    """Pinning needs two CPUs and taskset; without them the run still works, only noisier."""
    return (os.cpu_count() or 1) > max(GATEWAY_CPU, LOAD_CPU) and shutil.which("taskset") is not None


def pinned(cmd: list[str], cpu: int | str) -> list[str]:
    """Prefix ``cmd`` with taskset (taskset execs, so the pid we get is the program's own); ``cpu``: one CPU, or
    a taskset list (``0,1``)."""
    return ["taskset", "-c", str(cpu), *cmd] if can_pin() else cmd


def spawn(
    cmd: list[str],
    log_path: Path,
    stack: contextlib.ExitStack,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process whose output goes to a log file, and register its shutdown on ``stack``."""
    log = log_path.open("wb")
    stack.callback(log.close)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack.callback(stop, proc)
    return proc


def stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM (kaixu drains in-flight requests on it), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(predicate: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """Poll ``predicate`` for up to 30 s, failing early (with the log) if the process died."""
    deadline = time.monotonic() + 30
    while not predicate():
        if proc.poll() is not None:
            raise BenchError(f"{what}: process exited with {proc.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready after 30 s:\n{tail(log)}")
        time.sleep(0.05)


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log file, for error messages."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """An ephemeral port for mitmdump, which has no port file (a tiny race, acceptable for a benchmark)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def accepts(port: int) -> bool:
    """Whether something listens on ``port``."""
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def start_fake(
    work: Path, stack: contextlib.ExitStack, require_key: str | None = UPSTREAM_KEY, record: bool = False
) -> int:
    """The fake provider (tests/fakes/provider.py) on CPU 0, by default demanding the upstream key and not
    recording (other benchmarks route several keys to it, or read what it received at ``/_fake/requests``)."""
    port_file, log = work / "fake.port", work / "fake.log"
    cmd = [sys.executable, "-m", "tests.fakes.provider", "--host", HOST, "--port", "0", "--port-file", str(port_file)]
    cmd += ["--stream-events", str(SSE_EVENTS)]  # kaixu forwards no x-fake-* header: set for every stream here
    if require_key is not None:
        cmd += ["--require-key", require_key]
    if not record:
        cmd.append("--no-record")
    proc = spawn(pinned(cmd, LOAD_CPU), log, stack)
    wait_until(port_file.exists, proc, log, "fake provider")
    FAKE_PIDS[int(port_file.read_text().strip())] = proc.pid
    return int(port_file.read_text().strip())


FAKE_PIDS: dict[int, int] = {}
"""The fake provider's pid by port: the load side's CPU counts it (`run_wrk`)."""


def start_mitmdump(work: Path, fake_port: int, stack: contextlib.ExitStack) -> tuple[int, int]:
    """Bare mitmdump with its default addons, as a reverse proxy in front of the fake. Returns (port, pid)."""
    port, log = free_port(), work / "mitmdump.log"
    mitmdump = str(Path(sys.executable).parent / "mitmdump")
    cmd = [mitmdump, "-q", "--mode", f"reverse:http://{HOST}:{fake_port}@{HOST}:{port}"]
    cmd += ["--set", "connection_strategy=lazy", "--set", f"confdir={work / 'mitmproxy'}"]
    proc = spawn(pinned(cmd, GATEWAY_CPU), log, stack)
    wait_until(lambda: accepts(port), proc, log, "mitmdump")
    return port, proc.pid


def kaixu_policy(fake_port: int) -> str:
    """The smallest realistic policy: one OpenAI-format provider (the fake), one model, one virtual key."""
    digest = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
    policy = {
        "version": 1,
        "listen": [{"host": HOST, "port": 0}],
        "store": {"sqlite": "kaixu-bench.db"},
        "providers": {"fake": {"kind": "openai", "base_url": f"http://{HOST}:{fake_port}/v1", "api_key": UPSTREAM_KEY}},
        "models": {MODEL: {"route": [{"provider": "fake"}]}},
        "keys": [{"name": "bench", "hash": f"sha256:{digest}"}],
    }
    return json.dumps(policy, indent=2)  # JSON is YAML


def start_kaixu(
    work: Path,
    fake_port: int,
    stack: contextlib.ExitStack,
    policy_text: str | None = None,
    tree: Path | None = None,
    args: tuple[str, ...] = ("--log-level", "warning"),
    cpus: int | str = GATEWAY_CPU,
) -> tuple[int, int]:
    """`python -m kaixu run` exactly as a user starts it, minus hot reload. Returns (port, pid).

    ``policy_text`` replaces the default one-route policy (other benchmarks route more models); ``tree`` runs
    another checkout's kaixu (see :func:`tree_python`); ``args`` are the logging options (bench/real_clients.py
    wants the access log)."""
    work.mkdir(parents=True, exist_ok=True)
    policy, port_file, log = work / "policy.yaml", work / "kaixu.ports", work / "kaixu.log"
    policy.write_text(policy_text if policy_text is not None else kaixu_policy(fake_port))
    python, cwd, env = tree_python(tree) if tree is not None else (sys.executable, ROOT, None)
    cmd = [python, "-m", "kaixu", "run", str(policy), "--listen", f"{HOST}:0"]
    cmd += ["--port-file", str(port_file), "--reload-ms", "0", *args]
    proc = spawn(pinned(cmd, cpus), log, stack, cwd, env)
    wait_until(port_file.exists, proc, log, "kaixu")
    _host, port = json.loads(port_file.read_text())[0]
    return int(port), proc.pid


def tree_python(tree: Path) -> tuple[str, Path, dict[str, str]]:
    """(python, cwd, environment) that import kaixu from ``tree``, not from this checkout: the tree's own venv
    if it has one, else this venv's Python with the tree first on the path. Checked by importing kaixu once:
    `python -m` puts the working directory first on sys.path, so a wrong cwd would silently measure this tree."""
    own = tree / ".venv" / "bin" / "python"
    python = str(own) if own.exists() else sys.executable
    env = {**os.environ, "PYTHONPATH": str(tree)}
    found = subprocess.run(
        [python, "-c", "import kaixu; print(kaixu.__file__)"], cwd=tree, env=env, capture_output=True, text=True
    )
    where = Path(found.stdout.strip() or "?").resolve()
    if found.returncode != 0 or not where.is_relative_to(tree.resolve()):
        raise BenchError(f"baseline tree {tree}: kaixu imports from {where} {found.stderr.strip()}")
    print(f"  kaixu-baseline imports {where} with {python}", file=sys.stderr)
    return python, tree, env


def start_kaixu_plugin(work: Path, fake_port: int, stack: contextlib.ExitStack) -> tuple[int, int]:
    """The same chain as a mitmdump script (`mitmdump -s kaixu/plugin.py`, README's second way to run kaixu):
    mitmdump's own Master and default addons around kaixu's, with the options kaixu/plugin.py recommends.
    Returns (port, pid)."""
    work.mkdir(parents=True, exist_ok=True)
    policy, port_file, log = work / "policy.yaml", work / "kaixu.ports", work / "mitmdump.log"
    policy.write_text(kaixu_policy(fake_port))
    mitmdump = str(Path(sys.executable).parent / "mitmdump")
    cmd = [mitmdump, "-s", str(ROOT / "kaixu" / "plugin.py"), "--mode", f"reverse:http://{HOST}:9@{HOST}:0"]
    cmd += ["--set", f"kaixu_policy={policy}", "--set", "connection_strategy=lazy", "--set", "termlog_verbosity=warn"]
    cmd += ["--set", "kaixu_reload_ms=0"]
    cmd += ["--set", f"kaixu_port_file={port_file}", "--set", f"confdir={work / 'mitmproxy'}"]
    proc = spawn(pinned(cmd, GATEWAY_CPU), log, stack)
    wait_until(port_file.exists, proc, log, "kaixu-plugin")
    _host, port = json.loads(port_file.read_text())[0]
    return int(port), proc.pid


# --------------------------------------------------------------------------------------------------
# /proc sampling
# --------------------------------------------------------------------------------------------------


def family(pid: int) -> list[int]:
    """``pid`` and its child processes (`kaixu run --workers N`: the supervisor and its workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(int(child) for child in children)]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Current resident set size of ``pid`` and its children in MB (VmRSS is reported in kB); ``field``: another
    line of /proc/<pid>/status in kB (``RssAnon``: the heap's share)."""
    total = 0.0
    for member in family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                total += int(line.split()[1]) / 1024
                break
        else:
            raise BenchError(f"no {field} for pid {member}")
    return total


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live children; fields 14 and 15 of /proc/<pid>/stat, counted after
    the ``(comm)``."""
    total = 0
    for member in family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def rss_peak(pid: int | None, interval_s: float = 0.05) -> Iterator[list[float]]:
    """Sample VmRSS in a thread while the block runs; the yielded list holds the peak afterwards."""
    peak: list[float] = []
    if pid is None:
        yield peak
        return
    done = threading.Event()
    samples: list[float] = []

    def sample() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError, BenchError):
                samples.append(rss_mb(pid))
            done.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()
        peak.append(max(samples, default=0.0))


# --------------------------------------------------------------------------------------------------
# Load generation (wrk)
# --------------------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """wrk is a Debian package: install it on first use (as root, or through sudo) instead of vendoring it."""
    found = shutil.which("wrk")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and shutil.which("sudo") is None:
        raise BenchError("wrk is missing: install it with `apt-get install -y wrk` (needs root)")
    print("wrk not found: installing it with apt-get", file=sys.stderr)
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], check=True)
    found = shutil.which("wrk")
    if not found:
        raise BenchError("apt-get install wrk succeeded but wrk is not on PATH")
    return found


def lua_string(value: str) -> str:
    """A Lua string literal (JSON escaping is a valid subset for the ASCII we send)."""
    return json.dumps(value)


VALIDATE_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) good = 0; bad = 0 end
function response(status, headers, body)
  local ok = status == 200
  if ok and STREAM then
    local _, events = string.gsub(body, "data:", "")
    ok = events >= MIN_EVENTS and string.find(body, "[DONE]", 1, true) ~= nil
  elseif ok then
    ok = string.find(body, '"choices"', 1, true) ~= nil
  end
  if ok then good = good + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local g, b = 0, 0
  for _, t in ipairs(threads) do g = g + t:get("good"); b = b + t:get("bad") end
  io.write(string.format("kaixu-bench-validated good=%d bad=%d\\n", g, b))
end
"""
"""Appended to a wrk script: counts the answers that are not what was asked for (`check_clean` fails on any);
the script sets ``STREAM`` and ``MIN_EVENTS`` first (`validating_lua`)."""


def validating_lua(path: Path, key: str, stream: bool, extra: dict[str, str] | None = None) -> Path:
    """A wrk script that validates every answer: a 200 with ``choices``, or a stream of at least `SSE_EVENTS`
    events ending in ``[DONE]``."""
    write_lua(path, SSE_BODY if stream else SMALL_BODY, key, extra)
    head = f"STREAM = {'true' if stream else 'false'}\nMIN_EVENTS = {SSE_EVENTS}\n"
    path.write_text(head + path.read_text() + VALIDATE_LUA)
    return path


def write_lua(path: Path, body: dict[str, Any], key: str, extra: dict[str, str] | None = None) -> Path:
    """A wrk script: every request is the same keep-alive POST with a JSON body, a bearer key and ``extra``."""
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key, **(extra or {})}
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(json.dumps(body))}"]
    lines += [f"wrk.headers[{lua_string(name)}] = {lua_string(value)}" for name, value in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def to_ms(text: str) -> float:
    """wrk prints durations as 812.00us, 1.23ms, 2.01s or 1.50m."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise BenchError(f"cannot parse wrk duration {text!r}")
    return float(match[1]) * _UNIT_MS[match[2]]


def parse_wrk(output: str, connections: int, duration_s: float) -> WrkResult:
    """The numbers we need from ``wrk --latency`` output; a missing field is an error, not a zero."""

    def need(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output)
        if match is None:
            raise BenchError(f"wrk output lacks {pattern!r}:\n{output}")
        return match

    pct = {p: to_ms(need(rf"(?m)^\s+{p}%\s+(\S+)\s*$")[1]) for p in (50, 75, 90, 99)}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    counts = map(int, errors.groups()) if errors else (0, 0, 0, 0)  # wrk omits the line when all are 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    validated = re.search(r"kaixu-bench-validated good=(\d+) bad=(\d+)", output)
    return WrkResult(
        connections=connections,
        duration_s=duration_s,
        requests=int(need(r"(\d+) requests in")[1]),
        rps=float(need(r"Requests/sec:\s+([\d.]+)")[1]),
        p50_ms=pct[50],
        p75_ms=pct[75],
        p90_ms=pct[90],
        p99_ms=pct[99],
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=dict(zip(("connect", "read", "write", "timeout"), counts, strict=True)),
        invalid=int(validated[2]) if validated else 0,
    )


def run_wrk(
    wrk: str, url: str, lua: Path, connections: int, duration_s: float, fake_pid: int | None = None
) -> WrkResult:
    """One closed-loop wrk run (1 thread, keep-alive) on the load CPU; with ``fake_pid``, the CPU share the
    load side (wrk and the fake provider) took."""
    cmd = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(lua),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    fake_before = cpu_seconds(fake_pid) if fake_pid else 0.0
    started = time.monotonic()
    done = subprocess.run(pinned([*cmd, url], LOAD_CPU), capture_output=True, text=True, timeout=duration_s + 30)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = parse_wrk(done.stdout, connections, duration_s)
    if fake_pid:
        wrk_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        result.load_cpu_share = (wrk_cpu + cpu_seconds(fake_pid) - fake_before) / elapsed
    return result


def check_clean(name: str, result: WrkResult) -> None:
    """Every response must be a 2xx and no socket may fail, or the config measured an error path."""
    bad = result.non_2xx + sum(result.socket_errors.values()) + result.invalid
    if result.requests == 0 or bad:
        raise BenchError(
            f"{name} c={result.connections}: {result.requests} requests, {result.non_2xx} non-2xx, "
            f"{result.invalid} invalid bodies, "
            f"socket errors {result.socket_errors}: fix the config before trusting any number"
        )


# --------------------------------------------------------------------------------------------------
# Single requests: preflight and streaming
# --------------------------------------------------------------------------------------------------


def post(conn: http.client.HTTPConnection, body: dict[str, Any], key: str, extra: dict[str, str]) -> None:
    """Send one keep-alive POST on an open connection."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}", **extra}
    conn.request("POST", PATH, body=json.dumps(body).encode(), headers=headers)


def preflight(name: str, port: int, key: str, extra: dict[str, str] | None = None) -> None:
    """One real request before loading: a wrong key, path or route fails here with the body shown; ``extra``:
    headers the gateway needs (Portkey's provider and upstream)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        post(conn, SMALL_BODY, key, extra or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200 or b'"choices"' not in data:
        raise BenchError(f"{name}: preflight got HTTP {response.status}: {data[:500]!r}")


def stream_once(
    conn: http.client.HTTPConnection, key: str, extra: dict[str, str] | None = None
) -> tuple[float, float, int]:
    """One streamed completion: (ms to the first body bytes, ms to the end, number of SSE events)."""
    start = time.perf_counter()
    post(conn, SSE_BODY, key, extra or {})
    response = conn.getresponse()
    first = response.read1(65536)
    ttfb = time.perf_counter() - start
    rest = response.read()
    total = time.perf_counter() - start
    if response.status != 200:
        raise BenchError(f"stream got HTTP {response.status}: {(first + rest)[:500]!r}")
    return ttfb * 1000, total * 1000, (first + rest).count(b"data:")


def measure_sse(
    name: str, port: int, key: str, requests: int, extra: dict[str, str] | None = None, timeout_s: float = 10
) -> SseResult:
    """Sequential streams on one keep-alive connection (after 3 warm-up streams), reporting medians."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    ttfbs: list[float] = []
    totals: list[float] = []
    events = 0
    try:
        for index in range(requests + 3):
            ttfb, total, events = stream_once(conn, key, extra)
            if events < SSE_EVENTS:
                raise BenchError(f"{name}: stream carried {events} events, expected at least {SSE_EVENTS}")
            if index >= 3:
                ttfbs.append(ttfb)
                totals.append(total)
    finally:
        conn.close()
    return SseResult(
        requests=requests,
        events_per_response=events,
        ttfb_ms_median=statistics.median(ttfbs),
        total_ms_median=statistics.median(totals),
        ttfb_ms_p90=statistics.quantiles(ttfbs, n=10)[-1],
        total_ms_p90=statistics.quantiles(totals, n=10)[-1],
    )


# --------------------------------------------------------------------------------------------------
# One configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """How long to load each configuration."""

    warmup_s: float
    measure_s: float
    sse_requests: int
    rounds: int = 0
    """With rounds: only JSON and 50-event streams at c=32, the configurations taking turns (`run_rounds`)."""


def measure(
    name: str, port: int, pid: int | None, key: str, wrk: str, lua: Path, plan: Plan, fake_pid: int | None = None
) -> ConfigResult:
    """Preflight, then c=1 and c=32 load (warm-up, measured run), then the sequential streams."""
    url = f"http://{HOST}:{port}{PATH}"
    preflight(name, port, key)
    result = ConfigResult(name, rss_idle_mb=rss_mb(pid) if pid else None)
    for connections in CONCURRENCIES:
        check_clean(name, run_wrk(wrk, url, lua, connections, plan.warmup_s))
        cpu_before = cpu_seconds(pid) if pid else 0.0
        with rss_peak(pid if connections == max(CONCURRENCIES) else None) as peak:
            run = run_wrk(wrk, url, lua, connections, plan.measure_s, fake_pid)
        check_clean(name, run)
        if pid:
            run.gateway_cpu_ms_per_req = (cpu_seconds(pid) - cpu_before) * 1000 / run.requests
        if peak:
            result.rss_peak_mb = peak[0]
        result.load[connections] = run
        print(f"  {name} c={connections}: {run.rps:,.0f} req/s, p50 {run.p50_ms:.2f} ms", file=sys.stderr)
    result.sse = measure_sse(name, port, key, plan.sse_requests)
    return result


Starter = Callable[[Path, int, contextlib.ExitStack], tuple[int, int]]


def gateways(baseline: Path | None) -> list[tuple[str, Starter, str]]:
    """(name, starter, key) of every configuration behind a gateway, in the order they are measured."""
    configs: list[tuple[str, Starter, str]] = [
        ("mitmdump", start_mitmdump, UPSTREAM_KEY),
        ("kaixu", lambda work, port, stack: start_kaixu(work / "kaixu", port, stack), CLIENT_KEY),
        ("kaixu-plugin", lambda work, port, stack: start_kaixu_plugin(work / "plugin", port, stack), CLIENT_KEY),
        (
            "kaixu-2w",
            lambda work, port, stack: start_kaixu(work / "kaixu-2w", port, stack, args=WORKERS_2, cpus=ALL_CPUS),
            CLIENT_KEY,
        ),
        (
            "kaixu-2cpu",
            lambda work, port, stack: start_kaixu(work / "kaixu-2cpu", port, stack, cpus=ALL_CPUS),
            CLIENT_KEY,
        ),
    ]
    if baseline is not None:
        configs.append(
            (
                "kaixu-baseline",
                lambda work, port, stack: start_kaixu(work / "baseline", port, stack, tree=baseline),
                CLIENT_KEY,
            )
        )
    return configs


def run_all(plan: Plan, only: set[str], baseline: Path | None = None) -> list[ConfigResult]:
    """Start the fake once, then each configuration in turn (stopping it before the next)."""
    wrk = ensure_wrk()
    results: list[ConfigResult] = []
    with tempfile.TemporaryDirectory(prefix="kaixu-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        fake_port = start_fake(work, stack)
        upstream_lua = write_lua(work / "upstream.lua", SMALL_BODY, UPSTREAM_KEY)
        kaixu_lua = write_lua(work / "kaixu.lua", SMALL_BODY, CLIENT_KEY)
        if "direct" in only:
            print("measuring direct", file=sys.stderr)
            results.append(
                measure("direct", fake_port, None, UPSTREAM_KEY, wrk, upstream_lua, plan, FAKE_PIDS.get(fake_port))
            )
        for name, starter, key in gateways(baseline):
            if name not in only:
                continue
            print(f"measuring {name}", file=sys.stderr)
            lua = upstream_lua if key == UPSTREAM_KEY else kaixu_lua
            with contextlib.ExitStack() as config_stack:
                port, pid = starter(work, fake_port, config_stack)
                results.append(measure(name, port, pid, key, wrk, lua, plan, FAKE_PIDS.get(fake_port)))
    return results


@dataclass
class Round:
    """One turn of one configuration in one scenario of `run_rounds`."""

    name: str
    round: int
    rps: float
    cpu_ms_per_req: float
    load_cpu_share: float | None
    loadavg: float
    scenario: str = "json"


ROUND_SCENARIOS = (("json", False), ("stream", True))
"""What `run_rounds` loads at c=32: a small JSON completion, and a 50-event stream (`SSE_BODY`)."""


def run_rounds(plan: Plan, only: set[str], baseline: Path | None = None) -> list[Round]:
    """Interleaved A/B on a machine other work shares: every configuration runs at once (idle but for its
    turn), and they take turns at JSON c=32 and at 50-event streams c=32 for `plan.measure_s` each, the order
    reversed every round, so a change of the machine's load falls on all of them alike. Every answer is
    validated. Compare the ratios within a round."""
    wrk = ensure_wrk()
    turns: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="kaixu-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        fake_port = start_fake(work, stack)
        luas = {stream: validating_lua(work / f"kaixu-{scenario}.lua", CLIENT_KEY, stream)
                for scenario, stream in ROUND_SCENARIOS}  # fmt: skip
        running = []
        for name, starter, key in gateways(baseline):
            if name in only and key == CLIENT_KEY:
                port, pid = starter(work, fake_port, stack)
                preflight(name, port, key)
                for lua in luas.values():
                    check_clean(name, run_wrk(wrk, f"http://{HOST}:{port}{PATH}", lua, 32, plan.warmup_s))
                running.append((name, port, pid))
        for index in range(plan.rounds):
            for scenario, stream in ROUND_SCENARIOS:
                for name, port, pid in running if index % 2 == 0 else running[::-1]:
                    url = f"http://{HOST}:{port}{PATH}"
                    check_clean(name, run_wrk(wrk, url, luas[stream], 32, min(plan.warmup_s, 1.0)))
                    before = cpu_seconds(pid)
                    run = run_wrk(wrk, url, luas[stream], 32, plan.measure_s, FAKE_PIDS.get(fake_port))
                    check_clean(name, run)
                    cpu = (cpu_seconds(pid) - before) * 1000 / run.requests
                    turns.append(Round(name, index, run.rps, cpu, run.load_cpu_share, os.getloadavg()[0], scenario))
                    print(
                        f"  round {index} {scenario} {name}: {run.rps:,.0f}/s, {cpu:.2f} CPU ms each "
                        f"(load {turns[-1].loadavg:.1f})",
                        file=sys.stderr,
                    )
    return turns


def rounds_report(turns: list[Round], plan: Plan) -> str:
    """Per scenario and configuration: median requests (or streams)/s and CPU per request (or stream), and the
    ratios to the first configuration within each round (median, and the lowest and highest round)."""
    names = list(dict.fromkeys(t.name for t in turns))
    first = names[0]
    by_round = {(t.scenario, t.name, t.round): t for t in turns}
    loads = [t.loadavg for t in turns]
    lines = [
        f"{machine_line(machine(), plan).partition('; ')[0]}; {plan.warmup_s:g} s warm-up, then {plan.rounds} rounds "
        f"of {plan.measure_s:g} s per configuration and scenario at c=32 (JSON, then 50-event streams), turns "
        f"reversed every round; every answer validated; load average {min(loads):.1f}-{max(loads):.1f} during "
        "the turns.",
        "",
        f"| scenario | config | /s (median) | CPU ms each (median) | load side's CPU (cores) | /s vs {first} "
        f"| CPU vs {first} |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for scenario in dict.fromkeys(t.scenario for t in turns):
        for name in names:
            own = [t for t in turns if t.name == name and t.scenario == scenario]
            rps = sorted(t.rps / by_round[(scenario, first, t.round)].rps for t in own)
            cpu = sorted(t.cpu_ms_per_req / by_round[(scenario, first, t.round)].cpu_ms_per_req for t in own)
            shares = [t.load_cpu_share for t in own if t.load_cpu_share is not None]
            lines.append(
                f"| {scenario} | {name} | {statistics.median(t.rps for t in own):,.0f} "
                f"| {statistics.median(t.cpu_ms_per_req for t in own):.2f} "
                f"| {statistics.median(shares) if shares else 0:.2f} "
                f"| {statistics.median(rps):.2f}x ({rps[0]:.2f}-{rps[-1]:.2f}) "
                f"| {statistics.median(cpu):.2f}x ({cpu[0]:.2f}-{cpu[-1]:.2f}) |"
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------


def by_name(results: list[ConfigResult]) -> dict[str, ConfigResult]:
    return {r.name: r for r in results}


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results: list[ConfigResult]) -> str:
    """The markdown table: one row per configuration, added latency relative to direct."""
    direct = by_name(results).get("direct")
    base = direct.load.get(1) if direct else None
    base_sse = direct.sse if direct else None
    head = (
        "| config | req/s c=1 | p50 / p99 ms c=1 | added p50 / p99 ms c=1 | req/s c=32 | p50 / p99 ms c=32 "
        "| SSE first byte ms | SSE total ms | peak RSS MB | CPU ms/req c=32 |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in results:
        c1, c32, sse = r.load[1], r.load[32], r.sse
        added = "-"
        if base and r.name != "direct":
            added = f"{c1.p50_ms - base.p50_ms:+.2f} / {c1.p99_ms - base.p99_ms:+.2f}"
        sse_first = sse_total = "-"
        if sse:
            sse_first, sse_total = fmt(sse.ttfb_ms_median), fmt(sse.total_ms_median)
            if base_sse and r.name != "direct":
                sse_first += f" ({sse.ttfb_ms_median - base_sse.ttfb_ms_median:+.2f})"
                sse_total += f" ({sse.total_ms_median - base_sse.total_ms_median:+.2f})"
        rows.append(
            f"| {r.name} | {c1.rps:,.0f} | {c1.p50_ms:.2f} / {c1.p99_ms:.2f} | {added} | {c32.rps:,.0f} "
            f"| {c32.p50_ms:.1f} / {c32.p99_ms:.1f} | {sse_first} | {sse_total} | {fmt(r.rss_peak_mb, 0)} "
            f"| {fmt(c32.gateway_cpu_ms_per_req)} |"
        )
    return head + "\n".join(rows) + "\n"


def targets(results: list[ConfigResult]) -> list[Target]:
    """PASS/FAIL against the stated goals (only those whose inputs were measured in this run)."""
    named = by_name(results)
    kaixu, mitm, direct = named.get("kaixu"), named.get("mitmdump"), named.get("direct")
    out: list[Target] = []
    if kaixu and mitm:
        ratio = kaixu.load[32].rps / mitm.load[32].rps
        goal = f"≥ {TARGET_THROUGHPUT_RATIO}x bare mitmdump"
        out.append(Target("throughput c=32", goal, f"{ratio:.2f}x", ratio >= TARGET_THROUGHPUT_RATIO))
    if kaixu and direct:
        added = kaixu.load[1].p50_ms - direct.load[1].p50_ms
        goal = f"≤ {TARGET_ADDED_P50_MS} ms"
        out.append(Target("added p50 latency c=1", goal, f"{added:.2f} ms", added <= TARGET_ADDED_P50_MS))
    if kaixu and kaixu.rss_peak_mb is not None:
        rss = kaixu.rss_peak_mb
        out.append(Target("peak RSS under load", f"≤ {TARGET_RSS_MB:.0f} MB", f"{rss:.0f} MB", rss <= TARGET_RSS_MB))
    return out


def comparisons(results: list[ConfigResult]) -> str:
    """kaixu against the other ways of running kaixu measured in this run (before/after, script vs master)."""
    named = by_name(results)
    kaixu = named.get("kaixu")
    lines = []
    two = named.get("kaixu-2w")
    for one in (kaixu, named.get("kaixu-2cpu")):
        if one is None or two is None:
            continue
        load = " / ".join(f"{r.load[32].load_cpu_share:.2f}" for r in (one, two) if r.load[32].load_cpu_share)
        lines.append(
            f"* kaixu-2w vs {one.name}: {two.load[32].rps / one.load[32].rps:.2f}x the requests/s at c=32 "
            f"({two.load[1].rps / one.load[1].rps:.2f}x at c=1); the load generator (wrk and the fake) took "
            f"{load} of a core at c=32 ({one.name} / kaixu-2w)."
        )
    for other in ("kaixu-baseline", "kaixu-plugin"):
        row = named.get(other)
        if kaixu is None or row is None:
            continue
        ratio = kaixu.load[32].rps / row.load[32].rps
        added = kaixu.load[1].p50_ms - row.load[1].p50_ms
        lines.append(f"* kaixu vs {other}: {ratio:.2f}x the requests/s at c=32, {added:+.2f} ms p50 at c=1.")
    return "\n".join(lines) + "\n" if lines else ""


def targets_table(items: list[Target]) -> str:
    rows = [f"| {t.name} | {t.goal} | {t.measured} | {'PASS' if t.passed else 'FAIL'} |" for t in items]
    return "| target | goal | measured | result |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"


def machine() -> dict[str, str]:
    """What the numbers were measured on: they only compare within one run on one machine."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "mitmproxy": importlib.metadata.version("mitmproxy"),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "pinned": "yes" if can_pin() else "no",
    }


def machine_line(info: dict[str, str], plan: Plan) -> str:
    return (
        f"Measured {info['date']} on {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"mitmproxy {info['mitmproxy']}; pinned: {info['pinned']}; "
        f"{plan.warmup_s:g} s warm-up + {plan.measure_s:g} s per load level, {plan.sse_requests} streams."
    )


def report(results: list[ConfigResult], plan: Plan) -> str:
    info = machine()
    compared = comparisons(results)
    return (
        f"{machine_line(info, plan)}\n\n{table(results)}\n{compared + chr(10) if compared else ''}"
        f"{targets_table(targets(results))}"
    )


DOC_INTRO = """# Performance

kaixu is a chain of mitmproxy addons, so its cost is measured against two baselines: talking to the
provider directly, and a bare `mitmdump` reverse proxy (mitmdump's default addon set, no scripts).
`bench/overhead.py` measures all three in one run on the same machine, because cloud machines drift by
±20 % between runs: compare the rows of one table, not numbers from different days.

## Method

* Upstream: the fake provider (`tests/fakes/provider.py`), answering `POST /v1/chat/completions` with a
  small JSON completion, or, when asked to stream, an SSE stream of 50 content events (53 with the role,
  finish and `[DONE]` events).
* Load: `wrk -t1` with keep-alive connections, closed loop, 1 and 32 connections; each level gets a
  warm-up run and then a measured run. Every response must be a 200, or the run fails.
* Pinning (with 2+ CPUs): the gateway (mitmdump or kaixu) on CPU 1; wrk, the fake provider and the
  streaming client on CPU 0. The `direct` row is therefore limited by wrk and the fake sharing one CPU.
* kaixu runs as users run it (`python -m kaixu run policy.yaml`), with a virtual key it swaps for the
  provider's key, a route for `gpt-4o-mini` to an `openai`-kind provider, and hot reload off.

## Columns

* **req/s c=1 / c=32**: completed requests per second with 1 / 32 connections.
* **p50 / p99 ms**: wrk's latency percentiles at that load.
* **added p50 / p99 ms c=1**: the row's latency minus `direct`'s, unloaded: what the gateway adds to
  each request.
* **SSE first byte / total ms**: medians over sequential streamed requests (`"stream": true`, 50 events)
  of the time to the first body bytes and to the end of the stream, measured by a plain `http.client`
  loop on one keep-alive connection; in brackets, the difference to `direct`. Bare mitmdump buffers
  responses unless told to stream, so its first byte arrives at the end.
* **peak RSS MB**: the gateway process's highest VmRSS during the 32-connection run.
* **CPU ms/req c=32**: the gateway's user+system CPU time during the 32-connection run divided by the
  requests wrk completed.

## Rerun

`make bench` (it sets up the virtualenv and installs `wrk` with apt-get if it is missing); the
measurement itself takes about a minute. Raw numbers go to `bench/results/overhead-<timestamp>.json`,
and the section below is rewritten.

## Latest run

"""


def update_doc(
    text: str, begin: str = DOC_BEGIN, end: str = DOC_END, preamble: str = "", path: Path = DOC_PATH
) -> None:
    """Replace the section between ``begin`` and ``end`` of a docs page (docs/performance.md unless ``path``
    says otherwise), creating docs/performance.md with its intro if needed. Missing markers are appended at
    the end of the page, after ``preamble``."""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    current = path.read_text() if path.exists() else DOC_INTRO if path == DOC_PATH else ""
    if begin in current and end in current:
        before, _, rest = current.partition(begin)
        after = rest.partition(end)[2]
        current = before + block + after
    else:
        lead = preamble.strip("\n") + "\n\n" if preamble.strip() else ""
        current = current.rstrip("\n") + "\n\n" + lead + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(current)


def save_json(results: list[ConfigResult], plan: Plan) -> Path:
    """Raw results, including the percentiles and error counts the table leaves out."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"overhead-{stamp}.json"
    payload = {
        "machine": machine(),
        "plan": asdict(plan),
        "results": [asdict(r) for r in results],
        "targets": [asdict(t) for t in targets(results)],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


DEFAULT_CONFIGS = ("direct", "mitmdump", "kaixu", "kaixu-plugin", "kaixu-2w")


def parse_args(argv: list[str] | None) -> tuple[Plan, set[str], bool, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per load level")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per load level")
    parser.add_argument("--sse-requests", type=int, default=30, help="sequential streamed requests per config")
    parser.add_argument(
        "--only", help=f"comma-separated configs to run (default: {','.join(DEFAULT_CONFIGS)}, plus kaixu-baseline)"
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="another checkout (e.g. a git worktree of an older commit) run as kaixu-baseline",
    )
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/performance.md")
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="interleaved A/B: the kaixu configurations of --only take N turns each at JSON and 50-event streams, "
        "c=32 (no doc rewrite)",
    )
    args = parser.parse_args(argv)
    default = [*DEFAULT_CONFIGS, *(["kaixu-baseline"] if args.baseline_tree else [])]
    only = {name.strip() for name in (args.only or ",".join(default)).split(",") if name.strip()}
    if "kaixu-baseline" in only and args.baseline_tree is None:
        parser.error("kaixu-baseline needs --baseline-tree DIR")
    if args.baseline_tree is not None and not (args.baseline_tree / "kaixu" / "__init__.py").exists():
        parser.error(f"--baseline-tree {args.baseline_tree}: no kaixu package there")
    plan = Plan(args.warmup, args.duration, args.sse_requests, args.rounds)
    return plan, only, not args.no_doc and not args.rounds, args.baseline_tree


def main(argv: list[str] | None = None) -> int:
    plan, only, write_doc, baseline = parse_args(argv)
    # A SIGTERM (e.g. from a CI timeout) must unwind through the finally blocks that stop the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if can_pin():
        os.sched_setaffinity(0, {LOAD_CPU})  # the streaming client shares CPU 0 with wrk and the fake
    try:
        if plan.rounds:
            print(rounds_report(run_rounds(plan, only, baseline), plan))
            return 0
        results = run_all(plan, only, baseline)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    text = report(results, plan)
    print(text)
    print(f"raw results: {save_json(results, plan).relative_to(ROOT)}")
    if write_doc and only.issuperset(DEFAULT_CONFIGS):
        update_doc(text)
        print(f"updated {DOC_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
