"""Vendor-neutral metrics and events: the Meter protocol and its no-op default.

The log and the writer report through a Meter; pick a backend (PrometheusMeter
in ``nori_wal.prometheus``, a RecordingMeter in tests, or your own) without
touching the log. Metric names carry their unit (``_ms``, ``_bytes``, ``_total``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union, runtime_checkable


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
    """Recovery cut ``bytes`` of damaged or torn tail off ``segment`` at ``offset``."""
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


@runtime_checkable
class Meter(Protocol):
    """Where the log reports: counters, histograms, gauges and typed events."""

    def counter(self, name: str, value: float = 1.0) -> None: ...
    def histogram(self, name: str, value: float) -> None: ...
    def gauge(self, name: str, value: float) -> None: ...
    def event(self, event: Event) -> None: ...


class NoopMeter:
    """The default meter: reports nowhere, costs a method call."""

    def counter(self, name: str, value: float = 1.0) -> None:
        pass

    def histogram(self, name: str, value: float) -> None:
        pass

    def gauge(self, name: str, value: float) -> None:
        pass

    def event(self, event: Event) -> None:
        pass


NOOP = NoopMeter()
