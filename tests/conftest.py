"""Shared test settings: hypothesis profiles, and the crash suite's summary line.

Hypothesis: CI runs the default profile, ``NORI_HYPOTHESIS=thorough`` runs more.

Crash tests add to ``COUNTS`` through the ``crash_counts`` fixture; the end of
the run prints e.g. ``crash states explored: 17068 (...); acknowledged records
lost: 0`` so the CI log shows what was explored. Under pytest-xdist each
worker sends its counts to the controller when it finishes (``workeroutput``),
which adds them up before printing.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("NORI_HYPOTHESIS", "default"))

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


def pytest_sessionfinish(session: pytest.Session) -> None:
    output = getattr(session.config, "workeroutput", None)  # set on an xdist worker only
    if output is not None:
        output["crash_counts"] = dict(COUNTS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    COUNTS.update(getattr(node, "workeroutput", {}).get("crash_counts", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    parts = [f"{label}: {COUNTS[key]}" for key, label in LINES if key in COUNTS]
    terminalreporter.write_sep("=", "crash suite")
    terminalreporter.write_line(", ".join(parts) + f"; acknowledged records lost: {COUNTS['lost']}")
