"""What the log and the writer report as typed events (pure data: no meters, no I/O).

A Meter's ``event(e)`` receives one of these (see ``nori_wal.observe``); the
Prometheus exporter (``nori_wal.prometheus``) counts them by ``event_name``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class SegmentRoll:
    """The active segment was sealed at ``bytes`` and ``new_segment_id`` was created."""

    segment_id: int
    bytes: int
    new_segment_id: int


@dataclass(frozen=True)
class Fsync:
    """One fsync/fdatasync of a segment took ``ms`` milliseconds."""

    ms: float


@dataclass(frozen=True)
class CorruptionTruncated:
    """Recovery cut ``bytes`` of damaged or torn tail off ``segment`` at ``offset``.

    ``bytes`` is 0 when it cut nothing but found durable records gone (the log ends
    below the previous writer's durable mark, or the segment the mark names is gone):
    ``reason`` says which.
    """

    segment: int
    offset: int
    bytes: int
    reason: str = ""


@dataclass(frozen=True)
class FsyncFailed:
    """A write or fsync failed; the log stopped acknowledging (fail-stop)."""

    error: str


@dataclass(frozen=True)
class SegmentsDeleted:
    """Segment GC removed ``count`` segments below ``before_segment`` in ``ms`` milliseconds."""

    count: int
    before_segment: int
    ms: float


Event = Union[SegmentRoll, Fsync, CorruptionTruncated, FsyncFailed, SegmentsDeleted]


EVENT_TYPES: tuple[type, ...] = (SegmentRoll, Fsync, CorruptionTruncated, FsyncFailed, SegmentsDeleted)
"""Every event type the log and the writer emit (their class names label ``wal_events_total``)."""


def event_name(event: Event) -> str:
    """The event's type name (``"SegmentRoll"``, ``"Fsync"``, ...), as metrics label it."""
    return type(event).__name__


__all__ = [
    "EVENT_TYPES",
    "CorruptionTruncated",
    "Event",
    "Fsync",
    "FsyncFailed",
    "SegmentRoll",
    "SegmentsDeleted",
    "event_name",
]
