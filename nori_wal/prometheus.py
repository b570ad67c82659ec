"""PrometheusMeter: the log's metrics and events as Prometheus metrics, and a /metrics server.

Needs the optional extra ``pip install nori-wal[prometheus]`` (prometheus-client).

Every metric the docs promise (``CONTRACT_METRICS``: docs/CLI.md's table and API.md)
exists from the moment the meter is made: counters at 0, histograms empty,
``wal_events_total{type=...}`` at 0 for each event type. A dashboard or an alert on
``wal_segments_deleted_total`` or ``rate(wal_segment_rolls_total[5m])`` then sees 0,
not "no data", on a log that has not yet rolled or collected. The gauge
``wal_segment_count`` is the exception: the log sets it when it opens (a 0 before
that would be a false count). The writer process's own figures (``wal_group_*``,
``wal_ack_latency_ms``, ``wal_replies_dropped_total``) stay at zero in an embedded
log. Any other name is created on first use, so names added later need no
registration.

How the vendor-neutral Meter calls map:

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
(or tests) in one process never collide. Meters sharing a registry share its metric
families and tell their logs apart by their constant ``labels`` (the same label
names on each). A meter never raises into the log: a
metric that cannot be made (a name already used with another type, say) is
dropped with one warning in the ``nori_wal.prometheus`` logger. Constant labels
are checked when the meter is made: ``type`` (the events' label), ``le`` and
``quantile`` (histogram and summary labels), names starting with ``__`` and
names Prometheus does not allow raise ValueError there, not at the first append.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_wsgi_app
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "nori_wal.prometheus needs prometheus-client: pip install 'nori-wal[prometheus]' "
        "(or pip install prometheus-client)"
    ) from exc

from .events import EVENT_TYPES, CorruptionTruncated, Event, SegmentRoll, event_name

__all__ = [
    "BYTES_BUCKETS",
    "CONTRACT_METRICS",
    "DEFAULT_CONNECTION_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_METRICS_ADDR",
    "MS_BUCKETS",
    "RECORDS_BUCKETS",
    "MetricsServer",
    "PrometheusMeter",
    "start_metrics_server",
]

_log = logging.getLogger(__name__)

MS_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
)  # milliseconds: fdatasync is 0.2-4 ms here
BYTES_BUCKETS = tuple(float(64 * 4**i) for i in range(11))  # 64 B .. 64 MiB
RECORDS_BUCKETS = tuple(float(2**i) for i in range(17))  # 1 .. 65536 records

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
    "wal_replies_dropped_total": "Replies the writer could not deliver (the producer had gone)",
    "wal_events_total": "Events reported by the log, by type",
    "wal_last_event_timestamp_seconds": "Unix time of the last event of each type",
    "wal_sealed_segment_bytes": "Size of each segment when it was sealed, bytes",
    "wal_corruption_truncated_bytes_total": "Bytes cut off by recovery, from CorruptionTruncated events",
}

# The metrics a scrape shows from the start (kind, name), in the order of docs/CLI.md's table.
# wal_segment_count (a gauge) is left to the log, which sets it when it opens.
CONTRACT_METRICS: tuple[tuple[str, str], ...] = (
    ("counter", "wal_records_total"),
    ("counter", "wal_bytes_total"),
    ("histogram", "wal_fsync_ms"),
    ("counter", "wal_segment_rolls_total"),
    ("counter", "wal_segments_deleted_total"),
    ("histogram", "wal_gc_latency_ms"),
    ("histogram", "wal_recovery_ms"),
    ("counter", "wal_recovery_truncated_bytes_total"),
    ("counter", "wal_io_failures_total"),
    ("histogram", "wal_group_records"),
    ("histogram", "wal_group_bytes"),
    ("histogram", "wal_ack_latency_ms"),
    ("counter", "wal_replies_dropped_total"),
    ("histogram", "wal_sealed_segment_bytes"),
    ("counter", "wal_corruption_truncated_bytes_total"),
)

# Metric families by registry, shared by every meter on one registry: prometheus-client
# refuses a second family of the same name, so a second meter on a shared registry
# (labels={"wal": "b"} beside {"wal": "a"}) must add its children to the first one's.
_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, tuple[str, tuple[str, ...], Any]]] = (
    weakref.WeakKeyDictionary()
)
_FAMILIES_LOCK = threading.Lock()

_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_LABELS = frozenset({"type", "le", "quantile"})  # the events' label; histogram and summary labels


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

    def __init__(
        self, registry: CollectorRegistry | None = None, *, namespace: str = "", labels: Mapping[str, str] | None = None
    ):
        for name in labels or {}:
            if name in RESERVED_LABELS or name.startswith("__") or not _LABEL_NAME.fullmatch(name):
                raise ValueError(
                    f"label name {name!r} is reserved or not a valid Prometheus label name "
                    f"(reserved: {', '.join(sorted(RESERVED_LABELS))})"
                )
        self.registry = registry if registry is not None else CollectorRegistry()
        self.namespace = namespace
        self.labels = dict(labels or {})
        with _FAMILIES_LOCK:  # a meter sharing a registry must use the label names its others use
            known = _FAMILIES.get(self.registry, {}).get(self._full_name("wal_records_total"))
        if known is not None and known[1] != tuple(self.labels):
            raise ValueError(
                f"this registry's meters use the labels {list(known[1])}; a meter sharing it needs "
                f"the same label names (in that order), got {list(self.labels)}"
            )
        self._lock = threading.Lock()
        self._record: dict[tuple[str, str], Callable[[float], None]] = {}
        for kind, name in CONTRACT_METRICS:  # see the module docstring: no "no data" before the first event
            self._make(kind, name)
        for event_type in EVENT_TYPES:
            self._event_child("counter", "wal_events_total", event_type.__name__)
        try:  # its samples appear with the first event of each type: a 0 timestamp would be a false one
            self._family("gauge", "wal_last_event_timestamp_seconds", ("type",))
        except ValueError as exc:
            _log.warning("dropping metric gauge 'wal_last_event_timestamp_seconds': %s", exc)

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

    def _family(self, kind: str, name: str, extra_labels: tuple[str, ...] = ()) -> Any:
        """The registry's metric family ``name``: made here, or the one another meter on the registry made.

        Raises ValueError when the name is taken by a metric of another kind or label names.
        """
        full = self._full_name(name)
        labelnames = tuple(self.labels) + extra_labels
        with _FAMILIES_LOCK:
            families = _FAMILIES.setdefault(self.registry, {})
            known = families.get(full)
            if known is not None:
                if known[:2] != (kind, labelnames):
                    raise ValueError(f"{full} is already a {known[0]} with labels {list(known[1])} in this registry")
                return known[2]
            metric = self._create(kind, name, full, labelnames)
            families[full] = (kind, labelnames, metric)
            return metric

    def _create(self, kind: str, name: str, full: str, labelnames: tuple[str, ...]) -> Any:
        doc = _HELP.get(name, name.replace("_", " "))
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
                if value > 0:  # prometheus counters only go up; 0 is a no-op
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
                metric = self._family(kind, name)
                if self.labels:
                    metric = metric.labels(**self.labels)
                rec = self._recorder(kind, metric)
            except Exception as exc:  # e.g. the name is already a metric of another type: never raise
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
                family = self._family(kind, name, ("type",))
                rec = self._recorder(kind, family.labels(**self.labels, type=event_type))
            except Exception as exc:
                _log.warning("dropping metric %s %r: %s", kind, name, exc)
                rec = _noop
            self._record[key] = rec
            return rec


# -- the /metrics endpoint -------------------------------------------------------------------

DEFAULT_METRICS_ADDR = "127.0.0.1"  # loopback: exposing the writer's metrics to a network is the caller's choice
DEFAULT_MAX_CONNECTIONS = 8  # concurrent /metrics connections; more are closed at once
DEFAULT_CONNECTION_TIMEOUT = 5.0  # seconds a connection may sit idle in one read or write
REQUEST_DEADLINE = 2.0  # seconds a connection gets to send its whole request line and headers
EVICT_WAIT = 1.0  # seconds a new connection waits for an evicted one's slot


class _LogStream:
    """A file-like stderr for wsgiref's ServerHandler: its tracebacks go to our logger, never to stderr."""

    def write(self, text: str) -> int:
        if text.strip():
            _log.debug("metrics: %s", text.rstrip())
        return len(text)

    def flush(self) -> None:
        pass


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        _log.debug("metrics %s " + format, self.address_string(), *args)

    def get_stderr(self) -> Any:
        return _LogStream()

    def parse_request(self) -> bool:
        """The request line and headers are in: this connection no longer counts as slow to send them."""
        server = self.server
        if isinstance(server, _BoundedServer):
            server.done_reading(self.request)
        return bool(super().parse_request())


class _BoundedServer(WSGIServer):
    """A WSGI server with one daemon thread per connection, at most ``max_connections`` of them.

    Why: the exporter lives in the writer's process. Unbounded, every idle TCP connection
    held a thread and a descriptor forever (no timeout), so anyone who could reach the
    port could use up the writer's descriptors and make its next segment roll fail
    (a fail-stop, exit 4). Here a connection past the cap is accepted and closed at once
    (its descriptor lives for microseconds), and every accepted one gets a socket
    timeout, so an idle or slow client is dropped after ``connection_timeout`` seconds
    without a byte. The exporter holds at most ``max_connections`` + 1 descriptors
    (the listener) and as many threads, whatever the network does.

    A client that trickles its request (a byte now and then, never idle for the
    timeout) cannot hold a slot either: a connection gets ``REQUEST_DEADLINE``
    seconds to send its request line and headers, and when every slot is taken a
    new connection evicts the oldest one still sending its request. A scrape
    (which sends its request at once) always gets in.
    """

    allow_reuse_address = True
    # Connections waiting in the kernel's accept queue hold no descriptor of ours. socketserver's
    # default of 5 made a burst of connections (a scrape storm, or many idle clients) wait for
    # SYN retries (1 s, then 3 s, ...) instead of being answered or refused at once.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], max_connections: int, connection_timeout: float):
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        if not connection_timeout > 0:
            raise ValueError(f"connection_timeout must be > 0 seconds, got {connection_timeout}")
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.max_connections = max_connections
        self.connection_timeout = connection_timeout
        self.refused = 0  # connections closed at once: the cap was reached
        self._slots = threading.BoundedSemaphore(max_connections)
        self._active: dict[socket.socket, threading.Thread] = {}
        self._reading: dict[socket.socket, float] = {}  # connections still sending their request: since when
        self._active_lock = threading.Lock()
        super().__init__(address, _QuietHandler)

    def done_reading(self, request: Any) -> None:
        with self._active_lock:
            self._reading.pop(request, None)

    def _evict_slow(self) -> None:
        """Cut connections past the request deadline; when every slot is taken, the oldest still reading too."""
        now = time.monotonic()
        with self._active_lock:
            slow = [r for r, t0 in self._reading.items() if now - t0 > REQUEST_DEADLINE]
            if not slow and len(self._active) >= self.max_connections and self._reading:
                slow = [min(self._reading, key=self._reading.__getitem__)]
            for r in slow:
                self._reading.pop(r, None)
        for r in slow:
            try:
                r.shutdown(socket.SHUT_RDWR)  # its thread's recv returns; the thread frees the slot
            except OSError:
                pass

    def process_request(self, request: Any, client_address: Any) -> None:
        self._evict_slow()
        if not self._slots.acquire(timeout=EVICT_WAIT):
            self.refused += 1
            (_log.warning if self.refused == 1 else _log.debug)(
                "metrics: %d connections already open (the cap); closing a new one from %s at once",
                self.max_connections,
                client_address,
            )
            self.shutdown_request(request)
            return
        try:
            request.settimeout(self.connection_timeout)
            t = threading.Thread(
                target=self._serve_one,
                args=(request, client_address),
                name=f"nori-wal-metrics-conn:{self.server_address[1]}",
                daemon=True,
            )
            with self._active_lock:
                self._active[request] = t
                self._reading[request] = time.monotonic()
            t.start()
        except BaseException:
            with self._active_lock:
                self._active.pop(request, None)
                self._reading.pop(request, None)
            self._slots.release()
            raise

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._active_lock:
                self._active.pop(request, None)
                self._reading.pop(request, None)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that idled past the timeout or went away: routine, not a traceback on stderr.
        _log.debug("metrics: connection from %s dropped", client_address, exc_info=True)

    def server_close(self) -> None:
        """Close the listener, then cut the open connections and wait (bounded) for their threads."""
        super().server_close()
        with self._active_lock:
            active = list(self._active.items())
        for request, _thread in active:
            try:
                request.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv or send
            except OSError:
                pass
        deadline = time.monotonic() + 5.0
        for _request, thread in active:
            thread.join(max(0.0, deadline - time.monotonic()))


class MetricsServer:
    """A running /metrics HTTP endpoint (a daemon thread); ``close()`` stops it."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread):
        self._httpd, self._thread = httpd, thread
        host = httpd.server_address[0]
        self.host = host if isinstance(host, str) else host.decode()
        self.port: int = httpd.server_address[1]

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving, close the socket and the open connections, join the threads. Idempotent."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5.0)
        self._httpd.server_close()

    def __enter__(self) -> MetricsServer:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_metrics_server(
    port: int,
    meter: PrometheusMeter,
    addr: str = DEFAULT_METRICS_ADDR,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT,
) -> MetricsServer:
    """Serve ``meter``'s registry at ``http://addr:port/metrics`` from a daemon thread.

    ``addr`` is the address to bind: loopback (``127.0.0.1``) by default, so only this
    machine can scrape; pass ``"0.0.0.0"`` (or ``"::"``, or one interface's address) to
    expose it to a network. ``port=0`` picks a free port (read it back from ``.port``).

    The exporter runs inside the process it measures (the writer), so it is bounded:
    at most ``max_connections`` connections are served at once, each in its own
    thread; one more is closed as soon as it is accepted. A connection that sends or
    reads nothing for ``connection_timeout`` seconds is dropped. Prometheus scrapes
    one request per connection, so a scrape fails (closed without a response)
    only when ``max_connections`` other connections are open at that moment.

    Raises OSError if the port is taken, ValueError for a bad cap or timeout. Every
    path answers with the metrics, as prometheus-client does.
    """
    app = make_wsgi_app(meter.registry)
    httpd = _BoundedServer((addr, port), max_connections, connection_timeout)
    httpd.set_app(app)
    # poll_interval bounds how long close() waits for the serving loop to notice.
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": 0.1},
        name=f"nori-wal-metrics:{httpd.server_address[1]}",
        daemon=True,
    )
    thread.start()
    _log.info(
        "serving metrics on http://%s:%d/metrics (at most %d connections, %g s idle timeout)",
        addr,
        httpd.server_address[1],
        max_connections,
        connection_timeout,
    )
    return MetricsServer(httpd, thread)
