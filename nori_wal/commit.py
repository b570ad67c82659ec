"""Group-commit decisions: when to fsync and whom an fsync acknowledges (pure).

Rules:
1. A request is acknowledged only when ``synced_through`` is at or past its
   end (Always and Batch) or once it is written (Os).
2. Always: fsync as soon as there is unsynced data and no fsync is running.
3. Batch(window): at most one fsync per window; the deadline is a timer that
   fires even when nothing new arrives (Redis once left a tail unsynced).
4. Os: never fsync on our own.
5. A SYNC request forces an fsync now, whatever the policy, and is answered
   once everything written before it is durable.
6. Only one fsync runs at a time; what is written while it runs waits for the
   next one, which starts as soon as the running one ends (group commit with
   no added delay: take whatever arrived, as RocksDB and PostgreSQL do).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

from .config import FsyncPolicy
from .position import Position, make_position

T = TypeVar("T")
_NEVER = make_position((-1, -1))  # below every real position (unchecked: negative on purpose)


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


class GroupCommit(Generic[T]):
    """The writer's commit state: requests written but not yet acknowledged, and the fsync clock.

    The writer loop (a thin shell) tells it what happened -- a request was
    written up to ``end``, an fsync started, an fsync made everything before
    ``durable`` durable -- and asks what to do: ``fsync_due`` (when to start
    the next fsync) and which tickets to acknowledge. Tickets are opaque.
    Request ends arrive in non-decreasing order: the log is written in order.
    """

    def __init__(self, policy: FsyncPolicy, durable: Position):
        self.policy = policy
        self.durable = durable
        self.in_flight = False
        self.last_fsync_started = float("-inf")
        self._waiting: deque[tuple[Position, list[T]]] = deque()  # (end, the tickets that need it durable)
        self._count = 0
        self._forced_end = _NEVER  # the end of the latest SYNC request still waiting (Rule 5)
        self._acks_wait = needs_fsync(policy)

    @property
    def waiting(self) -> int:
        """Requests written and not yet acknowledged."""
        return self._count

    def written(self, end: Position, ticket: T) -> bool:
        """A request's bytes are written up to ``end``; True when it can be acknowledged now (Os)."""
        return self.written_group(end, [ticket])

    def written_group(self, end: Position, tickets: list[T]) -> bool:
        """Requests whose bytes all end by ``end`` are written; True when they can be acknowledged now (Os).

        One entry for a whole written group: the writer's per-request cost stays out of here.
        """
        if not self._acks_wait or end <= self.durable:
            return True
        self._waiting.append((end, tickets))
        self._count += len(tickets)
        return False

    def sync_requested(self, end: Position, ticket: T) -> bool:
        """A SYNC request arrived when the log ended at ``end``; True when it is already satisfied."""
        if end <= self.durable:
            return True
        self._waiting.append((end, [ticket]))
        self._count += 1
        self._forced_end = max(self._forced_end, end)
        return False

    def fsync_due(self) -> float | None:
        """Monotonic time the next fsync should start (-inf: now), or None when none is needed."""
        if self.in_flight or not self._waiting:
            return None
        if self._forced_end > self.durable:
            return float("-inf")
        return fsync_due_at(self.policy, self.last_fsync_started, True)

    def fsync_started(self, now: float) -> None:
        self.in_flight = True
        self.last_fsync_started = now

    def fsync_done(self, durable: Position) -> list[T]:
        """The fsync ended with everything before ``durable`` durable: the tickets to acknowledge, in order."""
        self.in_flight = False
        self.durable = max(self.durable, durable)
        w = self._waiting
        if w and w[-1][0] <= self.durable:  # the usual case: the fsync covers every group
            acked = w[0][1] if len(w) == 1 else [t for _, ts in w for t in ts]
            w.clear()
        else:
            acked = []
            while w and w[0][0] <= self.durable:
                acked += w.popleft()[1]
        self._count -= len(acked)
        return acked

    def fail_all(self) -> list[T]:
        """Everything still waiting (to be answered with an error: a write or fsync failed)."""
        out = [t for _, ts in self._waiting for t in ts]
        self._waiting.clear()
        self._count = 0
        self.in_flight = False
        return out


def overlap_fsync(enabled: bool, arrived_during_last: bool) -> bool:
    """Whether the next fsync runs in the flush thread (overlapping receive and write) or inline.

    Overlap pays two thread hand-offs and a wake-up of the loop for every
    request that arrives during the fsync, to receive, validate and write the
    next group while the fsync runs (``os.fdatasync`` releases the GIL). On the
    two-core reference machine it lost 25-30% at 8 and 32 synchronous
    producers and tied in batch(100) (docs/PERFORMANCE.md, "The writer's flush
    thread"), so overlap is opt-in (``enabled``). When
    enabled it still runs inline until requests were seen arriving during an
    fsync: a lone synchronous producer never sends while its own fsync runs.
    """
    return enabled and arrived_during_last
