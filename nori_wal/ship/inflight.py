"""The publish window: which positions are in flight, which are acknowledged, what may be committed (pure).

Rules:
1. Positions are sent in strictly increasing order; each send takes the next
   stream sequence number (the one JetStream will give the message if nothing
   else lands in between), which the shell sends as ``Nats-Expected-Last-Sequence``
   = sequence - 1.
2. Acks arrive in any order. ``committable`` is the highest position whose
   every predecessor sent in this window was acknowledged (or skipped): the
   only position the cursor may be committed to.
3. At most ``limit`` sends are unacknowledged at once (``room``).
4. ``reset`` forgets the unacknowledged sends (after a failure) and returns
   them in order, for the shell to re-send after it re-read the stream.

No clocks, no I/O: ``CommitClock`` decides when to commit from counts and a
time the caller passes in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Optional, TypeVar

from ..position import Position

T = TypeVar("T")


class InFlight(Generic[T]):
    """Publishes in flight, keyed by their expected stream sequence (see the module's rules)."""

    def __init__(self, limit: int, next_seq: int = 1) -> None:
        if limit < 1:
            raise ValueError(f"in-flight limit must be at least 1, not {limit}")
        self.limit = limit
        self.next_seq = next_seq
        self._pending: dict[int, tuple[Position, T]] = {}  # insertion order == seq order
        self._acked: set[int] = set()
        self._last_sent: Optional[Position] = None
        self.committable: Optional[Position] = None

    @property
    def in_flight(self) -> int:
        return len(self._pending) - len(self._acked)

    @property
    def room(self) -> int:
        """How many more sends fit under the limit (acked sends still waiting for a slower predecessor count)."""
        return max(0, self.limit - len(self._pending))

    def _check_order(self, position: Position) -> None:
        if self._last_sent is not None and position <= self._last_sent:
            raise ValueError(f"position {position} sent after {self._last_sent}: positions must increase")
        self._last_sent = position

    def send(self, position: Position, item: T) -> int:
        """Record a publish of ``position``; returns its sequence number."""
        if not self.room:
            raise OverflowError(f"{self.limit} publishes already in flight")
        self._check_order(position)
        seq = self.next_seq
        self.next_seq += 1
        self._pending[seq] = (position, item)
        return seq

    def skip(self, position: Position) -> None:
        """``position`` is already in the stream: count it as acknowledged without a publish."""
        if self._pending:
            raise ValueError("skip only with nothing in flight (skipped positions precede every send)")
        self._check_order(position)
        self.committable = position

    def ack(self, seq: int) -> int:
        """Acknowledge publish ``seq``; returns how many positions became committable (0: unknown or repeated)."""
        if seq not in self._pending or seq in self._acked:
            return 0
        self._acked.add(seq)
        moved = 0
        while self._pending:
            first = next(iter(self._pending))
            if first not in self._acked:
                break
            self.committable = self._pending.pop(first)[0]
            self._acked.discard(first)
            moved += 1
        return moved

    def reset(self, next_seq: int) -> list[tuple[Position, T]]:
        """Forget every send not yet committable; return them in order, to re-send; numbering restarts at ``next_seq``.

        Acknowledged sends behind an unacknowledged one are returned too: the
        shell re-reads the stream and skips whatever it already holds.
        """
        redo = list(self._pending.values())
        self._pending.clear()
        self._acked.clear()
        self.next_seq = next_seq
        self._last_sent = self.committable
        return redo


@dataclass
class CommitClock:
    """When to commit the cursor: after ``every`` newly committable records, or ``interval`` seconds after the first.

    Committing per message would put an fsync behind every publish; batching
    bounds both the fsync rate and how much a crash re-sends.
    """

    every: int = 1000
    interval: float = 0.2
    _since: int = 0
    _first_at: Optional[float] = None

    def advanced(self, count: int, now: float) -> None:
        """``count`` more records became committable at time ``now``."""
        if count > 0:
            self._since += count
            if self._first_at is None:
                self._first_at = now

    def due(self, now: float) -> bool:
        if self._since == 0 or self._first_at is None:
            return False
        return self._since >= self.every or now - self._first_at >= self.interval

    def committed(self) -> None:
        self._since = 0
        self._first_at = None
