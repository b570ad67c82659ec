"""Crash-suite counters, printed at the end of the run so the CI log shows what was explored.

Tests add to ``COUNTS`` through the ``crash_counts`` fixture; the summary line reads e.g.
``crash states explored: 17068 (8204 distinct disk images recovered), acknowledged records lost: 0``.
"""

from __future__ import annotations

from collections import Counter

import pytest

COUNTS: Counter[str] = Counter()

# (counter key, label in the summary) in the order they print.
LINES = [
    ("crash_states", "crash states explored"),
    ("crash_images", "distinct disk images recovered"),
    ("recovery_crash_states", "crashes during recovery explored"),
    ("fault_cases", "injected EIO/ENOSPC failures checked"),
    ("fuzz_segments", "fuzzed segment files recovered/read"),
    ("kills", "SIGKILLs survived"),
    ("torture_acked", "records acknowledged under SIGKILL"),
    ("reader_records", "records read during kills"),
    ("malformed", "malformed messages rejected"),
]


@pytest.fixture
def crash_counts() -> Counter[str]:
    return COUNTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    parts = [f"{label}: {COUNTS[key]}" for key, label in LINES if key in COUNTS]
    terminalreporter.write_sep("=", "crash suite")
    terminalreporter.write_line(", ".join(parts) + f"; acknowledged records lost: {COUNTS['lost']}")
