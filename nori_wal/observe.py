"""Vendor-neutral metrics and events: the Meter protocol and its no-op default.

The log and the writer report through a Meter; pick a backend (PrometheusMeter
in ``nori_wal.prometheus``, also reachable as ``nori_wal.observe.PrometheusMeter``,
loaded on first use;
a RecordingMeter in tests; a TeeMeter to report to several; or your own class
with the four methods) without touching the log. Metric names carry their unit
(``_ms``, ``_bytes``, ``_total``).

What the log reports (see docs/CLI.md for the Prometheus view):

    counters    wal_records_total, wal_bytes_total, wal_segment_rolls_total,
                wal_segments_deleted_total, wal_recovery_truncated_bytes_total,
                wal_io_failures_total; the writer process adds wal_replies_dropped_total
    histograms  wal_fsync_ms, wal_gc_latency_ms, wal_recovery_ms; the writer process
                adds wal_group_records, wal_group_bytes, wal_ack_latency_ms
    gauges      wal_segment_count
    events      SegmentRoll, Fsync, CorruptionTruncated, FsyncFailed, SegmentsDeleted
                (defined in ``nori_wal.events``, re-exported here)

A meter is called on the append path: it must be cheap and must not raise.
The log wraps the meter it is given in a ``GuardedMeter``, so one that does
raise anyway is dropped from, never raised into, the log: the log reports after
the fact (a record counted after its write), and an exception there would turn
a durable append into an error its caller retries, writing the record twice.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol, TypeVar, runtime_checkable

# The events live in their own module (the exporter needs them, not the meters); re-exported here.
from .events import EVENT_TYPES as EVENT_TYPES
from .events import CorruptionTruncated as CorruptionTruncated
from .events import Event as Event
from .events import Fsync as Fsync
from .events import FsyncFailed as FsyncFailed
from .events import SegmentRoll as SegmentRoll
from .events import SegmentsDeleted as SegmentsDeleted
from .events import event_name as event_name

E = TypeVar("E", SegmentRoll, Fsync, CorruptionTruncated, FsyncFailed, SegmentsDeleted)


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


class RecordingMeter:
    """A meter that remembers everything it was told: for tests and for ``stats``-like tools.

    Thread-safe (the log reports from its appending and syncing threads). Counters
    are summed, histograms keep every observation, gauges keep the last value,
    events are kept in order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, float] = {}
        self.histograms: dict[str, list[float]] = {}
        self.gauges: dict[str, float] = {}
        self.events: list[Event] = []

    def counter(self, name: str, value: float = 1.0) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0.0) + value

    def histogram(self, name: str, value: float) -> None:
        with self._lock:
            self.histograms.setdefault(name, []).append(value)

    def gauge(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def event(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def count(self, name: str) -> float:
        """A counter's total so far (0 if it was never reported)."""
        with self._lock:
            return self.counters.get(name, 0.0)

    def observations(self, name: str) -> list[float]:
        """A copy of a histogram's observations (empty if none)."""
        with self._lock:
            return list(self.histograms.get(name, ()))

    def events_of(self, kind: type[E]) -> list[E]:
        """The events of one type, in the order they happened."""
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]

    def clear(self) -> None:
        """Forget everything (e.g. after a setup phase whose metrics a test does not count)."""
        with self._lock:
            self.counters.clear()
            self.histograms.clear()
            self.gauges.clear()
            self.events.clear()


class TeeMeter:
    """Reports to several meters at once (e.g. Prometheus plus a RecordingMeter)."""

    def __init__(self, *meters: Meter) -> None:
        self.meters: tuple[Meter, ...] = meters

    def counter(self, name: str, value: float = 1.0) -> None:
        for m in self.meters:
            m.counter(name, value)

    def histogram(self, name: str, value: float) -> None:
        for m in self.meters:
            m.histogram(name, value)

    def gauge(self, name: str, value: float) -> None:
        for m in self.meters:
            m.gauge(name, value)

    def event(self, event: Event) -> None:
        for m in self.meters:
            m.event(event)


_log = logging.getLogger(__name__)


class GuardedMeter:
    """Reports to ``meter``; a call that raises is dropped, with one warning per metric or event type.

    The log wraps every meter it is given in one (see the module docstring).
    """

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self._warned: set[str] = set()

    def counter(self, name: str, value: float = 1.0) -> None:
        try:
            self.meter.counter(name, value)
        except Exception as exc:
            self._dropped(f"counter {name}", exc)

    def histogram(self, name: str, value: float) -> None:
        try:
            self.meter.histogram(name, value)
        except Exception as exc:
            self._dropped(f"histogram {name}", exc)

    def gauge(self, name: str, value: float) -> None:
        try:
            self.meter.gauge(name, value)
        except Exception as exc:
            self._dropped(f"gauge {name}", exc)

    def event(self, event: Event) -> None:
        try:
            self.meter.event(event)
        except Exception as exc:
            self._dropped(f"event {event_name(event)}", exc)

    def _dropped(self, what: str, exc: Exception) -> None:
        if what not in self._warned:  # (a set add is atomic under the GIL: at worst two warnings)
            self._warned.add(what)
            _log.warning("meter %s failed on %s (dropped; the log goes on): %r", type(self.meter).__name__, what, exc)


def guard_meter(meter: Meter) -> Meter:
    """``meter`` wrapped so it never raises into the log (the no-op meter needs no guard)."""
    return meter if isinstance(meter, (NoopMeter, GuardedMeter)) else GuardedMeter(meter)


def __getattr__(name: str) -> object:
    # ``nori_wal.observe.PrometheusMeter``, loaded on first use (prometheus-client is not imported for
    # everyone). No cycle: the exporter depends on ``events``, never on this module.
    if name in ("PrometheusMeter", "start_metrics_server"):
        from . import prometheus

        return getattr(prometheus, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
