"""Prometheus metrics of a running shipper, read from its stats at scrape time (no bookkeeping on the hot path)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from .shipper import Shipper

log = logging.getLogger("nori_wal.ship")


class ShipCollector:
    """``nori_ship_*`` metrics of one shipper, and its cursor's lag (``list_consumers``)."""

    def __init__(self, shipper: "Shipper") -> None:
        self.shipper = shipper

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.shipper.stats
        yield CounterMetricFamily("nori_ship_records", "records acknowledged by the stream", value=s.acked)
        yield CounterMetricFamily("nori_ship_bytes", "payload bytes acknowledged by the stream", value=s.bytes)
        yield CounterMetricFamily("nori_ship_publishes", "publishes sent, re-sends included", value=s.published)
        yield CounterMetricFamily(
            "nori_ship_duplicates", "publishes JetStream dropped as duplicates", value=s.duplicates
        )
        yield CounterMetricFamily("nori_ship_resyncs", "sessions ended by a failure and resumed", value=s.resyncs)
        yield GaugeMetricFamily("nori_ship_in_flight", "publishes awaiting an ack", value=s.in_flight)
        lag = self.shipper.lag()
        if lag is not None:
            yield GaugeMetricFamily("nori_ship_lag_bytes", "record bytes not yet committed by the cursor", value=lag[0])
            yield GaugeMetricFamily("nori_ship_lag_records", "records not yet committed by the cursor", value=lag[1])


def serve_metrics(shipper: "Shipper", port: int, addr: str = "127.0.0.1") -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(ShipCollector(shipper))
    start_http_server(port, addr=addr, registry=registry)
    log.info("metrics on http://%s:%d/metrics", addr, port)
