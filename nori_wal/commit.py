"""Group-commit decisions: when to fsync and whom an fsync acknowledges (pure).

Rules:
1. A request is acknowledged only when ``synced_through`` is at or past its
   end (Always and Batch) or once it is written (Os).
2. Always: fsync as soon as there is unsynced data and no fsync is running.
3. Batch(window): at most one fsync per window; the deadline is a timer that
   fires even when nothing new arrives (Redis once left a tail unsynced).
4. Os: never fsync on our own.
"""

from __future__ import annotations

from .config import FsyncPolicy


def needs_fsync(policy: FsyncPolicy) -> bool:
    """Whether acks under ``policy`` wait for an fsync."""
    return policy.kind != "os"


def fsync_due_at(policy: FsyncPolicy, last_fsync_started: float, has_unsynced: bool) -> float | None:
    """The clock time the next fsync may start, or None when none is needed.

    ``last_fsync_started`` is the monotonic time the previous fsync began
    (-inf if none). Always: now. Batch: one window after the last one.
    """
    if not has_unsynced or policy.kind == "os":
        return None
    if policy.kind == "always":
        return float("-inf")
    return last_fsync_started + policy.window
