"""Meters: RecordingMeter, TeeMeter and PrometheusMeter (exposition parsed, no sockets)."""

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from nori_wal import observe
from nori_wal.observe import (
    EVENT_TYPES,
    CorruptionTruncated,
    Fsync,
    FsyncFailed,
    Meter,
    NoopMeter,
    RecordingMeter,
    SegmentRoll,
    SegmentsDeleted,
    TeeMeter,
    event_name,
)
from nori_wal.prometheus import MS_BUCKETS, PrometheusMeter


def samples(meter: PrometheusMeter) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of the meter's exposition, parsed as Prometheus would."""
    out = {}
    for family in text_string_to_metric_families(meter.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_meter_satisfies_the_protocol():
    for m in (NoopMeter(), RecordingMeter(), TeeMeter(), PrometheusMeter()):
        assert isinstance(m, Meter)


def test_recording_meter_sums_counters_keeps_observations_and_events():
    m = RecordingMeter()
    m.counter("wal_records_total", 3)
    m.counter("wal_records_total")
    m.histogram("wal_fsync_ms", 0.5)
    m.histogram("wal_fsync_ms", 1.5)
    m.gauge("wal_segment_count", 2)
    m.gauge("wal_segment_count", 5)
    events = [SegmentRoll(0, 4096, 1), Fsync(0.5), SegmentsDeleted(1, 2, 0.1)]
    for e in events:
        m.event(e)
    assert m.count("wal_records_total") == 4 and m.count("never") == 0
    assert m.observations("wal_fsync_ms") == [0.5, 1.5] and m.observations("never") == []
    assert m.gauges == {"wal_segment_count": 5}
    assert m.events == events and m.events_of(Fsync) == [Fsync(0.5)]
    m.clear()
    assert not (m.counters or m.histograms or m.gauges or m.events)


def test_tee_meter_reports_to_every_meter():
    a, b = RecordingMeter(), RecordingMeter()
    tee = TeeMeter(a, b, NoopMeter())
    tee.counter("c", 2)
    tee.histogram("h", 1)
    tee.gauge("g", 3)
    tee.event(Fsync(1.0))
    for m in (a, b):
        assert (m.counters, m.histograms, m.gauges, m.events) == ({"c": 2}, {"h": [1]}, {"g": 3}, [Fsync(1.0)])


def test_prometheus_meter_is_reachable_from_observe():
    assert observe.PrometheusMeter is PrometheusMeter
    with pytest.raises(AttributeError):
        observe.NoSuchThing  # noqa: B018


def test_event_names_are_the_class_names():
    assert [event_name(t.__new__(t)) for t in EVENT_TYPES] == [
        "SegmentRoll",
        "Fsync",
        "CorruptionTruncated",
        "FsyncFailed",
        "SegmentsDeleted",
    ]


def test_prometheus_maps_counters_histograms_gauges_and_events():
    m = PrometheusMeter()
    m.counter("wal_records_total", 10)
    m.counter("wal_records_total", 5)
    m.counter("wal_bytes_total", 1234)
    m.counter("wal_odd_count", 2)  # no _total: exposed with one added
    m.counter("wal_segments_deleted_total", 0)  # a zero increment is fine
    for v in (0.2, 0.3, 7.0):
        m.histogram("wal_fsync_ms", v)
    m.histogram("wal_group_records", 16)
    m.histogram("wal_group_bytes", 16 * 1024)
    m.gauge("wal_segment_count", 3)
    m.event(SegmentRoll(0, 4000, 1))
    m.event(SegmentRoll(1, 4010, 2))
    m.event(Fsync(0.2))
    m.event(CorruptionTruncated(4, 100, 77, "checksum mismatch"))
    m.event(FsyncFailed("EIO"))
    s = samples(m)
    assert s[("wal_records_total", ())] == 15
    assert s[("wal_bytes_total", ())] == 1234
    assert s[("wal_odd_count_total", ())] == 2
    assert s[("wal_segments_deleted_total", ())] == 0
    assert s[("wal_fsync_ms_count", ())] == 3 and s[("wal_fsync_ms_sum", ())] == pytest.approx(7.5)
    assert s[("wal_fsync_ms_bucket", (("le", "0.25"),))] == 1
    assert s[("wal_fsync_ms_bucket", (("le", "10.0"),))] == 3
    assert s[("wal_group_records_bucket", (("le", "16.0"),))] == 1
    assert s[("wal_group_records_bucket", (("le", "8.0"),))] == 0
    assert s[("wal_group_bytes_bucket", (("le", "16384.0"),))] == 1
    assert s[("wal_segment_count", ())] == 3
    assert s[("wal_events_total", (("type", "SegmentRoll"),))] == 2
    assert s[("wal_events_total", (("type", "Fsync"),))] == 1
    assert s[("wal_events_total", (("type", "CorruptionTruncated"),))] == 1
    assert s[("wal_events_total", (("type", "FsyncFailed"),))] == 1
    assert s[("wal_last_event_timestamp_seconds", (("type", "Fsync"),))] > 0
    assert s[("wal_sealed_segment_bytes_sum", ())] == 8010
    assert s[("wal_corruption_truncated_bytes_total", ())] == 77


def test_latency_buckets_are_milliseconds():
    assert MS_BUCKETS[0] <= 0.1 and MS_BUCKETS[-1] >= 1000 and list(MS_BUCKETS) == sorted(MS_BUCKETS)


def test_each_meter_has_its_own_registry():
    a, b = PrometheusMeter(), PrometheusMeter()
    a.counter("wal_records_total", 1)
    b.counter("wal_records_total", 2)
    assert samples(a)[("wal_records_total", ())] == 1 and samples(b)[("wal_records_total", ())] == 2


def test_constant_labels_and_namespace():
    m = PrometheusMeter(namespace="app", labels={"wal": "orders"})
    m.counter("wal_records_total", 4)
    m.event(Fsync(1.0))
    s = samples(m)
    assert s[("app_wal_records_total", (("wal", "orders"),))] == 4
    assert s[("app_wal_events_total", (("type", "Fsync"), ("wal", "orders")))] == 1


def test_a_metric_that_cannot_be_made_is_dropped_never_raised(caplog):
    m = PrometheusMeter()
    m.counter("wal_x_total", 1)
    with caplog.at_level(logging.WARNING, logger="nori_wal.prometheus"):
        m.gauge("wal_x_total", 5)  # same name, other type: dropped with one warning
        m.gauge("wal_x_total", 6)
    m.counter("bad name-with.chars", 2)  # sanitised
    m.counter("wal_records_total", -1)  # counters only go up: ignored
    assert len(caplog.records) == 1 and "wal_x_total" in caplog.records[0].getMessage()
    s = samples(m)
    assert s[("wal_x_total", ())] == 1 and s[("bad_name_with_chars_total", ())] == 2


_calls = st.lists(
    st.tuples(
        st.sampled_from(["counter", "histogram", "gauge"]),
        st.sampled_from(["a", "b", "c"]),
        st.floats(min_value=0, max_value=1e6, allow_nan=False),
    ),
    max_size=40,
)


@given(_calls)
def test_prometheus_agrees_with_the_recording_meter(calls):
    """For any calls, the Prometheus exposition shows the totals a RecordingMeter kept."""
    rec, prom = RecordingMeter(), PrometheusMeter()
    tee = TeeMeter(rec, prom)
    for kind, name, value in calls:
        getattr(tee, kind)(f"wal_{kind}_{name}", value)
    s = samples(prom)
    for name, total in rec.counters.items():
        assert s[(name + "_total", ())] == pytest.approx(total)
    for name, obs in rec.histograms.items():
        assert s[(name + "_count", ())] == len(obs)
        assert s[(name + "_sum", ())] == pytest.approx(sum(obs))
    for name, value in rec.gauges.items():
        assert s[(name, ())] == value
