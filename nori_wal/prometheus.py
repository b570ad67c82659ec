"""PrometheusMeter: the log's metrics and events as Prometheus metrics, and a /metrics server.

Needs the optional extra ``pip install nori-wal[prometheus]`` (prometheus-client).

How the vendor-neutral Meter calls map (metrics are created lazily, on first use,
so names the writer process adds later need no registration):

    counter(name, v)     Counter ``name``; shown as ``name`` if it ends in ``_total``,
                         else as ``name_total`` (the OpenMetrics rule prometheus-client applies)
    histogram(name, v)   Histogram ``name``; buckets by unit suffix: ``_ms`` latency buckets
                         (0.05 ms .. 10 s), ``_bytes`` powers of 4 (64 B .. 64 MiB),
                         ``_records`` powers of 2 (1 .. 65536), else the prometheus-client default
    gauge(name, v)       Gauge ``name``
    event(e)             ``wal_events_total{type="SegmentRoll"|"Fsync"|...}`` and
                         ``wal_last_event_timestamp_seconds{type=...}``; plus, per type,
                         SegmentRoll -> histogram ``wal_sealed_segment_bytes``,
                         CorruptionTruncated -> counter ``wal_corruption_truncated_bytes_total``

Each meter has its own CollectorRegistry (unless one is passed), so several logs
(or tests) in one process never collide. A meter never raises into the log: a
metric that cannot be made (a name already used with another type, say) is
dropped with one warning in the ``nori_wal.prometheus`` logger. Constant labels
are checked when the meter is made: ``type`` (the events' label), ``le``
(histogram buckets) and names Prometheus does not allow raise ValueError there,
not at the first append.
"""

from __future__ import annotations

import logging
import re
import socketserver
import threading
import time
from collections.abc import Mapping
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_wsgi_app
except ImportError as exc:     # pragma: no cover - exercised only without the extra
    raise ImportError(
        "nori_wal.prometheus needs prometheus-client: pip install 'nori-wal[prometheus]' "
        "(or pip install prometheus-client)") from exc

from .observe import CorruptionTruncated, Event, SegmentRoll, event_name

__all__ = [
    "BYTES_BUCKETS",
    "MS_BUCKETS",
    "RECORDS_BUCKETS",
    "MetricsServer",
    "PrometheusMeter",
    "start_metrics_server",
]

_log = logging.getLogger(__name__)

MS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
              5000.0, 10000.0)                                   # milliseconds: fdatasync is 0.2-4 ms here
BYTES_BUCKETS = tuple(float(64 * 4**i) for i in range(11))       # 64 B .. 64 MiB
RECORDS_BUCKETS = tuple(float(2**i) for i in range(17))          # 1 .. 65536 records

_HELP = {
    "wal_records_total": "Records appended",
    "wal_bytes_total": "Record bytes (frames) appended",
    "wal_fsync_ms": "fdatasync latency of a segment, milliseconds",
    "wal_segment_count": "Segment files in the log",
    "wal_segment_rolls_total": "Segments sealed and replaced by a new one",
    "wal_segments_deleted_total": "Segments deleted by GC",
    "wal_gc_latency_ms": "Duration of one segment GC, milliseconds",
    "wal_recovery_ms": "Duration of recovery at open, milliseconds",
    "wal_recovery_truncated_bytes_total": "Torn or damaged tail bytes cut off by recovery",
    "wal_io_failures_total": "Failed writes or fsyncs (each fail-stops the log)",
    "wal_group_records": "Records per group commit (per fsync'd write)",
    "wal_group_bytes": "Bytes per group commit (per fsync'd write)",
    "wal_ack_latency_ms": "Time from a request's arrival to its acknowledgement, milliseconds",
    "wal_events_total": "Events reported by the log, by type",
    "wal_last_event_timestamp_seconds": "Unix time of the last event of each type",
    "wal_sealed_segment_bytes": "Size of each segment when it was sealed, bytes",
    "wal_corruption_truncated_bytes_total": "Bytes cut off by recovery, from CorruptionTruncated events",
}

_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_LABELS = frozenset({"type", "le", "quantile"})   # the events' label; histogram and summary labels


def _metric_name(name: str) -> str:
    """A valid Prometheus metric name for ``name`` (invalid characters become ``_``)."""
    clean = _BAD_CHARS.sub("_", name) or "_"
    return "_" + clean if clean[0].isdigit() else clean


def _buckets(name: str) -> tuple[float, ...] | None:
    if name.endswith("_ms"):
        return MS_BUCKETS
    if name.endswith("_bytes"):
        return BYTES_BUCKETS
    if name.endswith("_records"):
        return RECORDS_BUCKETS
    return None


def _noop(value: float) -> None:
    pass


class PrometheusMeter:
    """A Meter that keeps Prometheus metrics in its own registry.

    ``labels`` are constant labels put on every metric (e.g. ``{"wal": "orders"}``
    when one process runs several logs into one registry); a reserved or invalid
    label name raises ValueError here. ``namespace`` is prefixed to every metric
    name (``namespace_wal_records_total``).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, namespace: str = "",
                 labels: Mapping[str, str] | None = None):
        for name in labels or {}:
            if name in RESERVED_LABELS or name.startswith("__") or not _LABEL_NAME.fullmatch(name):
                raise ValueError(f"label name {name!r} is reserved or not a valid Prometheus label name "
                                 f"(reserved: {', '.join(sorted(RESERVED_LABELS))})")
        self.registry = registry if registry is not None else CollectorRegistry()
        self.namespace = namespace
        self.labels = dict(labels or {})
        self._lock = threading.Lock()
        self._record: dict[tuple[str, str], Callable[[float], None]] = {}
        self._by_type: dict[str, Any] = {}

    # -- the Meter protocol ------------------------------------------------------------

    def counter(self, name: str, value: float = 1.0) -> None:
        (self._record.get(("counter", name)) or self._make("counter", name))(value)

    def histogram(self, name: str, value: float) -> None:
        (self._record.get(("histogram", name)) or self._make("histogram", name))(value)

    def gauge(self, name: str, value: float) -> None:
        (self._record.get(("gauge", name)) or self._make("gauge", name))(value)

    def event(self, event: Event) -> None:
        kind = event_name(event)
        self._event_child("counter", "wal_events_total", kind)(1.0)
        self._event_child("gauge", "wal_last_event_timestamp_seconds", kind)(time.time())
        if isinstance(event, SegmentRoll):
            self.histogram("wal_sealed_segment_bytes", event.bytes)
        elif isinstance(event, CorruptionTruncated):
            self.counter("wal_corruption_truncated_bytes_total", event.bytes)

    # -- exposition ----------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (what /metrics serves)."""
        return bytes(generate_latest(self.registry))

    # -- lazily created metrics ------------------------------------------------------------

    def _full_name(self, name: str) -> str:
        full = _metric_name(name)
        return f"{_metric_name(self.namespace)}_{full}" if self.namespace else full

    def _create(self, kind: str, name: str, extra_labels: tuple[str, ...] = ()) -> Any:
        full = self._full_name(name)
        doc = _HELP.get(name, name.replace("_", " "))
        labelnames = tuple(self.labels) + extra_labels
        if kind == "counter":
            return Counter(full, doc, labelnames, registry=self.registry)
        if kind == "gauge":
            return Gauge(full, doc, labelnames, registry=self.registry)
        buckets = _buckets(name)
        if buckets is None:
            return Histogram(full, doc, labelnames, registry=self.registry)
        return Histogram(full, doc, labelnames, registry=self.registry, buckets=buckets)

    @staticmethod
    def _recorder(kind: str, metric: Any) -> Callable[[float], None]:
        if kind == "counter":
            inc = metric.inc

            def count(value: float) -> None:
                if value > 0:           # prometheus counters only go up; 0 is a no-op
                    inc(value)
            return count
        record: Callable[[float], None] = metric.set if kind == "gauge" else metric.observe
        return record

    def _make(self, kind: str, name: str) -> Callable[[float], None]:
        with self._lock:
            rec = self._record.get((kind, name))
            if rec is not None:
                return rec
            try:
                metric = self._create(kind, name)
                if self.labels:
                    metric = metric.labels(**self.labels)
                rec = self._recorder(kind, metric)
            except Exception as exc:     # e.g. the name is already a metric of another type: never raise
                _log.warning("dropping metric %s %r: %s", kind, name, exc)
                rec = _noop
            self._record[(kind, name)] = rec
            return rec

    def _event_child(self, kind: str, name: str, event_type: str) -> Callable[[float], None]:
        key = (kind, f"{name}{{type={event_type}}}")
        rec = self._record.get(key)
        if rec is not None:
            return rec
        with self._lock:
            rec = self._record.get(key)
            if rec is not None:
                return rec
            try:
                family = self._by_type.get(name)
                if family is None:
                    family = self._by_type[name] = self._create(kind, name, ("type",))
                rec = self._recorder(kind, family.labels(**self.labels, type=event_type))
            except Exception as exc:
                _log.warning("dropping metric %s %r: %s", kind, name, exc)
                rec = _noop
            self._record[key] = rec
            return rec


# -- the /metrics endpoint -------------------------------------------------------------------

class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:   # no access log on stderr
        _log.debug("metrics %s " + format, self.address_string(), *args)


class MetricsServer:
    """A running /metrics HTTP endpoint (a daemon thread); ``close()`` stops it."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread):
        self._httpd, self._thread = httpd, thread
        self.host: str = httpd.server_address[0]  # type: ignore[assignment]
        self.port: int = httpd.server_address[1]

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving, close the socket and join the thread. Idempotent."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5.0)
        self._httpd.server_close()

    def __enter__(self) -> MetricsServer:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_metrics_server(port: int, meter: PrometheusMeter, addr: str = "0.0.0.0") -> MetricsServer:
    """Serve ``meter``'s registry at ``http://addr:port/metrics`` from a daemon thread.

    ``port=0`` picks a free port (read it back from ``.port``). Raises OSError if
    the port is taken. Every path answers with the metrics, as prometheus-client does.
    """
    app = make_wsgi_app(meter.registry)
    httpd = make_server(addr, port, app, _ThreadingServer, handler_class=_QuietHandler)
    # poll_interval bounds how long close() waits for the serving loop to notice.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"nori-wal-metrics:{port}", daemon=True)
    thread.start()
    _log.info("serving metrics on http://%s:%d/metrics", addr, httpd.server_address[1])
    return MetricsServer(httpd, thread)
