"""Retention: which segments a GC may delete, given the consumers' cursors (pure).

Rules:
1. GC deletes only segments below the requested position's segment, never
   the active (last) one, oldest first (``SegmentLog.delete_segments_before``).
2. A registered cursor holds its ``next`` segment (where it resumes) and
   every later one: a segment is deleted only when every cursor has
   committed past all its records. (Keeping the ``next`` segment even when
   ``next`` is its very end costs at most one segment and lets a consumer
   tell "deleted under me" from "finished" without reading anything.)
3. ``max_retained_bytes`` (None: no cap) bounds what cursors may hold back:
   while the log would stay larger than it, the oldest held segment the GC
   was asked to delete goes anyway, and every cursor that needed it is
   expired (recorded durably before the deletion).
4. A damaged cursor file holds everything (its position is unknown), and
   so does an expired cursor nothing: it holds no segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .position import Position
from .segment import HEADER_SIZE


@dataclass(frozen=True)
class Hold:
    """A cursor's claim: it still needs segment ``next.segment_id`` on (``next``: where it resumes)."""

    name: str
    next: Position


@dataclass(frozen=True)
class Expired:
    """A cursor retention expires: records from ``lost_from`` up to ``resumes_at`` go before it read them."""

    name: str
    lost_from: Position
    resumes_at: Position


@dataclass(frozen=True)
class GcPlan:
    """What one GC call does: segments to delete, segments kept for cursors, cursors expired."""

    delete: list[int]
    held_back: list[int] = field(default_factory=list)  # asked for, kept for cursors
    held_by: list[Hold] = field(default_factory=list)  # the cursors that kept them
    expire: list[Expired] = field(default_factory=list)

    def describe(self, before: Position) -> str | None:
        """One line naming what held GC back and what expired; None when nothing did."""
        parts = []
        if self.held_back:
            who = ", ".join(f"consumer {h.name!r} at {h.next}" for h in self.held_by)
            parts.append(
                f"GC before {before} kept segments {self.held_back[0]}..{self.held_back[-1]} "
                f"({len(self.held_back)}): held back by {who} (not committed past them)"
            )
        for e in self.expire:
            parts.append(
                f"consumer {e.name!r} expired by max_retained_bytes: records from {e.lost_from} up to "
                f"{e.resumes_at} deleted before it committed them"
            )
        return "; ".join(parts) or None


def plan_gc(
    segments: list[tuple[int, int]],
    before: Position,
    holds: list[Hold],
    max_retained_bytes: int | None = None,
) -> GcPlan:
    """Plan a GC of ``segments`` ((id, size in bytes), ascending; the last is active) before ``before``."""
    ids = [sid for sid, _ in segments]
    wanted = [sid for sid in ids[:-1] if sid < before.segment_id]  # Rule 1
    floor = min((h.next.segment_id for h in holds), default=None)
    allowed = [sid for sid in wanted if floor is None or sid < floor]  # Rule 2
    held = wanted[len(allowed) :]
    if max_retained_bytes is not None and held:  # Rule 3
        size = dict(segments)
        total = sum(size.values()) - sum(size[s] for s in allowed)
        forced = 0
        while forced < len(held) and total > max_retained_bytes:
            total -= size[held[forced]]
            forced += 1
        allowed, held = allowed + held[:forced], held[forced:]
    expire = []
    if allowed and floor is not None and floor <= allowed[-1]:
        after = ids[ids.index(allowed[-1]) + 1]
        resumes_at = Position(after, HEADER_SIZE)
        expire = [Expired(h.name, h.next, resumes_at) for h in holds if h.next.segment_id <= allowed[-1]]
    gone = {e.name for e in expire}
    holders = [h for h in holds if held and h.next.segment_id <= held[-1] and h.name not in gone]
    return GcPlan(allowed, held, sorted(holders, key=lambda h: (h.next, h.name)), expire)
