"""Per-consumer lag on a Prometheus exporter, computed when it is scraped.

``register_consumer_metrics(registry, directory)`` adds a custom collector to a
prometheus-client registry (the writer's, for ``serve --metrics-port``). Each
scrape reads ``DIR/consumers`` and the durable mark and reports, per consumer:

    wal_consumer_lag_bytes{consumer=NAME}                 record bytes from its cursor to the durable end
    wal_consumer_expired{consumer=NAME}                   1 once retention (max_retained_bytes) expired it
    wal_consumer_last_commit_timestamp_seconds{consumer=NAME}   its last commit (absent before the first)

The lag reads no records (segment sizes, seals and the mark only), so a scrape
costs the writer a few small reads per segment whatever the backlog; records
of lag are what ``nori-wal consumers DIR`` counts. A consumer whose cursor file
is damaged is reported as expired with no lag. A scrape never fails because of
the consumers: an error reading them is logged and the families come out empty.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .consumer import measure_lag
from .cursor_store import cursor_names, read_cursor, read_expiry
from .errors import CorruptionError, WalError
from .fs import OS, FileLayer

_log = logging.getLogger("nori_wal.prometheus")


class ConsumerLagCollector(Collector):
    """Collects the consumers' lag of the log in ``directory`` at each scrape."""

    def __init__(self, directory: str, *, layer: FileLayer = OS, namespace: str = ""):
        self.directory = directory
        self._layer = layer
        self._prefix = f"{namespace}_" if namespace else ""

    def describe(self) -> list[Any]:
        return list(self._families())  # names only: registering never reads the directory

    def collect(self) -> Iterator[Any]:
        lag, expired, last = self._families()
        try:
            for name in cursor_names(self._layer, self.directory):
                self._one(name, lag, expired, last)
        except (OSError, WalError) as exc:
            _log.warning("consumer lag of %s: %s", self.directory, exc)
        yield lag
        yield expired
        yield last

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        p = self._prefix
        return (
            GaugeMetricFamily(
                f"{p}wal_consumer_lag_bytes",
                "Record bytes from a consumer's cursor to the durable end",
                labels=["consumer"],
            ),
            GaugeMetricFamily(
                f"{p}wal_consumer_expired",
                "1 once retention (max_retained_bytes) expired the consumer",
                labels=["consumer"],
            ),
            GaugeMetricFamily(
                f"{p}wal_consumer_last_commit_timestamp_seconds",
                "When the consumer last committed (Unix time)",
                labels=["consumer"],
            ),
        )

    def _one(self, name: str, lag: GaugeMetricFamily, expired: GaugeMetricFamily, last: GaugeMetricFamily) -> None:
        layer, directory = self._layer, self.directory
        try:
            gone = read_expiry(layer, directory, name) is not None
            state = read_cursor(layer, directory, name)
        except CorruptionError:
            expired.add_metric([name], 1.0)
            return
        expired.add_metric([name], 1.0 if gone else 0.0)
        if state is None:
            return
        if not gone:
            lag.add_metric([name], float(measure_lag(layer, directory, state.next, count_records=False)[0]))
        if state.time_ns:
            last.add_metric([name], state.time_ns / 1e9)


def register_consumer_metrics(registry: CollectorRegistry, directory: str, *, namespace: str = "") -> None:
    """Report the consumers of the log in ``directory`` on ``registry`` (computed at each scrape)."""
    registry.register(ConsumerLagCollector(directory, namespace=namespace))


__all__ = ["ConsumerLagCollector", "register_consumer_metrics"]
