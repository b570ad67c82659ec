"""The issue's torture: 30k records from 4 producer processes shipped while the shipper is SIGKILLed twice,
the stream's leader node is killed and restarted, and the writer is killed and restarted.

The stream must then hold every record of the log exactly once, in log order, and nothing else.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from typing import Any

import pytest
from ship_support import (
    log_records,
    produce,
    read_stream,
    start_cluster,
    start_shipper,
    stop,
    stream_count,
    stream_leader,
    tail,
    wait_for,
)

from nori_wal import FsyncPolicy, WalConfig
from nori_wal.ship import from_message, read_identity
from nori_wal.writer_proc import WriterProcess

PRODUCERS, PER_PRODUCER = 4, 7_500
TOTAL = PRODUCERS * PER_PRODUCER


@pytest.mark.timeout(300)
def test_exactly_once_in_order_through_shipper_nats_and_writer_crashes(tmp_path: Any) -> None:
    cluster = start_cluster(3)
    d, log = str(tmp_path / "wal"), str(tmp_path / "ship.log")
    config = WalConfig(dir=d, fsync_policy=FsyncPolicy.batch(0.005), max_segment_size=512 * 1024)
    writer = WriterProcess.spawn(config)
    ctx = multiprocessing.get_context("spawn")
    producers = [ctx.Process(target=produce, args=(d, i, PER_PRODUCER, 50, 0.03)) for i in range(PRODUCERS)]
    args = ("--ack-timeout", "2", "--progress-interval", "2", "--commit-every", "500")
    shipper = start_shipper(d, cluster.servers, "TORTURE", "--create-stream", "--replicas", "3", *args, log=log)
    urls = cluster.urls

    def shipped() -> int:
        return stream_count(urls, "TORTURE")

    def sessions() -> int:
        return tail(log, 10_000).count(" to stream TORTURE subject ")

    def kill_and_restart_shipper() -> Any:
        stop(shipper, signal.SIGKILL)
        before = sessions()
        restarted = start_shipper(d, cluster.servers, "TORTURE", *args, log=log)
        # up and resuming (a SIGTERM before its handler is installed would kill it, not stop it)
        wait_for("the restarted shipper's session", lambda: sessions() > before, timeout=60)
        return restarted

    try:
        for p in producers:
            p.start()
        wait_for("4k shipped", lambda: shipped() >= 4_000, timeout=90)
        shipper = kill_and_restart_shipper()  # 1st SIGKILL of the shipper

        wait_for("8k shipped", lambda: shipped() >= 8_000, timeout=90)
        leader = stream_leader(urls, "TORTURE")
        node = int(leader[1:]) if leader else 0  # "n<i>"
        cluster.kill(node)  # the stream's leader: a new one is elected while publishes are in flight
        live = [u for i, u in enumerate(urls) if i != node]
        wait_for("12k shipped with a node down", lambda: stream_count(live, "TORTURE") >= 12_000, timeout=120)
        cluster.start(node)

        wait_for("15k shipped", lambda: shipped() >= 15_000, timeout=90)
        writer.kill()  # the writer crashes; producers retry; a new writer recovers the log
        writer = WriterProcess.spawn(config)

        wait_for("20k shipped", lambda: shipped() >= 20_000, timeout=90)
        shipper = kill_and_restart_shipper()  # 2nd SIGKILL of the shipper

        for p in producers:
            p.join(timeout=120)
            assert p.exitcode == 0, f"producer exited {p.exitcode}"
        in_log = len(log_records(d))
        assert in_log >= TOTAL
        wait_for(f"{in_log} shipped", lambda: shipped() == in_log, timeout=120)
        # the last shipper may have found everything shipped: its progress line comes after --progress-interval
        wait_for("a progress line", lambda: "resyncs" in tail(log, 400), timeout=30)
        assert stop(shipper) == 0, tail(log)
    finally:
        for p in producers:
            if p.is_alive():
                p.kill()
                p.join(10)
        if shipper.poll() is None:
            stop(shipper, signal.SIGKILL)
        writer.stop()
        try:
            expected = log_records(d)
            got = read_stream(urls, "TORTURE", "TORTURE") if not os.environ.get("NO_READ") else []
        finally:
            cluster.close()

    log_id = read_identity(d)
    shipped_records = [from_message(h, payload) for _, h, payload in got]
    assert len(shipped_records) == len(expected), tail(log)
    assert [p for _, p, _ in shipped_records] == [p for _, p in expected]  # each once, in log order, nothing else
    assert shipped_records == [(r, p, log_id) for r, p in expected]
    keys = {r.key for r, _ in expected}
    assert keys == {f"p{i}-{n}".encode() for i in range(PRODUCERS) for n in range(PER_PRODUCER)}
    assert "resyncs" in tail(log, 400)
