"""One of the OS processes racing on one SQLite counters file (tests/limits/test_counters.py).

Prints `ready`, waits for a line on stdin (so that both processes start their burst together), reserves
`n` times at once, prints how many were admitted while all of them are still held, then settles them and
prints `settled`. Usage: python -m tests.counters_race DB CAP AMOUNT N
"""

from __future__ import annotations

import asyncio
import sys

from kaixu.limits import Reservation
from kaixu.limits.sqlite_counters import SqliteCounters

SCOPE = "key:race:total"


async def main(path: str, cap: int, amount: int, n: int) -> None:
    counters = await SqliteCounters(path, busy_timeout_s=30).open()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    answers = await asyncio.gather(*(counters.reserve([SCOPE], amount, [cap], 60) for _ in range(n)))
    held = [answer for answer in answers if isinstance(answer, Reservation)]
    print(f"admitted {len(held)}", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    for reservation in held:
        await counters.settle(reservation, amount)
    print("settled", flush=True)
    await counters.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
