"""/metrics over real HTTP: known work on a real log, scraped and parsed as Prometheus would."""

import contextlib
import logging
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nori_wal import FsyncPolicy, Record, Wal, WalConfig
from nori_wal.codec import encode_record
from nori_wal.observe import RecordingMeter, SegmentRoll, TeeMeter
from nori_wal.prometheus import PrometheusMeter, start_metrics_server
from nori_wal.segment import segment_ids


def scrape(url):
    """{(sample name, sorted labels): value} from a real HTTP GET of /metrics."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_endpoint_reports_appends_rolls_fsyncs_and_gc(tmp_path):
    prom, rec = PrometheusMeter(), RecordingMeter()
    records = [Record.put(b"key-%04d" % i, b"v" * 200) for i in range(300)]
    config = WalConfig(dir=tmp_path, max_segment_size=8192, fsync_policy=FsyncPolicy.always())
    with start_metrics_server(0, prom, "127.0.0.1") as server:
        wal, _info = Wal.open_with_meter(config, TeeMeter(prom, rec))
        with wal:
            positions = []
            for i in range(0, len(records), 10):
                positions += wal.append_batch(records[i : i + 10])
            last = wal.append(records[0])
            segments_made = last.segment_id + 1
            deleted = wal.delete_segments_before(positions[150])
            s = scrape(server.url)
            fsync_ms = rec.observations("wal_fsync_ms")  # before close() adds its own fsync
        remaining = len(segment_ids(os.listdir(tmp_path)))

    rolls = len(rec.events_of(SegmentRoll))
    assert rolls == segments_made - 1 >= 5
    assert deleted == positions[150].segment_id >= 2
    assert s[("wal_records_total", ())] == len(records) + 1
    assert s[("wal_bytes_total", ())] == sum(len(encode_record(r)) for r in records) + len(encode_record(records[0]))
    assert s[("wal_segment_rolls_total", ())] == rolls
    assert s[("wal_events_total", (("type", "SegmentRoll"),))] == rolls
    assert s[("wal_sealed_segment_bytes_count", ())] == rolls
    assert s[("wal_segments_deleted_total", ())] == deleted
    assert s[("wal_events_total", (("type", "SegmentsDeleted"),))] == 1
    assert s[("wal_gc_latency_ms_count", ())] == 1
    assert s[("wal_segment_count", ())] == remaining == segments_made - deleted
    fsyncs = len(fsync_ms)
    assert fsyncs >= 31  # Always: at least one per batch (and per roll)
    assert s[("wal_fsync_ms_count", ())] == fsyncs == s[("wal_events_total", (("type", "Fsync"),))]
    assert s[("wal_fsync_ms_sum", ())] == pytest.approx(sum(fsync_ms))
    assert s[("wal_fsync_ms_bucket", (("le", "+Inf"),))] == fsyncs
    assert s[("wal_recovery_ms_count", ())] == 1
    assert s[("wal_recovery_truncated_bytes_total", ())] == 0


def test_recovery_metrics_after_a_torn_tail(tmp_path):
    config = WalConfig(dir=tmp_path, fsync_policy=FsyncPolicy.os())
    with Wal.open(config)[0] as wal:
        wal.append(Record.put(b"a", b"1"))
    seg = tmp_path / "000000.wal"
    data = seg.read_bytes()
    torn = encode_record(Record.put(b"b", b"2" * 50))[:20]
    seg.write_bytes(data + torn)  # a torn record after the seal: a crash mid-write
    prom = PrometheusMeter()
    with start_metrics_server(0, prom, "127.0.0.1") as server:
        wal, info = Wal.open_with_meter(config, prom)
        wal.close()
        s = scrape(server.url)
    assert info.bytes_truncated == len(torn)
    assert s[("wal_recovery_truncated_bytes_total", ())] == len(torn)
    assert s[("wal_events_total", (("type", "CorruptionTruncated"),))] == 1
    assert s[("wal_corruption_truncated_bytes_total", ())] == len(torn)


def test_two_servers_two_meters_do_not_collide(tmp_path):
    a, b = PrometheusMeter(), PrometheusMeter()
    a.counter("wal_records_total", 1)
    b.counter("wal_records_total", 2)
    with start_metrics_server(0, a, "127.0.0.1") as sa, start_metrics_server(0, b, "127.0.0.1") as sb:
        assert sa.port != sb.port
        assert scrape(sa.url)[("wal_records_total", ())] == 1
        assert scrape(sb.url)[("wal_records_total", ())] == 2


# -- nori-wal serve --metrics-port, end to end ---------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(directory, port, segment_size, preexec_fn=None):
    """``nori-wal serve`` with ``--metrics-port``, yielding (process, endpoint); stopped with SIGTERM at the
    end, which must give exit 0."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nori_wal.cli",
            "serve",
            "--dir",
            directory,
            "--fsync",
            "always",
            "--max-segment-size",
            str(segment_size),
            "--metrics-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True)
    reader.start()
    try:
        endpoint = None
        while endpoint is None:
            line = lines.get(timeout=30)
            m = re.search(r"((?:ipc|tcp)://\S+)", line)
            endpoint = m.group(1) if m else None
        yield proc, endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            reader.join(timeout=10)
            proc.stdout.close()
            proc.stderr.close()
    assert proc.returncode == 0


def test_serve_metrics_port_end_to_end(tmp_path):
    from nori_wal.client import WalClient

    port = _free_port()
    d = tmp_path / "wal"
    with _serve(d, port, 8192) as (_proc, endpoint):
        records = [Record.put(b"k%d" % i, b"x" * 300) for i in range(100)]
        with WalClient(endpoint, timeout=10.0) as client:
            first = client.append_batch(records[:50])
            rest = [client.append(r) for r in records[50:]]
        s = scrape(f"http://127.0.0.1:{port}/metrics")
        assert s[("wal_records_total", ())] == len(records)
        assert s[("wal_bytes_total", ())] == sum(len(encode_record(r)) for r in records)
        assert s[("wal_segment_rolls_total", ())] == rest[-1].segment_id - first[0].segment_id >= 2
        assert s[("wal_segment_count", ())] == len(segment_ids(os.listdir(d)))
        assert s[("wal_fsync_ms_count", ())] >= 51
        assert s[("wal_group_records_sum", ())] == len(records)
        assert s[("wal_ack_latency_ms_count", ())] >= 51


def test_without_prometheus_client_the_import_error_says_what_to_install():
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n    from nori_wal.observe import PrometheusMeter\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "pip install 'nori-wal[prometheus]'" in out.stdout


# -- a meter never raises into the log ------------------------------------------------------------


class _BrokenMeter:
    """A user's meter with a bug: every call raises."""

    def counter(self, name, value=1.0):
        raise RuntimeError("broken counter")

    def histogram(self, name, value):
        raise RuntimeError("broken histogram")

    def gauge(self, name, value):
        raise RuntimeError("broken gauge")

    def event(self, event):
        raise RuntimeError("broken event")


def test_a_meter_that_raises_never_fails_an_append_after_its_write(tmp_path, caplog):
    """The record is written before the log reports it: an exception then would make a caller
    retry an append that is already in the log (a duplicate)."""
    from nori_wal import open_reader

    config = WalConfig(dir=tmp_path, max_segment_size=4096, fsync_policy=FsyncPolicy.always())
    with caplog.at_level(logging.WARNING, logger="nori_wal.observe"):
        wal, _ = Wal.open_with_meter(config, _BrokenMeter())
        with wal:
            positions = [wal.append(Record.put(b"k%d" % i, b"v" * 500)) for i in range(20)]  # rolls too
            wal.delete_segments_before(positions[-1])
    assert positions[-1].segment_id >= 2
    with open_reader(tmp_path) as r:
        assert [p for _, p in r] == [p for p in positions if p.segment_id == positions[-1].segment_id]
    warned = [r.getMessage() for r in caplog.records]
    assert any("counter wal_records_total" in m for m in warned)
    assert len(warned) == len(set(warned))  # one warning per metric, not one per call


def test_a_prometheus_meter_with_a_reserved_label_is_refused_when_made():
    for name in ("type", "le", "bad-name", "__x"):
        with pytest.raises(ValueError, match=repr(name)):
            PrometheusMeter(labels={name: "orders"})


def test_gc_that_fails_part_way_reports_the_segments_it_did_delete(tmp_path):
    import errno

    from nori_wal import WalIOError
    from nori_wal.observe import SegmentsDeleted
    from nori_wal.testing.faultyos import FaultyOsLayer

    layer, meter = FaultyOsLayer(), RecordingMeter()
    wal, _ = Wal.open_with_meter(WalConfig(dir=tmp_path, max_segment_size=4096), meter, layer=layer)
    with wal:
        for i in range(300):
            wal.append(Record.put(b"k%d" % i, b"v" * 100))
        before = len(segment_ids(os.listdir(tmp_path)))
        layer.inject("unlink", errno.EACCES, nth=3, path=".wal")
        with pytest.raises(WalIOError):
            wal.delete_segments_before(wal.current_position())
        remaining = len(segment_ids(os.listdir(tmp_path)))
        assert before - remaining == 2
        assert meter.count("wal_segments_deleted_total") == 2
        assert [e.count for e in meter.events_of(SegmentsDeleted)] == [2]
        assert meter.gauges["wal_segment_count"] == remaining


# -- the exporter is bounded: the network cannot stop the writer (audit 8, r1 and r13) -----------


def _wait_closed_by_peer(socks, want, timeout=20.0):
    """Wait (bounded) until at least ``want`` of ``socks`` were closed by the server; the set of closed ones.

    A socket the server closed turns readable and reads EOF (or a reset). No sleeps: select wakes on it.
    """
    import select
    import time

    closed: set = set()
    deadline = time.monotonic() + timeout
    while len(closed) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        readable, _, _ = select.select([s for s in socks if s not in closed], [], [], left)
        for s in readable:
            try:
                data = s.recv(1)
            except OSError:
                data = b""
            assert data == b""  # an idle client gets no bytes, only the close
            closed.add(s)
    return closed


def _conn_threads(port):
    return [t for t in threading.enumerate() if t.name == f"nori-wal-metrics-conn:{port}"]


def test_the_exporter_binds_loopback_unless_told_otherwise():
    meter = PrometheusMeter()
    meter.counter("wal_records_total", 3)
    with start_metrics_server(0, meter) as server:
        assert server.host == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        assert scrape(server.url)[("wal_records_total", ())] == 3
    with start_metrics_server(0, meter, addr="0.0.0.0") as server:  # an explicit choice
        assert server.host == "0.0.0.0"
        assert scrape(server.url)[("wal_records_total", ())] == 3


def test_idle_connections_cannot_pile_up_threads_or_descriptors():
    """r1/r1b: one thread and one descriptor per idle connection, forever, until the writer's roll failed.

    Now at most max_connections (default 8) are held; each one past the cap is closed at once.
    """
    cap = 8  # nori_wal.prometheus.DEFAULT_MAX_CONNECTIONS
    meter = PrometheusMeter()
    meter.counter("wal_records_total", 5)
    n = 64
    with start_metrics_server(0, meter) as server:  # the defaults, as serve uses them
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(n)]
        try:
            closed = _wait_closed_by_peer(idle, n - cap)
            assert len(closed) >= n - cap
            # The exporter's own descriptors only (sockets whose local port is its port, the listener
            # aside): other threads of this process may open files meanwhile.
            held_by_server = _exporter_fds(server.port) - 1
            assert held_by_server <= cap
            assert len(_conn_threads(server.port)) <= cap
        finally:
            for s in idle:
                s.close()
        for t in _conn_threads(server.port):  # the held ones end on their client's close
            t.join(timeout=10)
            assert not t.is_alive()
        assert scrape(server.url)[("wal_records_total", ())] == 5


def _exporter_fds(port: int) -> int:
    """How many of this process's descriptors are sockets with local port ``port`` (listener included)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            count += 1
    return count


def test_clients_trickling_their_request_cannot_block_a_scrape():
    """One byte every 0.5 s never trips the idle timeout; such clients must not keep scrapes out."""
    meter = PrometheusMeter()
    meter.counter("wal_records_total", 3)
    with start_metrics_server(0, meter) as server:  # the defaults, as serve uses them
        stop = threading.Event()
        tricklers = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(12)]

        def trickle() -> None:
            msg = b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 1000
            i = 0
            while not stop.wait(0.5) and i < len(msg):
                for t in tricklers:
                    try:
                        t.send(msg[i : i + 1])
                    except OSError:
                        pass
                i += 1

        th = threading.Thread(target=trickle, daemon=True)
        th.start()
        try:
            for _ in range(3):  # scrapes keep working while the tricklers go on
                t0 = time.monotonic()
                assert scrape(server.url)[("wal_records_total", ())] == 3
                assert time.monotonic() - t0 < 10  # a generous bound (they blocked every scrape for 12 s)
        finally:
            stop.set()
            th.join(10)
            for t in tricklers:
                t.close()


def test_an_idle_connection_is_dropped_after_the_timeout_so_scrapes_go_on():
    """A client that connects and says nothing holds a slot only for connection_timeout seconds."""
    meter = PrometheusMeter()
    meter.counter("wal_records_total", 7)
    with start_metrics_server(0, meter, max_connections=2, connection_timeout=0.3) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
        try:
            assert len(_wait_closed_by_peer(idle, 2)) == 2  # dropped by the server, not by us
        finally:
            for s in idle:
                s.close()
        for t in _conn_threads(server.port):
            t.join(timeout=10)
        assert scrape(server.url)[("wal_records_total", ())] == 7


def test_the_exporter_refuses_a_bad_cap_or_timeout():
    for kwargs in ({"max_connections": 0}, {"connection_timeout": 0}):
        with pytest.raises(ValueError):
            start_metrics_server(0, PrometheusMeter(), **kwargs)


def test_serve_keeps_rolling_while_many_idle_connections_hold_the_metrics_port(tmp_path):
    """r1: with 256 descriptors, 300 idle /metrics connections made the writer's next roll fail (exit 4)."""
    import resource

    from nori_wal.client import WalClient

    limit = 256

    def low_fd_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    port = _free_port()
    d = tmp_path / "wal"
    idle: list = []
    with _serve(d, port, 65536, preexec_fn=low_fd_limit) as (proc, endpoint):
        try:
            with WalClient(endpoint, timeout=10.0) as client:
                client.append(Record.put(b"k", b"v"))
                for _ in range(limit + 44):
                    try:
                        idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                    except OSError:  # only the old, unbounded exporter: its backlog full, accept failing
                        break
                assert len(idle) == limit + 44
                assert len(_wait_closed_by_peer(idle, len(idle) - 8)) >= len(idle) - 8
                assert len(os.listdir(f"/proc/{proc.pid}/fd")) < limit // 2
                positions = [client.append(Record.put(b"k%d" % i, os.urandom(1024))) for i in range(200)]
            assert positions[-1].segment_id >= 2  # rolled, twice at least
        finally:
            for s in idle:
                s.close()


def test_a_fresh_log_serves_every_documented_metric(tmp_path):
    """r13: wal_segments_deleted_total, wal_gc_latency_ms, rolls... were missing until they first happened."""
    documented = re.findall(r"^\| `(wal_[a-z_]+)`(?:, `(wal_[a-z_]+)`)? \|", _read_docs("CLI.md"), re.MULTILINE)
    names = {n for pair in documented for n in pair if n}
    assert {
        "wal_segments_deleted_total",
        "wal_gc_latency_ms",
        "wal_segment_rolls_total",
        "wal_replies_dropped_total",
    } <= names
    prom = PrometheusMeter()
    with start_metrics_server(0, prom) as server:
        wal, _ = Wal.open_with_meter(WalConfig(dir=tmp_path, fsync_policy=FsyncPolicy.always()), prom)
        with wal:
            wal.append(Record.put(b"k", b"v"))
            s = scrape(server.url)
    have = {name for name, _ in s}
    assert [name for name in sorted(names) if name not in have and name + "_count" not in have] == []
    assert s[("wal_segments_deleted_total", ())] == 0
    assert s[("wal_segment_rolls_total", ())] == 0
    assert s[("wal_replies_dropped_total", ())] == 0
    assert s[("wal_gc_latency_ms_count", ())] == 0
    assert s[("wal_ack_latency_ms_count", ())] == 0
    assert s[("wal_records_total", ())] == 1 and s[("wal_segment_count", ())] == 1
    assert s[("wal_events_total", (("type", "SegmentsDeleted"),))] == 0
    assert s[("wal_events_total", (("type", "Fsync"),))] >= 1


def test_meters_sharing_a_registry_tell_their_logs_apart_by_label():
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    a = PrometheusMeter(registry, labels={"wal": "orders"})
    b = PrometheusMeter(registry, labels={"wal": "audit"})
    a.counter("wal_records_total", 1)
    b.counter("wal_records_total", 2)
    b.counter("wal_custom_total", 4)
    with start_metrics_server(0, a) as server:
        s = scrape(server.url)
    assert s[("wal_records_total", (("wal", "orders"),))] == 1
    assert s[("wal_records_total", (("wal", "audit"),))] == 2
    assert s[("wal_custom_total", (("wal", "audit"),))] == 4
    assert s[("wal_segments_deleted_total", (("wal", "orders"),))] == 0
    with pytest.raises(ValueError, match="same label names"):
        PrometheusMeter(registry)  # no labels: it could record nothing here


def _read_docs(name):
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", name)) as f:
        return f.read()
