"""bench/overhead.py --rounds: per scenario (JSON, 50-event streams), each configuration's ratios to the first one
are taken within a round, never across rounds (the machine's load moves between them)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import overhead
from overhead import Round


def test_ratios_are_taken_within_each_round_per_scenario() -> None:
    turns = [
        # round 0: the machine is slow, round 1 fast; the plugin costs 1.1x, then 1.3x kaixu's CPU per stream
        Round("kaixu", 0, 100.0, 2.0, 0.1, 4.0, "json"),
        Round("kaixu-plugin", 0, 50.0, 4.0, 0.1, 4.0, "json"),
        Round("kaixu", 1, 400.0, 1.0, 0.1, 1.0, "json"),
        Round("kaixu-plugin", 1, 200.0, 2.0, 0.1, 1.0, "json"),
        Round("kaixu", 0, 50.0, 10.0, 0.2, 4.0, "stream"),
        Round("kaixu-plugin", 0, 40.0, 11.0, 0.2, 4.0, "stream"),
        Round("kaixu", 1, 200.0, 3.0, 0.2, 1.0, "stream"),
        Round("kaixu-plugin", 1, 150.0, 3.9, 0.2, 1.0, "stream"),
    ]
    text = overhead.rounds_report(turns, overhead.Plan(1.0, 4.0, 0, rounds=2))
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in text.splitlines() if "| kaixu" in line
    }
    assert rows[("json", "kaixu-plugin")].endswith("| 0.50x (0.50-0.50) | 2.00x (2.00-2.00) |")
    assert rows[("stream", "kaixu-plugin")].endswith("| 0.78x (0.75-0.80) | 1.20x (1.10-1.30) |")
    assert rows[("stream", "kaixu")].endswith("| 1.00x (1.00-1.00) | 1.00x (1.00-1.00) |")
