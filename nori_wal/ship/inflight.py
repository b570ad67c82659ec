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

from collections import deque
from dataclasses import dataclass
from typing import Generic, Optional, TypeVar

from ..position import Position

T = TypeVar("T")


class InFlight(Generic[T]):
    """Publishes in flight, keyed by their expected stream sequence (see the module's rules).

    The sends not yet committable are a run of consecutive sequence numbers
    (``_first`` .. ``next_seq - 1``) kept in a deque, so an ack is a range
    check and a set insert, and the committable prefix pops from the left.
    """

    def __init__(self, limit: int, next_seq: int = 1) -> None:
        if limit < 1:
            raise ValueError(f"in-flight limit must be at least 1, not {limit}")
        self.limit = limit
        self.next_seq = next_seq
        self._first = next_seq  # the sequence of _pending[0]
        self._pending: deque[tuple[Position, T]] = deque()
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

    def oldest(self) -> Optional[T]:
        """The item of the oldest unacknowledged send (None with nothing in flight)."""
        return self._pending[0][1] if self._pending else None

    def get(self, seq: int) -> Optional[T]:
        """The item of send ``seq`` while it is not committable (None otherwise)."""
        index = seq - self._first
        return self._pending[index][1] if 0 <= index < len(self._pending) else None

    def _check_order(self, position: Position) -> None:
        if self._last_sent is not None and position <= self._last_sent:
            raise ValueError(f"position {position} sent after {self._last_sent}: positions must increase")
        self._last_sent = position

    def send(self, position: Position, item: T) -> int:
        """Record a publish of ``position``; returns its sequence number."""
        if len(self._pending) >= self.limit:
            raise OverflowError(f"{self.limit} publishes already in flight")
        self._check_order(position)
        seq = self.next_seq
        self.next_seq = seq + 1
        self._pending.append((position, item))
        return seq

    def skip(self, position: Position) -> None:
        """``position`` is already in the stream: count it as acknowledged without a publish."""
        if self._pending:
            raise ValueError("skip only with nothing in flight (skipped positions precede every send)")
        self._check_order(position)
        self.committable = position

    def ack(self, seq: int) -> int:
        """Acknowledge publish ``seq``; returns how many positions became committable (0: unknown or repeated)."""
        first = self._first
        if seq < first or seq >= self.next_seq or seq in self._acked:
            return 0
        if seq != first:  # a slower predecessor is still out: wait for it
            self._acked.add(seq)
            return 0
        pending, acked = self._pending, self._acked
        position = pending.popleft()[0]
        first += 1
        while pending and first in acked:
            acked.discard(first)
            position = pending.popleft()[0]
            first += 1
        moved = first - self._first
        self._first = first
        self.committable = position
        return moved

    def reset(self, next_seq: int) -> list[tuple[Position, T]]:
        """Forget every send not yet committable; return them in order, to re-send; numbering restarts at ``next_seq``.

        Acknowledged sends behind an unacknowledged one are returned too: the
        shell re-reads the stream and skips whatever it already holds.
        """
        redo = list(self._pending)
        self._pending.clear()
        self._acked.clear()
        self.next_seq = self._first = next_seq
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
