"""Stopping an agent's process with everything it started.

SIGINT to the CLI first: Claude Code then ends its tool commands itself and exits. SIGTERM would not: the Bash
tool runs each command in a process group (and session) of its own, which outlives the CLI, reparented to PID 1
(../shared/research/claude-cli.md section 5). So the tree is listed from /proc while the CLI lives (a child's
parent is known only until its parent dies), and whatever of it is left after a grace period is SIGKILLed with
its process group, each process checked by its start time so that a reused pid is never hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

STOP_GRACE_S = 1.0
"""After SIGINT, how long the CLI has to stop its tools and exit before the rest is killed."""


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_tree(root: int) -> list[tuple[int, str]]:
    """The descendants of ``root`` now (pid and start time, so a reused pid is never killed), from /proc:
    tool commands leave the CLI's process group, never its tree while it lives. Blocking: a worker thread."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: list[tuple[int, str]] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        started = _start_time(pid)
        if started is not None:
            found.append((pid, started))
        todo.extend(children.get(pid, []))
    return found


def kill_tree(tree: list[tuple[int, str]]) -> None:
    for pid, started in tree:
        if _start_time(pid) == started:
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


async def stop(proc: asyncio.subprocess.Process) -> None:
    """Stop a run with everything it started: SIGINT (the CLI ends its tools), then SIGKILL to the rest."""
    tree = await asyncio.to_thread(process_tree, proc.pid)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own group (start_new_session): pgid == pid
    await asyncio.to_thread(kill_tree, tree)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()
