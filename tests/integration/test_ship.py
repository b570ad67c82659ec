"""``nori-wal ship`` against a real 3-node JetStream cluster on 127.0.0.1: content, order, errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from typing import Any, Iterator

import pytest
from ship_support import (
    NATS_SERVER,
    create_stream,
    log_records,
    read_stream,
    require_nats,
    ship_cmd,
    start_cluster,
    start_shipper,
    stop,
    stream_count,
    tail,
    wait_for,
)

from nori_wal import Compression, FsyncPolicy, Record, Wal, WalConfig, list_consumers
from nori_wal.ship import from_message, read_identity
from nori_wal.ship.cluster import LocalCluster, free_ports

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = start_cluster(3)
    try:
        yield c
    finally:
        c.close()


def mixed_records(n: int, tag: str) -> list[Record]:
    out = []
    for i in range(n):
        key = f"{tag}-{i}".encode()
        if i % 7 == 3:
            out.append(Record.delete(key))
        elif i % 5 == 1:
            out.append(Record.put_with_ttl(key, os.urandom(i % 50), timedelta(milliseconds=1500 + i)))
        elif i % 11 == 2:
            out.append(Record.put(key, b"z" * 300).with_compression(Compression.LZ4))
        else:
            out.append(Record.put(key, bytes([i % 256]) * (i % 200)))
    return out


def append(directory: str, records: list[Record]) -> None:
    wal, _ = Wal.open(WalConfig(dir=directory, fsync_policy=FsyncPolicy.always(), max_segment_size=64 * 1024))
    with wal:
        wal.append_batch(records)


def test_ships_every_record_once_in_order_with_its_fields(cluster: LocalCluster, tmp_path: Any) -> None:
    d, log = str(tmp_path / "wal"), str(tmp_path / "ship.log")
    append(d, mixed_records(600, "a"))
    (port,) = free_ports(1)
    extra = ("--create-stream", "--replicas", "3", "--metrics-port", str(port))
    proc = start_shipper(d, cluster.servers, "BASIC", *extra, log=log)
    try:
        wait_for("600 messages", lambda: stream_count(cluster.urls, "BASIC") == 600, timeout=60)
        append(d, mixed_records(300, "b"))  # while it runs: it follows the log (several segments)
        wait_for("900 messages", lambda: stream_count(cluster.urls, "BASIC") == 900, timeout=60)
        second = run_ship(*ship_cmd(d, cluster.servers, "BASIC"))  # the cursor is taken
        assert second.returncode == 3 and "shipper" in second.stderr, second.stderr
        wait_for("the acks in the metrics", lambda: "nori_ship_records_total 900.0" in scrape(port), timeout=30)
        assert "nori_ship_lag_records" in scrape(port)
    finally:
        rc = stop(proc)
    assert rc == 0, tail(log)
    expected = log_records(d)
    got = read_stream(cluster.urls, "BASIC", "BASIC")
    log_id = read_identity(d)
    assert [from_message(h, p) for _, h, p in got] == [(r, pos, log_id) for r, pos in expected]
    assert [seq for seq, _, _ in got] == list(range(1, 901))
    assert {h["Nats-Msg-Id"] for _, h, _ in got} == {f"{log_id}:{p.segment_id}:{p.offset}" for _, p in expected}
    (info,) = [c for c in list_consumers(d) if c.name == "shipper"]
    assert info.committed == expected[-1][1] and info.lag_records == 0

    # A restart ships nothing twice: the stream already holds everything.
    proc = start_shipper(d, cluster.servers, "BASIC", log=log)
    append(d, [Record.put(b"after-restart", b"x")])
    try:
        wait_for("901 messages", lambda: stream_count(cluster.urls, "BASIC") == 901, timeout=60)
    finally:
        assert stop(proc) == 0, tail(log)
    assert stream_count(cluster.urls, "BASIC") == 901


def test_a_cluster_that_stops_answering_ends_the_session_at_the_ack_timeout(
    cluster: LocalCluster, tmp_path: Any
) -> None:
    """Every node frozen (SIGSTOP) with publishes in flight: no answer comes, the session ends after
    --ack-timeout (the shipper's one timer, not a timer per publish); after SIGCONT the stream holds every
    record once, in log order."""
    d, log = str(tmp_path / "wal"), str(tmp_path / "ship.log")
    total = 30_000
    append(d, [Record.put(f"f-{i}".encode(), bytes(100)) for i in range(total)])
    args = ("--create-stream", "--replicas", "3", "--ack-timeout", "1")
    proc = start_shipper(d, cluster.servers, "FROZEN", *args, log=log)
    frozen: list[int] = []
    try:
        wait_for("shipping", lambda: stream_count(cluster.urls, "FROZEN") >= 500, timeout=60, every=0.02)
        for node in cluster.procs:
            assert node is not None
            os.kill(node.pid, signal.SIGSTOP)
            frozen.append(node.pid)
        wait_for("the ack timeout", lambda: "no ack from JetStream within 1 s" in tail(log, 200), timeout=30)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    try:
        wait_for(f"{total} messages", lambda: stream_count(cluster.urls, "FROZEN") == total, timeout=120)
    finally:
        rc = stop(proc)
    assert rc == 0, tail(log)
    got = read_stream(cluster.urls, "FROZEN", "FROZEN")
    assert [from_message(h, p)[1] for _, h, p in got] == [pos for _, pos in log_records(d)]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def run_ship(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def test_missing_stream_is_a_clear_error(cluster: LocalCluster, tmp_path: Any) -> None:
    d = str(tmp_path / "wal")
    append(d, [Record.put(b"k", b"v")])
    r = run_ship(*ship_cmd(d, cluster.servers, "NOPE"))
    assert r.returncode == 2, r.stderr
    assert "stream 'NOPE' does not exist" in r.stderr and "--create-stream" in r.stderr


def test_short_duplicate_window_is_refused_at_start(cluster: LocalCluster, tmp_path: Any) -> None:
    d = str(tmp_path / "wal")
    append(d, [Record.put(b"k", b"v")])
    create_stream(cluster.urls, "SHORT", "short", dupe_window=1)
    r = run_ship(*ship_cmd(d, cluster.servers, "SHORT", "--subject", "short", "--ack-timeout", "5"))
    assert r.returncode == 2, r.stderr
    assert "duplicate window of 1 s, shorter than the shipper's re-publish span of 10 s" in r.stderr
    assert stream_count(cluster.urls, "SHORT") == 0


def test_subject_outside_the_stream_is_refused(cluster: LocalCluster, tmp_path: Any) -> None:
    d = str(tmp_path / "wal")
    append(d, [Record.put(b"k", b"v")])
    create_stream(cluster.urls, "SUBJ", "orders.*")
    r = run_ship(*ship_cmd(d, cluster.servers, "SUBJ", "--subject", "payments.x"))
    assert r.returncode == 2 and "does not take subject 'payments.x'" in r.stderr, r.stderr


def test_unreachable_cluster_backs_off_then_gives_up(tmp_path: Any) -> None:
    require_nats()
    d = str(tmp_path / "wal")
    append(d, [Record.put(b"k", b"v")])
    (port,) = free_ports(1)
    t0 = time.monotonic()
    r = run_ship(*ship_cmd(d, f"nats://127.0.0.1:{port}", "S", "--give-up-after", "3"))
    assert r.returncode == 1, r.stderr
    assert f"no working NATS cluster at nats://127.0.0.1:{port}" in r.stderr
    retries = r.stderr.count("retrying in")
    assert 1 <= retries <= 12, r.stderr  # backoff, not a busy loop
    assert time.monotonic() - t0 < 45


def test_authorization_failure_is_a_clear_error(tmp_path: Any) -> None:
    require_nats()
    assert NATS_SERVER is not None
    d = str(tmp_path / "wal")
    append(d, [Record.put(b"k", b"v")])
    (port,) = free_ports(1)
    conf = tmp_path / "auth.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\nauthorization {{ user: alice, password: secret }}\n')
    server = subprocess.Popen([NATS_SERVER, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for("nats-server to listen", listening, timeout=20)
        r = run_ship(*ship_cmd(d, f"nats://bob:wrong@127.0.0.1:{port}", "S", "--give-up-after", "20"))
    finally:
        server.terminate()
        server.wait(10)
    assert r.returncode == 1, r.stderr
    assert "refused the credentials" in r.stderr and "nats://bob:***@" in r.stderr
    assert "wrong" not in r.stderr  # the password is never printed


def test_without_nats_py_ship_says_how_to_install(tmp_path: Any) -> None:
    d = str(tmp_path / "wal")
    append(d, [Record.put(b"k", b"v")])
    code = (
        "import sys; sys.modules['nats'] = None\n"
        "from nori_wal.cli import main\n"
        f"sys.exit(main(['ship', {d!r}, '--to', 'nats://127.0.0.1:4222', '--stream', 'S']))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == "nori-wal ship: error: nats-py is not installed: pip install 'nori-wal[nats]'"
